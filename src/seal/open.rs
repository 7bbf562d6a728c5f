//! Decrypting a fetched file: `fetch --identity FILE`, and `verify --read-data --identity`.
//! What the stock `age` tool encrypted opens here too.

use std::io::{BufReader, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use age_core::format::Stanza;
use age_core::secrecy::ExposeSecret;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{CHUNK, NONCE, SEALED_CHUNK, TAG};

type Boxed = Box<dyn age::Identity + Send + Sync>;

/// The keys of an identity file: age identities (`AGE-SECRET-KEY-1…` lines, as `age-keygen`
/// and `keygen --age-identity` write them) or one unencrypted SSH private key.
pub struct Identities {
    list: Vec<Boxed>,
}

impl Identities {
    /// The identities of every file given.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Identities, String> {
        let mut list = Vec::new();
        for path in paths {
            list.extend(Identities::load_one(path.as_ref())?.list);
        }
        Ok(Identities { list })
    }

    /// Opened without following a symlink, and only a file no other account can write: a
    /// planted file would otherwise decide what is trusted as the restore key.
    fn load_one(path: &Path) -> Result<Identities, String> {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt;
        let cannot =
            |err: std::io::Error| format!("cannot read identity file {}: {err}", path.display());
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(cannot)?;
        let meta = file.metadata().map_err(cannot)?;
        let me = crate::users::current_uid();
        if !meta.is_file() || crate::privilege::others_may_change(&meta, me) {
            return Err(format!(
                "identity file {} must be a plain file owned by you (or root) that no one else \
                 can write (`chmod 600`)",
                path.display()
            ));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(cannot)?;
        let text = String::from_utf8_lossy(&bytes);
        let list: Vec<Boxed> = if text.contains("AGE-SECRET-KEY-") {
            age::IdentityFile::from_buffer(&bytes[..])
                .ok()
                .and_then(|file| file.into_identities().ok())
                .ok_or_else(|| format!("{} is not a valid age identity file", path.display()))?
        } else {
            let name = Some(path.display().to_string());
            match age::ssh::Identity::from_buffer(&bytes[..], name) {
                Ok(key @ age::ssh::Identity::Unencrypted(_)) => vec![Box::new(key)],
                Ok(age::ssh::Identity::Encrypted(_)) => {
                    return Err(format!(
                        "{} is a passphrase-protected SSH key: fetch cannot ask for the \
                         passphrase; use a copy without one (`ssh-keygen -p -N '' -f COPY`) \
                         kept as safely as the key",
                        path.display()
                    ))
                }
                Ok(age::ssh::Identity::Unsupported(_)) => {
                    return Err(format!(
                        "{}: this SSH key type cannot decrypt age files (ssh-ed25519 and \
                         ssh-rsa can)",
                        path.display()
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "{} is neither an age identity file nor an SSH private key",
                        path.display()
                    ))
                }
            }
        };
        if list.is_empty() {
            return Err(format!("{} holds no identity", path.display()));
        }
        Ok(Identities { list })
    }

    fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.list.iter().map(|i| i.as_ref() as &dyn age::Identity)
    }

    /// Decrypt `sealed` into `out`, authenticating every chunk. Returns the plaintext's size.
    /// On an error, what `out` holds must be thrown away.
    pub fn decrypt(&self, sealed: impl Read, out: &mut dyn Write) -> Result<u64, String> {
        use std::io::BufRead as _;
        let mut input = BufReader::with_capacity(256 * 1024, sealed);
        // The header ends within its first 64 KiB (the age crate reads it whole, unbounded).
        let head = input.fill_buf().map_err(|err| err.to_string())?;
        if !head.starts_with(b"age-encryption.org/v1\n")
            || !head[..head.len().min(64 * 1024)]
                .windows(5)
                .any(|w| w == b"\n--- ")
        {
            return Err("not an age file this version reads".into());
        }
        let decryptor = age::Decryptor::new_buffered(input).map_err(explain)?;
        let mut reader = decryptor.decrypt(self.iter()).map_err(explain)?;
        std::io::copy(&mut reader, out).map_err(|err| {
            if err.kind() == std::io::ErrorKind::InvalidData {
                "the file does not authenticate: it was damaged or altered after it was \
                 encrypted"
                    .to_string()
            } else {
                format!("while decrypting: {err}")
            }
        })
    }
}

