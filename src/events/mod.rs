//! Live events for dashboards and integrations.
//!
//! Devices and commands publish [`Event`]s on the node's [`EventBus`]; every subscriber whose topics match
//! gets it in its own bounded queue (a slow subscriber loses its *oldest* events and is told so, and never
//! slows a device). In cluster mode the bus also publishes each event on `{prefix}:live` in Redis, and
//! delivers events from other nodes to its local subscribers, so a subscriber sees the whole cluster.
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

/// Carries a locally published event to the other nodes of a cluster.
pub type RemotePublisher = Arc<dyn Fn(Event) + Send + Sync>;

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
    remote: RwLock<Option<RemotePublisher>>,
}

impl EventBus {
    pub fn new(node: String) -> Self {
        EventBus {
            inner: Arc::new(BusInner {
                node,
                subscribers: RwLock::new(HashMap::new()),
                counters: Counters::default(),
                remote: RwLock::new(None),
            }),
        }
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Cluster mode: `remote` carries every locally published event to the other nodes.
    pub fn set_remote(&self, remote: RemotePublisher) {
        if let Ok(mut slot) = self.inner.remote.write() {
            *slot = Some(remote);
        }
    }

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
        }
        subscription
    }

    pub fn unsubscribe(&self, id: Uuid) {
        if let Ok(mut subscribers) = self.inner.subscribers.write() {
            subscribers.remove(&id);
            metrics::gauge!("gatehouse_event_subscribers").set(subscribers.len() as f64);
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

    /// Whether a published event can reach anyone: a local subscriber, or the other nodes of a cluster.
    fn listened(&self) -> bool {
        self.subscriber_count() > 0
            || self
                .inner
                .remote
                .read()
                .map(|remote| remote.is_some())
                .unwrap_or(true)
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
        let remote = self.inner.remote.read().ok().and_then(|r| r.clone());
        if let Some(remote) = remote {
            remote(event);
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

        // In a cluster the other nodes may have subscribers.
        let carried = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&carried);
        bus.set_remote(Arc::new(move |_event| {
            count.fetch_add(1, Ordering::Relaxed);
        }));
        bus.publish_with("attendance", Some("SN1"), Some("tm20"), data);
        assert_eq!((built.get(), carried.load(Ordering::Relaxed)), (2, 1));
        assert_eq!(bus.counters().events.load(Ordering::Relaxed), 3);
    }
}
