//! `status`: how the last run went, from its record, as a ready-made monitoring check.

use super::human_size;
use crate::config;
use crate::error::{Error, Result};
use crate::exit_codes::ExitCode;
use crate::state::{self, RunRecord};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

pub struct StatusOptions {
    pub ini: PathBuf,
    pub json: bool,
    pub max_age: Duration,
    pub state_dir: Option<PathBuf>,
}

/// Where the record is: `--state-dir`, else the INI's `state_dir` (read leniently: a
/// monitoring user may not be able to read the INI at all), else the default.
fn state_dir(options: &StatusOptions) -> PathBuf {
    options
        .state_dir
        .clone()
        .or_else(|| config::state_dir_hint(&options.ini))
        .unwrap_or_else(|| PathBuf::from(config::default_value("state_dir").unwrap_or_default()))
}

/// A state folder that is not there: a mistyped `--state-dir`, or a job that never ran.
fn missing_folder(options: &StatusOptions, state_dir: &std::path::Path) -> Option<String> {
    if state_dir.is_dir() {
        return None;
    }
    Some(match &options.state_dir {
        Some(_) => format!(
            "--state-dir {} does not exist: give the job's state_dir (the INI's; \
             /var/lib/cvp-backup-copy by default)",
            state_dir.display()
        ),
        None => format!(
            "state_dir {} does not exist: the job has never run with this INI",
            state_dir.display()
        ),
    })
}

/// The verdict on a record, as a pure function of it and the time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub healthy: bool,
    /// Seconds since the run finished.
    pub age_seconds: Option<i64>,
    pub problem: Option<String>,
    #[serde(skip)]
    pub code: ExitCode,
}

pub fn judge(
    record: Option<&RunRecord>,
    now: chrono::DateTime<chrono::FixedOffset>,
    max_age: Duration,
) -> Verdict {
    let Some(record) = record else {
        return Verdict {
            healthy: false,
            age_seconds: None,
            problem: Some("no run has been recorded yet".into()),
            code: ExitCode::Stale,
        };
    };
    let age = chrono::DateTime::parse_from_rfc3339(&record.finished)
        .ok()
        .map(|finished| (now - finished).num_seconds());
    let too_old = match age {
        Some(age) => age > max_age.as_secs() as i64,
        None => true,
    };
    let failed = ExitCode::from_code(record.exit_code).filter(|c| *c != ExitCode::Success);
    let (code, problem) =
        match (failed, too_old) {
            (Some(code), _) => (
                code,
                Some(format!(
                    "the last run failed with exit code {}: {}",
                    record.exit_code,
                    record
                        .errors
                        .first()
                        .map(String::as_str)
                        .unwrap_or("see syslog")
                )),
            ),
            (None, true) => (
                ExitCode::Stale,
                Some(format!(
                "the last run finished {} ago, more than --max-age {}: is the cron job running?",
                age.map(|a| humantime::format_duration(Duration::from_secs(a.max(0) as u64))
                    .to_string())
                    .unwrap_or_else(|| "at an unknown time".into()),
                humantime::format_duration(max_age)
            )),
            ),
            (None, false) if record.exit_code != 0 => (
                ExitCode::Copy,
                Some(format!(
                    "the last run ended with an unknown exit code {}",
                    record.exit_code
                )),
            ),
            (None, false) => (ExitCode::Success, None),
        };
    Verdict {
        healthy: problem.is_none(),
        age_seconds: age,
        problem,
        code,
    }
}

/// The states of the monitoring-plugins format, as exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginState {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

/// `status --nagios`: the record judged as one monitoring-plugins line.
pub fn nagios(options: &StatusOptions, limits: Limits) -> (PluginState, String) {
    let state_dir = state_dir(options);
    if let Some(missing) = missing_folder(options, &state_dir) {
        return (
            PluginState::Unknown,
            format!("CVP_BACKUP_COPY UNKNOWN - {}", one_line(&missing)),
        );
    }
    match state::load(&state_dir) {
        Ok(record) => plugin_line(
            record.as_ref(),
            chrono::Local::now().fixed_offset(),
            limits,
            &state_dir,
        ),
        Err(err) => (
            PluginState::Unknown,
            format!(
                "CVP_BACKUP_COPY UNKNOWN - cannot read the run record in {}: {}",
                state_dir.display(),
                one_line(&err.to_string())
            ),
        ),
    }
}

