//! Cluster mode (on when `REDIS_URL` is set): several nodes share a directory of which node holds which device,
//! and forward REST commands to the owner over Redis pub/sub.
//!
//! Redis layout, every name under `REDIS_PREFIX`:
//! - `{p}:route:{sn}`: JSON [`Route`] (node, epoch, …) with a TTL the owner refreshes while the socket lives;
//! - `{p}:epoch:{sn}`: the serial number's connection counter (`INCR`-like, raised by [`scripts::CLAIM`]);
//! - `{p}:nodedevs:{node}`: the serial numbers a node holds (for listings and dead-node clean-up);
//! - `{p}:node:{node}`: JSON [`NodeInfo`] with a TTL; `{p}:nodes`: sorted set node → last heartbeat (ms);
//! - `{p}:listening:{node}`: whether the node has live-event subscribers (see [`listeners`]), same TTL;
//! - channels `{p}:cmd:{node}` (requests to a node), `{p}:reply:{node}` (answers to a node), `{p}:events`
//!   and `{p}:live`. A message on the last two is one JSON event or a JSON array of events: a node's
//!   registrations and live events go out through one publisher task that puts everything waiting into one
//!   message per channel (a reconnect storm of 100,000 devices was 200,000 PUBLISHes, each fanned out to every
//!   node, and timed out).
//!
//! Owned by `startup::Application`; its two tasks (subscriber and heartbeat) live until the node stops.

mod listeners;
pub mod messages;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use actix::Addr;
use chrono::Utc;
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::config::Settings;
use crate::registry::{ConnectionInfo, RefreshRoutes, Registry, RemoteRegistered};
pub use messages::{ClusterEvent, ForwardOutcome, ForwardReply, ForwardRequest, NodeInfo, Route};

/// How long one Redis round trip may take before the call counts as failed (Redis is local to the cluster).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Events waiting for the publisher task; beyond this they are dropped (events are advisory: the directory is
/// the truth) and counted in `gatehouse_cluster_events_dropped_total`.
const PUBLISH_QUEUE: usize = 16_384;
/// Most events in one published message.
const PUBLISH_BATCH: usize = 512;

/// The two batched channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topic {
    Events,
    Live,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
    #[error("malformed cluster data: {0}")]
    Data(#[from] serde_json::Error),
}

/// Why a forwarded command got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("node {0} holding the device is not responding")]
    NodeDown(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("no answer from node {0} before the deadline")]
    Deadline(String),
}

/// Result of claiming a route.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    Owned(u64),
    /// A newer connection on `node` holds the serial number.
    Lost {
        epoch: u64,
        node: String,
    },
}

/// Runs a forwarded command on this node and produces the answer to publish.
pub type Executor =
    Arc<dyn Fn(ForwardRequest) -> LocalBoxFuture<'static, ForwardOutcome> + Send + Sync>;

/// Where the answer to one forwarded command goes.
type ReplySlot = oneshot::Sender<Result<ForwardOutcome, ForwardError>>;

/// Cheap to clone handle.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: String,
    name: String,
    address: String,
    started_at: chrono::DateTime<Utc>,
    prefix: String,
    route_ttl: Duration,
    heartbeat: Duration,
    client: redis::Client,
    conn: ConnectionManager,
    claim: Script,
    release: Script,
    release_node: Script,
    /// Forwarded commands waiting for an answer: correlation → (target node, reply slot).
    pending: Mutex<HashMap<Uuid, (String, ReplySlot)>>,
    /// Nodes seen alive at the last heartbeat.
    live: RwLock<HashSet<String>>,
    /// Nodes known to be gone (stopped announcing, or left); cleared when one announces again. Requests to
    /// them fail at once. A node merely not seen *yet* is not in here: it may have just started.
    dead: RwLock<HashSet<String>>,
    /// Local devices, refreshed by the registry, for the announcement.
    devices: std::sync::atomic::AtomicUsize,
    registry: OnceLock<Addr<Registry>>,
    /// Local live-events bus: events from other nodes are delivered to its subscribers.
    events: OnceLock<crate::events::EventBus>,
    leaving: AtomicBool,
    /// The publisher task's queue (set by `start`).
    outgoing: OnceLock<tokio::sync::mpsc::Sender<(Topic, String)>>,
    /// Which other nodes have live-event subscribers.
    listeners: listeners::Directory,
    /// This node's listening changes waiting for the other nodes to see them.
    acks: listeners::Acks,
    /// This node's own listening state as announced: (stamp, on).
    listening: Mutex<(u64, bool)>,
    /// Held while writing `{p}:listening:{node}`, so a heartbeat cannot overwrite a newer change with the older
    /// state it read before.
    listening_key: tokio::sync::Mutex<()>,
    /// Stamps are this plus the event bus's change count, so they grow across restarts.
    stamp_base: u64,
    /// The event bus's listening changes (on, generation), for the task that announces them.
    listening_changes: tokio::sync::mpsc::UnboundedSender<(bool, u64)>,
    listening_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(bool, u64)>>>,
    /// Raised at every (re)subscription to Redis; `subscribed` while the subscription lives. A reading of the
    /// listening keys makes the directory known only if no subscription ended meanwhile.
    subscription_generation: std::sync::atomic::AtomicU64,
    subscribed: AtomicBool,
}

