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
    let verdict = judge(
        record.as_ref(),
        chrono::Local::now().fixed_offset(),
        options.max_age,
    );
    if options.json {
        let json = serde_json::to_string_pretty(&StatusJson {
            verdict: &verdict,
            last_run: record.as_ref(),
        })
        .map_err(|err| Error::copy(format!("cannot write JSON: {err}")))?;
        println!("{json}");
    } else {
        print!("{}", render(record.as_ref(), &verdict, &path));
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
    let _ = writeln!(out, "destination: {}", record.destination);
    let backup = match (record.backup_ran, record.backup_succeeded) {
        (false, _) => "not run (--no-backup)",
        (true, Some(true)) => "succeeded",
        (true, _) => "FAILED",
    };
    let _ = writeln!(out, "CVP backup:  {backup}");
    let _ = writeln!(
        out,
        "copied:      {} in {:.0} s ({:.1} MB/s)",
        human_size(record.bytes_uploaded),
        record.seconds,
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
