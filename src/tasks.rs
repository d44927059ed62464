//! The daemon's subsystem tasks: each spawned under a name into a stage of
//! shutdown, and one place that notices when one ends before it was told to
//! stop (returned, panicked), so the daemon can stop the rest and exit non-zero.

use std::collections::HashMap;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};

/// When a task is stopped during an orderly shutdown, earliest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// Stops when the shutdown signal is sent (API, applier, mesh tasks …).
    First,
    /// Gossip itself, stopped once nothing publishes any more.
    Gossip,
    /// HAProxy, stopped last, once nothing can ask it to reload.
    Haproxy,
}

/// How a task ended.
#[derive(Debug)]
pub enum How {
    /// Its future returned.
    Returned,
    /// It panicked, with this message.
    Panicked(String),
    /// It was aborted (only after it would not stop in time).
    Aborted,
}

/// A task that ended, by name.
#[derive(Debug)]
pub struct Ended {
    pub name: &'static str,
    pub how: How,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.how {
            How::Returned => write!(f, "the {} task ended", self.name),
            How::Panicked(why) => write!(f, "the {} task panicked: {why}", self.name),
            How::Aborted => write!(f, "the {} task was aborted", self.name),
        }
    }
}

/// The running tasks, by stage.
#[derive(Default)]
pub struct Tasks {
    stages: Vec<(Stage, JoinSet<()>)>,
    names: HashMap<Id, &'static str>,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Runs `task` under `name`; it is expected to run until shutdown.
    pub fn spawn(
        &mut self,
        stage: Stage,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let task = crate::fault::task(name, task);
        let set = match self.stages.iter().position(|(s, _)| *s == stage) {
            Some(i) => &mut self.stages[i].1,
            None => {
                self.stages.push((stage, JoinSet::new()));
                self.stages.sort_by_key(|(s, _)| *s);
                let i = self.stages.iter().position(|(s, _)| *s == stage);
                &mut self.stages[i.expect("just pushed")].1
            }
        };
        let handle = set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Supervises a task someone else spawned (e.g. inside a subsystem).
    pub fn adopt(&mut self, stage: Stage, name: &'static str, handle: tokio::task::JoinHandle<()>) {
        self.spawn(stage, name, async move {
            if let Err(e) = handle.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        });
    }

    fn ended(&mut self, r: Result<(Id, ()), JoinError>) -> Ended {
        let (id, how) = match r {
            Ok((id, ())) => (id, How::Returned),
            Err(e) => {
                let id = e.id();
                let how = if e.is_panic() {
                    How::Panicked(panic_message(e.into_panic()))
                } else {
                    How::Aborted
                };
                (id, how)
            }
        };
        Ended {
            name: self.names.remove(&id).unwrap_or("unnamed"),
            how,
        }
    }

    /// Waits for any task of any stage to end; pending forever when none runs.
    pub async fn next_end(&mut self) -> Ended {
        let r = std::future::poll_fn(|cx| {
            for (_, set) in &mut self.stages {
                if let Poll::Ready(Some(r)) = set.poll_join_next_with_id(cx) {
                    return Poll::Ready(r);
                }
            }
            Poll::Pending
        })
        .await;
        self.ended(r)
    }

    /// Waits up to `within` for every task of `stage` to end, aborting those
    /// that do not; returns those that did not simply return.
    pub async fn stop(&mut self, stage: Stage, within: Duration) -> Vec<Ended> {
        let Some(i) = self.stages.iter().position(|(s, _)| *s == stage) else {
            return Vec::new();
        };
        let mut set = self.stages.remove(i).1;
        let mut bad = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, set.join_next_with_id()).await {
                Ok(None) => break,
                Ok(Some(r)) => {
                    let e = self.ended(r);
                    if !matches!(e.how, How::Returned) {
                        bad.push(e);
                    }
                }
                Err(_) => {
                    tracing::warn!(
                        stage = ?stage,
                        tasks = set.len(),
                        "tasks did not stop within {within:?}; aborting them"
                    );
                    set.abort_all();
                    while let Some(r) = set.join_next_with_id().await {
                        let e = self.ended(r);
                        if !matches!(e.how, How::Returned) {
                            bad.push(e);
                        }
                    }
                    break;
                }
            }
        }
        bad
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_early_end_and_a_panic_are_reported_by_name() {
        let mut t = Tasks::new();
        t.spawn(Stage::First, "forever", std::future::pending());
        t.spawn(Stage::Haproxy, "returns", async {});
        let e = t.next_end().await;
        assert_eq!(e.name, "returns");
        assert!(matches!(e.how, How::Returned));
        t.spawn(Stage::Gossip, "panics", async { panic!("boom") });
        let e = t.next_end().await;
        assert_eq!(e.to_string(), "the panics task panicked: boom");
        let bad = t.stop(Stage::First, Duration::from_millis(50)).await;
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(matches!(bad[0].how, How::Aborted));
        assert_eq!(bad[0].name, "forever");
    }
}
