//! Room on the node for tonight's backup. /data also holds CVP's own database: a backup that
//! fills it harms the node it protects. So before a backup starts, the free space in
//! `backup_dir` must reach a floor (`min_free_space`): by default the size of the last set
//! plus a margin, since the next backup is about as big as the last one.

use std::fmt;
use std::path::Path;

/// `min_free_space`: `auto`, or a number of bytes (0: no floor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorSetting {
    /// The last set's size plus `AUTO_MARGIN_PERCENT`.
    Auto,
    Bytes(u64),
}

impl fmt::Display for FloorSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FloorSetting::Auto => f.write_str("auto"),
            FloorSetting::Bytes(bytes) => f.write_str(&human(*bytes)),
        }
    }
}

/// What `auto` adds to the last set's size: backups grow as the network does.
pub const AUTO_MARGIN_PERCENT: u64 = 10;

/// `auto`, or a size: a whole number with an optional unit K, M, G or T (powers of 1024;
/// `KB`, `MiB`, ... also read), `0` for no floor.
pub fn parse_setting(text: &str) -> Result<FloorSetting, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("auto") {
        return Ok(FloorSetting::Auto);
    }
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad_size(text)),
    };
    let number: u64 = number.parse().map_err(|_| bad_size(text))?;
    number
        .checked_mul(1u64 << shift)
        .map(FloorSetting::Bytes)
        .ok_or_else(|| bad_size(text))
}

fn bad_size(text: &str) -> String {
    format!("`{text}` is neither `auto` nor a size such as 20G, 500M or 0 (no floor)")
}

/// The room tonight's backup has, as measured before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub free: u64,
    pub floor: u64,
    /// How the floor was chosen, for messages.
    pub why: String,
}

impl Room {
    pub fn enough(&self) -> bool {
        self.free >= self.floor
    }

    /// "77086 MB free, floor 4631 MB (min_free_space = auto: the last set, 4210 MB, plus 10 %)".
    pub fn describe(&self) -> String {
        format!(
            "{} free, floor {} ({})",
            human(self.free),
            human(self.floor),
            self.why
        )
    }
}

/// The floor for `setting` given the size of the last set on the node (data file and the
/// images file it needs), and whether `free` bytes reach it. Pure.
pub fn assess(setting: FloorSetting, free: u64, last_set: Option<u64>) -> Room {
    let (floor, why) = match (setting, last_set) {
        (FloorSetting::Bytes(0), _) => (0, "min_free_space = 0: no floor".to_string()),
        (FloorSetting::Bytes(bytes), _) => (bytes, format!("min_free_space = {}", human(bytes))),
        (FloorSetting::Auto, Some(set)) => (
            set.saturating_add(set / 100 * AUTO_MARGIN_PERCENT),
            format!(
                "min_free_space = auto: the last set, {}, plus {AUTO_MARGIN_PERCENT} %",
                human(set)
            ),
        ),
        (FloorSetting::Auto, None) => (
            0,
            "min_free_space = auto: no set on the node yet to size it from".to_string(),
        ),
    };
    Room { free, floor, why }
}

/// Bytes free for an unprivileged user in the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is plain data; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// A size as people read it at a glance: 999 B, 330.0 kB, 4.2 GB (powers of 1000, as `df -H`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        let table = [
            ("auto", Some(FloorSetting::Auto)),
            (" AUTO ", Some(FloorSetting::Auto)),
            ("0", Some(FloorSetting::Bytes(0))),
            ("1048576", Some(FloorSetting::Bytes(1 << 20))),
            ("20G", Some(FloorSetting::Bytes(20 << 30))),
            ("20 GB", Some(FloorSetting::Bytes(20 << 30))),
            ("500m", Some(FloorSetting::Bytes(500 << 20))),
            ("3MiB", Some(FloorSetting::Bytes(3 << 20))),
            ("1T", Some(FloorSetting::Bytes(1 << 40))),
            ("2K", Some(FloorSetting::Bytes(2048))),
            ("", None),
            ("G", None),
            ("-1G", None),
            ("1.5G", None),
            ("10%", None),
            ("99999999999T", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_setting(text).ok(), want, "{text:?}");
        }
        assert!(parse_setting("10%")
            .unwrap_err()
            .contains("such as 20G, 500M or 0"));
    }

    #[test]
    fn the_floor_is_the_last_set_plus_a_margin_or_what_is_set() {
        // (setting, free, last set, floor, enough)
        let table = [
            (FloorSetting::Auto, 10_000, Some(4_000), 4_400, true),
            (FloorSetting::Auto, 4_399, Some(4_000), 4_400, false),
            (FloorSetting::Auto, 4_400, Some(4_000), 4_400, true),
            (FloorSetting::Auto, 0, None, 0, true),
            (FloorSetting::Bytes(0), 0, Some(4_000), 0, true),
            (FloorSetting::Bytes(5_000), 4_999, None, 5_000, false),
            (FloorSetting::Bytes(5_000), 9_000, Some(8_000), 5_000, true),
            (FloorSetting::Auto, u64::MAX, Some(u64::MAX), u64::MAX, true),
        ];
        for (setting, free, last, floor, enough) in table {
            let room = assess(setting, free, last);
            assert_eq!(
                (room.floor, room.enough()),
                (floor, enough),
                "{setting:?} {free} {last:?}"
            );
        }
        let room = assess(FloorSetting::Auto, 77_086_000_000, Some(4_210_000_000));
        assert_eq!(
            room.describe(),
            "77.1 GB free, floor 4.6 GB (min_free_space = auto: the last set, 4.2 GB, plus 10 %)"
        );
    }

    #[test]
    fn sizes_read_like_df() {
        let table = [
            (0, "0 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (330_000, "330.0 kB"),
            (1_234_567, "1.2 MB"),
            (5_000_000_000, "5.0 GB"),
        ];
        for (bytes, text) in table {
            assert_eq!(human(bytes), text);
        }
    }
}
