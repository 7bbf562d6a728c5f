//! Is a `.tgz` a whole archive? Its gzip members are inflated with their CRC-32 and length
//! checked, and the tar inside is walked header by header (each header's checksum, each
//! member's size) to its end-of-archive block. The check is fed the file's bytes in order
//! by whoever already reads them (the upload's hashing thread, a read-back), so a
//! multi-GB archive is never read twice for it; nothing inflated is kept.
//!
//! `cvpi backup` exiting 0 proves little: a full disk or a killed `tar` can leave an archive
//! that gzip closed cleanly but that ends inside a member, or a gzip stream cut short.

use flate2::{Decompress, FlushDecompress, Status};

const BLOCK: usize = 512;
/// A gzip header with every optional field at its longest is under 200 KiB; more is not
/// a header we should keep buffering.
const LONGEST_HEADER: usize = 256 * 1024;
const INFLATE_BUFFER: usize = 256 * 1024;

/// What a whole archive held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Files, folders and links in the tar (not its long-name and pax records).
    pub members: u64,
    /// The tar's length once inflated.
    pub inflated: u64,
}

/// Why an archive is not whole, for an operator: where it breaks and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage(pub String);

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

enum Stage {
    /// Collecting a member's gzip header.
    Header(Vec<u8>),
    Deflate,
    /// Collecting a member's 8-byte trailer.
    Trailer(Vec<u8>),
    /// A member ended; another may follow (as `cat a.gz b.gz` makes), or zeros.
    Between,
    TrailingZeros,
}

/// The check, fed in order with `update` and judged by `finish`.
pub struct ArchiveCheck {
    stage: Stage,
    inflate: Decompress,
    crc: crc32fast::Hasher,
    /// Inflated bytes of the current member (ISIZE is this modulo 2^32).
    member_out: u64,
    members_seen: u64,
    /// Compressed bytes consumed so far, for "breaks at byte N".
    offset: u64,
    out: Vec<u8>,
    tar: TarWalk,
    damage: Option<Damage>,
}

impl Default for ArchiveCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl ArchiveCheck {
    pub fn new() -> ArchiveCheck {
        ArchiveCheck {
            stage: Stage::Header(Vec::new()),
            inflate: Decompress::new(false),
            crc: crc32fast::Hasher::new(),
            member_out: 0,
            members_seen: 0,
            offset: 0,
            out: vec![0; INFLATE_BUFFER],
            tar: TarWalk::default(),
            damage: None,
        }
    }

    /// The damage found so far: a reader may stop early.
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// The next bytes of the file.
    pub fn update(&mut self, input: &[u8]) {
        if self.damage.is_some() {
            return;
        }
        if let Err(damage) = self.consume(input) {
            self.damage = Some(damage);
        }
    }

    /// The verdict once every byte has been given.
    pub fn finish(mut self) -> Result<Summary, Damage> {
        if let Some(damage) = self.damage.take() {
            return Err(damage);
        }
        let at = self.offset;
        match &self.stage {
            Stage::Between | Stage::TrailingZeros => {}
            Stage::Header(bytes) if bytes.is_empty() && self.members_seen == 0 => {
                return Err(Damage("the file is empty".into()))
            }
            Stage::Header(_) => {
                return Err(Damage(format!(
                    "the file ends at byte {at} inside a gzip header: it was cut short"
                )))
            }
            Stage::Deflate => {
                return Err(Damage(format!(
                    "the gzip data ends at byte {at} before its end: the archive was cut short \
                     (written incompletely)"
                )))
            }
            Stage::Trailer(_) => {
                return Err(Damage(format!(
                    "the file ends at byte {at} inside the gzip trailer: it was cut short"
                )))
            }
        }
        self.tar.finish()
    }

