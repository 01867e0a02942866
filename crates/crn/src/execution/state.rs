//! The life of an execution: defined → preparing → prepared → starting → running →
//! stopping → stopped, each step stamped with its time. Any step may fail, which goes
//! to stopping; nothing comes back from stopped.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Defined,
    Preparing,
    Prepared,
    Starting,
    Running,
    Stopping,
    Stopped,
}

/// When each state was entered (the names of the reference's `status` object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Times {
    pub defined_at: Option<DateTime<Utc>>,
    pub preparing_at: Option<DateTime<Utc>>,
    pub prepared_at: Option<DateTime<Utc>>,
    pub starting_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub stopping_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    state: State,
    times: Times,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an execution cannot go from {from:?} to {to:?}")]
pub struct BadTransition {
    pub from: State,
    pub to: State,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Self {
            state: State::Defined,
            times: Times {
                defined_at: Some(Utc::now()),
                ..Times::default()
            },
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn times(&self) -> &Times {
        &self.times
    }

    /// Moves to `to`, stamping the time; refuses what the machine does not allow.
    pub fn advance(&mut self, to: State) -> Result<(), BadTransition> {
        use State::*;
        let allowed = matches!(
            (self.state, to),
            (Defined, Preparing)
                | (Preparing, Prepared)
                | (Prepared, Starting)
                | (Starting, Running)
                | (Stopping, Stopped)
        ) || (to == Stopping && !matches!(self.state, Stopping | Stopped));
        if !allowed {
            return Err(BadTransition {
                from: self.state,
                to,
            });
        }
        let now = Some(Utc::now());
        let slot = match to {
            Defined => &mut self.times.defined_at,
            Preparing => &mut self.times.preparing_at,
            Prepared => &mut self.times.prepared_at,
            Starting => &mut self.times.starting_at,
            Running => &mut self.times.started_at,
            Stopping => &mut self.times.stopping_at,
            Stopped => &mut self.times.stopped_at,
        };
        *slot = now;
        self.state = to;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_stamps_every_step() {
        let mut life = Lifecycle::new();
        for to in [
            State::Preparing,
            State::Prepared,
            State::Starting,
            State::Running,
            State::Stopping,
            State::Stopped,
        ] {
            life.advance(to).unwrap();
            assert_eq!(life.state(), to);
        }
        let t = life.times();
        assert!(t.defined_at <= t.preparing_at && t.started_at <= t.stopped_at);
        assert!(t.stopped_at.is_some());
    }

    #[test]
    fn failures_go_to_stopping_and_nothing_leaves_stopped() {
        let mut life = Lifecycle::new();
        life.advance(State::Preparing).unwrap();
        assert_eq!(
            life.advance(State::Running),
            Err(BadTransition {
                from: State::Preparing,
                to: State::Running
            })
        );
        life.advance(State::Stopping).unwrap();
        assert!(life.advance(State::Stopping).is_err());
        life.advance(State::Stopped).unwrap();
        assert!(life.advance(State::Preparing).is_err());
        assert!(life.advance(State::Stopping).is_err());
        assert!(life.times().prepared_at.is_none());
    }
}
