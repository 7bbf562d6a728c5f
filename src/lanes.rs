//! Which stream carries which bytes of a file copied over several connections.
//!
//! Each stream starts with one contiguous lane (an equal share of the file) and keeps its
//! SFTP handle and its window full along it; a stream whose lane is done takes the upper
//! half of the largest part not yet claimed by another stream, so the streams finish
//! together. Handing out small pieces instead cost every piece a drained window (and, for
//! reads, an open): at 50 ms a stream fetching 16 MiB pieces ran at half speed.
//!
//! A download hashes the file in order as it arrives, so only what lies below every
//! unfinished lane can be hashed: with one lane per stream, most of the file waited for the
//! last byte, and a second of hashing followed it. Downloads therefore hand out the file in
//! pieces in order (`in_order`): the streams start on the first pieces, a stream whose piece
//! is done takes the next one, and the halves are taken only once every piece is handed
//! out; what is left to hash at the end is about a piece per stream.
//!
//! Pure bookkeeping behind one lock; the streams do the I/O.

use std::ops::Range;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A stream never takes less than this from another (a steal costs about a round trip:
/// the window drains and refills).
pub const MIN_STEAL: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lane {
    /// Every byte of the lane below this has arrived (downloads) or been sent.
    done: u64,
    /// Bytes below this have been handed to the stream (requested or read for sending).
    claimed: u64,
    /// The lane ends here; it moves down when another stream takes the upper half.
    end: u64,
}

pub struct Lanes {
    state: Mutex<State>,
    size: u64,
}

struct State {
    lanes: Vec<Lane>,
    /// The first byte no lane has been given yet (`size` once all are).
    next: u64,
    /// How much a stream takes from `next` at a time (0: lanes are equal shares).
    piece: u64,
}

impl Lanes {
    /// `size` bytes in `streams` contiguous lanes of (almost) equal length.
    pub fn new(size: u64, streams: usize) -> Lanes {
        let streams = streams.max(1) as u64;
        let lanes = (0..streams)
            .map(|index| {
                let start = boundary(size, index, streams);
                Lane {
                    done: start,
                    claimed: start,
                    end: boundary(size, index + 1, streams),
                }
            })
            .collect();
        Lanes {
            state: Mutex::new(State {
                lanes,
                next: size,
                piece: 0,
            }),
            size,
        }
    }

    /// `size` bytes handed out in order in pieces of `piece` bytes, one to each stream at
    /// first (one stream, or a file with less than a piece per stream: equal shares).
    pub fn in_order(size: u64, streams: usize, piece: u64) -> Lanes {
        let count = streams.max(1) as u64;
        if count == 1 || piece == 0 || size <= piece.saturating_mul(count) {
            return Lanes::new(size, streams);
        }
        let lanes = (0..count)
            .map(|index| Lane {
                done: index * piece,
                claimed: index * piece,
                end: (index + 1) * piece,
            })
            .collect();
        Lanes {
            state: Mutex::new(State {
                lanes,
                next: count * piece,
                piece,
            }),
            size,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where `lane` starts now (its first byte not yet claimed).
    pub fn start(&self, lane: usize) -> u64 {
        self.lock().lanes[lane].claimed
    }

    /// The next at most `most` bytes of `lane` for its stream to send or request, right
    /// after what it claimed before; empty when the lane is used up.
    pub fn claim(&self, lane: usize, most: u64) -> Range<u64> {
        let mut state = self.lock();
        let lane = &mut state.lanes[lane];
        let start = lane.claimed;
        lane.claimed = lane.end.min(start.saturating_add(most));
        start..lane.claimed
    }

    /// Every byte of `lane` below `to` has arrived (or been sent).
    pub fn done(&self, lane: usize, to: u64) {
        let mut state = self.lock();
        let lane = &mut state.lanes[lane];
        lane.done = to.clamp(lane.done, lane.end);
    }

    /// `lane` is used up (all of it claimed and done): take the next piece no lane has had
    /// yet (`in_order`), else the upper half of the largest unclaimed part of another lane
    /// (at least MIN_STEAL), and return where the lane now starts and ends. None when
    /// nothing is worth taking: the stream is finished.
    pub fn steal(&self, lane: usize) -> Option<Range<u64>> {
        let mut state = self.lock();
        let own = state.lanes[lane];
        if own.claimed == own.end && own.done == own.end && state.next < self.size {
            let start = state.next;
            let end = self.size.min(start.saturating_add(state.piece));
            state.next = end;
            state.lanes[lane] = Lane {
                done: start,
                claimed: start,
                end,
            };
            return Some(start..end);
        }
        let lanes = &mut state.lanes;
        if own.claimed < own.end {
            // Not used up after all (a caller's slip): carry on with the rest of it.
            return Some(own.claimed..own.end);
        }
        debug_assert_eq!(own.done, own.end, "a lane is given up only once done");
        let (victim, unclaimed) = lanes
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != lane)
            .map(|(index, other)| (index, other.end - other.claimed))
            .max_by_key(|(_, unclaimed)| *unclaimed)?;
        if unclaimed < 2 * MIN_STEAL {
            return None;
        }
        let split = lanes[victim].claimed + unclaimed / 2;
        let end = lanes[victim].end;
        lanes[victim].end = split;
        lanes[lane] = Lane {
            done: split,
            claimed: split,
            end,
        };
        Some(split..end)
    }

    /// Every byte below this offset has arrived.
    pub fn contiguous(&self) -> u64 {
        let state = self.lock();
        state
            .lanes
            .iter()
            .filter(|lane| lane.done < lane.end)
            .map(|lane| lane.done)
            .min()
            .unwrap_or(self.size)
            .min(state.next)
    }
}

fn boundary(size: u64, index: u64, streams: u64) -> u64 {
    // u128: size x index overflows u64 for files over 2^64 / streams bytes.
    u64::try_from(u128::from(size) * u128::from(index) / u128::from(streams)).unwrap_or(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn lanes_start_as_equal_contiguous_shares() {
        let lanes = Lanes::new(10 * MIB + 3, 3);
        let starts: Vec<u64> = (0..3).map(|lane| lanes.start(lane)).collect();
        assert_eq!(starts, vec![0, (10 * MIB + 3) / 3, 2 * (10 * MIB + 3) / 3]);
        assert_eq!(lanes.claim(2, u64::MAX).end, 10 * MIB + 3);
        assert_eq!(lanes.contiguous(), 0);
    }

    #[test]
    fn a_free_stream_takes_the_upper_half_of_the_largest_unclaimed_rest() {
        let lanes = Lanes::new(100 * MIB, 2);
        // Lane 0 has claimed 10 MiB of its 50; lane 1 all of its 50 and they arrived.
        assert_eq!(lanes.claim(0, 10 * MIB), 0..10 * MIB);
        assert_eq!(lanes.claim(1, u64::MAX), 50 * MIB..100 * MIB);
        lanes.done(1, 100 * MIB);
        assert_eq!(lanes.steal(1), Some(30 * MIB..50 * MIB));
        assert_eq!(lanes.claim(0, u64::MAX), 10 * MIB..30 * MIB);
        assert_eq!(lanes.claim(1, MIB), 30 * MIB..31 * MIB);
        // Lane 1 has 19 MiB unclaimed: worth half.
        lanes.done(0, 30 * MIB);
        assert_eq!(lanes.steal(0), Some(40 * MIB + MIB / 2..50 * MIB));
        assert_eq!(lanes.claim(1, u64::MAX), 31 * MIB..40 * MIB + MIB / 2);
        lanes.done(1, 40 * MIB + MIB / 2);
        // Lane 0 has claimed 2 of its 9.5 MiB: 7.5 is less than two steals' worth.
        assert_eq!(
            lanes.claim(0, 2 * MIB),
            40 * MIB + MIB / 2..42 * MIB + MIB / 2
        );
        assert_eq!(lanes.steal(1), None);
    }

    #[test]
    fn in_order_the_next_piece_goes_to_the_first_stream_done_and_halves_come_last() {
        let lanes = Lanes::in_order(100 * MIB, 2, 30 * MIB);
        let starts: Vec<u64> = (0..2).map(|lane| lanes.start(lane)).collect();
        assert_eq!(starts, vec![0, 30 * MIB]);
        // Nothing handed out past 60 MiB: nothing there counts as arrived.
        assert_eq!(lanes.claim(1, u64::MAX), 30 * MIB..60 * MIB);
        lanes.done(1, 60 * MIB);
        assert_eq!(lanes.contiguous(), 0);
        assert_eq!(lanes.steal(1), Some(60 * MIB..90 * MIB));
        assert_eq!(lanes.claim(0, u64::MAX), 0..30 * MIB);
        lanes.done(0, 30 * MIB);
        assert_eq!(lanes.contiguous(), 60 * MIB);
        // The last piece is shorter.
        assert_eq!(lanes.steal(0), Some(90 * MIB..100 * MIB));
        assert_eq!(lanes.contiguous(), 60 * MIB);
        assert_eq!(lanes.claim(0, u64::MAX), 90 * MIB..100 * MIB);
        lanes.done(0, 100 * MIB);
        // Every piece handed out: the upper half of what lane 1 has not claimed yet.
        assert_eq!(lanes.claim(1, 10 * MIB), 60 * MIB..70 * MIB);
        assert_eq!(lanes.steal(0), Some(80 * MIB..90 * MIB));
        // A file with less than a piece per stream: equal shares.
        let small = Lanes::in_order(50 * MIB, 2, 30 * MIB);
        assert_eq!(small.start(1), 25 * MIB);
    }

    #[test]
    fn too_little_left_is_not_taken() {
        let lanes = Lanes::new(2 * MIB, 2);
        assert_eq!(lanes.claim(1, u64::MAX), MIB..2 * MIB);
        lanes.done(1, 2 * MIB);
        assert_eq!(lanes.steal(1), None);
        let lanes = Lanes::new(0, 4);
        assert_eq!(lanes.claim(0, MIB), 0..0);
        assert_eq!(lanes.contiguous(), 0);
        assert_eq!(lanes.steal(3), None);
    }

    #[test]
    fn contiguous_is_the_lowest_unfinished_lane() {
        let lanes = Lanes::new(30 * MIB, 3);
        lanes.claim(1, u64::MAX);
        lanes.done(1, 20 * MIB);
        assert_eq!(lanes.contiguous(), 0);
        lanes.claim(0, 5 * MIB);
        lanes.done(0, 5 * MIB);
        assert_eq!(lanes.contiguous(), 5 * MIB);
        lanes.claim(0, u64::MAX);
        lanes.done(0, 10 * MIB);
        assert_eq!(lanes.contiguous(), 20 * MIB);
        lanes.claim(2, u64::MAX);
        lanes.done(2, 30 * MIB);
        assert_eq!(lanes.contiguous(), 30 * MIB);
    }

    /// One step of a stream: claim some bytes, finish what it claimed, or (when used up)
    /// steal.
    #[derive(Debug, Clone)]
    enum Step {
        Claim(usize, u64),
        Finish(usize),
        Steal(usize),
    }

    fn step(streams: usize) -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..streams, 1..40 * MIB).prop_map(|(lane, most)| Step::Claim(lane, most)),
            (0..streams).prop_map(Step::Finish),
            (0..streams).prop_map(Step::Steal),
        ]
    }

    proptest! {
        /// Whatever the streams do in whatever order: no byte is claimed twice, every byte is
        /// claimed once all streams have run dry, and `contiguous` never passes a byte that
        /// has not arrived.
        #[test]
        fn every_byte_is_claimed_exactly_once(
            size in 0..300 * MIB,
            streams in 1usize..6,
            piece in prop_oneof![Just(0u64), 1..40 * MIB],
            steps in proptest::collection::vec(step(6), 0..60),
        ) {
            let lanes = Lanes::in_order(size, streams, piece);
            let mut claimed: Vec<Range<u64>> = Vec::new();
            let mut arrived: Vec<Range<u64>> = Vec::new();
            let mut pending: Vec<Vec<Range<u64>>> = vec![Vec::new(); streams];
            let apply = |step: Step,
                         claimed: &mut Vec<Range<u64>>,
                         arrived: &mut Vec<Range<u64>>,
                         pending: &mut Vec<Vec<Range<u64>>>| {
                match step {
                    Step::Claim(lane, most) => {
                        let lane = lane % streams;
                        let got = lanes.claim(lane, most);
                        if !got.is_empty() {
                            claimed.push(got.clone());
                            pending[lane].push(got);
                        }
                    }
                    Step::Finish(lane) => {
                        let lane = lane % streams;
                        if let Some(last) = pending[lane].last() {
                            lanes.done(lane, last.end);
                        }
                        arrived.append(&mut pending[lane]);
                    }
                    Step::Steal(lane) => {
                        let lane = lane % streams;
                        // Only a stream with its lane used up and finished steals.
                        let own = lanes.lock().lanes[lane];
                        if own.claimed == own.end && pending[lane].is_empty() {
                            lanes.steal(lane);
                        }
                    }
                }
            };
            for step in steps {
                apply(step, &mut claimed, &mut arrived, &mut pending);
                let below = lanes.contiguous();
                let mut have: Vec<Range<u64>> = arrived.clone();
                have.sort_by_key(|range| range.start);
                let mut covered = 0;
                for range in &have {
                    if range.start > covered { break; }
                    covered = covered.max(range.end);
                }
                prop_assert!(below <= covered, "contiguous {} but only {} arrived", below, covered);
            }
            // Run every stream dry: claim all, finish, steal, until nothing moves.
            loop {
                let mut moved = false;
                for lane in 0..streams {
                    let got = lanes.claim(lane, u64::MAX);
                    if !got.is_empty() {
                        claimed.push(got.clone());
                        pending[lane].push(got);
                        moved = true;
                    }
                    apply(Step::Finish(lane), &mut claimed, &mut arrived, &mut pending);
                    if lanes.steal(lane).is_some() {
                        moved = true;
                    }
                }
                if !moved { break; }
            }
            claimed.sort_by_key(|range| range.start);
            let mut at = 0;
            for range in &claimed {
                prop_assert_eq!(range.start, at, "claimed ranges overlap or leave a hole");
                at = range.end;
            }
            prop_assert_eq!(at, size);
            prop_assert_eq!(lanes.contiguous(), size);
        }
    }
}
