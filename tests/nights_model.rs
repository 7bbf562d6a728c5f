//! Model-based test of the pure planning code over random sequences of nights: backups that
//! succeed, fail with partial files, write no data, are run by hand; copies that fail half
//! way; clocks that jump forward and back by years. Each night is played as `run` plays it
//! (set a failed backup's archives aside, `select`, copy, prune the node as `prunes_node`
//! says: after every good backup whether or not its copy worked, keeping the last set
//! verified off-box beyond the limit; prune the server only after the whole set is
//! verified), and after every night:
//!
//! - the newest good set (the tool's last backup that succeeded, by creation, not by stamp)
//!   is complete on the node;
//! - the set the last successful copy verified is complete on the server and on the node;
//! - no archive of a failed backup is ever on the server or taken for a backup;
//! - after a good backup and a good copy, the set on the server is tonight's;
//! - after a good backup, the node holds at most `limit` + 1 data backups (/data never fills
//!   while the server is down).

use cvp_backup_copy::names::{BackupName, Kind, Stamp};
use cvp_backup_copy::restore_set::{self, LastGood, RestoreSet, Tonight};
use cvp_backup_copy::retention::{self, Policy};
use cvp_backup_copy::sets;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashSet};

#[derive(Debug, Clone)]
enum Backup {
    Good,
    FailsWithPartialFiles,
    ReportsSuccessButWritesNoData,
    /// `--no-backup` (the documented retry).
    Skipped,
    /// The operator ran `cvpi backup cvp` by hand during the day, then `--no-backup`.
    ByHandThenSkipped,
    /// Too little free space (`min_free_space`): no backup is started, the night goes on as
    /// one without a backup (`run`'s `Night::Refused`).
    RefusedForSpace,
}

#[derive(Debug, Clone)]
enum Clock {
    NextNight,
    JumpsForwardDays(i64),
    JumpsBackDays(i64),
    /// The next night comes this many hours early or late (a clock a little off, DST,
    /// around the "stamped in the future" slack).
    NextNightShiftedHours(i64),
}

#[derive(Debug, Clone)]
struct Night {
    backup: Backup,
    dumps_images: bool,
    clock: Clock,
    copy_succeeds: bool,
    /// When the copy fails: how many files of the set made it before the failure.
    copied_before_failure: usize,
}

fn night() -> impl Strategy<Value = Night> {
    let backup = prop_oneof![
        5 => Just(Backup::Good),
        2 => Just(Backup::FailsWithPartialFiles),
        1 => Just(Backup::ReportsSuccessButWritesNoData),
        1 => Just(Backup::Skipped),
        1 => Just(Backup::ByHandThenSkipped),
        1 => Just(Backup::RefusedForSpace),
    ];
    let clock = prop_oneof![
        6 => Just(Clock::NextNight),
        1 => (1i64..1500).prop_map(Clock::JumpsForwardDays),
        1 => (1i64..1500).prop_map(Clock::JumpsBackDays),
        2 => (-30i64..30).prop_map(Clock::NextNightShiftedHours),
    ];
    (
        backup,
        any::<bool>(),
        clock,
        prop::bool::weighted(0.7),
        0usize..3,
    )
        .prop_map(
            |(backup, dumps_images, clock, copy_succeeds, copied_before_failure)| Night {
                backup,
                dumps_images,
                clock,
                copy_succeeds,
                copied_before_failure,
            },
        )
}

struct World {
    now: Stamp,
    node: BTreeSet<BackupName>,
    server: BTreeSet<BackupName>,
    /// Every name ever used (CVP stamps are unique on a node).
    used: HashSet<BackupName>,
    failed: HashSet<BackupName>,
    last_good: Option<LastGood>,
    /// The members of the sets the tool made or adopted (its history.json).
    known: Vec<RestoreSet>,
    /// The manifests on the server: exactly what each verified set was.
    manifests: Vec<RestoreSet>,
    /// Sets the tool's own good backups made, in the order they were made.
    made: Vec<RestoreSet>,
    last_verified: Option<RestoreSet>,
    limit: usize,
    remote_limit: usize,
    /// Whether the last night's backup succeeded (the bound on the node applies then).
    backup_succeeded: bool,
}

impl World {
    fn new(limit: usize, remote_limit: usize) -> World {
        World {
            now: Stamp::parse("20261126020000").expect("stamp"),
            node: BTreeSet::new(),
            server: BTreeSet::new(),
            used: HashSet::new(),
            failed: HashSet::new(),
            last_good: None,
            known: Vec::new(),
            manifests: Vec::new(),
            made: Vec::new(),
            last_verified: None,
            limit,
            remote_limit,
            backup_succeeded: false,
        }
    }

    fn node_list(&self) -> Vec<BackupName> {
        self.node.iter().copied().collect()
    }

    /// A fresh name of `kind` at `seconds` after the clock (cvpi never reuses a stamp).
    fn name(&mut self, kind: Kind, seconds: i64) -> BackupName {
        let mut at = self.now.plus_seconds(seconds);
        loop {
            let name = BackupName::new(kind, at);
            if self.used.insert(name) {
                return name;
            }
            at = at.plus_seconds(1);
        }
    }

