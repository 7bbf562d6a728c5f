//! Prometheus textfile collector: each run leaves `cvp_backup_copy.prom` in node_exporter's
//! `--collector.textfile.directory`, rendered from the run's record alone.

use crate::names::BackupName;
use crate::safe_fs::{Dir, Mode};
use crate::state::RunRecord;
use std::fmt::Write as _;
use std::path::Path;

/// The file node_exporter reads (it skips the `.NAME.random.tmp` a write goes through).
pub const FILE: &str = "cvp_backup_copy.prom";

/// The record in the text exposition format (pure): one sample per destination, each
/// labelled with it, under one HELP and TYPE per metric.
pub fn render(record: &RunRecord) -> String {
    let mut metrics: Vec<(String, String, Vec<String>)> = Vec::new();
    for part in record.per_destination() {
        let label = format!("{{destination=\"{}\"}}", escape(&part.destination));
        samples(&part, &mut |name: &str, help: &str, value: String| {
            let sample = format!("cvp_backup_copy_{name}{label} {value}");
            match metrics.iter_mut().find(|(n, _, _)| n == name) {
                Some((_, _, samples)) => samples.push(sample),
                None => metrics.push((name.to_string(), help.to_string(), vec![sample])),
            }
        });
    }
    let mut text = String::new();
    for (name, help, samples) in metrics {
        let _ = writeln!(text, "# HELP cvp_backup_copy_{name} {help}");
        let _ = writeln!(text, "# TYPE cvp_backup_copy_{name} gauge");
        for sample in samples {
            let _ = writeln!(text, "{sample}");
        }
    }
    text
}

/// One destination's samples (its own exit code; the node's gauges come with `main`).
fn samples(record: &RunRecord, gauge: &mut dyn FnMut(&str, &str, String)) {
    gauge(
        "last_run_timestamp_seconds",
        "When the last run finished (Unix time).",
        unix_time(&record.finished).unwrap_or(0).to_string(),
    );
    gauge(
        "last_success_timestamp_seconds",
        "When the last run that ended with exit code 0 finished (Unix time; 0: none yet).",
        record
            .last_success
            .as_deref()
            .and_then(unix_time)
            .unwrap_or(0)
            .to_string(),
    );
    gauge(
        "last_exit_code",
        "Exit code of the last run for this destination (0 success; README, Exit codes).",
        record.exit_code.to_string(),
    );
    gauge(
        "last_run_duration_seconds",
        "How long the last run took, backup included.",
        format!("{:.3}", record.seconds),
    );
    gauge(
        "uploaded_bytes",
        "Bytes the last run uploaded (0 when the set was already on the server).",
        record.bytes_uploaded.to_string(),
    );
    gauge(
        "newest_remote_set_timestamp_seconds",
        "The recovery point: CVP's stamp of the newest set verified complete on the backup \
         server, or when it was verified if that is earlier (Unix time; 0: none yet).",
        recovery_point_time(record).unwrap_or(0).to_string(),
    );
    if let Some(count) = record.local_sets {
        gauge(
            "local_sets",
            "Data backups on this node after the last run.",
            count.to_string(),
        );
    }
    if let Some(count) = record.remote_sets {
        gauge(
            "remote_sets",
            "Data backups on the backup server after the last run.",
            count.to_string(),
        );
    }
    if let Some(immutable) = record.immutable {
        gauge(
            "destination_immutable",
            "1 when the destination refused, at the last run, to let the node's own \
             credentials destroy a test file (overwrite, remove, chmod; S3: delete a version): \
             an intruder on this node cannot destroy the copies there. 0: it can.",
            u8::from(immutable).to_string(),
        );
    }
    gauge(
        "last_verify_timestamp_seconds",
        "When `verify` last checked the sets on this destination (Unix time; 0: never).",
        record
            .last_verify
            .as_ref()
            .and_then(|v| unix_time(&v.finished))
            .unwrap_or(0)
            .to_string(),
    );
    gauge(
        "last_verify_ok",
        "1 when the last `verify` found every set it checked whole there; 0 when it found a \
         member damaged or missing, could not reach it, or has not run yet.",
        u8::from(
            record
                .last_verify
                .as_ref()
                .is_some_and(|v| v.exit_code == 0),
        )
        .to_string(),
    );
    gauge(
        "last_read_back_timestamp_seconds",
        "When a `verify --read-data` last read every byte of the sets back whole from this \
         destination (Unix time; 0: never). The RPM's cron.d runs one every Sunday.",
        record
            .last_read_back
            .as_deref()
            .and_then(unix_time)
            .unwrap_or(0)
            .to_string(),
    );
    if let Some(free) = record.free_bytes {
        gauge(
            "backup_dir_free_bytes",
            "Free space in backup_dir as the last run began (before its backup, if any).",
            free.to_string(),
        );
    }
    if let Some(floor) = record.free_floor_bytes {
        gauge(
            "backup_dir_free_floor_bytes",
            "The free space backup_dir must have for a backup to start (min_free_space); \
             below it the backup is refused, exit 1.",
            floor.to_string(),
        );
    }
}