/// `status --nagios`'s ages: of the last good copy beyond which it is WARNING and CRITICAL,
/// and of the last read-back (`verify --read-data`) beyond which it is WARNING.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub warning: Duration,
    pub critical: Duration,
    pub read_back: Duration,
}

/// The line and state for a record (pure). `limits`: the ages of the last good copy beyond
/// which it is WARNING and CRITICAL. With several destinations, the worst one's line, naming
/// it (all of them when every one is OK).
pub fn plugin_line(
    record: Option<&RunRecord>,
    now: chrono::DateTime<chrono::FixedOffset>,
    limits: Limits,
    state_dir: &std::path::Path,
) -> (PluginState, String) {
    let Some(record) = record.filter(|r| !r.extra.is_empty()) else {
        return plugin_line_one(record, now, limits, state_dir);
    };
    let rank = |state: PluginState| match state {
        PluginState::Ok => 0,
        PluginState::Warning => 1,
        PluginState::Unknown => 2,
        PluginState::Critical => 3,
    };
    let lines: Vec<(String, PluginState, String)> = record
        .per_destination()
        .iter()
        .map(|part| {
            let name = part
                .destination_name
                .clone()
                .unwrap_or_else(|| "main".into());
            let (state, line) = plugin_line_one(Some(part), now, limits, state_dir);
            (name, state, line)
        })
        .collect();
    let Some((name, state, line)) = lines.iter().max_by_key(|(_, state, _)| rank(*state)) else {
        return plugin_line_one(Some(record), now, limits, state_dir);
    };
    let prefix_end = line.find(" - ").map_or(0, |i| i + 3);
    let (head, rest) = line.split_at(prefix_end);
    if *state == PluginState::Ok {
        let names: Vec<&str> = lines.iter().map(|(n, _, _)| n.as_str()).collect();
        return (
            *state,
            format!(
                "{head}{} destinations ({}); main: {rest}",
                lines.len(),
                names.join(", ")
            ),
        );
    }
    (*state, format!("{head}destination {name}: {rest}"))
}