    /// What cvpi writes: a log when it starts, then data and (sometimes) images.
    fn cvpi(&mut self, data: bool, images: bool) -> Vec<BackupName> {
        let mut new = vec![self.name(Kind::Log, 0)];
        if data {
            new.push(self.name(Kind::Data, 10));
        }
        if images {
            new.push(self.name(Kind::Images, 40));
        }
        new
    }

    fn play(&mut self, night: &Night) {
        self.now = match night.clock {
            Clock::NextNight => self.now.plus_seconds(86_400),
            Clock::JumpsForwardDays(days) => self.now.plus_seconds(days * 86_400),
            Clock::JumpsBackDays(days) => self.now.plus_seconds(-days * 86_400),
            Clock::NextNightShiftedHours(hours) => self.now.plus_seconds(86_400 + hours * 3600),
        };
        let before_data: Vec<BackupName> = self
            .node
            .iter()
            .filter(|n| n.kind == Kind::Data)
            .copied()
            .collect();
        let (new, outcome) = match night.backup {
            Backup::Good => (self.cvpi(true, night.dumps_images), Some(true)),
            Backup::FailsWithPartialFiles => (self.cvpi(true, night.dumps_images), Some(false)),
            Backup::ReportsSuccessButWritesNoData => {
                (self.cvpi(false, night.dumps_images), Some(false))
            }
            Backup::Skipped | Backup::RefusedForSpace => (Vec::new(), None),
            Backup::ByHandThenSkipped => {
                // Good, but not the tool's: it may be chosen (when stamped later than the
                // tool's last set) and is never pruned before the tool's next backup.
                let by_hand = self.cvpi(true, night.dumps_images);
                self.node.extend(&by_hand);
                (Vec::new(), None)
            }
        };
        let new_set: HashSet<BackupName> = new.iter().copied().collect();
        let data_made = new.iter().find(|n| n.kind == Kind::Data).copied();
        let tonight = match outcome {
            None => Tonight::Skipped,
            Some(true) => {
                self.node.extend(&new);
                let data = data_made.expect("a good backup writes data");
                self.last_good = Some(LastGood {
                    data,
                    known_before: before_data,
                });
                let made = sets::made_by(&self.node_list(), data, &new);
                self.known.push(made.clone());
                self.made.push(made);
                Tonight::Made(&new_set)
            }
            Some(false) => {
                // `run` renames the archives aside; the log stays and is copied.
                for name in &new {
                    if name.kind == Kind::Log {
                        self.node.insert(*name);
                    } else {
                        self.failed.insert(*name);
                    }
                }
                Tonight::Failed(&new_set)
            }
        };
        let failed_night = matches!(tonight, Tonight::Failed(_));
        self.backup_succeeded = outcome == Some(true);
        let local = self.node_list();
        let selection = restore_set::select(
            &local,
            tonight,
            self.last_good.as_ref(),
            &self.known,
            self.now,
        );
        if let (Some(true), Some(set)) = (outcome, &selection.set) {
            assert_eq!(
                Some(set),
                self.made.last(),
                "tonight's set is what tonight wrote"
            );
        }
        for name in selection.files() {
            assert!(
                !self.failed.contains(&name),
                "selected a failed archive {name}"
            );
            assert!(self.node.contains(&name), "selected a file not on the node");
        }
        let files = selection.files();
        let copied = if night.copy_succeeds {
            files.len()
        } else {
            night
                .copied_before_failure
                .min(files.len().saturating_sub(1))
        };
        self.server.extend(&files[..copied]);
        let all_copied = copied == files.len();
        let verified = all_copied && selection.set.is_some();
        if all_copied {
            if let Some(set) = &selection.set {
                self.last_verified = Some(set.clone());
                self.manifests.retain(|m| m.data != set.data);
                self.manifests.push(set.clone());
                // `run` records what it verified: the node keeps that set as it was verified.
                self.known.retain(|k| k.data != set.data);
                self.known.push(set.clone());
                // Without a history, `run` adopts the set it verified as the newest good one.
                if self.last_good.is_none() {
                    self.known.push(set.clone());
                    self.last_good = Some(LastGood {
                        data: set.data,
                        known_before: local
                            .iter()
                            .filter(|n| n.kind == Kind::Data && **n != set.data)
                            .copied()
                            .collect(),
                    });
                }
                if let (Some(true), Some(data)) = (outcome, data_made) {
                    assert_eq!(set.data, data, "tonight's set is tonight's");
                }
            }
        }
        if selection.set.is_some() && retention::prunes_node(&tonight, verified) {
            let mut known = self.known.clone();
            known.extend(selection.set.clone());
            let decision = retention::apply_policy(
                &local,
                Policy {
                    keep_data: self.limit,
                    also_keep: self
                        .last_verified
                        .as_ref()
                        .map(|set| set.data)
                        .into_iter()
                        .collect(),
                },
                &selection.protect,
                &known,
                self.now,
            );
            for name in &decision.remove {
                self.node.remove(name);
            }
            self.known.retain(|set| self.node.contains(&set.data));
        }
        if !verified || failed_night {
            return;
        }
        if self.remote_limit > 0 {
            // As `run` prunes the server: kept data first, then what their manifests list.
            let remote: Vec<BackupName> = self.server.iter().copied().collect();
            let policy = Policy::newest(self.remote_limit);
            let mut known: Vec<RestoreSet> = selection.set.iter().cloned().collect();
            let first = retention::apply_policy(
                &remote,
                policy.clone(),
                &selection.protect,
                &known,
                self.now,
            );
            for (data, _) in first.keep.iter().filter(|(n, _)| n.kind == Kind::Data) {
                known.extend(self.manifests.iter().filter(|m| m.data == *data).cloned());
            }
            let decision =
                retention::apply_policy(&remote, policy, &selection.protect, &known, self.now);
            for name in &decision.remove {
                self.server.remove(name);
            }
            self.manifests.retain(|m| self.server.contains(&m.data));
        }
    }