fn explain(err: age::DecryptError) -> String {
    match err {
        age::DecryptError::NoMatchingKeys => {
            "the identity given does not open this file (it was encrypted to other recipients)"
                .into()
        }
        age::DecryptError::InvalidMac | age::DecryptError::DecryptionFailed => {
            "the file's header does not authenticate: it was damaged or altered".into()
        }
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            "not an age file this version reads".into()
        }
        other => other.to_string(),
    }
}

/// The payload of one age file, opened a chunk at a time in any order, so each stream of a
/// download decrypts what it receives. The header is checked by the age crate (its MAC, and
/// that one of the identities opens it); each chunk is then authenticated under its own
/// number, and only the file's last chunk with age's last-chunk flag, so a file cut at a
/// chunk boundary or with chunks moved does not open.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    payload_start: u64,
    size: u64,
    chunks: u64,
}

impl Opener {
    /// How much of the file's start `new` needs (or all of a smaller file): the header's
    /// last line starts within its first 64 KiB (as `decrypt` requires), and it and the
    /// payload's nonce end within this.
    pub const HEAD: u64 = 64 * 1024 + 128;

    /// The opener of a `size`-byte age file whose first bytes are `head`.
    pub fn new(head: &[u8], size: u64, identities: &Identities) -> Result<Opener, String> {
        let not_age = || "not an age file this version reads".to_string();
        let mut rest = head
            .strip_prefix(b"age-encryption.org/v1\n")
            .ok_or_else(not_age)?;
        let mut stanzas = Vec::new();
        while !rest.starts_with(b"---") {
            // The age crate's parser, which also takes the layout of early age versions.
            let (after, stanza) =
                age_core::format::read::legacy_age_stanza(rest).map_err(|_| not_age())?;
            stanzas.push(Stanza::from(stanza));
            rest = after;
        }
        let mac_line = rest.iter().position(|&b| b == b'\n').ok_or_else(not_age)?;
        let header_len = head.len() - rest.len() + mac_line + 1;
        let payload_start = header_len + NONCE;
        let header_and_nonce = head.get(..payload_start).ok_or_else(not_age)?;
        // The age crate's own checks of the header: the same errors as a whole decryption.
        age::Decryptor::new_buffered(header_and_nonce)
            .map_err(explain)?
            .decrypt(identities.iter())
            .map_err(explain)?;
        let file_key = identities
            .list
            .iter()
            .find_map(|identity| identity.unwrap_stanzas(&stanzas))
            .unwrap_or(Err(age::DecryptError::NoMatchingKeys))
            .map_err(explain)?;
        // The MAC checked again with the very key the payload is opened with (the age crate
        // checked it with the key it unwrapped itself).
        let covered = head.len() - rest.len() + "---".len();
        let given = rest
            .get(4..mac_line)
            .and_then(|text| STANDARD_NO_PAD.decode(text).ok())
            .ok_or_else(not_age)?;
        let mac_key = Zeroizing::new(age_core::primitives::hkdf(
            &[],
            b"header",
            file_key.expose_secret(),
        ));
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(mac_key.as_slice())
            .map_err(|err| format!("HMAC: {err}"))?;
        mac.update(&head[..covered]);
        mac.verify_slice(&given)
            .map_err(|_| explain(age::DecryptError::InvalidMac))?;
        let payload_key = Zeroizing::new(age_core::primitives::hkdf(
            &header_and_nonce[header_len..],
            b"payload",
            file_key.expose_secret(),
        ));
        let cipher = ChaCha20Poly1305::new_from_slice(payload_key.as_slice())
            .map_err(|err| format!("ChaCha20-Poly1305: {err}"))?;
        let truncated = || "the file ends inside its last chunk: it is truncated".to_string();
        let payload = size
            .checked_sub(payload_start as u64)
            .filter(|payload| *payload > 0)
            .ok_or_else(truncated)?;
        let chunks = payload.div_ceil(SEALED_CHUNK);
        let last = payload - (chunks - 1) * SEALED_CHUNK;
        // Only an empty file ends in an empty chunk.
        if last < TAG || (last == TAG && chunks > 1) {
            return Err(truncated());
        }
        Ok(Opener {
            cipher,
            payload_start: payload_start as u64,
            size,
            chunks,
        })
    }

    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// The decrypted file's size.
    pub fn plain_len(&self) -> u64 {
        self.size - self.payload_start - self.chunks * TAG
    }