fn plugin_line_one(
    record: Option<&RunRecord>,
    now: chrono::DateTime<chrono::FixedOffset>,
    limits: Limits,
    state_dir: &std::path::Path,
) -> (PluginState, String) {
    let (warning, critical) = (limits.warning, limits.critical);
    let Some(record) = record else {
        return (
            PluginState::Unknown,
            format!(
                "CVP_BACKUP_COPY UNKNOWN - no run recorded in {} yet",
                state_dir.display()
            ),
        );
    };
    let age_of = |time: &str| {
        chrono::DateTime::parse_from_rfc3339(time)
            .ok()
            .map(|t| (now - t).num_seconds())
    };
    let Some(age) = age_of(&record.finished) else {
        return (
            PluginState::Unknown,
            "CVP_BACKUP_COPY UNKNOWN - the run record has no valid finish time".into(),
        );
    };
    // Beyond clock jitter: a clock set back since, and every age measured from it is wrong.
    if age < -300 {
        return (
            PluginState::Unknown,
            format!(
                "CVP_BACKUP_COPY UNKNOWN - the last run finished {} in the future of this \
                 node's clock: was the clock changed?",
                short_age(-age)
            ),
        );
    }
    let age = age.max(0);
    // The age that matters is that of the last good copy, which a failed night keeps.
    let good_age = match record.exit_code {
        0 => Some(age),
        // A success stamped in the future (the clock was ahead then) tells no age.
        _ => record
            .last_success
            .as_deref()
            .and_then(age_of)
            .filter(|a| *a >= -300)
            .map(|a| a.max(0)),
    };
    let perfdata = format!(
        "age={};{};{};0 bytes={}B duration={:.0}s",
        good_age.map_or_else(|| "U".to_string(), |a| format!("{a}s")),
        warning.as_secs(),
        critical.as_secs(),
        record.bytes_uploaded,
        record.seconds
    );
    let (state, text) = if record.exit_code != 0 {
        (
            PluginState::Critical,
            format!(
                "last run failed {} ago (exit {}): {}; {}",
                short_age(age),
                record.exit_code,
                record
                    .errors
                    .first()
                    .map(|e| one_line(e))
                    .unwrap_or_else(|| "see syslog".into()),
                match good_age {
                    Some(good) => format!("last good copy {} ago", short_age(good)),
                    None => "no good copy recorded".into(),
                }
            ),
        )
    } else {
        let set = record
            .restore_set
            .as_deref()
            .and_then(crate::names::BackupName::parse)
            .map(|name| name.stamp.to_string())
            .or_else(|| record.restore_set.as_deref().map(one_line))
            .unwrap_or_else(|| "none".into());
        let host = record
            .destination
            .split_once('@')
            .map_or(record.destination.as_str(), |(_, rest)| rest);
        let host = one_line(host.split(':').next().unwrap_or(host));
        let mut text = format!("last good copy {} ago, set {set} on {host}", short_age(age));
        let mut state = if age > critical.as_secs() as i64 {
            PluginState::Critical
        } else if age > warning.as_secs() as i64 {
            PluginState::Warning
        } else {
            PluginState::Ok
        };
        if let Some(problem) = read_back_problem(record, &age_of, limits.read_back) {
            if state == PluginState::Ok {
                state = PluginState::Warning;
            }
            text = format!("{text}; {problem}");
        }
        (state, text)
    };
    let label = match state {
        PluginState::Ok => "OK",
        PluginState::Warning => "WARNING",
        PluginState::Critical => "CRITICAL",
        PluginState::Unknown => "UNKNOWN",
    };
    (
        state,
        format!("CVP_BACKUP_COPY {label} - {text} | {perfdata}"),
    )
}

/// What is wrong with the read-backs (`verify`), if anything: the last one failed, or the
/// last whole one is older than `limit`, or there has been none while a set has been on the
/// server longer than that.
fn read_back_problem(
    record: &RunRecord,
    age_of: &dyn Fn(&str) -> Option<i64>,
    limit: Duration,
) -> Option<String> {
    let limit = limit.as_secs() as i64;
    if let Some(last) = &record.last_verify {
        if last.exit_code != 0 {
            let age = age_of(&last.finished).unwrap_or(0).max(0);
            return Some(format!(
                "the last verify ({} ago) failed: {}",
                short_age(age),
                last.problems
                    .first()
                    .map(|p| one_line(p))
                    .unwrap_or_else(|| format!("exit {}", last.exit_code))
            ));
        }
    }
    match record.last_read_back.as_deref().and_then(age_of) {
        Some(age) if age > limit => Some(format!(
            "the last read-back (verify --read-data) was {} ago",
            short_age(age)
        )),
        Some(_) => None,
        None => {
            let on_server = record
                .recovery_point_verified
                .as_deref()
                .and_then(age_of)
                .unwrap_or(0);
            (on_server > limit).then(|| {
                "no read-back (verify --read-data) recorded: is the weekly cron line there?"
                    .to_string()
            })
        }
    }
}

/// The last `verify` and the last whole read-back of a destination, in a line.
fn describe_verify(record: &RunRecord) -> String {
    let read_back = match &record.last_read_back {
        Some(when) => format!("last read back whole {when}"),
        None => "never read back (verify --read-data)".into(),
    };
    match &record.last_verify {
        None => read_back,
        Some(last) => {
            let how = if last.read_data {
                "read back"
            } else {
                "listed"
            };
            let verdict = match last.exit_code {
                0 => "whole".to_string(),
                code => format!(
                    "FAILED (exit {code}): {}",
                    last.problems
                        .first()
                        .map(|p| one_line(p))
                        .unwrap_or_default()
                ),
            };
            format!(
                "{} {how} {}: {verdict}; {read_back}",
                last.sets.join(", "),
                last.finished
            )
        }
    }
}

