//! Live events for dashboards and integrations.
//!
//! Devices and commands publish [`Event`]s on the node's [`EventBus`]; every subscriber whose topics match
//! gets it in its own bounded queue (a slow subscriber loses its *oldest* events and is told so, and never
//! slows a device). In cluster mode the bus also publishes each event on `{prefix}:live` in Redis while some
//! other node has a subscriber, and delivers events from other nodes to its local subscribers, so a subscriber
//! sees the whole cluster.
//!
//! Topics: `device:<sn>`, `kind:<tm20|ocpp|sxdm>`, an event type (`attendance`, `enrollment`, `online`,
//! `offline`, `command`, `status`, `meter`, `transaction`), `room:<name>`, and `stats`.

pub mod subscriber;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

/// Events a subscriber may fall behind by before the oldest are dropped for it.
pub const SUBSCRIBER_QUEUE: usize = 1024;

pub const EVENT_TYPES: &[&str] = &[
    "attendance",
    "enrollment",
    "online",
    "offline",
    "command",
    "status",
    "meter",
    "transaction",
    "run",
    "payment",
];
pub const KINDS: &[&str] = &["tm20", "ocpp", "sxdm", "billing"];

/// One event, as subscribers receive it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind_of_event: String,
    pub device: Option<String>,
    pub kind: Option<String>,
    pub node: String,
    pub at: DateTime<Utc>,
    pub data: Value,
    /// Where a targeted `message` goes (`room:<name>` or a topic); not sent to subscribers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Checks a topic's form; the error says what is wrong.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if let Some(sn) = topic.strip_prefix("device:") {
        return (!sn.is_empty() && sn.len() <= 64)
            .then_some(())
            .ok_or_else(|| "device:<sn> needs a serial number".into());
    }
    if let Some(kind) = topic.strip_prefix("kind:") {
        return KINDS
            .contains(&kind)
            .then_some(())
            .ok_or_else(|| format!("kind is one of {}", KINDS.join(", ")));
    }
    if let Some(room) = topic.strip_prefix("room:") {
        return (!room.is_empty() && room.len() <= 64)
            .then_some(())
            .ok_or_else(|| "room:<name> needs a name".into());
    }
    if topic == "stats" || EVENT_TYPES.contains(&topic) {
        return Ok(());
    }
    Err(format!(
        "unknown topic `{topic}`: use device:<sn>, kind:<kind>, room:<name>, stats, or one of {}",
        EVENT_TYPES.join(", ")
    ))
}

/// One subscriber's queue; shared by the bus (producer) and the subscriber's session (consumer).
pub struct Subscription {
    pub id: Uuid,
    topics: RwLock<HashSet<String>>,
    queue: Mutex<VecDeque<Value>>,
    dropped: AtomicU64,
    pub notify: Notify,
}

impl Subscription {
    fn wants(&self, event: &Event) -> bool {
        let Ok(topics) = self.topics.read() else {
            return false;
        };
        if let Some(target) = &event.target {
            return topics.contains(target);
        }
        topics.contains(&event.kind_of_event)
            || event
                .device
                .as_ref()
                .is_some_and(|d| topics.contains(&format!("device:{d}")))
            || event
                .kind
                .as_ref()
                .is_some_and(|k| topics.contains(&format!("kind:{k}")))
    }

    /// Queues an event, dropping the oldest when full.
    pub fn push(&self, event: Value) {
        if let Ok(mut queue) = self.queue.lock() {
            if queue.len() >= SUBSCRIBER_QUEUE {
                queue.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("gatehouse_events_dropped_total").increment(1);
            }
            queue.push_back(event);
        }
        self.notify.notify_one();
    }

    /// Takes up to `max` queued events and the count dropped since the last call.
    pub fn take(&self, max: usize) -> (Vec<Value>, u64) {
        let events = match self.queue.lock() {
            Ok(mut queue) => {
                let n = queue.len().min(max);
                queue.drain(..n).collect()
            }
            Err(_) => Vec::new(),
        };
        (events, self.dropped.swap(0, Ordering::Relaxed))
    }

    pub fn add_dropped(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.lock().map(|q| q.is_empty()).unwrap_or(true)
    }

    /// Puts back events that could not be sent yet, in front.
    pub fn unread(&self, events: Vec<Value>) {
        if let Ok(mut queue) = self.queue.lock() {
            for event in events.into_iter().rev() {
                queue.push_front(event);
            }
        }
    }

    pub fn set_topics(&self, add: &[String], remove: &[String]) {
        if let Ok(mut topics) = self.topics.write() {
            for t in add {
                topics.insert(t.clone());
            }
            for t in remove {
                topics.remove(t);
            }
        }
    }
}

