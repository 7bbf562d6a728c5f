//! Encryption at rest in the age format (age-encryption.org/v1), so the server only ever
//! holds files the node cannot decrypt and the stock `age` tool restores without us.
//!
//! The age crate writes its payload as one sequential stream; a parallel upload needs any
//! range of the ciphertext on demand. So this module writes the header (the recipients'
//! stanzas come from the age crate's `Recipient::wrap_file_key`) and encrypts the payload's
//! chunks itself, each independently: age's STREAM is ChaCha20-Poly1305 over 64 KiB chunks
//! with the chunk's number as the nonce, so chunk N's ciphertext sits at a known offset.
//! Decryption (`open`) checks the header with the age crate's own code, then opens the
//! chunks the same way, each independently, so a download's streams decrypt what they
//! receive.

pub mod identity;
pub mod open;
pub mod recipients;

use std::io;
use std::os::unix::fs::FileExt;

use age_core::format::{FileKey, Stanza};
use age_core::secrecy::ExposeSecret;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

pub use recipients::Recipients;

/// Plaintext bytes per payload chunk.
pub const CHUNK: u64 = 64 * 1024;
/// Poly1305 tag after each chunk.
const TAG: u64 = 16;
/// Ciphertext bytes per full chunk.
const SEALED_CHUNK: u64 = CHUNK + TAG;
/// The payload's nonce, right after the header.
const NONCE: usize = 16;

/// The suffix of an encrypted file's name on the server.
pub const SUFFIX: &str = ".age";

/// One file's encryption: its header and payload nonce (the ciphertext's first bytes) and
/// the key its chunks are sealed with. A new one (a new file key) for every upload attempt.
pub struct Sealer {
    prefix: Vec<u8>,
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    /// A new file key, wrapped for every recipient.
    pub fn new(recipients: &Recipients) -> Result<Sealer, String> {
        let file_key = FileKey::try_init_with_mut(|key| {
            getrandom::getrandom(key).map_err(|err| format!("no random bytes: {err}"))
        })?;
        let mut stanzas: Vec<Stanza> = Vec::new();
        let mut labels = None;
        for recipient in recipients.iter() {
            let (wrapped, its_labels) = recipient
                .wrap_file_key(&file_key)
                .map_err(|err| format!("cannot encrypt to a recipient of encrypt_to: {err}"))?;
            // As age requires: recipients may only be mixed when their labels agree.
            if labels.get_or_insert_with(|| its_labels.clone()) != &its_labels {
                return Err("encrypt_to mixes recipients age does not allow together".into());
            }
            stanzas.extend(wrapped);
        }
        if stanzas.is_empty() {
            return Err("encrypt_to names no recipient".into());
        }
        let mut prefix = header_without_mac(&stanzas);
        let mac_key = age_core::primitives::hkdf(&[], b"header", file_key.expose_secret());
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&mac_key)
            .map_err(|err| format!("HMAC: {err}"))?;
        mac.update(&prefix);
        prefix.push(b' ');
        prefix.extend_from_slice(
            STANDARD_NO_PAD
                .encode(mac.finalize().into_bytes())
                .as_bytes(),
        );
        prefix.push(b'\n');
        let mut nonce = [0u8; NONCE];
        getrandom::getrandom(&mut nonce).map_err(|err| format!("no random bytes: {err}"))?;
        prefix.extend_from_slice(&nonce);
        let payload_key = Zeroizing::new(age_core::primitives::hkdf(
            &nonce,
            b"payload",
            file_key.expose_secret(),
        ));
        let cipher = ChaCha20Poly1305::new_from_slice(payload_key.as_slice())
            .map_err(|err| format!("ChaCha20-Poly1305: {err}"))?;
        Ok(Sealer { prefix, cipher })
    }

    /// The ciphertext's size for `plain` bytes.
    pub fn sealed_len(&self, plain: u64) -> u64 {
        self.prefix.len() as u64 + payload_len(plain)
    }

    /// A reader of the ciphertext of `file` (`plain` bytes long), at any offset. One per
    /// thread: it keeps the chunk it sealed last.
    pub fn reader<'a>(&'a self, file: &'a std::fs::File, plain: u64) -> SealedReader<'a> {
        SealedReader {
            sealer: self,
            file,
            plain,
            chunk: None,
            buffer: Vec::with_capacity(SEALED_CHUNK as usize),
        }
    }

    /// Seal chunk `index` of `chunks` in place (`buffer` holds its plaintext) and append
    /// its tag.
    fn seal_chunk(&self, index: u64, last: bool, buffer: &mut Vec<u8>) -> io::Result<()> {
        let tag = self
            .cipher
            .encrypt_in_place_detached(&chunk_nonce(index, last).into(), &[], buffer)
            .map_err(|_| io::Error::other("cannot encrypt a chunk"))?;
        buffer.extend_from_slice(&tag);
        Ok(())
    }
}

