//! An S3-compatible bucket: one HTTP client whose connections are reused and remade by
//! itself, parts of a large file in flight side by side (`multipart`).

use super::{Copied, Destination, Upload};
use crate::config::{ServerConfig, Streams};
use crate::error::Result;
use crate::multipart;
use crate::progress;
use crate::remote::s3::S3Remote;
use crate::remote::Remote;
use crate::run::LocalFile;
use crate::secret::Secret;
use crate::transfer;
use std::time::Instant;

/// Parts in flight at least: an object store spreads parts over its servers, and one
/// request at a time leaves a round trip idle after each part.
const MIN_PARTS_IN_FLIGHT: usize = 4;

pub struct S3Destination {
    server: ServerConfig,
    remote: S3Remote,
    parallel: bool,
    /// Parts in flight for a large file, and why.
    streams: Option<(usize, String)>,
}

impl S3Destination {
    pub fn new(server: &ServerConfig, secret: &Secret, parallel: bool) -> Result<S3Destination> {
        Ok(S3Destination {
            server: server.clone(),
            remote: S3Remote::new(server, secret)?,
            parallel,
            streams: None,
        })
    }
}

/// Parts in flight for `streams` on S3: as for SFTP streams, and never fewer than 4 for
/// `auto`.
pub fn planned_parts(setting: Streams, remote: &S3Remote) -> (usize, String) {
    match setting {
        Streams::Auto => {
            let (count, why) = transfer::auto_streams(remote.measure_round_trip());
            if count < MIN_PARTS_IN_FLIGHT {
                (
                    MIN_PARTS_IN_FLIGHT,
                    format!("{why}; at least {MIN_PARTS_IN_FLIGHT} parts in flight on S3"),
                )
            } else {
                (count, why)
            }
        }
        Streams::Fixed(n) => (n, format!("streams = {n}")),
    }
}

impl Destination for S3Destination {
    fn server(&self) -> &ServerConfig {
        &self.server
    }

    fn remote(&mut self) -> Result<&mut dyn Remote> {
        Ok(&mut self.remote)
    }

    fn plan_streams(&mut self) -> Result<()> {
        if self.streams.is_none() {
            let (count, why) = planned_parts(self.server.streams, &self.remote);
            if self.parallel {
                log::info!(
                    "large files go up as multipart uploads, {count} parts at a time: {why}"
                );
            }
            self.streams = Some((count, why));
        }
        Ok(())
    }

    fn upload(&mut self, file: &LocalFile, upload: Upload) -> Result<Copied> {
        let Upload {
            target,
            size,
            why,
            seen,
        } = upload;
        let streams = match &self.streams {
            Some((count, _)) => *count,
            None => MIN_PARTS_IN_FLIGHT,
        };
        let started = Instant::now();
        let bar = progress::bar(size, &target.file_name());
        log::info!("{target}: uploading {size} bytes ({why})");
        let done = multipart::upload(
            &self.remote,
            &file.path,
            (target, self.server.encrypt_to.as_deref()),
            seen,
            streams,
            &bar,
        );
        bar.finish_and_clear();
        let used = if size > crate::remote::s3::part_size(size) {
            streams
        } else {
            1
        };
        Ok(Copied::Uploaded {
            file: target,
            replaced: seen.finals,
            done: done?,
            seconds: started.elapsed().as_secs_f64(),
            streams: used,
        })
    }

    /// Nothing to drop: the HTTP client remakes a broken connection itself.
    fn reset(&mut self) {}
}
