//! Which other nodes have live-event subscribers, so that a node publishes its events on `{p}:live` only while
//! some node listens. With nobody listening, a forwarded command used to publish about four events that every
//! node then parsed and dropped (a sixth of the cluster's CPU per command, measured in BENCHMARKS.md).
//!
//! Each node keeps `{p}:listening:{node}` (`<stamp>:<0|1>`) beside its announcement and publishes
//! [`ClusterEvent::Listening`](super::ClusterEvent::Listening) on every change. A node's notices arrive in the
//! order it sent them, so a notice always replaces what is known of that node; a key read at a heartbeat may
//! be older than a notice that came meanwhile, so it counts only when its stamp is newer (stamps grow: they
//! start at the node's start time in microseconds). A node that gains its first subscriber welcomes it only
//! after every live node has answered `ListeningSeen`: from then on they publish for it, so it misses nothing
//! published after its welcome. A node that cannot know (just started, or its Redis subscription broke and
//! notices may have been lost) publishes everything until its next heartbeat has read every node's key again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The other nodes' listening state as this node knows it.
pub struct Directory {
    state: Mutex<State>,
    /// `!known || some node listens`, kept beside the state so the per-event check is one load.
    wanted: AtomicBool,
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, Entry>,
    known: bool,
}

struct Entry {
    /// Of the node's last change; 0 for a node assumed to listen (one without a key).
    stamp: u64,
    on: bool,
    /// When a notice or a reading last said something of the node.
    heard: Instant,
}

impl Default for Directory {
    fn default() -> Self {
        Directory {
            state: Mutex::new(State::default()),
            wanted: AtomicBool::new(true),
        }
    }
}

impl Directory {
    /// Whether this node's events should go to the other nodes.
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let Ok(mut state) = self.state.lock() else {
            self.wanted.store(true, Ordering::Relaxed);
            return;
        };
        change(&mut state);
        let wanted = !state.known || state.nodes.values().any(|entry| entry.on);
        self.wanted.store(wanted, Ordering::Relaxed);
    }

    /// A notice from `node`: what it says now.
    pub fn notice(&self, node: &str, stamp: u64, on: bool) {
        self.update(|state| {
            let heard = Instant::now();
            state
                .nodes
                .insert(node.to_owned(), Entry { stamp, on, heard });
        });
    }

    /// `node`'s key as read at a heartbeat: kept unless a newer change is known.
    pub fn read(&self, node: &str, stamp: u64, on: bool) {
        self.update(|state| {
            let heard = Instant::now();
            match state.nodes.get_mut(node) {
                Some(known) if known.stamp >= stamp => known.heard = heard,
                Some(known) => *known = Entry { stamp, on, heard },
                None => {
                    state
                        .nodes
                        .insert(node.to_owned(), Entry { stamp, on, heard });
                }
            }
        });
    }

    /// A live node without a key (a node of an older version): assume it listens.
    pub fn assume_listening(&self, node: &str) {
        self.update(|state| {
            let heard = Instant::now();
            state
                .nodes
                .entry(node.to_owned())
                .and_modify(|entry| entry.heard = heard)
                .or_insert(Entry {
                    stamp: 0,
                    on: true,
                    heard,
                });
        });
    }

    /// Whether `node` is only assumed to listen (it has no key: it will not answer a notice either).
    pub fn assumed(&self, node: &str) -> bool {
        self.state
            .lock()
            .map(|state| state.nodes.get(node).is_some_and(|entry| entry.stamp == 0))
            .unwrap_or(false)
    }

    /// Drops nodes not heard of for `quiet`: a node that left while a reading of its key was on the way
    /// would otherwise stay, listening, for good.
    pub fn forget_quiet(&self, quiet: Duration) {
        self.update(|state| state.nodes.retain(|_, entry| entry.heard.elapsed() < quiet));
    }

    /// `node` is gone.
    pub fn forget(&self, node: &str) {
        self.update(|state| {
            state.nodes.remove(node);
        });
    }

    /// Whether every notice since the last reading of the keys has been seen.
    pub fn set_known(&self, known: bool) {
        self.update(|state| state.known = known);
    }
}

/// `<stamp>:<0|1>`, the value of `{p}:listening:{node}`.
pub fn encode(stamp: u64, on: bool) -> String {
    format!("{stamp}:{}", u8::from(on))
}

