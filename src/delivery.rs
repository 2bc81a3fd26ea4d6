//! Delivery of queued commands when a device comes online (`deliver=queued`).
//!
//! When a device registers, the session starts [`deliver`]: leftovers of earlier connections are recovered,
//! then queued commands go out oldest first, one at a time (each waits for the device's answer before the
//! next is claimed). Each command is claimed in the database with a conditional update, so in a cluster
//! exactly one node delivers it, with no in-memory lock.

use std::sync::Arc;

use actix::Addr;
use uuid::Uuid;

use crate::devices::ocpp::session::OcppSession;
use crate::devices::tm20::session::{SessionDeps, Tm20Session};
use crate::devices::Origin;
use crate::registry::DeviceAddr;
use crate::store::{CommandState, Store};

/// A session that can run a claimed command.
#[derive(Clone)]
pub enum Target {
    Tm20 {
        addr: Addr<Tm20Session>,
        terminal_id: i32,
    },
    Ocpp {
        addr: Addr<OcppSession>,
        charger_id: i32,
    },
    Sxdm {
        addr: Addr<crate::devices::sxdm::session::PanelSession>,
    },
}

impl Target {
    fn unsafe_commands(&self) -> &'static [&'static str] {
        match self {
            Target::Tm20 { .. } => crate::devices::tm20::UNSAFE_TO_REPEAT,
            Target::Ocpp { .. } => crate::devices::ocpp::UNSAFE_TO_REPEAT,
            Target::Sxdm { .. } => crate::devices::sxdm::UNSAFE_TO_REPEAT,
        }
    }
}

/// What happened to one delivery.
enum Delivered {
    /// Finished (any outcome but a drop): go on with the next.
    Done,
    /// The device went away: stop; the command is back in the queue (or failed when unsafe).
    Gone,
}

/// Delivers every queued command of `device` to `target`, in order. Runs until the queue is empty or the
/// device drops.
pub async fn deliver(deps: Arc<SessionDeps>, device: String, target: Target) {
    let store = &deps.store;
    match store.has_deliveries(&device).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(err) => {
            tracing::warn!(device = %device, %err, "could not read the command queue");
            return;
        }
    }
    if let Err(err) = store
        .recover_claims(&device, target.unsafe_commands())
        .await
    {
        tracing::warn!(device = %device, %err, "could not recover interrupted deliveries");
        return;
    }
    loop {
        let next = match store.next_queued(&device).await {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(device = %device, %err, "could not read the command queue");
                return;
            }
        };
        if next.expires_at.is_some_and(|at| at < chrono::Utc::now()) {
            if let Err(err) = store.expire_command(next.id).await {
                tracing::warn!(id = %next.id, %err, "could not expire a command");
                return;
            }
            let kind = match target {
                Target::Tm20 { .. } => crate::devices::tm20::DEVICE_KIND,
                Target::Ocpp { .. } => crate::devices::ocpp::DEVICE_KIND,
                Target::Sxdm { .. } => crate::devices::sxdm::DEVICE_KIND,
            };
            deps.events
                .command_state(&device, kind, next.id, &next.command, "expired");
            continue;
        }
        let token = Uuid::new_v4();
        match store.claim_command(next.id, token).await {
            Ok(true) => {}
            // Another node or loop took it; look again.
            Ok(false) => continue,
            Err(err) => {
                tracing::warn!(id = %next.id, %err, "could not claim a queued command");
                return;
            }
        }
        tracing::info!(device = %device, id = %next.id, command = %next.command, "delivering a queued command");
        let origin = Origin::Claimed { id: next.id, token };
        match run(&deps, &device, &target, &next, origin).await {
            Delivered::Done => {}
            Delivered::Gone => return,
        }
    }
}

async fn run(
    deps: &SessionDeps,
    device: &str,
    target: &Target,
    row: &entity::command::Model,
    origin: Origin,
) -> Delivered {
    let store = &deps.store;
    match target {
        Target::Tm20 { addr, terminal_id } => {
            let now = deps.settings.device_now();
            let command =
                match crate::devices::tm20::commands::parse_command(&row.command, &row.params, now)
                {
                    Ok(validated) => validated.command,
                    Err(err) => {
                        return fail(store, row.id, format!("no longer a valid command: {err}"))
                            .await
                    }
                };
            match crate::devices::tm20::dispatch::dispatch(
                store,
                &deps.events,
                addr,
                device,
                Some(*terminal_id),
                command,
                origin,
            )
            .await
            {
                Ok((_, outcome)) => match outcome.await {
                    Ok(crate::devices::tm20::dispatch::Finished::Disconnected) | Err(_) => {
                        Delivered::Gone
                    }
                    Ok(_) => Delivered::Done,
                },
                Err(_) => Delivered::Gone,
            }
        }
        Target::Ocpp { addr, charger_id } => {
            let action =
                match crate::devices::ocpp::actions::parse_action(&row.command, &row.params) {
                    Ok(action) => action,
                    Err(err) => {
                        return fail(store, row.id, format!("no longer a valid action: {err}"))
                            .await
                    }
                };
            match crate::devices::ocpp::dispatch::dispatch(
                store,
                &deps.events,
                addr,
                device,
                *charger_id,
                action,
                origin,
            )
            .await
            {
                Ok((_, outcome)) => match outcome.await {
                    Ok(crate::devices::ocpp::dispatch::Finished::Disconnected) | Err(_) => {
                        Delivered::Gone
                    }
                    Ok(_) => Delivered::Done,
                },
                Err(_) => Delivered::Gone,
            }
        }
        Target::Sxdm { addr } => {
            let Some(call) = crate::devices::sxdm::PanelCall::from_params(&row.params) else {
                return fail(store, row.id, "no longer a valid panel call".into()).await;
            };
            match crate::devices::sxdm::dispatch::dispatch(
                store,
                &deps.events,
                addr,
                device,
                call,
                origin,
            )
            .await
            {
                Ok((_, outcome)) => match outcome.await {
                    Ok(crate::devices::sxdm::dispatch::Finished::Disconnected) | Err(_) => {
                        Delivered::Gone
                    }
                    Ok(_) => Delivered::Done,
                },
                Err(_) => Delivered::Gone,
            }
        }
    }
}

async fn fail(store: &Store, id: Uuid, reason: String) -> Delivered {
    if let Err(err) = store
        .finish_command(id, CommandState::Failed, None, Some(reason))
        .await
    {
        tracing::warn!(%id, %err, "could not fail a queued command");
    }
    Delivered::Done
}

/// Starts delivery for a device connected to this node, if it is (used right after a command was queued,
/// in case the device registered in between).
pub async fn kick(deps: Arc<SessionDeps>, device: &str) {
    let Some(addr) = deps.sessions.lookup(device) else {
        return;
    };
    let target = match addr {
        DeviceAddr::Tm20(addr) => match deps.store.terminal_by_sn(device).await {
            Ok(Some(row)) => Target::Tm20 {
                addr,
                terminal_id: row.id,
            },
            _ => return,
        },
        DeviceAddr::Ocpp(addr) => match deps.store.charger(device).await {
            Ok(Some(row)) => Target::Ocpp {
                addr,
                charger_id: row.id,
            },
            _ => return,
        },
        DeviceAddr::Sxdm(addr) => Target::Sxdm { addr },
    };
    actix_rt::spawn(deliver(deps, device.to_owned(), target));
}