    /// Where chunk `index` lies in the encrypted file.
    fn sealed_range(&self, index: u64) -> Range<u64> {
        let start = self.payload_start + index * SEALED_CHUNK;
        start..self.size.min(start + SEALED_CHUNK)
    }

    /// The chunks whose every byte lies in `bytes` of the encrypted file.
    pub fn chunks_within(&self, bytes: Range<u64>) -> Range<u64> {
        let first = bytes
            .start
            .saturating_sub(self.payload_start)
            .div_ceil(SEALED_CHUNK);
        let end = if bytes.end >= self.size {
            self.chunks
        } else {
            bytes.end.saturating_sub(self.payload_start) / SEALED_CHUNK
        };
        first.min(end)..end
    }

    /// The bytes chunks `which` take in the encrypted file.
    pub fn sealed_len_of(&self, which: Range<u64>) -> u64 {
        let which = which.start..which.end.min(self.chunks);
        if which.is_empty() {
            return 0;
        }
        self.sealed_range(which.end - 1).end - self.sealed_range(which.start).start
    }

    /// Where the first chunk starts in the encrypted file.
    pub fn payload_start(&self) -> u64 {
        self.payload_start
    }

    /// Decrypt chunks `which` of `sealed` and write their plaintext into `plain` at its
    /// place. `buffer` is reused from call to call.
    pub fn open(
        &self,
        which: Range<u64>,
        sealed: &std::fs::File,
        plain: &std::fs::File,
        buffer: &mut Vec<u8>,
    ) -> Result<(), String> {
        if which.is_empty() {
            return Ok(());
        }
        let from = self.sealed_range(which.start).start;
        let len = usize::try_from(self.sealed_len_of(which.clone())).map_err(|e| e.to_string())?;
        buffer.resize(len, 0);
        sealed
            .read_exact_at(buffer, from)
            .map_err(|err| format!("cannot read what was downloaded: {err}"))?;
        let packed = self.open_in_place(which.clone(), buffer)?;
        plain
            .write_all_at(&buffer[..packed], which.start * CHUNK)
            .map_err(|err| format!("cannot write the decrypted file: {err}"))
    }

