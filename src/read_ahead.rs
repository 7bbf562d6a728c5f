//! One remote file read in order over several connections, without writing it anywhere:
//! `verify --read-data`. One stream's window (libssh2 keeps at most 8 MiB asked for) fills a
//! 1 Gbit/s link only up to about 80 ms of round trip; beyond, the file is read in blocks,
//! each connection fetching the next block not yet taken, a few blocks ahead of the reader,
//! which gets them back in order. The memory is the blocks: at most (connections + 2) of
//! them (those ahead, the one being read, one given back).

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::remote::Remote;

/// A block: what one stream's window holds, so a block is asked for in one go.
pub const BLOCK: u64 = crate::transfer::READ_WINDOW as u64;

/// The most connections one file is read over: their blocks are at most 40 MiB, and three
/// 8 MiB windows fill a 1 Gbit/s link up to about 200 ms.
pub const MOST_STREAMS: usize = 3;

/// The state the connections and the reader share.
pub struct ReadAhead {
    name: String,
    size: u64,
    streams: usize,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    /// Blocks handed to a connection so far (they are taken in order).
    issued: u64,
    /// Blocks the reader has taken.
    delivered: u64,
    /// Blocks read and not yet taken by the reader, or why one could not be read.
    ready: BTreeMap<u64, Result<Vec<u8>, String>>,
    /// Connections still reading.
    working: usize,
    /// The reader is gone (done, or given up): the connections stop.
    stop: bool,
    /// Buffers given back by the reader.
    spare: Vec<Vec<u8>>,
    /// Blocks a connection failed to read, for another one.
    retry: Vec<u64>,
}

/// A worker's way out when it panics: its block fails and it no longer counts, so the
/// reader does not wait for it.
struct Leaving<'a> {
    ahead: &'a ReadAhead,
    block: Option<u64>,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.ahead.lock();
            if let Some(block) = self.block {
                state
                    .ready
                    .insert(block, Err("a reading thread crashed".to_string()));
            }
            state.working -= 1;
            self.ahead.changed.notify_all();
        }
    }
}

impl ReadAhead {
    /// `name` (`size` bytes) to be read over `streams` connections, each of which runs
    /// `work` on a thread of its own.
    pub fn new(name: &str, size: u64, streams: usize) -> ReadAhead {
        let streams = streams.max(1);
        ReadAhead {
            name: name.to_string(),
            size,
            streams,
            state: Mutex::new(State {
                issued: 0,
                delivered: 0,
                ready: BTreeMap::new(),
                working: streams,
                stop: false,
                spare: Vec::new(),
                retry: Vec::new(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn blocks(&self) -> u64 {
        self.size.div_ceil(BLOCK)
    }

    fn range_of(&self, block: u64) -> Range<u64> {
        block * BLOCK..self.size.min((block + 1) * BLOCK)
    }

    /// One connection: a block another connection failed to read, else the next block no
    /// one has taken, as long as it is at most `streams` blocks ahead of the reader; until
    /// every block is taken or the reader is gone. False when this connection failed: its
    /// block goes to another one, or, from the last one, the reader says why when it gets
    /// there.
    pub fn work(&self, remote: &mut dyn Remote) -> bool {
        let mut leaving = Leaving {
            ahead: self,
            block: None,
        };
        loop {
            let (block, mut buffer) = {
                let mut state = self.lock();
                let next = loop {
                    if state.stop {
                        break None;
                    }
                    if let Some(block) = state.retry.pop() {
                        break Some(block);
                    }
                    if state.issued >= self.blocks() {
                        break None;
                    }
                    if state.issued < state.delivered + self.streams as u64 {
                        state.issued += 1;
                        break Some(state.issued - 1);
                    }
                    state = self.wait(state);
                };
                let Some(block) = next else {
                    state.working -= 1;
                    self.changed.notify_all();
                    return true;
                };
                (block, state.spare.pop().unwrap_or_default())
            };
            leaving.block = Some(block);
            let read = self.read_block(remote, block, &mut buffer);
            leaving.block = None;
            let mut state = self.lock();
            match read {
                Ok(()) => {
                    state.ready.insert(block, Ok(buffer));
                    self.changed.notify_all();
                }
                Err(why) => {
                    let range = self.range_of(block);
                    if state.working > 1 && !state.stop {
                        log::warn!(
                            "reading {} back: a connection failed at bytes {}..{} ({why}); \
                             another one reads them",
                            self.name,
                            range.start,
                            range.end
                        );
                        state.retry.push(block);
                    } else {
                        state.ready.insert(block, Err(why));
                    }
                    state.working -= 1;
                    self.changed.notify_all();
                    return false;
                }
            }
        }
    }

    fn read_block(
        &self,
        remote: &mut dyn Remote,
        block: u64,
        buffer: &mut Vec<u8>,
    ) -> Result<(), String> {
        let range = self.range_of(block);
        let label = remote.describe();
        let mut reader = remote
            .open_read_range(&self.name, range.clone())
            .map_err(|err| err.message)?;
        let len = usize::try_from(range.end - range.start).map_err(|err| err.to_string())?;
        buffer.resize(len, 0);
        let mut got = 0;
        while got < len {
            crate::signals::check(&format!("reading {} back", self.name))
                .map_err(|err| err.message)?;
            // What comes past the block the next seek throws away.
            let want = crate::transfer::read_within((len - got) as u64);
            let n = reader
                .read(&mut buffer[got..got + want])
                .map_err(|err| format!("at byte {}: {err}", range.start + got as u64))?;
            if n == 0 {
                return Err(format!(
                    "{} on {label} ended at {}, before the {} bytes listed: it changed on the \
                     server",
                    self.name,
                    range.start + got as u64,
                    self.size
                ));
            }
            got += n;
        }
        Ok(())
    }

    /// The file's bytes in order, as the connections bring them.
    pub fn reader(&self) -> InOrder<'_> {
        InOrder {
            ahead: self,
            block: Vec::new(),
            at: 0,
            next: 0,
            failed: None,
        }
    }
}

/// The reader's side; dropping it stops the connections.
pub struct InOrder<'a> {
    ahead: &'a ReadAhead,
    block: Vec<u8>,
    at: usize,
    next: u64,
    /// Why a block could not be read: every read after says it again.
    failed: Option<String>,
}

impl Read for InOrder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(why) = &self.failed {
            return Err(std::io::Error::other(why.clone()));
        }
        if self.at == self.block.len() {
            if self.next >= self.ahead.blocks() {
                return Ok(0);
            }
            let mut state = self.ahead.lock();
            let read = loop {
                if let Some(read) = state.ready.remove(&self.next) {
                    break read;
                }
                if state.working == 0 {
                    let why = format!("no connection left reading {}", self.ahead.name);
                    self.failed = Some(why.clone());
                    return Err(std::io::Error::other(why));
                }
                state = self.ahead.wait(state);
            };
            state.delivered = self.next + 1;
            self.next += 1;
            let used = std::mem::take(&mut self.block);
            state.spare.push(used);
            self.ahead.changed.notify_all();
            drop(state);
            self.at = 0;
            self.block = match read {
                Ok(block) => block,
                Err(why) => {
                    self.failed = Some(why.clone());
                    return Err(std::io::Error::other(why));
                }
            };
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Drop for InOrder<'_> {
    fn drop(&mut self) {
        self.ahead.lock().stop = true;
        self.ahead.changed.notify_all();
    }
}