/// Counters behind the `stats` topic.
#[derive(Default)]
pub struct Counters {
    pub commands: AtomicU64,
    pub events: AtomicU64,
}

/// The other nodes of a cluster, as the bus sees them.
pub trait Remote: Send + Sync {
    /// Whether some other node may have a subscriber (`true` while that is not known).
    fn wanted(&self) -> bool;
    /// Carries a locally published event to the other nodes.
    fn publish(&self, event: Event);
    /// This node's subscribers went from none to some (`on`) or back to none; `generation` grows with every
    /// change. Once the other nodes know of an `on`, the remote calls [`EventBus::confirm_listening`] with its
    /// generation (after a timeout, too: a new subscriber waits for that, not forever).
    fn listening(&self, on: bool, generation: u64);
}

/// Longest a new subscriber waits for the other nodes to learn that this node listens. The cluster confirms
/// within 2 s of its notice even when a node does not answer; this bounds the wait when Redis itself stalls
/// (each of the cluster's steps may then take its own 2 s time-out) or a remote never confirms.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The node's event bus; cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

struct BusInner {
    node: String,
    subscribers: RwLock<HashMap<Uuid, Arc<Subscription>>>,
    counters: Counters,
    /// Set in cluster mode: publishes to the other nodes.
    remote: RwLock<Option<Arc<dyn Remote>>>,
    /// Counts changes between "no subscriber" and "some" (see [`Remote::listening`]).
    listening_generation: AtomicU64,
    /// The generation of the last change to "some": a new subscriber is welcomed once it is confirmed.
    listening_since: AtomicU64,
    confirmed: tokio::sync::watch::Sender<u64>,
}