    fn consume(&mut self, mut input: &[u8]) -> Result<(), Damage> {
        while !input.is_empty() {
            match &mut self.stage {
                Stage::Header(bytes) => {
                    let take = input.len().min(LONGEST_HEADER + 1 - bytes.len());
                    let before = bytes.len();
                    bytes.extend_from_slice(&input[..take]);
                    match gzip_header_len(bytes, self.offset - before as u64)? {
                        Some(len) => {
                            let used = len - before;
                            self.offset += used as u64;
                            input = &input[used..];
                            self.stage = Stage::Deflate;
                            self.inflate.reset(false);
                            self.crc = crc32fast::Hasher::new();
                            self.member_out = 0;
                        }
                        None if bytes.len() > LONGEST_HEADER => {
                            return Err(Damage(format!(
                                "the gzip header at byte {} is longer than any real one",
                                self.offset - before as u64
                            )))
                        }
                        None => {
                            self.offset += take as u64;
                            input = &input[take..];
                        }
                    }
                }
                Stage::Deflate => {
                    let used = self.inflate_some(input)?;
                    input = &input[used..];
                }
                Stage::Trailer(bytes) => {
                    let take = input.len().min(8 - bytes.len());
                    bytes.extend_from_slice(&input[..take]);
                    self.offset += take as u64;
                    input = &input[take..];
                    if bytes.len() == 8 {
                        let trailer = std::mem::take(bytes);
                        self.check_trailer(&trailer)?;
                        self.members_seen += 1;
                        self.stage = Stage::Between;
                    }
                }
                Stage::Between if input[0] == 0 => self.stage = Stage::TrailingZeros,
                Stage::Between => self.stage = Stage::Header(Vec::new()),
                Stage::TrailingZeros => match input.iter().position(|&b| b != 0) {
                    Some(at) => {
                        return Err(Damage(format!(
                            "bytes that are no gzip data follow the archive's end at byte {}",
                            self.offset + at as u64
                        )))
                    }
                    None => {
                        self.offset += input.len() as u64;
                        input = &[];
                    }
                },
            }
        }
        Ok(())
    }

    /// Inflate from `input` until it is used up or the member's deflate stream ends;
    /// returns how many bytes of it were used.
    fn inflate_some(&mut self, input: &[u8]) -> Result<usize, Damage> {
        let mut used = 0usize;
        loop {
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress(&input[used..], &mut self.out, FlushDecompress::None)
                .map_err(|err| {
                    Damage(format!(
                        "the gzip data is corrupt near byte {} ({err})",
                        self.offset
                    ))
                })?;
            let consumed = (self.inflate.total_in() - in_before) as usize;
            let produced = (self.inflate.total_out() - out_before) as usize;
            used += consumed;
            self.offset += consumed as u64;
            let inflated = &self.out[..produced];
            self.crc.update(inflated);
            self.member_out += produced as u64;
            self.tar.feed(inflated)?;
            match status {
                Status::StreamEnd => {
                    self.stage = Stage::Trailer(Vec::with_capacity(8));
                    return Ok(used);
                }
                _ if consumed == 0 && produced == 0 => return Ok(used),
                _ if used == input.len() && produced < self.out.len() => return Ok(used),
                _ => {}
            }
        }
    }

    fn check_trailer(&mut self, trailer: &[u8]) -> Result<(), Damage> {
        let stored_crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let stored_len = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
        let crc = std::mem::take(&mut self.crc).finalize();
        if crc != stored_crc {
            return Err(Damage(format!(
                "the inflated data fails its gzip CRC-32 (computed {crc:08x}, stored \
                 {stored_crc:08x}): bytes of the archive were changed"
            )));
        }
        if self.member_out as u32 != stored_len {
            return Err(Damage(format!(
                "the inflated data is {} bytes but the gzip trailer says {stored_len} (modulo \
                 2^32): bytes of the archive were changed",
                self.member_out
            )));
        }
        Ok(())
    }
}