/// STREAM's nonce of chunk `index`: its number (big-endian, 11 bytes) and whether it is the
/// last chunk.
fn chunk_nonce(index: u64, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

/// The payload's size after its nonce (chunks and their tags) for `plain` bytes: an empty
/// file is one empty final chunk.
fn payload_len(plain: u64) -> u64 {
    plain + chunks(plain) * TAG
}

fn chunks(plain: u64) -> u64 {
    plain.div_ceil(CHUNK).max(1)
}

/// The header up to and including `---`, which the MAC covers.
fn header_without_mac(stanzas: &[Stanza]) -> Vec<u8> {
    let mut out = b"age-encryption.org/v1\n".to_vec();
    for stanza in stanzas {
        out.extend_from_slice(b"->");
        for word in std::iter::once(&stanza.tag).chain(&stanza.args) {
            out.push(b' ');
            out.extend_from_slice(word.as_bytes());
        }
        out.push(b'\n');
        // Lines of 64 columns, the last always shorter (an empty one if need be).
        let body = STANDARD_NO_PAD.encode(&stanza.body);
        let mut rest = body.as_bytes();
        loop {
            let line = &rest[..rest.len().min(64)];
            out.extend_from_slice(line);
            out.push(b'\n');
            rest = &rest[line.len()..];
            if line.len() < 64 {
                break;
            }
        }
    }
    out.extend_from_slice(b"---");
    out
}

/// Something read at offsets, like a file: a local file as it is, or its ciphertext.
pub trait ReadAt {
    /// Up to `buf.len()` bytes at `offset`; 0 at the end.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// A local file as it is.
pub struct PlainReader<'a>(pub &'a std::fs::File);

impl ReadAt for PlainReader<'_> {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
}

/// The ciphertext of a local file, sealed a chunk at a time as it is read.
pub struct SealedReader<'a> {
    sealer: &'a Sealer,
    file: &'a std::fs::File,
    plain: u64,
    /// The chunk `buffer` holds, sealed.
    chunk: Option<u64>,
    buffer: Vec<u8>,
}