    /// Decrypt chunks `which`, whose ciphertext `sealed` holds (and nothing more), in
    /// place: their plaintext ends up at its start. Its length.
    pub fn open_in_place(&self, which: Range<u64>, sealed: &mut [u8]) -> Result<usize, String> {
        let len = sealed.len();
        if which.end > self.chunks || len as u64 != self.sealed_len_of(which.clone()) {
            return Err(format!(
                "chunks {}..{} are {} bytes, not {len} (a bug in the caller)",
                which.start,
                which.end,
                self.sealed_len_of(which.clone())
            ));
        }
        // Each chunk is opened in place, and its plaintext moved down over the tags before.
        let mut packed = 0;
        for (index, at) in which.zip((0..len).step_by(SEALED_CHUNK as usize)) {
            let end = len.min(at + SEALED_CHUNK as usize);
            let (body, tag) = sealed[at..end].split_at_mut(end - at - TAG as usize);
            let nonce = super::chunk_nonce(index, index + 1 == self.chunks);
            self.cipher
                .decrypt_in_place_detached(&nonce.into(), &[], body, Tag::from_slice(tag))
                .map_err(|_| {
                    format!(
                        "the file does not authenticate: chunk {index} (bytes {}..{}) was \
                         damaged or altered after it was encrypted",
                        self.sealed_range(index).start,
                        self.sealed_range(index).end
                    )
                })?;
            let body_len = body.len();
            sealed.copy_within(at..at + body_len, packed);
            packed += body_len;
        }
        Ok(packed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `plain` encrypted by the age crate's own (sequential) encryptor: the reference.
    fn age_encrypt(recipient: &age::x25519::Recipient, plain: &[u8]) -> Vec<u8> {
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
                .expect("recipients");
        let mut sealed = Vec::new();
        let mut writer = encryptor.wrap_output(&mut sealed).expect("wrap");
        writer.write_all(plain).expect("write");
        writer.finish().expect("finish");
        sealed
    }

    fn file_of(bytes: &[u8]) -> std::fs::File {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(bytes).expect("write");
        file
    }

    fn identities(identity: age::x25519::Identity) -> Identities {
        Identities {
            list: vec![Box::new(identity)],
        }
    }

    /// Open every chunk, in the order given (indices into the chunks, wrapping), into a new
    /// file: its bytes, or the first error.
    fn open_in_order(
        sealed: &[u8],
        ids: &Identities,
        order: impl Fn(u64) -> u64,
    ) -> Result<Vec<u8>, String> {
        let head = &sealed[..sealed.len().min(Opener::HEAD as usize)];
        let opener = Opener::new(head, sealed.len() as u64, ids)?;
        let (input, output) = (file_of(sealed), tempfile::tempfile().expect("tempfile"));
        let mut buffer = Vec::new();
        for i in 0..opener.chunks() {
            let index = order(i) % opener.chunks();
            opener.open(index..index + 1, &input, &output, &mut buffer)?;
        }
        let mut plain = Vec::new();
        (&output).read_to_end(&mut plain).expect("read");
        assert_eq!(plain.len() as u64, opener.plain_len());
        Ok(plain)
    }

    #[test]
    fn in_place_the_chunks_open_from_memory_and_a_wrong_length_is_refused() {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let ids = identities(identity);
        let plain: Vec<u8> = (0..3 * CHUNK as usize + 5)
            .map(|i| (i % 253) as u8)
            .collect();
        let sealed = age_encrypt(&recipient, &plain);
        let opener = Opener::new(&sealed[..Opener::HEAD as usize], sealed.len() as u64, &ids)
            .expect("opener");
        let mut payload = sealed[opener.payload_start() as usize..].to_vec();
        assert_eq!(
            opener.sealed_len_of(0..opener.chunks()),
            payload.len() as u64
        );
        assert_eq!(opener.sealed_len_of(2..99), opener.sealed_len_of(2..4));
        assert_eq!(
            opener.sealed_len_of(7..9),
            0,
            "past the last chunk: nothing"
        );
        let short = payload.len() - 1;
        assert!(opener.open_in_place(0..4, &mut payload[..short]).is_err());
        assert!(opener.open_in_place(0..5, &mut payload).is_err());
        let packed = opener.open_in_place(0..4, &mut payload).expect("open");
        assert_eq!(&payload[..packed], &plain[..]);
    }

    #[test]
    fn opens_what_age_encrypted_in_any_order() {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let ids = identities(identity);
        let chunk = CHUNK as usize;
        for size in [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk, 3 * chunk + 5] {
            let plain: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = age_encrypt(&recipient, &plain);
            let chunks = (sealed.len() as u64).div_ceil(SEALED_CHUNK);
            let backwards = open_in_order(&sealed, &ids, |i| chunks - 1 - i);
            assert_eq!(backwards.as_deref(), Ok(&plain[..]), "{size} bytes");
            // Several chunks at a time, from the start.
            let head = &sealed[..sealed.len().min(Opener::HEAD as usize)];
            let opener = Opener::new(head, sealed.len() as u64, &ids).expect("opener");
            let output = tempfile::tempfile().expect("tempfile");
            opener
                .open(
                    0..opener.chunks(),
                    &file_of(&sealed),
                    &output,
                    &mut Vec::new(),
                )
                .expect("open all");
            let mut all = Vec::new();
            (&output).read_to_end(&mut all).expect("read");
            assert_eq!(all, plain, "{size} bytes at once");
        }
    }

    #[test]
    fn refuses_a_cut_a_flip_a_swap_and_a_stranger() {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let ids = identities(identity);
        let chunk = CHUNK as usize;
        let plain = vec![42u8; 3 * chunk];
        let sealed = age_encrypt(&recipient, &plain);
        let start = sealed.len() - 3 * SEALED_CHUNK as usize;
        // Cut at a chunk boundary: the chunk now last was not sealed as the last one.
        let cut = &sealed[..sealed.len() - SEALED_CHUNK as usize];
        let err = open_in_order(cut, &ids, |i| i).expect_err("cut");
        assert!(err.contains("chunk 1"), "{err}");
        // Cut inside the last chunk.
        let err = open_in_order(&sealed[..sealed.len() - 5], &ids, |i| i).expect_err("cut");
        assert!(err.contains("does not authenticate"), "{err}");
        // Cut to its tag only, or before any chunk.
        let short = &sealed[..start + 10];
        assert!(open_in_order(short, &ids, |i| i).is_err());
        assert!(open_in_order(&sealed[..start], &ids, |i| i)
            .expect_err("no payload")
            .contains("truncated"));
        // One flipped byte in the middle chunk.
        let mut flipped = sealed.clone();
        flipped[start + SEALED_CHUNK as usize + 100] ^= 1;
        let err = open_in_order(&flipped, &ids, |i| i).expect_err("flip");
        assert!(err.contains("chunk 1"), "{err}");
        // The first two chunks swapped: each is sealed under its own number.
        let mut swapped = sealed.clone();
        let (a, b) = (start, start + SEALED_CHUNK as usize);
        let first = sealed[a..b].to_vec();
        swapped.copy_within(b..b + SEALED_CHUNK as usize, a);
        swapped[b..b + SEALED_CHUNK as usize].copy_from_slice(&first);
        assert!(open_in_order(&swapped, &ids, |i| i).is_err());
        // A changed header fails its MAC; another identity does not open it.
        let mut header = sealed.clone();
        let at = sealed
            .windows(4)
            .position(|w| w == b"--- ")
            .expect("mac line")
            - 2;
        header[at] ^= 1;
        assert!(open_in_order(&header, &ids, |i| i).is_err());
        let stranger = identities(age::x25519::Identity::generate());
        let err = open_in_order(&sealed, &stranger, |i| i).expect_err("stranger");
        assert!(err.contains("does not open"), "{err}");
        assert!(open_in_order(b"not age at all", &ids, |i| i).is_err());
    }

    #[test]
    fn chunks_within_a_range_are_whole_ones_only() {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let ids = identities(identity);
        let sealed = age_encrypt(&recipient, &vec![1u8; 3 * CHUNK as usize + 9]);
        let size = sealed.len() as u64;
        let opener = Opener::new(&sealed[..Opener::HEAD as usize], size, &ids).expect("opener");
        let p = opener.payload_start;
        assert_eq!(opener.chunks(), 4);
        assert_eq!(opener.chunks_within(0..size), 0..4);
        assert_eq!(opener.chunks_within(0..p + SEALED_CHUNK), 0..1);
        assert_eq!(opener.chunks_within(0..p + SEALED_CHUNK - 1), 0..0);
        assert_eq!(opener.chunks_within(p + 1..p + 3 * SEALED_CHUNK), 1..3);
        assert_eq!(opener.chunks_within(p + SEALED_CHUNK..size), 1..4);
        assert_eq!(opener.chunks_within(p + 3 * SEALED_CHUNK + 1..size), 4..4);
        assert_eq!(opener.chunks_within(0..10), 0..0);
    }
}
