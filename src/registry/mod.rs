//! The supervisor: one actor per node that maps a device's serial number to its live session.
//!
//! Invariants:
//! - at most one session per serial number: a new registration *replaces* the old one, and the old session is
//!   told to close (it never answers again);
//! - every unregister carries the connection id it was registered with, so the late unregister of a replaced
//!   session cannot remove its successor.

use std::collections::HashMap;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::devices::tm20::session::Tm20Session;
use crate::devices::CloseSession;

/// Unique per node for the life of the process; identifies one socket's registration.
pub type ConnId = u64;

/// A live session's mailbox, by device family.
#[derive(Clone, Debug)]
pub enum DeviceAddr {
    Tm20(Addr<Tm20Session>),
}

impl DeviceAddr {
    fn close(&self, reason: &'static str) {
        match self {
            DeviceAddr::Tm20(addr) => addr.do_send(CloseSession { reason }),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub conn_id: ConnId,
    pub addr: DeviceAddr,
    pub info: ConnectionInfo,
}

/// What `GET /api/connected` shows for one socket.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionInfo {
    pub protocol: &'static str,
    pub sn: String,
    pub remote_addr: String,
    pub connected_at: DateTime<Utc>,
}

/// Owned by `startup::Application`; lives as long as the node.
#[derive(Default)]
pub struct Registry {
    /// serial number → current session. Entries are removed only by a matching `Unregister`.
    devices: HashMap<String, Entry>,
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

/// Finds the current session of a serial number.
#[derive(Message)]
#[rtype(result = "Option<DeviceAddr>")]
pub struct Lookup(pub String);

/// Lists every connected device of this node.
#[derive(Message)]
#[rtype(result = "Vec<ConnectionInfo>")]
pub struct ListConnected;

impl Handler<Register> for Registry {
    type Result = bool;

    /// Inserts the entry and closes the session it replaces, if any.
    fn handle(&mut self, Register(entry): Register, _: &mut Context<Self>) -> bool {
        let sn = entry.info.sn.clone();
        let conn_id = entry.conn_id;
        match self.devices.insert(sn.clone(), entry) {
            Some(old) if old.conn_id != conn_id => {
                tracing::info!(sn = %sn, old_conn = old.conn_id, conn_id, "replacing the older connection of this serial number");
                old.addr.close("replaced by a newer connection");
                true
            }
            _ => false,
        }
    }
}

impl Handler<Unregister> for Registry {
    type Result = ();

    /// Removes the entry only when the connection ids match.
    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        if self
            .devices
            .get(&msg.sn)
            .is_some_and(|e| e.conn_id == msg.conn_id)
        {
            self.devices.remove(&msg.sn);
        }
    }
}

impl Handler<Lookup> for Registry {
    type Result = Option<DeviceAddr>;

    /// Returns the current session's address.
    fn handle(&mut self, Lookup(sn): Lookup, _: &mut Context<Self>) -> Option<DeviceAddr> {
        self.devices.get(&sn).map(|e| e.addr.clone())
    }
}

impl Handler<ListConnected> for Registry {
    type Result = Vec<ConnectionInfo>;

    /// Snapshot of every entry, ordered by serial number.
    fn handle(&mut self, _: ListConnected, _: &mut Context<Self>) -> Vec<ConnectionInfo> {
        let mut list: Vec<ConnectionInfo> = self.devices.values().map(|e| e.info.clone()).collect();
        list.sort_by(|a, b| a.sn.cmp(&b.sn));
        list
    }
}