/// 45s, 12m, 5h, 3d: as people read an age at a glance.
fn short_age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Text for one plugin line: no line breaks, no `|` (it starts the performance data).
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace('|', "/")
}

#[derive(Serialize)]
struct StatusJson<'a> {
    #[serde(flatten)]
    verdict: &'a Verdict,
    last_run: Option<&'a RunRecord>,
}

/// Prints the status; the exit code says whether monitoring should worry.
pub fn status(options: &StatusOptions) -> Result<ExitCode> {
    let state_dir = state_dir(options);
    let path = state::record_path(&state_dir);
    let record = state::load(&state_dir).map_err(|err| {
        Error::config(format!(
            "cannot read the run record {}: {err} (a monitoring user needs to be in the job \
             account's group to read it)",
            path.display()
        ))
    })?;
    let mut verdict = judge(
        record.as_ref(),
        chrono::Local::now().fixed_offset(),
        options.max_age,
    );
    if let Some(missing) = missing_folder(options, &state_dir) {
        verdict.problem = Some(missing);
    }
    if options.json {
        let json = serde_json::to_string_pretty(&StatusJson {
            verdict: &verdict,
            last_run: record.as_ref(),
        })
        .map_err(|err| Error::copy(format!("cannot write JSON: {err}")))?;
        println!("{json}");
    } else {
        // The record is in a folder the job's account writes: its text never drives the terminal.
        print!(
            "{}",
            crate::error::printable(&render(record.as_ref(), &verdict, &path))
        );
    }
    Ok(verdict.code)
}