impl Cluster {
    /// Prepares the Redis connections (lazily: a node starts even while Redis is down, and connects when it
    /// comes up).
    ///
    /// # Errors
    /// When `REDIS_URL` is malformed.
    pub fn new(
        settings: &Settings,
        redis_url: &str,
        bound: std::net::SocketAddr,
    ) -> Result<Cluster, ClusterError> {
        let client = redis::Client::open(redis_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let node_id = settings
            .node_id
            .clone()
            .filter(|id| !id.trim().is_empty())
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let name = settings.node_name.clone().unwrap_or_else(host_name);
        let address = settings
            .advertise_addr
            .clone()
            .unwrap_or_else(|| bound.to_string());
        let stamp_base = u64::try_from(Utc::now().timestamp_micros()).unwrap_or(0);
        let (listening_changes, listening_queue) = tokio::sync::mpsc::unbounded_channel();
        Ok(Cluster {
            inner: Arc::new(Inner {
                node_id,
                name,
                address,
                started_at: Utc::now(),
                prefix: settings.redis_prefix.clone(),
                route_ttl: settings.cluster_route_ttl,
                heartbeat: settings.cluster_heartbeat_interval,
                client,
                conn,
                claim: Script::new(scripts::CLAIM),
                release: Script::new(scripts::RELEASE),
                release_node: Script::new(scripts::RELEASE_NODE),
                pending: Mutex::new(HashMap::new()),
                live: RwLock::new(HashSet::new()),
                dead: RwLock::new(HashSet::new()),
                devices: std::sync::atomic::AtomicUsize::new(0),
                registry: OnceLock::new(),
                events: OnceLock::new(),
                leaving: AtomicBool::new(false),
                outgoing: OnceLock::new(),
                listeners: listeners::Directory::default(),
                acks: listeners::Acks::default(),
                listening: Mutex::new((stamp_base, false)),
                listening_key: tokio::sync::Mutex::new(()),
                stamp_base,
                listening_changes,
                listening_queue: Mutex::new(Some(listening_queue)),
                subscription_generation: std::sync::atomic::AtomicU64::new(0),
                subscribed: AtomicBool::new(false),
            }),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn route_ttl(&self) -> Duration {
        self.inner.route_ttl
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.inner.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Connects the node's live-events bus: local events go to the other nodes on `{prefix}:live` while some
    /// node has a subscriber, and theirs come to local subscribers.
    pub fn attach_events(&self, bus: crate::events::EventBus) {
        bus.set_remote(Arc::new(LiveRemote(self.clone())));
        let _ = self.inner.events.set(bus);
    }

    /// Publishes a live event (or a push to one subscriber) to every node.
    pub fn publish_live(&self, event: &crate::events::Event, subscriber: Option<Uuid>) {
        let payload = crate::events::RemoteEvent {
            event: event.clone(),
            subscriber,
        };
        match serde_json::to_string(&payload) {
            Ok(text) => self.enqueue(Topic::Live, text),
            Err(err) => tracing::debug!(%err, "could not encode a live event for the cluster"),
        }
    }

    /// Queues a device's `Registered` / `Gone` event for the publisher task (see the module notes).
    pub fn queue_event(&self, event: &ClusterEvent) {
        match serde_json::to_string(event) {
            Ok(text) => self.enqueue(Topic::Events, text),
            Err(err) => tracing::warn!(%err, ?event, "could not encode a cluster event"),
        }
    }

    fn enqueue(&self, topic: Topic, text: String) {
        // Before `start` there is no device and no subscriber to publish for.
        let Some(queue) = self.inner.outgoing.get() else {
            return;
        };
        if queue.try_send((topic, text)).is_err() {
            metrics::counter!("gatehouse_cluster_events_dropped_total").increment(1);
            tracing::debug!(?topic, "cluster event queue full; event dropped");
        }
    }

    /// Publishes what is queued: everything waiting (up to [`PUBLISH_BATCH`]) in one message per channel, both
    /// in one round trip. While a round trip is in flight the next batch gathers, so an idle node publishes at
    /// once and a busy one in few large messages.
    async fn publisher(self, mut queue: tokio::sync::mpsc::Receiver<(Topic, String)>) {
        let channels = (self.key(&["events"]), self.key(&["live"]));
        let mut events = Vec::new();
        let mut live = Vec::new();
        while let Some(first) = queue.recv().await {
            let mut next = Some(first);
            while let Some((topic, text)) = next.take() {
                match topic {
                    Topic::Events => events.push(text),
                    Topic::Live => live.push(text),
                }
                if events.len() + live.len() < PUBLISH_BATCH {
                    next = queue.try_recv().ok();
                }
            }
            let mut pipe = redis::pipe();
            for (channel, batch) in [(&channels.0, &events), (&channels.1, &live)] {
                if !batch.is_empty() {
                    pipe.cmd("PUBLISH")
                        .arg(channel)
                        .arg(coalesce(batch))
                        .ignore();
                }
            }
            let mut conn = self.conn();
            if let Err(err) = timed(pipe.query_async::<()>(&mut conn)).await {
                tracing::warn!(%err, events = events.len(), live = live.len(), "could not publish cluster events");
            }
            events.clear();
            live.clear();
        }
    }

    fn on_live(&self, payload: &str) {
        let Some(bus) = self.inner.events.get() else {
            return;
        };
        let Some(batch) = uncoalesce::<crate::events::RemoteEvent>(payload) else {
            tracing::warn!("malformed live event dropped");
            return;
        };
        for remote in batch {
            self.on_live_one(bus, remote);
        }
    }

    fn on_live_one(&self, bus: &crate::events::EventBus, remote: crate::events::RemoteEvent) {
        match remote.subscriber {
            Some(id) => {
                bus.deliver_to(id, &remote.event);
            }
            // Our own events were delivered locally when published.
            None if remote.event.node == self.inner.node_id => {}
            None => {
                bus.deliver_local(&remote.event);
            }
        }
    }

    /// Starts the subscriber and heartbeat tasks on the current actix arbiter.
    pub fn start(&self, registry: Addr<Registry>, executor: Executor) {
        let _ = self.inner.registry.set(registry);
        let (tx, rx) = tokio::sync::mpsc::channel(PUBLISH_QUEUE);
        if self.inner.outgoing.set(tx).is_ok() {
            actix_rt::spawn(self.clone().publisher(rx));
        }
        if let Some(changes) = self
            .inner
            .listening_queue
            .lock()
            .ok()
            .and_then(|mut q| q.take())
        {
            actix_rt::spawn(self.clone().announce_listening(changes));
        }
        actix_rt::spawn(self.clone().subscriber(executor));
        actix_rt::spawn(self.clone().heartbeat_loop());
    }

    // ---- directory ------------------------------------------------------------------------------------

    /// Claims (`known_epoch == 0`: a new connection) or refreshes the route of a local device.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn claim(
        &self,
        info: &ConnectionInfo,
        known_epoch: u64,
    ) -> Result<Claim, ClusterError> {
        let route = Route {
            node: self.inner.node_id.clone(),
            epoch: known_epoch,
            protocol: info.protocol.to_owned(),
            remote_addr: info.remote_addr.clone(),
            connected_at: info.connected_at,
        };
        let mut invocation = self.inner.claim.prepare_invoke();
        invocation
            .key(self.key(&["route", &info.sn]))
            .key(self.key(&["epoch", &info.sn]))
            .key(self.key(&["nodedevs", &self.inner.node_id]))
            .arg(serde_json::to_string(&route)?)
            .arg(self.inner.route_ttl.as_secs().max(1))
            .arg(&info.sn)
            .arg(known_epoch);
        let mut conn = self.conn();
        let (owned, epoch, node): (i64, u64, String) =
            timed(invocation.invoke_async(&mut conn)).await?;
        Ok(if owned == 1 {
            Claim::Owned(epoch)
        } else {
            Claim::Lost { epoch, node }
        })
    }

    /// Removes a local device's route if it is still (this node, `epoch`).
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn release(&self, sn: &str, epoch: u64) -> Result<bool, ClusterError> {
        let mut invocation = self.inner.release.prepare_invoke();
        invocation
            .key(self.key(&["route", sn]))
            .key(self.key(&["nodedevs", &self.inner.node_id]))
            .arg(&self.inner.node_id)
            .arg(epoch)
            .arg(sn);
        let mut conn = self.conn();
        let removed: i64 = timed(invocation.invoke_async(&mut conn)).await?;
        Ok(removed == 1)
    }

    /// The route of a serial number, if any node holds it.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn route(&self, sn: &str) -> Result<Option<Route>, ClusterError> {
        let mut conn = self.conn();
        let value: Option<String> = timed(
            redis::cmd("GET")
                .arg(self.key(&["route", sn]))
                .query_async(&mut conn),
        )
        .await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Routes of many serial numbers at once.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn routes(&self, sns: &[String]) -> Result<HashMap<String, Route>, ClusterError> {
        let mut found = HashMap::new();
        let mut conn = self.conn();
        for chunk in sns.chunks(1000) {
            let keys: Vec<String> = chunk.iter().map(|sn| self.key(&["route", sn])).collect();
            let values: Vec<Option<String>> =
                timed(redis::cmd("MGET").arg(&keys).query_async(&mut conn)).await?;
            for (sn, value) in chunk.iter().zip(values) {
                if let Some(route) = value.and_then(|v| serde_json::from_str::<Route>(&v).ok()) {
                    found.insert(sn.clone(), route);
                }
            }
        }
        Ok(found)
    }

    /// Every device held by a live node, with its route.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn connected(&self) -> Result<Vec<(String, Route)>, ClusterError> {
        let mut conn = self.conn();
        let mut all = Vec::new();
        for node in self.live_nodes().await? {
            let sns: Vec<String> = timed(
                redis::cmd("SMEMBERS")
                    .arg(self.key(&["nodedevs", &node]))
                    .query_async(&mut conn),
            )
            .await?;
            let routes = self.routes(&sns).await?;
            all.extend(routes.into_iter().filter(|(_, route)| route.node == node));
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// Publishes a cluster event; failures are logged (events are advisory: the directory is the truth).
    pub async fn publish_event(&self, event: &ClusterEvent) {
        let channel = self.key(&["events"]);
        let result = async {
            let payload = serde_json::to_string(event)?;
            let mut conn = self.conn();
            let _: i64 = timed(
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(payload)
                    .query_async(&mut conn),
            )
            .await?;
            Ok::<_, ClusterError>(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(%err, ?event, "could not publish a cluster event");
        }
    }

    // ---- nodes ----------------------------------------------------------------------------------------

    async fn live_nodes(&self) -> Result<Vec<String>, ClusterError> {
        let cutoff = Utc::now().timestamp_millis() - self.dead_after().as_millis() as i64;
        let mut conn = self.conn();
        let nodes: Vec<String> = timed(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.key(&["nodes"]))
                .arg(cutoff)
                .arg("+inf")
                .query_async(&mut conn),
        )
        .await?;
        Ok(nodes)
    }

    /// Live nodes with their announcements.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let ids = self.live_nodes().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(&["node", id])).collect();
        let mut conn = self.conn();
        let values: Vec<Option<String>> =
            timed(redis::cmd("MGET").arg(&keys).query_async(&mut conn)).await?;
        let mut nodes: Vec<NodeInfo> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    fn dead_after(&self) -> Duration {
        self.inner.heartbeat * 3
    }

    /// Whether `node` is known to be gone.
    pub fn is_dead(&self, node: &str) -> bool {
        self.inner
            .dead
            .read()
            .map(|dead| dead.contains(node))
            .unwrap_or(false)
    }

    fn mark_dead(&self, node: &str) {
        if let Ok(mut dead) = self.inner.dead.write() {
            dead.insert(node.to_owned());
        }
        if let Ok(mut live) = self.inner.live.write() {
            live.remove(node);
        }
        self.forget_listener(node);
        self.fail_pending_for(node);
    }

    fn forget_listener(&self, node: &str) {
        self.inner.listeners.forget(node);
        self.inner.acks.forget_node(node);
    }

    pub fn set_local_devices(&self, count: usize) {
        self.inner.devices.store(count, Ordering::Relaxed);
    }

    /// How long `{p}:node:{id}` and `{p}:listening:{id}` outlive the node's last heartbeat.
    fn announcement_ttl_ms(&self) -> u64 {
        self.dead_after().as_millis() as u64 + 1000
    }

    /// Adds the SET of this node's listening key (`stamp`, `on`) to `pipe`.
    fn set_listening_key(&self, pipe: &mut redis::Pipeline, stamp: u64, on: bool) {
        pipe.cmd("SET")
            .arg(self.key(&["listening", &self.inner.node_id]))
            .arg(listeners::encode(stamp, on))
            .arg("PX")
            .arg(self.announcement_ttl_ms())
            .ignore();
    }

    async fn announce(&self) -> Result<(), ClusterError> {
        let now = Utc::now();
        let info = NodeInfo {
            node: self.inner.node_id.clone(),
            name: self.inner.name.clone(),
            address: self.inner.address.clone(),
            started_at: self.inner.started_at,
            devices: self.inner.devices.load(Ordering::Relaxed),
            last_seen: now,
        };
        let ttl_ms = self.announcement_ttl_ms();
        let _key = self.inner.listening_key.lock().await;
        let (stamp, on) = self.own_listening();
        let mut pipe = redis::pipe();
        // Before the listing below: a node listed has its key (see `read_listeners`).
        self.set_listening_key(&mut pipe, stamp, on);
        pipe.cmd("SET")
            .arg(self.key(&["node", &self.inner.node_id]))
            .arg(serde_json::to_string(&info)?)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(self.key(&["nodes"]))
            .arg(now.timestamp_millis())
            .arg(&self.inner.node_id)
            .ignore();
        let mut conn = self.conn();
        let () = timed(pipe.query_async(&mut conn)).await?;
        Ok(())
    }

    /// Finds nodes that stopped announcing; the first node to notice drops their routes.
    async fn reap_dead_nodes(&self) -> Result<(), ClusterError> {
        let cutoff = Utc::now().timestamp_millis() - self.dead_after().as_millis() as i64;
        let mut conn = self.conn();
        let dead: Vec<String> = timed(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.key(&["nodes"]))
                .arg("-inf")
                .arg(format!("({cutoff}"))
                .query_async(&mut conn),
        )
        .await?;
        for node in dead.into_iter().filter(|n| *n != self.inner.node_id) {
            let removed: i64 = timed(
                redis::cmd("ZREM")
                    .arg(self.key(&["nodes"]))
                    .arg(&node)
                    .query_async(&mut conn),
            )
            .await?;
            if removed == 1 {
                let mut invocation = self.inner.release_node.prepare_invoke();
                invocation
                    .key(self.key(&["nodedevs", &node]))
                    .arg(&self.inner.prefix)
                    .arg(&node);
                let routes: i64 = timed(invocation.invoke_async(&mut conn)).await?;
                tracing::warn!(node = %node, routes, "node stopped announcing itself; its routes were dropped");
                self.publish_event(&ClusterEvent::NodeDead { node: node.clone() })
                    .await;
            }
            self.fail_pending_for(&node);
        }
        Ok(())
    }

    async fn refresh_live(&self) -> Result<(), ClusterError> {
        let live: HashSet<String> = self.live_nodes().await?.into_iter().collect();
        let vanished: Vec<String> = match self.inner.live.read() {
            Ok(previous) => previous.difference(&live).cloned().collect(),
            Err(_) => Vec::new(),
        };
        if let Ok(mut dead) = self.inner.dead.write() {
            dead.retain(|node| !live.contains(node));
            dead.extend(vanished.iter().cloned());
        }
        metrics::gauge!("gatehouse_cluster_nodes").set(live.len() as f64);
        if let Ok(mut slot) = self.inner.live.write() {
            *slot = live;
        }
        for node in vanished {
            self.forget_listener(&node);
            self.fail_pending_for(&node);
        }
        Ok(())
    }

    fn fail_pending_for(&self, node: &str) {
        let failed: Vec<_> = match self.inner.pending.lock() {
            Ok(mut pending) => {
                let ids: Vec<Uuid> = pending
                    .iter()
                    .filter(|(_, (n, _))| n == node)
                    .map(|(id, _)| *id)
                    .collect();
                ids.into_iter()
                    .filter_map(|id| pending.remove(&id))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for (_, slot) in failed {
            let _ = slot.send(Err(ForwardError::NodeDown(node.to_owned())));
        }
    }

    async fn heartbeat_loop(self) {
        let mut ticker = tokio::time::interval(self.inner.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let refresh_every = (self.inner.route_ttl / 3).max(self.inner.heartbeat);
        let mut last_refresh = Instant::now();
        let mut healthy = true;
        loop {
            ticker.tick().await;
            if self.inner.leaving.load(Ordering::Relaxed) {
                return;
            }
            let result = async {
                self.announce().await?;
                self.refresh_live().await?;
                self.read_listeners().await?;
                self.reap_dead_nodes().await
            }
            .await;
            match result {
                Ok(()) if !healthy => {
                    tracing::info!("redis reachable again");
                    healthy = true;
                }
                Ok(()) => {}
                Err(err) if healthy => {
                    tracing::warn!(%err, "cluster heartbeat failed; local devices keep working");
                    healthy = false;
                }
                Err(_) => {}
            }
            if last_refresh.elapsed() >= refresh_every {
                last_refresh = Instant::now();
                if let Some(registry) = self.inner.registry.get() {
                    registry.do_send(RefreshRoutes);
                }
            }
        }
    }

    // ---- live-event listeners (see `listeners`) -------------------------------------------------------

    fn own_listening(&self) -> (u64, bool) {
        self.inner
            .listening
            .lock()
            .map(|own| *own)
            .unwrap_or((self.inner.stamp_base, true))
    }

    /// Tells the other nodes of each change of this node's listening, one at a time and in order; confirms an
    /// `on` to the bus once they have seen it (or after [`REDIS_TIMEOUT`]).
    async fn announce_listening(
        self,
        mut changes: tokio::sync::mpsc::UnboundedReceiver<(bool, u64)>,
    ) {
        while let Some(mut change) = changes.recv().await {
            // Only the latest state matters; its confirmation covers the older changes' waiters.
            while let Ok(newer) = changes.try_recv() {
                change = newer;
            }
            let (on, generation) = change;
            let stamp = self.inner.stamp_base + generation;
            self.tell_listening(stamp, on).await;
            if let Some(bus) = self.inner.events.get() {
                bus.confirm_listening(generation);
            }
        }
    }

    /// Sets this node's key, publishes the notice and (for an `on`) waits for every live node's answer, at
    /// most [`REDIS_TIMEOUT`]. A failed step is logged and the rest still tried: whoever did not hear the notice
    /// reads the key at its next heartbeat, and while Redis fails no event crosses nodes anyway.
    async fn tell_listening(&self, stamp: u64, on: bool) {
        let mut conn = self.conn();
        {
            let _key = self.inner.listening_key.lock().await;
            if let Ok(mut own) = self.inner.listening.lock() {
                *own = (stamp, on);
            }
            // The key first: a node that reads the keys after this (one that starts now) sees the change even
            // if it subscribed too late for the notice.
            let mut pipe = redis::pipe();
            self.set_listening_key(&mut pipe, stamp, on);
            let set: Result<(), ClusterError> = timed(pipe.query_async(&mut conn)).await;
            if let Err(err) = set {
                tracing::warn!(%err, on, "could not record this node's event subscribers in redis");
            }
        }
        let others: HashSet<String> = if on {
            // Read after the key was set: a node listed later read the key after it was set.
            let listed = match self.live_nodes().await {
                Ok(nodes) => nodes,
                Err(_) => self
                    .inner
                    .live
                    .read()
                    .map(|live| live.iter().cloned().collect())
                    .unwrap_or_default(),
            };
            listed
                .into_iter()
                .filter(|node| {
                    *node != self.inner.node_id
                        && !self.is_dead(node)
                        // A node without a key (an older version) publishes everything and answers nothing.
                        && !self.inner.listeners.assumed(node)
                })
                .collect()
        } else {
            HashSet::new()
        };
        let waiting = others.len();
        let seen = self.inner.acks.expect(stamp, others);
        self.publish_event(&ClusterEvent::Listening {
            node: self.inner.node_id.clone(),
            stamp,
            on,
        })
        .await;
        if tokio::time::timeout(REDIS_TIMEOUT, seen).await.is_err() {
            self.inner.acks.cancel(stamp);
            tracing::warn!(
                waiting,
                "not every node confirmed this node's new event subscriber in time"
            );
        }
    }

    /// Reads every live node's listening key; with no subscription lost meanwhile, the directory is then
    /// known (notices cover what changes after the reading).
    async fn read_listeners(&self) -> Result<(), ClusterError> {
        let generation = self.inner.subscription_generation.load(Ordering::SeqCst);
        let subscribed = self.inner.subscribed.load(Ordering::SeqCst);
        let others: Vec<String> = match self.inner.live.read() {
            Ok(live) => live
                .iter()
                .filter(|node| **node != self.inner.node_id)
                .cloned()
                .collect(),
            Err(_) => return Ok(()),
        };
        if !others.is_empty() {
            let keys: Vec<String> = others
                .iter()
                .map(|node| self.key(&["listening", node]))
                .collect();
            let mut conn = self.conn();
            let values: Vec<Option<String>> =
                timed(redis::cmd("MGET").arg(&keys).query_async(&mut conn)).await?;
            for (node, value) in others.iter().zip(values) {
                match value.as_deref().and_then(listeners::decode) {
                    Some((stamp, on)) => self.inner.listeners.read(node, stamp, on),
                    None => self.inner.listeners.assume_listening(node),
                }
            }
        }
        // Live nodes were just heard of; one that left stops counting after a while even if a late notice
        // or reading brought it back.
        self.inner
            .listeners
            .forget_quiet(self.dead_after() + self.inner.heartbeat);
        let still = self.inner.subscribed.load(Ordering::SeqCst)
            && self.inner.subscription_generation.load(Ordering::SeqCst) == generation;
        if subscribed && still {
            self.inner.listeners.set_known(true);
        }
        Ok(())
    }

    // ---- forwarding -----------------------------------------------------------------------------------

    /// Publishes a command on the owner's channel and waits for its answer (or the owner's death).
    ///
    /// # Errors
    /// [`ForwardError::NodeDown`] when the owner is not listening or dies while we wait, `Cluster` when Redis
    /// fails, `Deadline` when no answer came in time.
    pub async fn forward(
        &self,
        route: &Route,
        mut request: ForwardRequest,
        wait: Duration,
    ) -> Result<ForwardOutcome, ForwardError> {
        if self.is_dead(&route.node) {
            return Err(ForwardError::NodeDown(route.node.clone()));
        }
        request.from = self.inner.node_id.clone();
        request.deadline_ms = Utc::now().timestamp_millis() + wait.as_millis() as i64;
        let correlation = request.correlation;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.insert(correlation, (route.node.clone(), tx));
        }
        let published = async {
            let payload = serde_json::to_string(&request)?;
            let mut conn = self.conn();
            let receivers: i64 = timed(
                redis::cmd("PUBLISH")
                    .arg(self.key(&["cmd", &route.node]))
                    .arg(payload)
                    .query_async(&mut conn),
            )
            .await?;
            Ok::<_, ClusterError>(receivers)
        }
        .await;
        let forget = || {
            if let Ok(mut pending) = self.inner.pending.lock() {
                pending.remove(&correlation);
            }
        };
        match published {
            // Nobody subscribed to the owner's channel: the node is gone (PUBLISH counts receivers).
            Ok(0) => {
                forget();
                return Err(ForwardError::NodeDown(route.node.clone()));
            }
            Ok(_) => {}
            Err(err) => {
                forget();
                return Err(err.into());
            }
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ForwardError::NodeDown(route.node.clone())),
            Err(_) => {
                forget();
                Err(ForwardError::Deadline(route.node.clone()))
            }
        }
    }

    async fn reply(&self, to: &str, reply: &ForwardReply) {
        let result = async {
            let payload = serde_json::to_string(reply)?;
            let mut conn = self.conn();
            let _: i64 = timed(
                redis::cmd("PUBLISH")
                    .arg(self.key(&["reply", to]))
                    .arg(payload)
                    .query_async(&mut conn),
            )
            .await?;
            Ok::<_, ClusterError>(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(%err, to, "could not publish a forwarded command's answer");
        }
    }

    /// Subscribes to this node's channels and the event channel; re-subscribes after any Redis outage and
    /// then asks the registry to re-publish every local route (Redis may have lost them).
    async fn subscriber(self, executor: Executor) {
        let channels = [
            self.key(&["cmd", &self.inner.node_id]),
            self.key(&["reply", &self.inner.node_id]),
            self.key(&["events"]),
            self.key(&["live"]),
        ];
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.inner.leaving.load(Ordering::Relaxed) {
                return;
            }
            let subscribed = async {
                let mut pubsub = timed(self.inner.client.get_async_pubsub()).await?;
                for channel in &channels {
                    timed(pubsub.subscribe(channel)).await?;
                }
                Ok::<_, ClusterError>(pubsub)
            }
            .await;
            let pubsub = match subscribed {
                Ok(pubsub) => pubsub,
                Err(err) => {
                    tracing::debug!(%err, "redis subscription failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            self.inner
                .subscription_generation
                .fetch_add(1, Ordering::SeqCst);
            self.inner.subscribed.store(true, Ordering::SeqCst);
            metrics::counter!("gatehouse_redis_reconnects_total").increment(1);
            tracing::info!(node = %self.inner.node_id, "subscribed to cluster channels");
            if let Some(registry) = self.inner.registry.get() {
                registry.do_send(RefreshRoutes);
            }
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let channel = message.get_channel_name().to_owned();
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                if channel == channels[0] {
                    self.on_request(&payload, &executor);
                } else if channel == channels[1] {
                    self.on_reply(&payload);
                } else if channel == channels[3] {
                    self.on_live(&payload);
                } else {
                    self.on_event(&payload);
                }
            }
            // Notices may be lost until the next reading of the keys: publish everything meanwhile.
            self.inner.subscribed.store(false, Ordering::SeqCst);
            self.inner.listeners.set_known(false);
            tracing::warn!("lost the redis subscription; reconnecting");
        }
    }

    fn on_request(&self, payload: &str, executor: &Executor) {
        let request: ForwardRequest = match serde_json::from_str(payload) {
            Ok(request) => request,
            Err(err) => {
                tracing::warn!(%err, "malformed forwarded command dropped");
                return;
            }
        };
        if request.deadline_ms < Utc::now().timestamp_millis() {
            tracing::info!(sn = %request.sn, "forwarded command arrived after its deadline; dropped");
            return;
        }
        let cluster = self.clone();
        let run = executor(request.clone());
        actix_rt::spawn(async move {
            let outcome = run.await;
            cluster
                .reply(
                    &request.from,
                    &ForwardReply {
                        correlation: request.correlation,
                        outcome,
                    },
                )
                .await;
        });
    }

    fn on_reply(&self, payload: &str) {
        let reply: ForwardReply = match serde_json::from_str(payload) {
            Ok(reply) => reply,
            Err(err) => {
                tracing::warn!(%err, "malformed forwarded answer dropped");
                return;
            }
        };
        let slot = self
            .inner
            .pending
            .lock()
            .ok()
            .and_then(|mut pending| pending.remove(&reply.correlation));
        match slot {
            Some((_, tx)) => {
                let _ = tx.send(Ok(reply.outcome));
            }
            None => {
                tracing::debug!(correlation = %reply.correlation, "answer for a request nobody waits for")
            }
        }
    }

    fn on_event(&self, payload: &str) {
        let Some(batch) = uncoalesce::<ClusterEvent>(payload) else {
            tracing::warn!("malformed cluster event dropped");
            return;
        };
        for event in batch {
            self.on_event_one(event);
        }
    }

    fn on_event_one(&self, event: ClusterEvent) {
        match event {
            ClusterEvent::Registered { sn, node, epoch } if node != self.inner.node_id => {
                if let Some(registry) = self.inner.registry.get() {
                    registry.do_send(RemoteRegistered { sn, node, epoch });
                }
            }
            ClusterEvent::NodeDead { node } | ClusterEvent::NodeLeaving { node }
                if node != self.inner.node_id =>
            {
                self.mark_dead(&node);
            }
            ClusterEvent::Listening { node, stamp, on } if node != self.inner.node_id => {
                // Taken in before the answer goes out: from here on, this node's events are published.
                self.inner.listeners.notice(&node, stamp, on);
                if on {
                    self.queue_event(&ClusterEvent::ListeningSeen {
                        node: self.inner.node_id.clone(),
                        of: node,
                        stamp,
                    });
                }
            }
            ClusterEvent::ListeningSeen { node, of, stamp } if of == self.inner.node_id => {
                self.inner.acks.seen(stamp, &node);
            }
            _ => {}
        }
    }

    /// Graceful leave: stop announcing, tell the others, drop the node entry. Routes are released by the
    /// registry as it closes the sockets.
    pub async fn leave(&self) {
        self.inner.leaving.store(true, Ordering::Relaxed);
        self.publish_event(&ClusterEvent::NodeLeaving {
            node: self.inner.node_id.clone(),
        })
        .await;
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(self.key(&["nodes"]))
            .arg(&self.inner.node_id)
            .ignore()
            .cmd("DEL")
            .arg(self.key(&["node", &self.inner.node_id]))
            .ignore()
            .cmd("DEL")
            .arg(self.key(&["listening", &self.inner.node_id]))
            .ignore();
        let mut conn = self.conn();
        if let Err(err) = timed::<()>(pipe.query_async(&mut conn)).await {
            tracing::warn!(%err, "could not remove this node from the cluster listing");
        }
    }
}

/// The event bus's view of the other nodes.
struct LiveRemote(Cluster);

impl crate::events::Remote for LiveRemote {
    fn wanted(&self) -> bool {
        self.0.inner.listeners.wanted()
    }

    fn publish(&self, event: crate::events::Event) {
        self.0.publish_live(&event, None);
    }

    fn listening(&self, on: bool, generation: u64) {
        let _ = self.0.inner.listening_changes.send((on, generation));
    }
}

/// One message for a batch of JSON texts: the text itself when alone, else a JSON array of them.
fn coalesce(batch: &[String]) -> String {
    match batch {
        [one] => one.clone(),
        many => format!("[{}]", many.join(",")),
    }
}

/// The events of a message written by [`coalesce`] (one, or an array); `None` when it is neither.
fn uncoalesce<T: serde::de::DeserializeOwned>(payload: &str) -> Option<Vec<T>> {
    if payload.trim_start().starts_with('[') {
        serde_json::from_str(payload).ok()
    } else {
        serde_json::from_str(payload).ok().map(|one| vec![one])
    }
}

async fn timed<T>(
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(REDIS_TIMEOUT, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClusterError::Timeout),
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gatehouse".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_one_event_or_an_array_and_read_back_in_order() {
        let events = [
            ClusterEvent::Registered {
                sn: "A1".into(),
                node: "n1".into(),
                epoch: 3,
            },
            ClusterEvent::Gone {
                sn: "B2".into(),
                node: "n1".into(),
                epoch: 9,
            },
        ];
        let texts: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).expect("json"))
            .collect();
        // One event travels as itself, as before batching.
        assert_eq!(coalesce(&texts[..1]), texts[0]);
        let both = coalesce(&texts);
        assert!(both.starts_with('[') && both.ends_with(']'));
        let back: Vec<ClusterEvent> = uncoalesce(&both).expect("array");
        assert_eq!(
            back.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>(),
            events.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>()
        );
        assert_eq!(
            uncoalesce::<ClusterEvent>(&texts[1]).map(|v| v.len()),
            Some(1)
        );
        assert!(uncoalesce::<ClusterEvent>("[{\"nope\":1}]").is_none());
        assert!(uncoalesce::<ClusterEvent>("not json").is_none());
    }
}
