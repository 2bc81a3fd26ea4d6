//! The supervisor: one actor per node that maps a device's serial number to its live session, and (in
//! cluster mode) keeps this node's part of the Redis directory in step with it.
//!
//! Invariants:
//! - at most one session per serial number: a new registration *replaces* the old one, and the old session is
//!   told to close (it never answers again); across nodes, the connection with the highest epoch wins;
//! - every unregister carries the connection id it was registered with, so the late unregister of a replaced
//!   session cannot remove its successor (locally by connection id, in Redis by epoch).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use actix::prelude::*;
use actix_ws::CloseCode;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cluster::{Claim, Cluster, ClusterError, ClusterEvent};
use crate::devices::ocpp::session::OcppSession;
use crate::devices::sxdm::session::PanelSession;
use crate::devices::tm20::session::Tm20Session;
use crate::devices::{CloseSession, Drain};

/// The `kind` label of a protocol (`ocpp1.6` → `ocpp`).
fn kind_label(protocol: &'static str) -> &'static str {
    if protocol.starts_with("ocpp") {
        "ocpp"
    } else {
        protocol
    }
}

/// Unique per node for the life of the process; identifies one socket's registration.
pub type ConnId = u64;

/// Routes claimed concurrently when refreshing; bounds the Redis round trips in flight.
const CLAIM_CONCURRENCY: usize = 64;
/// A device whose first claim failed (a Redis time-out, a node whose Redis link is still coming up) is not
/// routable from other nodes at all: its claim is retried after 1 s, 2 s and 3 s instead of waiting for the
/// next route refresh (CLUSTER_ROUTE_TTL / 3). Beyond that, the refresh and the re-publication when Redis
/// comes back take over (retrying every device every second through an outage would flood Redis after it).
const FIRST_CLAIM_RETRIES: u32 = 3;
const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// A live session's mailbox, by device family.
#[derive(Clone, Debug)]
pub enum DeviceAddr {
    Tm20(Addr<Tm20Session>),
    Ocpp(Addr<OcppSession>),
    Sxdm(Addr<PanelSession>),
}

impl DeviceAddr {
    fn close(&self, code: CloseCode, reason: String) {
        match self {
            DeviceAddr::Tm20(addr) => addr.do_send(CloseSession { code, reason }),
            DeviceAddr::Ocpp(addr) => addr.do_send(CloseSession { code, reason }),
            DeviceAddr::Sxdm(addr) => addr.do_send(CloseSession { code, reason }),
        }
    }

    fn drain(&self, grace: Duration) {
        match self {
            DeviceAddr::Tm20(addr) => addr.do_send(Drain { grace }),
            DeviceAddr::Ocpp(addr) => addr.do_send(Drain { grace }),
            DeviceAddr::Sxdm(addr) => addr.do_send(Drain { grace }),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub conn_id: ConnId,
    pub addr: DeviceAddr,
    pub info: ConnectionInfo,
}

struct Held {
    entry: Entry,
    /// This connection's epoch in the cluster directory; `None` until Redis has confirmed the claim.
    epoch: Option<u64>,
    /// First claims of this connection that failed (see [`FIRST_CLAIM_RETRIES`]).
    failed_claims: u32,
}

/// What `GET /api/connected` shows for one socket.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionInfo {
    pub protocol: &'static str,
    pub sn: String,
    pub remote_addr: String,
    pub connected_at: DateTime<Utc>,
}

/// serial number → current session. Written only by the [`Registry`] actor; read by anyone through
/// [`Sessions`].
type HeldMap = Arc<RwLock<HashMap<String, Held>>>;

/// The read side of the registry: finds a device's session without a message to the registry actor. A
/// REST command used to send `Lookup` to the actor, usually on another thread, and wait for its answer: two
/// thread hand-offs per command for a map read. Writes stay with the actor, which keeps its invariants.
#[derive(Clone)]
pub struct Sessions(HeldMap);

impl Sessions {
    /// The current session of `sn`.
    pub fn lookup(&self, sn: &str) -> Option<DeviceAddr> {
        read(&self.0).get(sn).map(|held| held.entry.addr.clone())
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

// Each write is one insert or remove: a panic elsewhere while holding the lock cannot leave the map
// half-changed, so a poisoned lock is still usable.
fn read(map: &HeldMap) -> RwLockReadGuard<'_, HashMap<String, Held>> {
    map.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(map: &HeldMap) -> RwLockWriteGuard<'_, HashMap<String, Held>> {
    map.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Owned by `startup::Application`; lives as long as the node.
pub struct Registry {
    /// serial number → current session. Entries are removed only by a matching `Unregister`, a takeover
    /// from another node, or shutdown.
    devices: HeldMap,
    cluster: Option<Cluster>,
    /// Sockets held per protocol, for the `gatehouse_devices_connected` gauge (kept incrementally).
    per_kind: HashMap<&'static str, i64>,
}

impl Registry {
    pub fn new(cluster: Option<Cluster>) -> Self {
        let mut registry = Registry {
            devices: HeldMap::default(),
            cluster,
            per_kind: HashMap::new(),
        };
        // Present from the start, so dashboards show 0 rather than nothing.
        for protocol in [
            "tm20",
            crate::devices::ocpp::PROTOCOL,
            crate::devices::sxdm::PROTOCOL,
        ] {
            registry.count(protocol, 0);
        }
        registry
    }

    /// The read side, for REST handlers.
    pub fn sessions(&self) -> Sessions {
        Sessions(self.devices.clone())
    }

    fn count(&mut self, protocol: &'static str, delta: i64) {
        let n = self.per_kind.entry(protocol).or_insert(0);
        *n += delta;
        metrics::gauge!("gatehouse_devices_connected", "kind" => kind_label(protocol))
            .set(*n as f64);
    }

    /// Applies the directory's answer to a claim made for connection `conn_id` of `sn`.
    fn on_claimed(
        &mut self,
        ctx: &mut Context<Self>,
        sn: String,
        conn_id: ConnId,
        claim: Result<Claim, ClusterError>,
    ) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let devices = self.devices.clone();
        let mut map = write(&devices);
        let current = map
            .get_mut(&sn)
            .filter(|held| held.entry.conn_id == conn_id);
        match (current, claim) {
            (Some(held), Ok(Claim::Owned(epoch))) => {
                let first = held.epoch.is_none();
                held.epoch = Some(epoch);
                drop(map);
                if first {
                    let node = cluster.node_id().to_owned();
                    cluster.queue_event(&ClusterEvent::Registered { sn, node, epoch });
                }
            }
            (Some(_), Ok(Claim::Lost { node, epoch })) => {
                tracing::info!(sn = %sn, node = %node, epoch, "a newer connection on another node holds this device");
                let removed = map.remove(&sn);
                drop(map);
                if let Some(held) = removed {
                    self.count(held.entry.info.protocol, -1);
                    held.entry.addr.close(
                        CloseCode::Policy,
                        format!("replaced by a newer connection on node {node}"),
                    );
                }
            }
            (Some(held), Err(err))
                if held.epoch.is_none() && held.failed_claims < FIRST_CLAIM_RETRIES =>
            {
                held.failed_claims += 1;
                let delay = CLAIM_RETRY * held.failed_claims;
                let info = held.entry.info.clone();
                drop(map);
                tracing::warn!(sn = %sn, %err, ?delay, "could not publish the device's route; retrying");
                ctx.run_later(delay, move |act, ctx| {
                    let unclaimed = read(&act.devices)
                        .get(&info.sn)
                        .is_some_and(|held| held.entry.conn_id == conn_id && held.epoch.is_none());
                    if unclaimed {
                        act.claim(ctx, vec![(info, conn_id, 0)]);
                    }
                });
            }
            (Some(_), Err(err)) => {
                tracing::warn!(sn = %sn, %err, "could not publish the device's route; the next route refresh retries");
            }
            // The connection went away while its claim was in flight: undo the claim.
            (None, Ok(Claim::Owned(epoch))) => {
                actix_rt::spawn(async move {
                    let _ = cluster.release(&sn, epoch).await;
                });
            }
            (None, _) => {}
        }
    }

    fn claim(&self, ctx: &mut Context<Self>, targets: Vec<(ConnectionInfo, ConnId, u64)>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let work = async move {
            let mut results = Vec::with_capacity(targets.len());
            for chunk in targets.chunks(CLAIM_CONCURRENCY) {
                let claims = chunk
                    .iter()
                    .map(|(info, _, epoch)| cluster.claim(info, *epoch));
                let answers = futures_util::future::join_all(claims).await;
                for ((info, conn_id, _), answer) in chunk.iter().zip(answers) {
                    results.push((info.sn.clone(), *conn_id, answer));
                }
            }
            results
        };
        ctx.spawn(work.into_actor(self).map(|results, act, ctx| {
            for (sn, conn_id, claim) in results {
                act.on_claimed(ctx, sn, conn_id, claim);
            }
        }));
    }

    fn release(&self, sn: String, epoch: Option<u64>) {
        if let (Some(cluster), Some(epoch)) = (self.cluster.clone(), epoch) {
            actix_rt::spawn(async move {
                match cluster.release(&sn, epoch).await {
                    Ok(_) => {
                        let node = cluster.node_id().to_owned();
                        cluster.queue_event(&ClusterEvent::Gone { sn, node, epoch });
                    }
                    // The route expires on its own (CLUSTER_ROUTE_TTL).
                    Err(err) => {
                        tracing::warn!(sn = %sn, %err, "could not remove the device's route")
                    }
                }
            });
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

/// Makes a session the current one for its serial number; answers whether it replaced another.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Register(pub Entry);

/// Removes a session, but only while it is still the current one for that serial number.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    pub sn: String,
    pub conn_id: ConnId,
}

/// Lists every connected device of this node.
#[derive(Message)]
#[rtype(result = "Vec<ConnectionInfo>")]
pub struct ListConnected;

/// Another node registered `sn` with `epoch`: an older local connection must close.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteRegistered {
    pub sn: String,
    pub node: String,
    pub epoch: u64,
}

/// Re-claims every local route (TTL refresh, and re-publication after Redis came back).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RefreshRoutes;

/// Graceful shutdown: drain and close every session with 1001, then remove this node's routes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub grace: Duration,
}

#[derive(Message)]
#[rtype(result = "Vec<(String, Option<u64>)>")]
struct HeldRoutes;

impl Handler<Register> for Registry {
    type Result = bool;

    /// Inserts the entry, closes the session it replaces, and claims the route in the cluster.
    fn handle(&mut self, Register(entry): Register, ctx: &mut Context<Self>) -> bool {
        let sn = entry.info.sn.clone();
        let conn_id = entry.conn_id;
        let info = entry.info.clone();
        metrics::counter!("gatehouse_registrations_total", "kind" => kind_label(info.protocol))
            .increment(1);
        self.count(info.protocol, 1);
        let old = write(&self.devices).insert(
            sn.clone(),
            Held {
                entry,
                epoch: None,
                failed_claims: 0,
            },
        );
        let replaced = match old {
            Some(old) if old.entry.conn_id != conn_id => {
                self.count(old.entry.info.protocol, -1);
                tracing::info!(sn = %sn, old_conn = old.entry.conn_id, conn_id, "replacing the older connection of this serial number");
                old.entry
                    .addr
                    .close(CloseCode::Policy, "replaced by a newer connection".into());
                true
            }
            Some(same) => {
                // The same connection registering twice: it was counted already.
                self.count(same.entry.info.protocol, -1);
                false
            }
            None => false,
        };
        if let Some(cluster) = &self.cluster {
            cluster.set_local_devices(read(&self.devices).len());
        }
        // A new connection always takes a new epoch; the old local one's route is simply overwritten.
        self.claim(ctx, vec![(info, conn_id, 0)]);
        replaced
    }
}

impl Handler<Unregister> for Registry {
    type Result = ();

    /// Removes the entry only when the connection ids match, and releases its route.
    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        let (removed, left) = {
            let mut map = write(&self.devices);
            let current = map
                .get(&msg.sn)
                .is_some_and(|held| held.entry.conn_id == msg.conn_id);
            (current.then(|| map.remove(&msg.sn)).flatten(), map.len())
        };
        if let Some(held) = removed {
            self.count(held.entry.info.protocol, -1);
            self.release(msg.sn, held.epoch);
            if let Some(cluster) = &self.cluster {
                cluster.set_local_devices(left);
            }
        }
    }
}

impl Handler<ListConnected> for Registry {
    type Result = Vec<ConnectionInfo>;

    /// Snapshot of every entry, ordered by serial number.
    fn handle(&mut self, _: ListConnected, _: &mut Context<Self>) -> Vec<ConnectionInfo> {
        let mut list: Vec<ConnectionInfo> = read(&self.devices)
            .values()
            .map(|held| held.entry.info.clone())
            .collect();
        list.sort_by(|a, b| a.sn.cmp(&b.sn));
        list
    }
}

impl Handler<RemoteRegistered> for Registry {
    type Result = ();

    /// Closes the local connection when the remote one is newer.
    fn handle(&mut self, msg: RemoteRegistered, _: &mut Context<Self>) {
        let removed = {
            let mut map = write(&self.devices);
            let older = map
                .get(&msg.sn)
                .is_some_and(|held| held.epoch.is_some_and(|epoch| epoch < msg.epoch));
            older.then(|| map.remove(&msg.sn)).flatten()
        };
        if let Some(held) = removed {
            tracing::info!(sn = %msg.sn, node = %msg.node, "device reconnected to another node; closing the local socket");
            self.count(held.entry.info.protocol, -1);
            held.entry.addr.close(
                CloseCode::Policy,
                format!("replaced by a newer connection on node {}", msg.node),
            );
        }
    }
}

impl Handler<RefreshRoutes> for Registry {
    type Result = ();

    /// Re-claims every local route with its known epoch (0 when the first claim never reached Redis).
    fn handle(&mut self, _: RefreshRoutes, ctx: &mut Context<Self>) {
        let targets = read(&self.devices)
            .values()
            .map(|held| {
                (
                    held.entry.info.clone(),
                    held.entry.conn_id,
                    held.epoch.unwrap_or(0),
                )
            })
            .collect();
        self.claim(ctx, targets);
    }
}

impl Handler<HeldRoutes> for Registry {
    type Result = Vec<(String, Option<u64>)>;

    fn handle(&mut self, _: HeldRoutes, _: &mut Context<Self>) -> Self::Result {
        read(&self.devices)
            .iter()
            .map(|(sn, held)| (sn.clone(), held.epoch))
            .collect()
    }
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    /// Asks every session to finish its command in flight and close with 1001, waits for them (at most the
    /// grace period plus a second), then removes whatever routes are left.
    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        for held in read(&self.devices).values() {
            held.entry.addr.drain(msg.grace);
        }
        let me = ctx.address();
        let cluster = self.cluster.clone();
        let deadline = tokio::time::Instant::now() + msg.grace + Duration::from_secs(1);
        let work = async move {
            let mut remaining = me.send(HeldRoutes).await.unwrap_or_default();
            while !remaining.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                remaining = me.send(HeldRoutes).await.unwrap_or_default();
            }
            if let Some(cluster) = cluster {
                for (sn, epoch) in remaining {
                    if let Some(epoch) = epoch {
                        let _ = cluster.release(&sn, epoch).await;
                    }
                }
            }
        };
        Box::pin(work.into_actor(self))
    }
}
