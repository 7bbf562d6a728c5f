//! The record of the last run, kept in `state_dir` for the operator and for monitoring.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CopiedFile {
    pub name: String,
    pub bytes: u64,
    /// false: it was already on the remote with a matching checksum.
    pub uploaded: bool,
    pub sha256: Option<String>,
    /// Upload time, and the part of it hashing added (not set when nothing was uploaded).
    #[serde(default)]
    pub seconds: Option<f64>,
    #[serde(default)]
    pub hash_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub version: String,
    pub started: String,
    pub finished: String,
    pub exit_code: i32,
    pub backup_ran: bool,
    pub backup_succeeded: Option<bool>,
    pub destination: String,
    pub files: Vec<CopiedFile>,
    pub bytes_uploaded: u64,
    pub seconds: f64,
    pub megabytes_per_second: f64,
    pub pruned_local: usize,
    pub pruned_remote: usize,
    pub errors: Vec<String>,
}

pub fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join("last-run.json")
}

/// Write atomically: a reader never sees half a record.
pub fn save(state_dir: &Path, record: &RunRecord) -> std::io::Result<()> {
    let path = record_path(state_dir);
    let tmp = state_dir.join(".last-run.json.tmp");
    let json = serde_json::to_vec_pretty(record)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(&tmp)?;
    file.write_all(&json)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(state_dir: &Path) -> std::io::Result<RunRecord> {
        let text = std::fs::read_to_string(record_path(state_dir))?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    #[test]
    fn a_record_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = RunRecord {
            exit_code: 5,
            files: vec![CopiedFile {
                name: "cvp.20240101020010.tgz".into(),
                bytes: 3,
                uploaded: true,
                sha256: None,
                seconds: Some(1.5),
                hash_seconds: Some(0.25),
            }],
            errors: vec!["disk full".into()],
            ..RunRecord::default()
        };
        save(dir.path(), &record).expect("save");
        assert_eq!(load(dir.path()).expect("load"), record);
    }
}