/// Replace `DIR/cvp_backup_copy.prom` atomically, readable by node_exporter (0644).
pub fn write(dir: &Path, text: &str) -> std::io::Result<()> {
    Dir::open(dir)?.replace(FILE, text.as_bytes(), Mode::Force(0o644))
}

fn unix_time(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp())
}

/// When the recovery point's data was made: its stamp, but never later than when it was
/// verified (a stamp from a clock once set ahead would keep an age alert quiet for months).
fn recovery_point_time(record: &RunRecord) -> Option<i64> {
    let stamp = record.recovery_point.as_deref().and_then(stamp_time);
    let verified = record
        .recovery_point_verified
        .as_deref()
        .and_then(unix_time);
    match (stamp, verified) {
        (Some(stamp), Some(verified)) => Some(stamp.min(verified)),
        (stamp, _) => stamp,
    }
}

/// A data file's stamp (the node's local time when CVP made it) as Unix time.
fn stamp_time(data_file: &str) -> Option<i64> {
    let naive = BackupName::parse(data_file)?.stamp.to_datetime()?;
    naive
        .and_local_timezone(chrono::Local)
        .earliest()
        .map(|t| t.timestamp())
}

/// A label value: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(exit_code: i32) -> RunRecord {
        RunRecord {
            finished: "2026-11-26T02:10:00+00:00".into(),
            exit_code,
            destination: "backup@nas:/srv/cvp \"a\"\\b".into(),
            bytes_uploaded: 1234,
            seconds: 61.5,
            last_success: Some("2026-11-25T02:09:00+00:00".into()),
            recovery_point: Some("cvp.20261125020000.tgz".into()),
            local_sets: Some(3),
            remote_sets: None,
            free_bytes: Some(77_086_000_000),
            free_floor_bytes: Some(4_631_000_000),
            ..RunRecord::default()
        }
    }

    fn value(text: &str, metric: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("cvp_backup_copy_{metric}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    }

    #[test]
    fn every_sample_has_help_type_and_the_escaped_destination() {
        let text = render(&sample(4));
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), 12, "{text}");
        for line in samples {
            let name = line.split('{').next().unwrap_or_default();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{name}");
            assert!(
                line.contains(r#"{destination="backup@nas:/srv/cvp \"a\"\\b"} "#),
                "{line}"
            );
        }
        assert_eq!(
            value(&text, "last_run_timestamp_seconds").as_deref(),
            Some("1795659000")
        );
        assert_eq!(
            value(&text, "last_success_timestamp_seconds").as_deref(),
            Some("1795572540")
        );
        assert_eq!(value(&text, "last_exit_code").as_deref(), Some("4"));
        assert_eq!(
            value(&text, "last_run_duration_seconds").as_deref(),
            Some("61.500")
        );
        assert_eq!(value(&text, "uploaded_bytes").as_deref(), Some("1234"));
        assert_eq!(value(&text, "local_sets").as_deref(), Some("3"));
        assert_eq!(value(&text, "remote_sets"), None, "unknown: left out");
        assert_eq!(
            value(&text, "backup_dir_free_bytes").as_deref(),
            Some("77086000000")
        );
        assert_eq!(
            value(&text, "backup_dir_free_floor_bytes").as_deref(),
            Some("4631000000")
        );
        let expected = chrono::NaiveDate::from_ymd_opt(2026, 11, 25)
            .and_then(|d| d.and_hms_opt(2, 0, 0))
            .and_then(|t| t.and_local_timezone(chrono::Local).earliest())
            .map(|t| t.timestamp().to_string());
        assert_eq!(
            value(&text, "newest_remote_set_timestamp_seconds"),
            expected
        );
    }

    #[test]
    fn a_stamp_from_the_future_counts_no_later_than_its_verification() {
        let record = RunRecord {
            recovery_point: Some("cvp.20271126020000.tgz".into()),
            recovery_point_verified: Some("2026-11-26T02:10:00+00:00".into()),
            ..sample(0)
        };
        assert_eq!(
            value(&render(&record), "newest_remote_set_timestamp_seconds").as_deref(),
            Some("1795659000")
        );
    }

    #[test]
    fn a_node_that_never_succeeded_reports_zero_times() {
        let record = RunRecord {
            finished: "not a time".into(),
            exit_code: 3,
            ..RunRecord::default()
        };
        let text = render(&record);
        for metric in [
            "last_run_timestamp_seconds",
            "last_success_timestamp_seconds",
            "newest_remote_set_timestamp_seconds",
        ] {
            assert_eq!(value(&text, metric).as_deref(), Some("0"), "{metric}");
        }
        assert!(text.contains(r#"{destination=""} 3"#), "{text}");
    }
}