fn render(record: Option<&RunRecord>, verdict: &Verdict, path: &std::path::Path) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let headline = match &verdict.problem {
        None => "OK".to_string(),
        Some(problem) => format!("PROBLEM: {problem}"),
    };
    let _ = writeln!(out, "{headline}");
    let Some(record) = record else {
        let _ = writeln!(out, "  (no record at {})", path.display());
        return out;
    };
    let _ = writeln!(
        out,
        "last run:    {} to {}",
        record.started, record.finished
    );
    let _ = writeln!(out, "exit code:   {}", record.exit_code);
    let _ = writeln!(
        out,
        "destination: {}{}",
        record.destination,
        match record.destination_exit_code {
            Some(code) if !record.extra.is_empty() => format!(" (main, exit {code})"),
            _ => String::new(),
        }
    );
    if record.exit_code != 0 {
        // What a failed night leaves on the server: the last good set, if any.
        let _ = writeln!(
            out,
            "last good:   {}",
            match (&record.last_success, &record.recovery_point) {
                (Some(when), Some(set)) => format!("{when}, set {set}"),
                (None, Some(set)) => format!("set {set}"),
                _ => "none recorded for this destination".into(),
            }
        );
    }
    let backup = match (record.backup_ran, record.backup_succeeded) {
        (true, Some(true)) => "succeeded",
        (true, _) => "FAILED",
        (false, _) if record.no_backup => "not run (--no-backup)",
        (false, Some(false)) => "NOT STARTED (see the error below)",
        (false, _) => "not started: the run ended before it (see the error below)",
    };
    let _ = writeln!(out, "CVP backup:  {backup}");
    if let (Some(free), Some(floor)) = (record.free_bytes, record.free_floor_bytes) {
        let _ = writeln!(
            out,
            "free space:  {} in backup_dir as the run began (floor {}{})",
            human_size(free),
            human_size(floor),
            if free < floor { ": too little" } else { "" }
        );
    }
    // The copy's own time: not the backup's, nor the waits between retries.
    let copy_seconds = record.copy_seconds.unwrap_or(record.seconds);
    let waits = match record.retry_wait_seconds {
        Some(waited) if waited >= 0.5 => {
            format!(", and {waited:.0} s waiting between retries")
        }
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "copied:      {} in {copy_seconds:.0} s ({:.1} MB/s{waits})",
        human_size(record.bytes_uploaded),
        record.megabytes_per_second
    );
    for file in &record.files {
        let how = if file.uploaded {
            "uploaded"
        } else {
            "already on the server"
        };
        let _ = writeln!(
            out,
            "  {:<34} {:>9}  {how}",
            file.name,
            human_size(file.bytes)
        );
    }
    let _ = writeln!(
        out,
        "pruned:      {} local, {} remote",
        record.pruned_local, record.pruned_remote
    );
    for error in &record.errors {
        let _ = writeln!(out, "error:       {error}");
    }
    let _ = writeln!(out, "verified:    {}", describe_verify(record));
    if let Some(log) = &record.log_file {
        let _ = writeln!(out, "whole log:   {log}");
    }
    for extra in &record.extra {
        let name = extra.destination_name.as_deref().unwrap_or("?");
        let code = extra.destination_exit_code.unwrap_or(extra.exit_code);
        let _ = writeln!(
            out,
            "destination {name}: {} (exit {code})",
            extra.destination
        );
        let _ = writeln!(
            out,
            "  recovery point: {}",
            match (&extra.recovery_point, &extra.recovery_point_verified) {
                (Some(set), Some(when)) => format!("{set}, verified {when}"),
                (Some(set), None) => set.clone(),
                _ => "none recorded".into(),
            }
        );
        let _ = writeln!(
            out,
            "  copied:         {} in {:.0} s; pruned {} remote{}",
            human_size(extra.bytes_uploaded),
            extra.copy_seconds.unwrap_or(0.0),
            extra.pruned_remote,
            extra
                .remote_sets
                .map(|n| format!("; {n} sets there"))
                .unwrap_or_default()
        );
        for error in &extra.errors {
            let _ = writeln!(out, "  error:          {error}");
        }
        let _ = writeln!(out, "  verified:       {}", describe_verify(extra));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_line_follows_the_monitoring_plugins_format() {
        let now = at("2026-11-26T07:00:00+00:00");
        let limits = Limits {
            warning: Duration::from_secs(26 * 3600),
            critical: Duration::from_secs(50 * 3600),
            read_back: Duration::from_secs(8 * 86400),
        };
        let dir = std::path::Path::new("/var/lib/cvp-backup-copy");
        let good = |finished: &str, exit_code: i32| RunRecord {
            finished: finished.into(),
            exit_code,
            destination: "backup@backup.example.com:/srv/cvp".into(),
            restore_set: Some("cvp.20261126020000.tgz".into()),
            bytes_uploaded: 123,
            seconds: 42.4,
            errors: if exit_code == 0 {
                vec![]
            } else {
                vec!["the server | went\naway".into()]
            },
            ..RunRecord::default()
        };
        let table = [
            (
                Some(good("2026-11-26T02:00:00+00:00", 0)),
                PluginState::Ok,
                "CVP_BACKUP_COPY OK - last good copy 5h ago, set 20261126020000 on \
                 backup.example.com | age=18000s;93600;180000;0 bytes=123B duration=42s",
            ),
            (
                Some(good("2026-11-25T02:00:00+00:00", 0)),
                PluginState::Warning,
                "CVP_BACKUP_COPY WARNING - last good copy 29h ago, set 20261126020000 on \
                 backup.example.com | age=104400s;93600;180000;0 bytes=123B duration=42s",
            ),
            (
                Some(good("2026-11-23T02:00:00+00:00", 0)),
                PluginState::Critical,
                "CVP_BACKUP_COPY CRITICAL - last good copy 3d ago, set 20261126020000 on \
                 backup.example.com | age=277200s;93600;180000;0 bytes=123B duration=42s",
            ),
            (
                Some(good("2026-11-26T06:59:30+00:00", 5)),
                PluginState::Critical,
                "CVP_BACKUP_COPY CRITICAL - last run failed 30s ago (exit 5): the server / \
                 went away; no good copy recorded | age=U;93600;180000;0 bytes=123B \
                 duration=42s",
            ),
            // A failed night keeps the age of the last good copy, in the text and perfdata.
            (
                Some(RunRecord {
                    last_success: Some("2026-11-25T02:00:00+00:00".into()),
                    ..good("2026-11-26T02:30:00+00:00", 4)
                }),
                PluginState::Critical,
                "CVP_BACKUP_COPY CRITICAL - last run failed 4h ago (exit 4): the server / \
                 went away; last good copy 29h ago | age=104400s;93600;180000;0 bytes=123B \
                 duration=42s",
            ),
            // A success stamped by a clock that was ahead tells no age.
            (
                Some(RunRecord {
                    last_success: Some("2026-11-28T02:00:00+00:00".into()),
                    ..good("2026-11-26T06:59:30+00:00", 4)
                }),
                PluginState::Critical,
                "CVP_BACKUP_COPY CRITICAL - last run failed 30s ago (exit 4): the server / \
                 went away; no good copy recorded | age=U;93600;180000;0 bytes=123B \
                 duration=42s",
            ),
            (
                None,
                PluginState::Unknown,
                "CVP_BACKUP_COPY UNKNOWN - no run recorded in /var/lib/cvp-backup-copy yet",
            ),
            (
                Some(good("2026-11-27T07:00:00+00:00", 0)),
                PluginState::Unknown,
                "CVP_BACKUP_COPY UNKNOWN - the last run finished 24h in the future of this \
                 node's clock: was the clock changed?",
            ),
            (
                Some(good("2026-11-26T07:01:00+00:00", 0)),
                PluginState::Ok,
                "CVP_BACKUP_COPY OK - last good copy 0s ago, set 20261126020000 on \
                 backup.example.com | age=0s;93600;180000;0 bytes=123B duration=42s",
            ),
            (
                Some(good("yesterday", 0)),
                PluginState::Unknown,
                "CVP_BACKUP_COPY UNKNOWN - the run record has no valid finish time",
            ),
        ];
        for (record, state, line) in table {
            assert_eq!(
                plugin_line(record.as_ref(), now.fixed_offset(), limits, dir),
                (state, line.to_string())
            );
        }
    }

    fn at(text: &str) -> chrono::DateTime<chrono::FixedOffset> {
        chrono::DateTime::parse_from_rfc3339(text).expect("time")
    }

    fn record(exit_code: i32, finished: &str) -> RunRecord {
        RunRecord {
            exit_code,
            finished: finished.into(),
            errors: vec!["the server refused the data".into()],
            ..RunRecord::default()
        }
    }

    #[test]
    fn verdicts() {
        let now = at("2024-01-02T12:00:00+00:00");
        let day = Duration::from_secs(26 * 3600);
        // (record, healthy, exit code)
        let table = [
            (
                Some(record(0, "2024-01-02T02:10:00+00:00")),
                true,
                ExitCode::Success,
            ),
            (
                Some(record(0, "2023-12-31T02:10:00+00:00")),
                false,
                ExitCode::Stale,
            ),
            (
                Some(record(5, "2024-01-02T02:10:00+00:00")),
                false,
                ExitCode::Copy,
            ),
            (
                Some(record(1, "2023-12-01T02:10:00+00:00")),
                false,
                ExitCode::BackupFailed,
            ),
            (Some(record(0, "not a time")), false, ExitCode::Stale),
            (
                Some(record(42, "2024-01-02T02:10:00+00:00")),
                false,
                ExitCode::Copy,
            ),
            (None, false, ExitCode::Stale),
        ];
        for (record, healthy, code) in table {
            let verdict = judge(record.as_ref(), now, day);
            assert_eq!(
                (verdict.healthy, verdict.code),
                (healthy, code),
                "{record:?}"
            );
        }
        let failed = judge(Some(&record(5, "2024-01-02T02:10:00+00:00")), now, day);
        assert!(failed
            .problem
            .is_some_and(|p| p.contains("exit code 5") && p.contains("refused the data")));
        let fresh = judge(Some(&record(0, "2024-01-02T02:10:00+00:00")), now, day);
        assert_eq!(fresh.age_seconds, Some(35400));
    }
}
