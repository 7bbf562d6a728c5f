//! One destination, one owner: the first node that writes to a destination leaves a small
//! marker naming itself, and every other node refuses to upload or prune there. Two nodes of
//! a cluster back up at 02:00 with the same 14-digit stamps; sharing a folder would let them
//! overwrite and prune each other's sets.

use crate::error::{Error, Result};
use crate::names::OWNER_MARKER;
use crate::remote::{Remote, RemoteEntry};
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// This run wrote the marker.
    Now,
    /// The marker already named this node.
    Already,
}

/// This node's default name in the marker: its host name (a rebuilt node keeps it; INI
/// `node_name` overrides it).
pub fn node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "unknown-node".into(),
    }
}

fn render(node: &str) -> String {
    format!(
        "# This destination belongs to the cvp-backup-copy of one CVP node; other nodes refuse\n\
         # to write or prune here. To move it to another node, delete this file.\n\
         node = {node}\nclaimed = {}\n",
        chrono::Local::now().to_rfc3339()
    )
}

fn parse(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "node" && !value.trim().is_empty())
            .then(|| crate::error::printable(value.trim()))
    })
}

/// The node named by the destination's marker, if there is one.
pub fn read(remote: &mut dyn Remote) -> Result<Option<String>> {
    let Some(bytes) = remote.read_small(OWNER_MARKER, 4096)? else {
        return Ok(None);
    };
    Ok(Some(
        parse(&String::from_utf8_lossy(&bytes)).unwrap_or_default(),
    ))
}

pub fn refusal(destination: &str, owner: &str, node: &str) -> Error {
    let owner = if owner.is_empty() {
        "an unreadable owner".to_string()
    } else {
        format!("node {owner}")
    };
    Error::config(format!(
        "{destination} belongs to {owner} ({OWNER_MARKER} there), not to this node \
         ({node}): nothing is written or pruned there. Give each node its own destination; if \
         {owner} is gone for good, delete {OWNER_MARKER} on the server"
    ))
}

/// Claim the destination for `node`, or refuse when another node has.
pub fn claim(remote: &mut dyn Remote, node: &str) -> Result<Claimed> {
    claim_listed(remote, node, None)
}

/// `claim`, where a listing just made shows whether there is a marker to read: when it
/// shows none and the server creates exclusively, the marker is created at once (a round
/// trip less on a first night; one that appeared meanwhile still fails the exclusive create
/// and is read). Elsewhere (S3) it is read first, as a PUT would replace it.
pub fn claim_listed(
    remote: &mut dyn Remote,
    node: &str,
    listing: Option<&[RemoteEntry]>,
) -> Result<Claimed> {
    let label = remote.describe();
    let listed = listing.is_none_or(|entries| !unclaimed(remote, entries));
    if let Some(owner) = listed.then(|| read(remote)).transpose()?.flatten() {
        return if owner == node {
            Ok(Claimed::Already)
        } else {
            Err(refusal(&label, &owner, node))
        };
    }
    let created = match remote.create_exclusive(OWNER_MARKER)? {
        Some(mut sink) => {
            sink.write_all(render(node).as_bytes())
                .and_then(|()| sink.flush())
                .map_err(|err| {
                    Error::inside(&err).unwrap_or_else(|| {
                        Error::copy(format!("cannot write {OWNER_MARKER} in {label}: {err}"))
                    })
                })?;
            true
        }
        None => false,
    };
    if created {
        return Ok(Claimed::Now);
    }
    // Another node won the race a moment ago.
    match read(remote)? {
        Some(owner) if owner == node => Ok(Claimed::Already),
        Some(owner) => Err(refusal(&label, &owner, node)),
        None => Err(Error::transient(format!(
            "{OWNER_MARKER} in {label} appeared and went away: trying again"
        ))),
    }
}

/// Whether `claim_listed` creates the marker at once on what `listing` shows: none there,
/// on a server that creates exclusively. Only then may the claim run beside the first
/// uploads (see `gate::Gate`): where a marker is listed it is read first, so that no byte goes
/// into another node's folder before the refusal.
pub fn unclaimed(remote: &dyn Remote, listing: &[RemoteEntry]) -> bool {
    remote.creates_exclusively() && !listing.iter().any(|e| e.name == OWNER_MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_names_the_node() {
        let text = render("cvp1.example.net");
        assert_eq!(parse(&text).as_deref(), Some("cvp1.example.net"));
        assert_eq!(parse("# nothing\n"), None);
        assert_eq!(parse("node =\n"), None);
        assert!(!node_name().is_empty());
        let err = refusal("u@h:/d", "cvp2", "cvp1");
        assert_eq!(err.code, crate::exit_codes::ExitCode::Config);
        assert!(err.message.contains("node cvp2"), "{}", err.message);
    }
}