impl EventBus {
    pub fn new(node: String) -> Self {
        EventBus {
            inner: Arc::new(BusInner {
                node,
                subscribers: RwLock::new(HashMap::new()),
                counters: Counters::default(),
                remote: RwLock::new(None),
                listening_generation: AtomicU64::new(0),
                listening_since: AtomicU64::new(0),
                confirmed: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Cluster mode: `remote` carries locally published events to the other nodes while they want them.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        if let Ok(mut slot) = self.inner.remote.write() {
            *slot = Some(remote);
        }
    }

    fn remote(&self) -> Option<Arc<dyn Remote>> {
        self.inner.remote.read().ok().and_then(|r| r.clone())
    }

    /// Adds a subscriber. In a cluster, wait for [`Self::ready`] before telling it that it is subscribed.
    pub fn subscribe(&self) -> Arc<Subscription> {
        let subscription = Arc::new(Subscription {
            id: Uuid::new_v4(),
            topics: RwLock::new(HashSet::new()),
            queue: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
            notify: Notify::new(),
        });
        if let Ok(mut subscribers) = self.inner.subscribers.write() {
            subscribers.insert(subscription.id, Arc::clone(&subscription));
            metrics::gauge!("gatehouse_event_subscribers").set(subscribers.len() as f64);
            if subscribers.len() == 1 {
                // Told under the lock, so the remote sees on/off changes in the order they happened.
                self.listening_changed(true);
            }
        }
        subscription
    }

    pub fn unsubscribe(&self, id: Uuid) {
        if let Ok(mut subscribers) = self.inner.subscribers.write() {
            if subscribers.remove(&id).is_some() && subscribers.is_empty() {
                self.listening_changed(false);
            }
            metrics::gauge!("gatehouse_event_subscribers").set(subscribers.len() as f64);
        }
    }

    fn listening_changed(&self, on: bool) {
        let Some(remote) = self.remote() else {
            return;
        };
        let generation = self
            .inner
            .listening_generation
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if on {
            self.inner
                .listening_since
                .store(generation, Ordering::Relaxed);
        }
        remote.listening(on, generation);
    }

    /// The remote has told the other nodes of the change numbered `generation` (or gave up waiting).
    pub fn confirm_listening(&self, generation: u64) {
        self.inner.confirmed.send_if_modified(|confirmed| {
            let newer = generation > *confirmed;
            if newer {
                *confirmed = generation;
            }
            newer
        });
    }

    /// Resolves once every node publishes its events for this node's subscribers: at once on a single node; in
    /// a cluster when the other nodes have confirmed that this node listens (they skip publishing while no node
    /// has a subscriber). A subscriber told "subscribed" before then could miss an event published after.
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + 'static {
        let wanted = self.inner.listening_since.load(Ordering::Relaxed);
        let mut confirmed = self.inner.confirmed.subscribe();
        async move {
            if *confirmed.borrow() >= wanted {
                return;
            }
            let timed_out = tokio::time::timeout(READY_WAIT, confirmed.wait_for(|c| *c >= wanted))
                .await
                .is_err();
            if timed_out {
                tracing::warn!("the cluster did not confirm a new subscriber in time");
            }
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.inner.subscribers.read().map(|s| s.len()).unwrap_or(0)
    }

    /// Publishes an event of this node: to local subscribers and (cluster mode) to the other nodes.
    pub fn publish(
        &self,
        kind_of_event: &str,
        device: Option<&str>,
        kind: Option<&str>,
        data: Value,
    ) {
        self.publish_with(kind_of_event, device, kind, move || data);
    }

    /// [`Self::publish`] with the data built only when someone can receive the event: on a node with no
    /// subscriber and no cluster, every command and attendance record used to build (and clone) an event's
    /// JSON only to drop it. The event still counts (`stats` topic).
    pub fn publish_with(
        &self,
        kind_of_event: &str,
        device: Option<&str>,
        kind: Option<&str>,
        data: impl FnOnce() -> Value,
    ) {
        if !self.listened() {
            self.inner.counters.events.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let event = Event {
            kind_of_event: kind_of_event.to_owned(),
            device: device.map(str::to_owned),
            kind: kind.map(str::to_owned),
            node: self.inner.node.clone(),
            at: Utc::now(),
            data: data(),
            target: None,
        };
        self.publish_event(event);
    }

    /// Whether a published event can reach anyone: a local subscriber, or one on another node of a cluster.
    fn listened(&self) -> bool {
        self.subscriber_count() > 0 || self.remote().is_some_and(|remote| remote.wanted())
    }

    /// A `command` event for a state change short of the outcome (`queued`, `sent`, `expired`, `cancelled`).
    pub fn command_state(&self, device: &str, kind: &str, id: Uuid, command: &str, state: &str) {
        self.publish_with(
            "command",
            Some(device),
            Some(kind),
            || serde_json::json!({"id": id, "command": command, "state": state}),
        );
    }

    /// Publishes a prepared event locally and to the other nodes.
    pub fn publish_event(&self, event: Event) {
        self.deliver_local(&event);
        if let Some(remote) = self.remote().filter(|remote| remote.wanted()) {
            remote.publish(event);
        }
    }

    /// Delivers an event to this node's matching subscribers; returns how many got it.
    pub fn deliver_local(&self, event: &Event) -> usize {
        self.inner.counters.events.fetch_add(1, Ordering::Relaxed);
        let Ok(subscribers) = self.inner.subscribers.read() else {
            return 0;
        };
        if subscribers.is_empty() {
            return 0;
        }
        let Ok(json) = serde_json::to_value(event) else {
            return 0;
        };
        let mut delivered = 0;
        for subscription in subscribers.values() {
            if subscription.wants(event) {
                subscription.push(json.clone());
                delivered += 1;
            }
        }
        metrics::counter!("gatehouse_events_sent_total").increment(delivered as u64);
        delivered
    }

    /// Delivers a `message` to one local subscriber; `false` when it is not connected here.
    pub fn deliver_to(&self, subscriber: Uuid, event: &Event) -> bool {
        let found = self
            .inner
            .subscribers
            .read()
            .ok()
            .and_then(|s| s.get(&subscriber).cloned());
        match (found, serde_json::to_value(event)) {
            (Some(subscription), Ok(json)) => {
                subscription.push(json);
                true
            }
            _ => false,
        }
    }
}

/// What crosses the cluster on the live-events channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteEvent {
    pub event: Event,
    /// A targeted push to one subscriber (delivered by the node that holds it).
    #[serde(default)]
    pub subscriber: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn topics_are_validated() {
        for ok in [
            "device:SN1",
            "kind:ocpp",
            "room:lobby",
            "stats",
            "attendance",
            "transaction",
        ] {
            assert_eq!(validate_topic(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "device:",
            "kind:toaster",
            "room:",
            "weather",
            "ATTENDANCE",
        ] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_and_lagging() {
        let bus = EventBus::new("n1".into());
        let door = bus.subscribe();
        door.set_topics(&["device:SN1".into()], &[]);
        let all = bus.subscribe();
        all.set_topics(&["attendance".into(), "kind:ocpp".into()], &[]);
        bus.publish(
            "attendance",
            Some("SN1"),
            Some("tm20"),
            json!({"enrollid": 1}),
        );
        bus.publish("status", Some("CP1"), Some("ocpp"), json!({}));
        bus.publish("online", Some("SN2"), Some("tm20"), json!({}));
        assert_eq!(door.take(10).0.len(), 1);
        assert_eq!(all.take(10).0.len(), 2);
        for i in 0..(SUBSCRIBER_QUEUE + 5) {
            bus.publish("attendance", Some("SN1"), Some("tm20"), json!({"i": i}));
        }
        let (events, dropped) = door.take(usize::MAX);
        assert_eq!(events.len(), SUBSCRIBER_QUEUE);
        assert_eq!(dropped, 5);
        assert_eq!(events[0]["data"]["i"], 5, "the oldest were dropped");
        bus.unsubscribe(door.id);
        assert_eq!(bus.subscriber_count(), 1);
    }

    #[test]
    fn event_data_is_built_only_when_someone_can_receive_it() {
        let bus = EventBus::new("n1".into());
        let built = std::cell::Cell::new(0);
        let data = || {
            built.set(built.get() + 1);
            json!({"enrollid": 1})
        };
        bus.publish_with("attendance", Some("SN1"), Some("tm20"), data);
        assert_eq!(
            built.get(),
            0,
            "no subscriber, no cluster: nothing to build"
        );
        assert_eq!(
            bus.counters().events.load(Ordering::Relaxed),
            1,
            "still counted"
        );

        let sub = bus.subscribe();
        sub.set_topics(&["attendance".into()], &[]);
        bus.publish_with("attendance", Some("SN1"), Some("tm20"), data);
        assert_eq!(built.get(), 1);
        assert_eq!(sub.take(10).0.len(), 1);
        bus.unsubscribe(sub.id);

        // In a cluster the other nodes may have subscribers: the event is built and carried only while they do.
        let remote = Arc::new(FakeRemote::default());
        bus.set_remote(remote.clone());
        bus.publish_with("attendance", Some("SN1"), Some("tm20"), data);
        assert_eq!((built.get(), remote.carried()), (1, 0));
        remote.wanted.store(true, Ordering::Relaxed);
        bus.publish_with("attendance", Some("SN1"), Some("tm20"), data);
        assert_eq!((built.get(), remote.carried()), (2, 1));
        assert_eq!(bus.counters().events.load(Ordering::Relaxed), 4);
    }

    /// Records what the bus tells the other nodes.
    #[derive(Default)]
    struct FakeRemote {
        wanted: std::sync::atomic::AtomicBool,
        events: Mutex<Vec<Event>>,
        changes: Mutex<Vec<(bool, u64)>>,
    }

    impl FakeRemote {
        fn carried(&self) -> usize {
            self.events.lock().unwrap().len()
        }
    }

    impl Remote for FakeRemote {
        fn wanted(&self) -> bool {
            self.wanted.load(Ordering::Relaxed)
        }
        fn publish(&self, event: Event) {
            self.events.lock().unwrap().push(event);
        }
        fn listening(&self, on: bool, generation: u64) {
            self.changes.lock().unwrap().push((on, generation));
        }
    }

    #[tokio::test]
    async fn a_new_subscriber_is_ready_once_the_cluster_knows_this_node_listens() {
        let single = EventBus::new("n1".into());
        let _alone = single.subscribe();
        tokio::time::timeout(Duration::from_millis(100), single.ready())
            .await
            .expect("a single node is ready at once");

        let bus = EventBus::new("n1".into());
        let remote = Arc::new(FakeRemote::default());
        bus.set_remote(remote.clone());
        let first = bus.subscribe();
        let ready = bus.ready();
        let second = bus.subscribe();
        assert_eq!(
            *remote.changes.lock().unwrap(),
            vec![(true, 1)],
            "only the first one is a change"
        );
        let mut ready = Box::pin(ready);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut ready)
                .await
                .is_err(),
            "not ready before the cluster confirmed"
        );
        bus.confirm_listening(1);
        tokio::time::timeout(Duration::from_millis(100), ready)
            .await
            .expect("ready after the confirmation");
        tokio::time::timeout(Duration::from_millis(100), bus.ready())
            .await
            .expect("later subscribers need no new confirmation");

        bus.unsubscribe(first.id);
        bus.unsubscribe(second.id);
        bus.unsubscribe(second.id);
        let _third = bus.subscribe();
        assert_eq!(
            *remote.changes.lock().unwrap(),
            vec![(true, 1), (false, 2), (true, 3)]
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), bus.ready())
                .await
                .is_err(),
            "listening again is a new change to confirm"
        );
        bus.confirm_listening(3);
        tokio::time::timeout(Duration::from_millis(100), bus.ready())
            .await
            .expect("confirmed");
    }
}
