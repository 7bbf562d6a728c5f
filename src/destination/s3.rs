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
use crate::state::SealedUpload;
use crate::transfer;
use std::collections::HashMap;
use std::time::Instant;

/// Parts in flight at least (the set's other files take theirs from them): an object store
/// spreads parts over its servers, and one request at a time leaves a round trip idle
/// after each part.
const MIN_PARTS_IN_FLIGHT: usize = 6;

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
        let streams = self.parts_in_flight();
        upload_one(&self.remote, &self.server, file, upload, streams)
    }

    /// The set's files at once, one listing for all: the large one with the parts in flight
    /// the others leave, each other one beside it; their round trips hide behind the large
    /// one's. What fails gets the usual retries, one file at a time.
    fn side_by_side(
        &mut self,
        files: &[LocalFile],
        sent: &[SealedUpload],
        // A PUT is whole by itself: a manifest written ahead would save nothing.
        (_, listing): (
            Option<&crate::sets::RestoreSet>,
            &[crate::remote::RemoteEntry],
        ),
    ) -> HashMap<usize, Result<Copied>> {
        // `streams = 1`: one request at a time, as configured.
        if files.len() < 2 || self.server.streams == Streams::Fixed(1) {
            return HashMap::new();
        }
        let recipients = self.server.encrypt_to.clone();
        let Ok((mut outcomes, uploads)) = super::first_look(
            &mut self.remote,
            files,
            (recipients.as_deref(), sent),
            listing,
        ) else {
            return HashMap::new();
        };
        let parts = self.parts_in_flight();
        let largest = uploads.iter().map(|(_, u)| u.size).max().unwrap_or(0);
        let others = uploads.len().saturating_sub(1);
        let (remote, server) = (&self.remote, &self.server);
        let results: Vec<(usize, Result<Copied>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = uploads
                .into_iter()
                .map(|(index, upload)| {
                    let streams = if upload.size == largest {
                        parts.saturating_sub(others).max(1)
                    } else {
                        1
                    };
                    let file = &files[index];
                    let context = crate::logging::context();
                    (
                        index,
                        scope.spawn(move || {
                            crate::logging::set_context(context);
                            upload_one(remote, server, file, upload, streams)
                        }),
                    )
                })
                .collect();
            workers
                .into_iter()
                .map(|(index, worker)| {
                    let outcome = worker.join().unwrap_or_else(|_| {
                        Err(crate::error::Error::copy(format!(
                            "the upload of {} crashed",
                            files[index].name
                        )))
                    });
                    (index, outcome)
                })
                .collect()
        });
        outcomes.extend(results);
        outcomes
    }

    /// Nothing to drop: the HTTP client remakes a broken connection itself.
    fn reset(&mut self) {}
}

impl S3Destination {
    fn parts_in_flight(&self) -> usize {
        match &self.streams {
            Some((count, _)) => *count,
            None => MIN_PARTS_IN_FLIGHT,
        }
    }
}

/// One file to the bucket, `streams` parts in flight when it is large.
fn upload_one(
    remote: &S3Remote,
    server: &ServerConfig,
    file: &LocalFile,
    upload: Upload,
    streams: usize,
) -> Result<Copied> {
    let Upload {
        target,
        size,
        why,
        seen,
    } = upload;
    let started = Instant::now();
    let bar = progress::bar(size, &target.file_name());
    let used = if size > crate::remote::s3::part_size(size) {
        streams
    } else {
        1
    };
    if used > 1 {
        log::info!("{target}: uploading {size} bytes over {used} streams ({why})");
    } else {
        log::info!("{target}: uploading {size} bytes ({why})");
    }
    let done = multipart::upload(
        remote,
        crate::transfer::Source::of(file, seen),
        (target, server.encrypt_to.as_deref()),
        seen,
        streams,
        &bar,
    );
    bar.finish_and_clear();
    Ok(Copied::Uploaded {
        file: target,
        replaced: seen.finals,
        done: done?,
        seconds: started.elapsed().as_secs_f64(),
        streams: used,
    })
}