/// The length of the gzip header at the start of `bytes` (RFC 1952), None while incomplete.
fn gzip_header_len(bytes: &[u8], at: u64) -> Result<Option<usize>, Damage> {
    let bad = |what: &str| Err(Damage(format!("{what} at byte {at}")));
    if bytes.len() < 10 {
        let magic = [0x1f, 0x8b, 8];
        let n = bytes.len().min(3);
        if bytes[..n] != magic[..n] {
            return bad("no gzip header (the file is not gzip-compressed)");
        }
        return Ok(None);
    }
    if bytes[..2] != [0x1f, 0x8b] {
        return bad("no gzip header (the file is not gzip-compressed)");
    }
    if bytes[2] != 8 {
        return bad("a gzip header with an unknown compression method");
    }
    let flags = bytes[3];
    if flags & 0xe0 != 0 {
        return bad("a gzip header with reserved flags set");
    }
    let mut len = 10usize;
    if flags & 0x04 != 0 {
        let Some(xlen) = bytes.get(len..len + 2) else {
            return Ok(None);
        };
        len += 2 + usize::from(u16::from_le_bytes([xlen[0], xlen[1]]));
        if bytes.len() < len {
            return Ok(None);
        }
    }
    for flag in [0x08, 0x10] {
        if flags & flag != 0 {
            match bytes[len.min(bytes.len())..].iter().position(|&b| b == 0) {
                Some(end) => len += end + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 0x02 != 0 {
        let Some(stored) = bytes.get(len..len + 2) else {
            return Ok(None);
        };
        let computed = (crc32fast::hash(&bytes[..len]) & 0xffff) as u16;
        if computed != u16::from_le_bytes([stored[0], stored[1]]) {
            return bad("a gzip header that fails its CRC");
        }
        len += 2;
    }
    Ok(Some(len))
}

/// The tar inside, walked as it is inflated: 512-byte headers, each followed by its
/// member's data rounded up to whole blocks, up to a zero block.
#[derive(Default)]
struct TarWalk {
    block: Vec<u8>,
    /// Data bytes of the current member still to pass over.
    skip: u64,
    /// A pax extended header's records being read (its data), and once read, the records
    /// that apply to the next member (its `size=` overrides the header's: Python's tarfile
    /// writes members over 8 GiB so).
    pax: Option<Vec<u8>>,
    pax_left: u64,
    pending_pax: Option<Vec<u8>>,
    /// The member being passed over, for messages.
    current: String,
    members: u64,
    ended: bool,
    total: u64,
}

impl TarWalk {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), Damage> {
        self.total += data.len() as u64;
        while !data.is_empty() {
            if self.ended {
                // After the end-of-archive block tar writes only zeros (to a whole record).
                if data.iter().any(|&b| b != 0) {
                    return Err(Damage(
                        "data follows the tar stream's end-of-archive block: the tar stream is \
                         broken"
                            .into(),
                    ));
                }
                return Ok(());
            }
            if self.skip > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                if let Some(records) = self.pax.as_mut() {
                    let keep = n.min(usize::try_from(self.pax_left).unwrap_or(usize::MAX));
                    records.extend_from_slice(&data[..keep]);
                    self.pax_left -= keep as u64;
                    if self.pax_left == 0 {
                        self.pending_pax = self.pax.take();
                    }
                }
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(BLOCK - self.block.len());
            self.block.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.block.len() == BLOCK {
                let header = std::mem::take(&mut self.block);
                let at = self.total - data.len() as u64 - BLOCK as u64;
                self.header(&header, at)?;
            }
        }
        Ok(())
    }

    fn header(&mut self, header: &[u8], at: u64) -> Result<(), Damage> {
        if header.iter().all(|&b| b == 0) {
            self.ended = true;
            return Ok(());
        }
        let name = member_name(header);
        let stored = parse_octal(&header[148..156]).ok_or_else(|| {
            Damage(format!(
                "the tar header at inflated byte {at} (after {}) has no valid checksum: the \
                 tar stream is broken",
                self.describe_previous()
            ))
        })?;
        let unsigned: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        let signed: i64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
            return Err(Damage(format!(
                "the tar header of {name} at inflated byte {at} fails its checksum: the tar \
                 stream is broken"
            )));
        }
        let mut size = parse_size(&header[124..136]).ok_or_else(|| {
            Damage(format!(
                "the tar header of {name} at inflated byte {at} has no valid size"
            ))
        })?;
        let kind = header[156];
        if let Some(records) = self.pending_pax.take() {
            if let Some(pax_size) = pax_size(&records) {
                size = pax_size;
            }
        }
        // A pax header's records (bounded: real ones are a few hundred bytes) are read for
        // the member after it.
        if kind == b'x' && size > 0 && size <= 1 << 20 {
            self.pax = Some(Vec::new());
            self.pax_left = size;
        }
        // Links, devices, folders and FIFOs carry no data whatever their size field says.
        if !matches!(kind, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            self.skip = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        }
        // Long names and pax records describe the next member; they are not members.
        if !matches!(kind, b'L' | b'K' | b'x' | b'g') {
            self.members += 1;
            self.current = name;
        }
        Ok(())
    }

    fn describe_previous(&self) -> String {
        match self.members {
            0 => "the start".into(),
            _ => format!("member {}", self.current),
        }
    }

    fn finish(self) -> Result<Summary, Damage> {
        if self.skip > 0 || !self.block.is_empty() {
            let inside = match self.skip {
                0 => "a tar header".to_string(),
                _ => format!(
                    "member {} ({} bytes of it missing)",
                    self.current, self.skip
                ),
            };
            return Err(Damage(format!(
                "the tar stream ends inside {inside}: tar stopped before the archive was \
                 complete"
            )));
        }
        if !self.ended {
            return Err(Damage(format!(
                "the tar stream has no end-of-archive block (after {}): tar stopped before \
                 the archive was complete",
                self.describe_previous()
            )));
        }
        if self.members == 0 {
            return Err(Damage("the archive holds no files".into()));
        }
        Ok(Summary {
            members: self.members,
            inflated: self.total,
        })
    }
}

/// The `size=` record of pax extended header records (`LEN size=N\n` ...), if any.
fn pax_size(records: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(records);
    text.lines().find_map(|line| {
        let (_, record) = line.split_once(' ')?;
        record.strip_prefix("size=")?.parse().ok()
    })
}

fn member_name(header: &[u8]) -> String {
    let field = |bytes: &[u8]| {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    };
    let name = field(&header[0..100]);
    let prefix = if &header[257..262] == b"ustar" {
        field(&header[345..500])
    } else {
        String::new()
    };
    let whole = match prefix.is_empty() {
        true => name,
        false => format!("{prefix}/{name}"),
    };
    crate::error::printable(&whole)
}

/// An octal field: digits between optional spaces and NULs.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = field
        .split(|&b| b == 0)
        .next()
        .unwrap_or(field)
        .trim_ascii();
    if text.is_empty() {
        return Some(0);
    }
    text.iter().try_fold(0u64, |value, &digit| match digit {
        b'0'..=b'7' => value.checked_mul(8)?.checked_add(u64::from(digit - b'0')),
        _ => None,
    })
}