pub fn decode(value: &str) -> Option<(u64, bool)> {
    let (stamp, on) = value.split_once(':')?;
    let on = match on {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    Some((stamp.parse().ok()?, on))
}

/// This node's changes waiting for the other nodes' `ListeningSeen`.
#[derive(Default)]
pub struct Acks {
    waiting: Mutex<HashMap<u64, Waiting>>,
}

struct Waiting {
    nodes: HashSet<String>,
    done: oneshot::Sender<()>,
}

impl Acks {
    /// Waits for `nodes` to see the change `stamp`; resolves at once when there are none.
    pub fn expect(&self, stamp: u64, nodes: HashSet<String>) -> oneshot::Receiver<()> {
        let (done, seen) = oneshot::channel();
        if nodes.is_empty() {
            let _ = done.send(());
        } else if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(stamp, Waiting { nodes, done });
        }
        seen
    }

    /// `node` has seen the change `stamp`.
    pub fn seen(&self, stamp: u64, node: &str) {
        self.settle(|waiting| {
            if let Some(wait) = waiting.get_mut(&stamp) {
                wait.nodes.remove(node);
            }
        });
    }

    /// `node` is gone: nobody waits for it any more.
    pub fn forget_node(&self, node: &str) {
        self.settle(|waiting| {
            for wait in waiting.values_mut() {
                wait.nodes.remove(node);
            }
        });
    }

    /// Stops waiting for `stamp` (timed out).
    pub fn cancel(&self, stamp: u64) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.remove(&stamp);
        }
    }

    fn settle(&self, change: impl FnOnce(&mut HashMap<u64, Waiting>)) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        change(&mut waiting);
        let complete: Vec<u64> = waiting
            .iter()
            .filter(|(_, wait)| wait.nodes.is_empty())
            .map(|(stamp, _)| *stamp)
            .collect();
        for stamp in complete {
            if let Some(wait) = waiting.remove(&stamp) {
                let _ = wait.done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_changes_win_and_unknown_means_wanted() {
        let directory = Directory::default();
        assert!(directory.wanted(), "not known yet: publish everything");
        directory.set_known(true);
        assert!(!directory.wanted(), "nobody listens");
        directory.notice("b", 10, true);
        assert!(directory.wanted());
        directory.read("b", 9, false);
        assert!(
            directory.wanted(),
            "a stale read does not undo a newer notice"
        );
        directory.read("b", 11, false);
        assert!(!directory.wanted(), "a newer read counts");
        directory.notice("b", 5, true);
        assert!(
            directory.wanted(),
            "a notice is the node's latest word, whatever its clock says"
        );
        directory.notice("b", 6, false);
        directory.assume_listening("b");
        assert!(!directory.wanted(), "b's own state is known");
        assert!(!directory.assumed("b"));
        directory.assume_listening("old");
        assert!(directory.wanted(), "a node without a key may listen");
        assert!(directory.assumed("old"));
        directory.forget("old");
        assert!(!directory.wanted());
        directory.notice("gone", 1, true);
        std::thread::sleep(Duration::from_millis(20));
        directory.read("b", 6, false);
        directory.forget_quiet(Duration::from_millis(10));
        assert!(
            !directory.wanted(),
            "a node not heard of for long is dropped"
        );
        directory.set_known(false);
        assert!(directory.wanted(), "notices may have been missed");
    }

    #[test]
    fn stamps_round_trip() {
        assert_eq!(
            decode(&encode(1_733_000_000_000_001, true)),
            Some((1_733_000_000_000_001, true))
        );
        assert_eq!(decode(&encode(7, false)), Some((7, false)));
        for bad in ["", "7", "7:2", "x:1", ":1"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_change_is_seen_when_every_node_answered_or_left() {
        let acks = Acks::default();
        acks.expect(1, HashSet::new())
            .await
            .expect("nobody to wait for");
        let mut seen = acks.expect(2, ["b".to_owned(), "c".to_owned()].into());
        acks.seen(2, "b");
        acks.seen(3, "c");
        assert!(seen.try_recv().is_err(), "c has not answered change 2");
        acks.forget_node("c");
        seen.await.expect("b answered and c is gone");
        let mut cancelled = acks.expect(4, ["b".to_owned()].into());
        acks.cancel(4);
        assert!(cancelled.try_recv().is_err());
    }
}