    /// `set` is complete in `files`: exactly its members (as made, as the manifest lists).
    fn complete(set: &RestoreSet, files: &BTreeSet<BackupName>) -> Result<(), String> {
        match set.files().into_iter().find(|f| !files.contains(f)) {
            Some(missing) => Err(format!("{missing} of the set of {} is missing", set.data)),
            None => Ok(()),
        }
    }

    fn check(&self) -> Result<(), String> {
        if let Some(newest) = self.made.last() {
            World::complete(newest, &self.node)
                .map_err(|why| format!("newest good set on the node: {why}"))?;
        }
        if let Some(verified) = &self.last_verified {
            World::complete(verified, &self.server)
                .map_err(|why| format!("verified set on the server: {why}"))?;
            World::complete(verified, &self.node)
                .map_err(|why| format!("verified set on the node: {why}"))?;
        }
        if let Some(bad) = self.server.iter().find(|n| self.failed.contains(n)) {
            return Err(format!("failed archive {bad} is on the server"));
        }
        let data_on_node = self.node.iter().filter(|n| n.kind == Kind::Data).count();
        if self.backup_succeeded && data_on_node > self.limit + 1 {
            return Err(format!(
                "{data_on_node} data backups on the node after a good backup, limit {}",
                self.limit
            ));
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_sequence_of_nights_loses_the_newest_good_set(
        limit in 1usize..4,
        remote_limit in 0usize..4,
        nights in prop::collection::vec(night(), 1..30),
    ) {
        let mut world = World::new(limit, remote_limit);
        for (index, night) in nights.iter().enumerate() {
            world.play(night);
            if let Err(why) = world.check() {
                prop_assert!(false, "after night {} ({:?}): {}", index + 1, night, why);
            }
        }
    }
}

/// The sequences from the issue, spelled out, so that a regression names its story.
#[test]
fn the_reported_sequences_keep_the_good_set() {
    let good = |clock| Night {
        backup: Backup::Good,
        dumps_images: true,
        clock,
        copy_succeeds: true,
        copied_before_failure: 0,
    };
    let fails = Night {
        backup: Backup::FailsWithPartialFiles,
        dumps_images: true,
        clock: Clock::NextNight,
        copy_succeeds: true,
        copied_before_failure: 0,
    };
    let retry = Night {
        backup: Backup::Skipped,
        dumps_images: false,
        clock: Clock::NextNight,
        copy_succeeds: true,
        copied_before_failure: 0,
    };
    let stories: Vec<(&str, Vec<Night>)> = vec![
        (
            "a failed night, then the documented --no-backup retry",
            vec![good(Clock::NextNight), fails.clone(), retry.clone()],
        ),
        (
            "two failed nights in a row",
            vec![good(Clock::NextNight), fails.clone(), fails.clone(), retry],
        ),
        (
            "a clock 25 h fast for one night, then right: the set made right after it keeps \
             its own images on the server",
            vec![
                good(Clock::NextNightShiftedHours(25)),
                good(Clock::NextNightShiftedHours(-25)),
                Night {
                    dumps_images: false,
                    ..good(Clock::NextNight)
                },
            ],
        ),
        (
            "a data file from a clock that was once years ahead, then honest nights",
            vec![
                good(Clock::JumpsForwardDays(900)),
                good(Clock::JumpsBackDays(900)),
                good(Clock::NextNight),
            ],
        ),
        (
            "the server down for limit + 3 nights, then back: the node keeps the newest set \
             and the last one the server has, never more",
            std::iter::once(good(Clock::NextNight))
                .chain(std::iter::repeat_n(
                    Night {
                        copy_succeeds: false,
                        ..good(Clock::NextNight)
                    },
                    4,
                ))
                .chain(std::iter::once(good(Clock::NextNight)))
                .collect(),
        ),
    ];
    for (story, nights) in stories {
        let mut world = World::new(1, 2);
        for night in &nights {
            world.play(night);
            world.check().unwrap_or_else(|why| panic!("{story}: {why}"));
        }
    }
}