/// The size field: octal, or GNU's base-256 (high bit of the first byte set) for sizes
/// past 8 GiB.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 == 0 {
        return parse_octal(field);
    }
    if field[0] & 0x40 != 0 {
        return None; // negative
    }
    let mut value = u64::from(field[0] & 0x3f);
    for &byte in &field[1..] {
        value = value.checked_mul(256)?.checked_add(u64::from(byte))?;
    }
    Some(value)
}

/// Pieces in flight to the checking thread: enough that neither side waits on the other
/// for long, few enough to stay a few MB.
const PIECES: usize = 4;

/// The check on a thread of its own, fed pieces in order: the hashing and the inflating
/// then use two cores (on a fast link one core does not do both at link speed). When no
/// thread can be made (the account at its process limit), the check runs inline.
pub struct BackgroundCheck {
    inner: Background,
}

enum Background {
    Inline(Box<ArchiveCheck>),
    Thread {
        full: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
        empty: std::sync::mpsc::Receiver<Vec<u8>>,
        damaged: std::sync::Arc<std::sync::atomic::AtomicBool>,
        worker: std::thread::JoinHandle<Result<Summary, Damage>>,
    },
}

impl BackgroundCheck {
    pub fn start() -> BackgroundCheck {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::mpsc::sync_channel;
        let (full, pieces) = sync_channel::<Vec<u8>>(PIECES);
        let (give_back, empty) = sync_channel::<Vec<u8>>(PIECES);
        for _ in 0..PIECES {
            let _ = give_back.send(Vec::new());
        }
        let damaged = std::sync::Arc::new(AtomicBool::new(false));
        let flag = damaged.clone();
        let spawned = std::thread::Builder::new()
            .name("archive-check".into())
            .spawn(move || {
                let mut check = ArchiveCheck::new();
                for mut piece in pieces {
                    check.update(&piece);
                    if check.damage().is_some() {
                        flag.store(true, Ordering::Relaxed);
                    }
                    piece.clear();
                    let _ = give_back.send(piece);
                }
                check.finish()
            });
        BackgroundCheck {
            inner: match spawned {
                Ok(worker) => Background::Thread {
                    full: Some(full),
                    empty,
                    damaged,
                    worker,
                },
                Err(_) => Background::Inline(Box::default()),
            },
        }
    }

