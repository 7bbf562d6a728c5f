//! Telling the monitoring an operator already runs how each night went: a Prometheus
//! textfile (`metrics_dir`) and healthchecks-style pings (`ping_url`). `status --nagios` is
//! the third way, read from the record on demand (commands/status.rs).
//!
//! Nothing here fails a run: a metrics file that cannot be written or a ping that does not
//! arrive is a warning in syslog.

pub mod metrics;
pub mod ping;

use crate::config::{self, BackupConfig};
use crate::state::RunRecord;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

pub struct Monitoring {
    metrics_dir: Option<PathBuf>,
    pinger: Option<ping::Pinger>,
    /// The start ping, sent in the background so a slow monitoring server never delays the
    /// backup; joined before the final ping so the two arrive in order.
    starting: Option<JoinHandle<()>>,
}

impl Monitoring {
    pub fn from_config(backup: &BackupConfig) -> Monitoring {
        Monitoring::new(backup.metrics_dir.clone(), backup.ping_url.clone())
    }

    /// For a run refused before its INI loaded: the two settings read leniently.
    pub fn from_ini_hint(ini: &Path) -> Monitoring {
        let metrics_dir = config::backup_setting_hint(ini, "metrics_dir")
            .map(|dir| config::resolve_against(ini, &dir));
        let ping_url =
            config::backup_setting_hint(ini, "ping_url").filter(|url| ping::check_url(url).is_ok());
        Monitoring::new(metrics_dir, ping_url)
    }

    fn new(metrics_dir: Option<PathBuf>, ping_url: Option<String>) -> Monitoring {
        Monitoring {
            metrics_dir,
            pinger: ping_url.map(ping::Pinger::new),
            starting: None,
        }
    }

    /// `URL/start`, in the background.
    pub fn run_started(&mut self) {
        let Some(pinger) = self.pinger.clone() else {
            return;
        };
        // Builder: a thread that cannot be made (the account at its process limit) must not
        // abort the run (panic = abort); the start ping is then left out.
        let spawned = std::thread::Builder::new()
            .name("ping-start".into())
            .spawn(move || {
                if let Err(why) = pinger.send(ping::Event::Start, None) {
                    warn_unreachable(&pinger, ping::Event::Start, &why);
                }
            });
        match spawned {
            Ok(handle) => self.starting = Some(handle),
            Err(err) => log::warn!("start ping left out: cannot start a thread: {err}"),
        }
    }

    /// The record to the metrics file alone (after `verify`: no run, no ping).
    pub fn metrics_only(&self, record: &RunRecord) {
        self.write_metrics(record);
    }

    fn write_metrics(&self, record: &RunRecord) {
        if let Some(dir) = &self.metrics_dir {
            match metrics::write(dir, &metrics::render(record)) {
                Ok(()) => log::debug!("metrics written to {}", dir.join(metrics::FILE).display()),
                Err(err) => log::warn!(
                    "cannot write the metrics file {}: {err} (metrics_dir must be a folder the \
                     job's account can write, node_exporter's --collector.textfile.directory)",
                    dir.join(metrics::FILE).display()
                ),
            }
        }
    }

    /// The run's record (already carried over and saved) to the metrics file, then the
    /// success or failure ping with `summary` and the run's latest log lines.
    pub fn run_finished(mut self, record: &RunRecord, summary: &str) {
        self.write_metrics(record);
        if let Some(starting) = self.starting.take() {
            let _ = starting.join();
        }
        let Some(pinger) = &self.pinger else { return };
        let event = if record.exit_code == 0 {
            ping::Event::Success
        } else {
            ping::Event::Fail
        };
        let body = ping::body(summary, &crate::logging::recent_lines());
        match pinger.send(event, Some(&body)) {
            Ok(()) => log::debug!("pinged {} ({event:?})", pinger.host()),
            Err(why) => warn_unreachable(pinger, event, &why),
        }
    }
}

fn warn_unreachable(pinger: &ping::Pinger, event: ping::Event, why: &str) {
    let what = match event {
        ping::Event::Start => "start",
        ping::Event::Success => "success",
        ping::Event::Fail => "failure",
    };
    log::warn!(
        "cannot ping {} ({what}): {why}; the backup itself is not affected, but the \
         monitoring there may report this node as down (ping_url in the INI)",
        pinger.host()
    );
}
