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
use crate::transfer::READ_BUFFER;

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

    /// One connection: the next block no one has taken, as long as it is at most `streams`
    /// blocks ahead of the reader; until every block is taken, the reader is gone, or a
    /// block cannot be read (the reader then says why when it gets there).
    pub fn work(&self, remote: &mut dyn Remote) {
        loop {
            let (block, mut buffer) = {
                let mut state = self.lock();
                loop {
                    if state.stop || state.issued >= self.blocks() {
                        state.working -= 1;
                        self.changed.notify_all();
                        return;
                    }
                    if state.issued < state.delivered + self.streams as u64 {
                        break;
                    }
                    state = self.wait(state);
                }
                state.issued += 1;
                (state.issued - 1, state.spare.pop().unwrap_or_default())
            };
            let read = self.read_block(remote, block, &mut buffer);
            let failed = read.is_err();
            let mut state = self.lock();
            state.ready.insert(block, read.map(|()| buffer));
            if failed {
                state.working -= 1;
            }
            self.changed.notify_all();
            if failed {
                return;
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
            // libssh2 asks for 4 buffers ahead: never past the block.
            let left = len - got;
            let want = (left / 4).clamp(1, READ_BUFFER).min(left);
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
        }
    }
}

/// The reader's side; dropping it stops the connections.
pub struct InOrder<'a> {
    ahead: &'a ReadAhead,
    block: Vec<u8>,
    at: usize,
    next: u64,
}

impl Read for InOrder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
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
                    return Err(std::io::Error::other(format!(
                        "no connection left reading {}",
                        self.ahead.name
                    )));
                }
                state = self.ahead.wait(state);
            };
            state.delivered = self.next + 1;
            self.next += 1;
            let used = std::mem::take(&mut self.block);
            state.spare.push(used);
            self.ahead.changed.notify_all();
            drop(state);
            self.block = read.map_err(std::io::Error::other)?;
            self.at = 0;
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