    /// The next bytes (copied into a piece for the thread; waits while it is behind).
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.inner {
            Background::Inline(check) => check.update(bytes),
            Background::Thread { full, empty, .. } => {
                // A thread that ended (it cannot, but for its panic) leaves its verdict to
                // `finish`.
                let (Some(sender), Ok(mut piece)) = (full.as_ref(), empty.recv()) else {
                    return;
                };
                piece.extend_from_slice(bytes);
                let _ = sender.send(piece);
            }
        }
    }

    /// Damage found so far (the reader may stop early and ask `finish` what it is).
    pub fn damaged(&self) -> bool {
        match &self.inner {
            Background::Inline(check) => check.damage().is_some(),
            Background::Thread { damaged, .. } => {
                damaged.load(std::sync::atomic::Ordering::Relaxed)
            }
        }
    }

    pub fn finish(self) -> Result<Summary, Damage> {
        match self.inner {
            Background::Inline(check) => check.finish(),
            Background::Thread {
                mut full, worker, ..
            } => {
                drop(full.take());
                worker
                    .join()
                    .unwrap_or_else(|_| Err(Damage("the archive check crashed".into())))
            }
        }
    }
}

/// A local file checked whole, read once in order (for an archive no upload read tonight).
pub fn check_file(file: &std::fs::File) -> std::io::Result<Result<Summary, Damage>> {
    use std::io::Read;
    let mut check = BackgroundCheck::start();
    let mut buf = vec![0u8; 1 << 20];
    let mut reader = file;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 || check.damaged() {
            break;
        }
        check.update(&buf[..n]);
    }
    Ok(check.finish())
}

