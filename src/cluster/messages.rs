//! What nodes say to each other over Redis pub/sub. Every payload is one JSON object.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A device's entry in the directory (`{prefix}:route:{sn}`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Route {
    pub node: String,
    /// Grows with every new connection of this serial number anywhere in the cluster: the highest wins.
    #[serde(default)]
    pub epoch: u64,
    pub protocol: String,
    pub remote_addr: String,
    pub connected_at: DateTime<Utc>,
}

/// A node's announcement (`{prefix}:node:{id}`), refreshed every heartbeat.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub name: String,
    pub address: String,
    pub started_at: DateTime<Utc>,
    pub devices: usize,
    pub last_seen: DateTime<Utc>,
}

/// A REST command for a device held by another node, published on that node's command channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub correlation: Uuid,
    /// Node whose reply channel gets the answer.
    pub from: String,
    /// Device family: `tm20` (command) or `ocpp` (action).
    #[serde(default = "default_kind")]
    pub kind: String,
    pub sn: String,
    pub command: String,
    /// Already validated by the requesting node; re-validated by the owner.
    pub params: Value,
    /// `false`: answer as soon as the command is queued.
    pub wait: bool,
    /// Sent with `deliver=queued`: re-queued if the device drops before answering.
    #[serde(default)]
    pub queued: bool,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Milliseconds since the epoch after which nobody waits for the answer any more.
    pub deadline_ms: i64,
}

fn default_kind() -> String {
    "tm20".into()
}

/// The owner's answer, published on the requester's reply channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardReply {
    pub correlation: Uuid,
    #[serde(flatten)]
    pub outcome: ForwardOutcome,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ForwardOutcome {
    /// `wait=false`: the command is queued on the device.
    Queued { id: Uuid },
    /// The device answered (or, for commands without an answer, the frame was sent).
    Finished {
        id: Uuid,
        result: bool,
        reply: Value,
    },
    /// The same error answer a local call would have produced.
    Error { status: u16, body: Value },
}

/// Cluster-wide happenings on `{prefix}:events`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A device connected on `node` with `epoch`; older connections elsewhere must close.
    Registered {
        sn: String,
        node: String,
        epoch: u64,
    },
    /// A device's connection on `node` ended.
    Gone {
        sn: String,
        node: String,
        epoch: u64,
    },
    /// `node` stopped announcing itself; its routes were dropped.
    NodeDead { node: String },
    /// `node` is shutting down gracefully.
    NodeLeaving { node: String },
    /// `node`'s live-event subscribers went from none to some (`on`) or back to none; `stamp` orders its
    /// changes (see `cluster::listeners`).
    Listening { node: String, stamp: u64, on: bool },
    /// `node` has taken in `of`'s change `stamp`: it publishes its live events for `of` from now on.
    ListeningSeen {
        node: String,
        of: String,
        stamp: u64,
    },
}
