//! An outcome others wait for, settled once: the destination's claim running beside the
//! first uploads, whose final names wait for it (on a long link its four round trips would
//! otherwise come before the first byte); the first connection's login, which the
//! connections started beside it wait for before they log in themselves.

use crate::error::{Error, Result};
use crate::staged::lock;
use std::sync::{Condvar, Mutex};

#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
    settled: Condvar,
}

#[derive(Default)]
enum State {
    /// Nothing to wait for.
    #[default]
    Open,
    Held,
    Failed(Error),
}

impl Gate {
    /// A gate held from the start.
    pub fn held() -> Gate {
        let gate = Gate::default();
        gate.hold();
        gate
    }

    /// What it guards is about to start: `wait` waits for `settle`.
    pub fn hold(&self) {
        *lock(&self.state) = State::Held;
    }

    /// The outcome: the waiting go on, or fail with its error. Only a held gate settles, so
    /// only the first outcome counts.
    pub fn settle(&self, outcome: std::result::Result<(), &Error>) {
        let mut state = lock(&self.state);
        if matches!(*state, State::Held) {
            *state = match outcome {
                Ok(()) => State::Open,
                Err(err) => State::Failed(err.clone()),
            };
            self.settled.notify_all();
        }
    }

    /// Nothing to wait for any more, whatever the outcome was.
    pub fn open(&self) {
        *lock(&self.state) = State::Open;
        self.settled.notify_all();
    }

    /// Whether the outcome is still to come.
    pub fn pending(&self) -> bool {
        matches!(*lock(&self.state), State::Held)
    }

    /// Wait while held; the error it settled with.
    pub fn wait(&self) -> Result<()> {
        let mut state = lock(&self.state);
        loop {
            match &*state {
                State::Open => return Ok(()),
                State::Failed(err) => return Err(err.clone()),
                State::Held => {
                    state = self
                        .settled
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                }
            }
        }
    }
}

/// Settles a held gate with a transient error (`.1`) when dropped before it was settled:
/// what should have settled it panicked, or was never started; nobody is left waiting, and
/// another attempt may do better.
pub struct Settles<'a>(pub &'a Gate, pub &'static str);

impl Drop for Settles<'_> {
    fn drop(&mut self) {
        self.0.settle(Err(&Error::transient(self.1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_gate_keeps_the_waiting_until_it_settles() {
        let gate = Gate::default();
        assert!(gate.wait().is_ok(), "open unless held");
        gate.hold();
        assert!(gate.pending());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| tx.send(gate.wait().is_ok()).expect("send"));
            assert!(
                rx.recv_timeout(std::time::Duration::from_millis(200))
                    .is_err(),
                "waits while held"
            );
            gate.settle(Ok(()));
            assert_eq!(rx.recv().ok(), Some(true));
        });
        assert!(!gate.pending());
        // Settling an open gate changes nothing.
        gate.settle(Err(&Error::copy("late")));
        assert!(gate.wait().is_ok());
    }

    #[test]
    fn a_failed_outcome_fails_every_waiter_until_the_gate_opens_again() {
        let gate = Gate::held();
        gate.settle(Err(&crate::claim::refusal("u@h:/d", "cvp2", "cvp1")));
        gate.settle(Ok(()));
        for _ in 0..2 {
            let err = gate.wait().expect_err("refused");
            assert_eq!(err.code, crate::exit_codes::ExitCode::Config);
            assert!(err.message.contains("node cvp2"), "{}", err.message);
        }
        gate.open();
        assert!(gate.wait().is_ok());
    }

    #[test]
    fn what_panics_before_settling_still_settles_its_gate() {
        let gate = Gate::held();
        let crashed = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _settles = Settles(&gate, "the claim of the destination crashed");
                    panic!("the claim crashed");
                })
                .join()
        });
        assert!(crashed.is_err());
        let err = gate.wait().expect_err("no outcome, no going on");
        assert!(err.transient);
        assert!(err.message.contains("crashed"), "{}", err.message);
        // Once settled, a guard dropped later changes nothing.
        gate.open();
        drop(Settles(&gate, "late"));
        assert!(gate.wait().is_ok());
    }
}