/// A tar of `files` as GNU tar writes one (a ustar header each, two zero blocks): the
/// archives of the tests' fixtures and of the fuzzer, which the check must take as whole.
#[doc(hidden)]
pub fn ustar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut header = [0u8; BLOCK];
        let name = &name.as_bytes()[..name.len().min(100)];
        header[..name.len()].copy_from_slice(name);
        header[100..107].copy_from_slice(b"0000644");
        header[108..115].copy_from_slice(b"0000000");
        header[116..123].copy_from_slice(b"0000000");
        header[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        header[136..147].copy_from_slice(b"00000000000");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

/// Is this name an archive the check applies to (a data or images `.tgz`)?
pub fn is_archive(name: &str) -> bool {
    name.ends_with(".tgz")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use proptest::prelude::*;
    use std::io::Write;

    pub(crate) fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        ustar(files)
    }

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(bytes).expect("gzip in memory");
        encoder.finish().expect("gzip in memory")
    }

    fn check(bytes: &[u8], piece: usize) -> Result<Summary, Damage> {
        let mut check = ArchiveCheck::new();
        for chunk in bytes.chunks(piece.max(1)) {
            check.update(chunk);
        }
        check.finish()
    }

    fn sample() -> (Vec<u8>, Vec<u8>) {
        static SAMPLE: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
        SAMPLE.get_or_init(make_sample).clone()
    }

    fn make_sample() -> (Vec<u8>, Vec<u8>) {
        let text: Vec<u8> = (0..40_000u32)
            .flat_map(|i| format!("row {i} of the database dump\n").into_bytes())
            .collect();
        let noise: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let tar = tar_of(&[("cvp/db.sql", &text), ("cvp/noise.bin", &noise)]);
        let tgz = gzip(&tar);
        (tar, tgz)
    }

    #[test]
    fn a_whole_archive_passes_in_any_pieces() {
        let (tar, tgz) = sample();
        for piece in [1, 7, 512, 4096, 1 << 20] {
            assert_eq!(
                check(&tgz, piece),
                Ok(Summary {
                    members: 2,
                    inflated: tar.len() as u64
                }),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn the_background_check_says_what_the_inline_one_says() {
        let (_, tgz) = sample();
        let mut cut = tgz.clone();
        cut.truncate(tgz.len() / 2);
        for bytes in [tgz, cut] {
            let mut background = BackgroundCheck::start();
            for chunk in bytes.chunks(1000) {
                background.update(chunk);
            }
            assert_eq!(background.finish(), check(&bytes, 1000));
        }
    }

    #[test]
    fn two_gzip_members_and_trailing_zeros_pass() {
        let (tar, _) = sample();
        let (first, second) = tar.split_at(tar.len() / 2);
        let mut both = gzip(first);
        both.extend(gzip(second));
        assert!(check(&both, 999).is_ok());
        both.extend([0u8; 100]);
        assert!(check(&both, 999).is_ok());
        both.push(1);
        assert!(check(&both, 999).is_err());
    }

    #[test]
    fn each_kind_of_damage_is_named() {
        let (tar, tgz) = sample();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "empty"),
            ("random bytes", vec![7u8; 5000], "not gzip"),
            (
                "cut in the data",
                tgz[..tgz.len() / 2].to_vec(),
                "cut short",
            ),
            (
                "cut in the trailer",
                tgz[..tgz.len() - 3].to_vec(),
                "trailer",
            ),
            ("cut in the header", tgz[..5].to_vec(), "gzip header"),
            (
                "a tar cut by a killed tar, gzip closed",
                gzip(&tar[..tar.len() / 2]),
                "tar stream ends inside",
            ),
            (
                "no end-of-archive block",
                gzip(&tar[..tar.len() - 2 * BLOCK]),
                "no end-of-archive",
            ),
            ("no files", gzip(&[0u8; 2 * BLOCK]), "holds no files"),
            ("not a tar", gzip(&[b'x'; 4 * BLOCK]), "checksum"),
        ];
        for (what, bytes, says) in cases {
            match check(&bytes, 4096) {
                Ok(summary) => panic!("{what}: passed as {summary:?}"),
                Err(Damage(message)) => {
                    assert!(message.contains(says), "{what}: {message}")
                }
            }
        }
    }

    #[test]
    fn a_changed_byte_in_the_gzip_data_fails_the_crc_or_the_inflation() {
        let (_, tgz) = sample();
        for at in [10, 100, tgz.len() / 2, tgz.len() - 8, tgz.len() - 1] {
            let mut bad = tgz.clone();
            bad[at] ^= 0x55;
            assert!(check(&bad, 65536).is_err(), "byte {at} changed passed");
        }
    }

    #[test]
    fn a_pax_size_record_sets_the_next_member_s_size() {
        // A member whose ustar size field says 0 and whose pax record says its real size,
        // as Python's tarfile writes a member past 8 GiB.
        let data = vec![7u8; 1500];
        let record = format!("{} size=1500\n", "size=1500\n".len() + 3);
        let mut tar = tar_of(&[("PaxHeader", record.as_bytes()), ("cvp/big", &[])]);
        tar[156] = b'x';
        // The pax header's checksum, after changing its type.
        tar[148..156].copy_from_slice(b"        ");
        let sum: u32 = tar[..BLOCK].iter().map(|&b| u32::from(b)).sum();
        tar[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        // The member's data in place, before the end blocks.
        let end = tar.len() - 2 * BLOCK;
        let mut with_data = tar[..end].to_vec();
        with_data.extend_from_slice(&data);
        with_data.resize(with_data.len().div_ceil(BLOCK) * BLOCK + 2 * BLOCK, 0);
        assert_eq!(check(&gzip(&with_data), 999).map(|s| s.members), Ok(1));
        // Without the record the same bytes are a broken tar.
        let mut without = with_data.clone();
        without[..BLOCK].copy_from_slice(&tar_of(&[("PaxHeader", record.as_bytes())])[..BLOCK]);
        assert!(check(&gzip(&without), 999).is_err());
    }

    #[test]
    fn only_zeros_may_follow_the_end_of_the_archive() {
        let (tar, _) = sample();
        let mut after = tar.clone();
        after.extend_from_slice(&[0u8; 2 * BLOCK]);
        assert!(check(&gzip(&after), 4096).is_ok());
        after.extend_from_slice(b"more");
        let damage = check(&gzip(&after), 4096).expect_err("data after the end");
        assert!(damage.0.contains("follows"), "{damage}");
    }

    #[test]
    fn base256_and_octal_sizes() {
        assert_eq!(parse_octal(b"00000001750\0"), Some(1000));
        assert_eq!(parse_octal(b"  1750 \0\0\0\0\0"), Some(1000));
        assert_eq!(parse_octal(b"0000000175x\0"), None);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[7] = 2; // 2 << 32 = 8 GiB
        assert_eq!(parse_size(&big), Some(8 << 30));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bytes never panic, and are never taken for an archive unless a
        /// reference decoder agrees they are whole gzip.
        #[test]
        fn arbitrary_bytes_are_judged_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), piece in 1usize..600) {
            if check(&bytes, piece).is_ok() {
                let mut out = Vec::new();
                let decoded = std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&bytes[..]), &mut out);
                prop_assert!(decoded.is_ok());
            }
        }

        /// Any cut short of the whole file, and any changed byte past the gzip header's
        /// unchecked fields, is damage unless the content is still exactly the original
        /// (a flip in the padding bits of the last deflate byte changes nothing).
        #[test]
        fn cuts_and_flips_are_never_taken_for_good(cut in 0.0f64..1.0, at in 0.0f64..1.0, bit in 0u8..8) {
            let (tar, tgz) = sample();
            let cut = (cut * tgz.len() as f64) as usize;
            prop_assert!(check(&tgz[..cut], 4096).is_err());
            let mut flipped = tgz.clone();
            let at = 10 + (at * (tgz.len() - 10) as f64) as usize;
            flipped[at.min(tgz.len() - 1)] ^= 1 << bit;
            if check(&flipped, 4096).is_ok() {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&flipped[..]), &mut out).expect("reference decoder");
                prop_assert_eq!(out, tar);
            }
        }
    }
}