impl ReadAt for SealedReader<'_> {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let prefix = &self.sealer.prefix;
        if let Some(head) = usize::try_from(offset)
            .ok()
            .and_then(|o| prefix.get(o..))
            .filter(|head| !head.is_empty())
        {
            let n = head.len().min(buf.len());
            buf[..n].copy_from_slice(&head[..n]);
            return Ok(n);
        }
        // The prefix holds the header and the payload's nonce.
        let at = offset - prefix.len() as u64;
        let index = at / SEALED_CHUNK;
        let within = (at % SEALED_CHUNK) as usize;
        let count = chunks(self.plain);
        if index >= count {
            return Ok(0);
        }
        if self.chunk != Some(index) {
            self.chunk = None;
            let start = index * CHUNK;
            let len = (self.plain - start).min(CHUNK) as usize;
            self.buffer.resize(len, 0);
            let mut filled = 0;
            while filled < len {
                let n = self
                    .file
                    .read_at(&mut self.buffer[filled..], start + filled as u64)?;
                if n == 0 {
                    // Shorter than when it was listed: the caller's checks say so.
                    return Ok(0);
                }
                filled += n;
            }
            self.sealer
                .seal_chunk(index, index + 1 == count, &mut self.buffer)?;
            self.chunk = Some(index);
        }
        let sealed = self.buffer.get(within..).unwrap_or_default();
        let n = sealed.len().min(buf.len());
        buf[..n].copy_from_slice(&sealed[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn identity() -> age::x25519::Identity {
        age::x25519::Identity::generate()
    }

    fn seal_all(recipients: &Recipients, plain: &[u8], step: usize) -> Vec<u8> {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(plain).expect("write");
        let sealer = Sealer::new(recipients).expect("sealer");
        let total = sealer.sealed_len(plain.len() as u64);
        let mut reader = sealer.reader(&file, plain.len() as u64);
        let mut out = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            let n = reader.read_at(&mut buf, out.len() as u64).expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out.len() as u64, total, "sealed_len agrees with the bytes");
        out
    }

    fn age_decrypt(identity: &age::x25519::Identity, sealed: &[u8]) -> Vec<u8> {
        let decryptor = age::Decryptor::new(sealed).expect("a header age reads");
        let mut reader = decryptor
            .decrypt(std::iter::once(identity as &dyn age::Identity))
            .expect("the identity opens it");
        let mut plain = Vec::new();
        reader
            .read_to_end(&mut plain)
            .expect("every chunk authenticates");
        plain
    }

    #[test]
    fn the_age_crate_decrypts_what_is_sealed_at_every_chunk_boundary() {
        let identity = identity();
        let recipients = Recipients::parse(&identity.to_public().to_string(), None).expect("ok");
        let sizes = [
            0,
            1,
            CHUNK as usize - 1,
            CHUNK as usize,
            CHUNK as usize + 1,
            3 * CHUNK as usize,
            3 * CHUNK as usize + 17,
        ];
        for size in sizes {
            let plain: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            for step in [1000, 128 * 1024, 70_001] {
                let sealed = seal_all(&recipients, &plain, step);
                assert_eq!(
                    age_decrypt(&identity, &sealed),
                    plain,
                    "{size} bytes, {step}"
                );
            }
        }
    }

    #[test]
    fn reads_at_any_offset_give_the_same_ciphertext() {
        let identity = identity();
        let recipients = Recipients::parse(&identity.to_public().to_string(), None).expect("ok");
        let plain: Vec<u8> = (0..300_000).map(|i| (i % 253) as u8).collect();
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&plain).expect("write");
        let sealer = Sealer::new(&recipients).expect("sealer");
        let whole = {
            let mut reader = sealer.reader(&file, plain.len() as u64);
            let mut out = vec![0u8; sealer.sealed_len(plain.len() as u64) as usize];
            let mut at = 0;
            while at < out.len() {
                let n = reader.read_at(&mut out[at..], at as u64).expect("read");
                assert!(n > 0, "no end before sealed_len");
                at += n;
            }
            out
        };
        // Another reader, backwards from odd offsets (a stream taking over a lane).
        let mut reader = sealer.reader(&file, plain.len() as u64);
        for offset in [250_000usize, 131_000, 65_552, 65_551, 200, 3] {
            let mut buf = [0u8; 100];
            let n = reader.read_at(&mut buf, offset as u64).expect("read");
            assert!(n > 0);
            assert_eq!(&buf[..n], &whole[offset..offset + n], "at {offset}");
        }
        assert_eq!(age_decrypt(&identity, &whole), plain);
    }

    #[test]
    fn a_new_sealer_is_a_new_key() {
        let identity = identity();
        let recipients = Recipients::parse(&identity.to_public().to_string(), None).expect("ok");
        let a = seal_all(&recipients, b"same", 4096);
        let b = seal_all(&recipients, b"same", 4096);
        assert_ne!(a, b);
    }

    #[test]
    fn a_stanza_body_of_48_bytes_ends_with_an_empty_line() {
        let stanza = Stanza {
            tag: "X".into(),
            args: vec!["a".into()],
            body: vec![0u8; 48],
        };
        let text = String::from_utf8(header_without_mac(&[stanza])).expect("text");
        assert_eq!(
            text,
            format!("age-encryption.org/v1\n-> X a\n{}\n\n---", "A".repeat(64))
        );
    }
}
