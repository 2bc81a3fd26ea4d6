//! Carries one REST command to a terminal's session and records its life in the `commands` table.
//!
//! The session reports `Sent` and `Finished` on a small channel; one tracker task per command turns those
//! into database updates *in order* (so `sent` never overwrites `succeeded`), stores what a paged read
//! returned, and then hands the outcome to the REST caller if it is waiting.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::commands::{Exchange, Tm20Command};
use super::protocol::{self, Inbound};
use super::session::{
    CommandEvent, CommandOutcome, CommandRejected, QueuedCommand, SendCommand, Tm20Session,
};
use crate::devices::Origin;
use crate::store::{CommandState, Store, UserUpsert};

pub use crate::devices::DispatchError;

/// The final word on a command, as the REST caller sees it.
#[derive(Debug, Clone)]
pub enum Finished {
    Replied { result: bool, reply: Value },
    TimedOut,
    Disconnected,
}

/// Records the command, queues it on the session and starts its tracker. The returned receiver yields the
/// outcome once it is stored.
///
/// # Errors
/// [`DispatchError::NotConnected`] when the session is gone or not registered, [`DispatchError::QueueFull`]
/// when the terminal's queue is full (the row is then marked failed), or a database error.
pub async fn dispatch(
    store: &Store,
    events: &crate::events::EventBus,
    session: &actix::Addr<Tm20Session>,
    sn: &str,
    terminal_id: Option<i32>,
    command: Tm20Command,
    origin: Origin,
) -> Result<(Uuid, oneshot::Receiver<Finished>), DispatchError> {
    let name = command.name();
    let id = crate::devices::command_row(
        store,
        origin,
        super::DEVICE_KIND,
        sn,
        name,
        command.params_json(),
    )
    .await?;
    // Two events per command at most (Sent, Finished): the session never waits on this channel.
    let (events_tx, events_rx) = mpsc::channel(2);
    let queued = QueuedCommand {
        id,
        exchange: Exchange::new(command.clone()),
        events: events_tx,
    };
    let mut terminal_id = terminal_id;
    let rejection = match session.send(SendCommand(queued)).await {
        Ok(Ok(known)) => {
            terminal_id = terminal_id.or(known);
            None
        }
        Ok(Err(CommandRejected::QueueFull)) => Some(DispatchError::QueueFull(sn.to_owned())),
        Ok(Err(CommandRejected::NotRegistered)) | Err(_) => {
            Some(DispatchError::NotConnected(sn.to_owned()))
        }
    };
    if let Some(err) = rejection {
        crate::devices::reject_row(store, id, origin, err.to_string()).await?;
        return Err(err);
    }
    let (done_tx, done_rx) = oneshot::channel();
    let store = store.clone();
    actix_rt::spawn(track(
        store,
        events.clone(),
        sn.to_owned(),
        id,
        terminal_id,
        Arc::new(command),
        origin,
        events_rx,
        done_tx,
    ));
    Ok((id, done_rx))
}

#[allow(clippy::too_many_arguments)]
async fn track(
    store: Store,
    events: crate::events::EventBus,
    sn: String,
    id: Uuid,
    terminal_id: Option<i32>,
    command: Arc<Tm20Command>,
    origin: Origin,
    mut progress: mpsc::Receiver<CommandEvent>,
    done: oneshot::Sender<Finished>,
) {
    let started = std::time::Instant::now();
    let outcome = loop {
        match progress.recv().await {
            Some(CommandEvent::Sent(at)) => {
                if let Err(err) = store.mark_command_sent(id, at).await {
                    tracing::warn!(%id, %err, "could not mark command sent");
                }
                events.command_state(&sn, super::DEVICE_KIND, id, command.name(), "sent");
            }
            Some(CommandEvent::Finished(outcome)) => break outcome,
            // The session dropped the command without a word: it can only have died.
            None => break CommandOutcome::Disconnected,
        }
    };
    let finished = match outcome {
        CommandOutcome::Replied(reply) => {
            // Terminals omit `result` on some answers (gettime), which are successes.
            let result = reply.get("result").and_then(Value::as_bool).unwrap_or(true);
            Finished::Replied { result, reply }
        }
        CommandOutcome::Delivered => Finished::Replied {
            result: true,
            reply: Value::Null,
        },
        // TM20 has no error frame of its own; a session never reports one.
        CommandOutcome::DeviceError(reply) => Finished::Replied {
            result: false,
            reply,
        },
        CommandOutcome::TimedOut => Finished::TimedOut,
        CommandOutcome::Disconnected => Finished::Disconnected,
    };
    let (state, reply, error) = match &finished {
        Finished::Replied { result, reply } => {
            let mut error = None;
            if *result {
                if let Err(err) =
                    store_read_results(&store, &sn, terminal_id, &command, reply).await
                {
                    tracing::error!(%id, %err, "could not store what a read command returned");
                    error = Some(format!("reply received but not stored: {err}"));
                }
            }
            let state = if *result {
                CommandState::Succeeded
            } else {
                CommandState::Failed
            };
            (state, (!reply.is_null()).then(|| reply.clone()), error)
        }
        Finished::TimedOut => (
            CommandState::TimedOut,
            None,
            Some("the terminal did not answer in time".into()),
        ),
        Finished::Disconnected => (
            CommandState::Failed,
            None,
            Some("the terminal disconnected before answering".into()),
        ),
    };
    let recorded = if matches!(finished, Finished::Disconnected) && origin.requeues() {
        let unsafe_to_repeat = super::UNSAFE_TO_REPEAT.contains(&command.name());
        store
            .requeue_after_drop(id, origin.token(), unsafe_to_repeat)
            .await
            .map(|new_state| {
                events.command_state(&sn, super::DEVICE_KIND, id, command.name(), new_state);
            })
    } else {
        store.finish_command(id, state, reply, error).await
    };
    if let Err(err) = recorded {
        tracing::error!(%id, %err, "could not record a command's outcome");
    }
    publish_command(
        &events,
        &sn,
        super::DEVICE_KIND,
        id,
        command.name(),
        &finished,
    );
    metrics::counter!("gatehouse_commands_total", "kind" => super::DEVICE_KIND, "command" => command.name(), "outcome" => state.as_str())
        .increment(1);
    metrics::histogram!("gatehouse_command_duration_seconds", "kind" => super::DEVICE_KIND)
        .record(started.elapsed().as_secs_f64());
    let _ = done.send(finished);
}

/// Users and logs read from a terminal are stored like the ones it pushes.
async fn store_read_results(
    store: &Store,
    sn: &str,
    terminal_id: Option<i32>,
    command: &Tm20Command,
    reply: &Value,
) -> Result<(), crate::store::StoreError> {
    if !matches!(
        command.name(),
        "getuserlist" | "getnewlog" | "getalllog" | "getdevinfo"
    ) {
        return Ok(());
    }
    // The session did not know its row id (its registration write failed): look it up.
    let terminal_id = match terminal_id {
        Some(id) => id,
        None => match store.terminal_by_sn(sn).await? {
            Some(row) => row.id,
            None => return Ok(()),
        },
    };
    let records = reply.get("record").and_then(Value::as_array);
    match (command.name(), records) {
        ("getuserlist", Some(records)) => {
            let users: Vec<UserUpsert> = records
                .iter()
                .filter_map(|r| {
                    let enrollid = int_field(r, "enrollid").filter(|id| *id > 0)?;
                    Some(UserUpsert {
                        enrollid,
                        name: None,
                        admin: int_field(r, "admin").and_then(|a| i32::try_from(a).ok()),
                        backupnum: int_field(r, "backupnum").and_then(|b| i32::try_from(b).ok()),
                        record: None,
                    })
                })
                .collect();
            store.upsert_users(terminal_id, &users).await
        }
        ("getnewlog" | "getalllog", Some(records)) => {
            // Parse the merged records exactly like a pushed batch, so both paths store the same rows.
            let frame = json!({"cmd": "sendlog", "record": records}).to_string();
            if let Ok(Inbound::SendLog(batch)) = protocol::parse_frame(&frame) {
                store.insert_logs(terminal_id, &batch.records).await?;
            }
            Ok(())
        }
        ("getdevinfo", _) => store.set_devinfo_by_id(terminal_id, reply.clone()).await,
        _ => Ok(()),
    }
}

fn int_field(value: &Value, key: &str) -> Option<i64> {
    match value.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The `command` event of a finished command (and the count behind the `stats` topic).
fn publish_command(
    events: &crate::events::EventBus,
    device: &str,
    kind: &str,
    id: Uuid,
    command: &str,
    finished: &Finished,
) {
    events
        .counters()
        .commands
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    events.publish_with("command", Some(device), Some(kind), || {
        let (state, result, reply) = match finished {
            Finished::Replied { result, reply } => (
                if *result { "succeeded" } else { "failed" },
                Some(*result),
                reply.clone(),
            ),
            Finished::TimedOut => ("timed_out", None, Value::Null),
            Finished::Disconnected => ("failed", None, Value::Null),
        };
        json!({"id": id, "command": command, "state": state, "result": result, "reply": reply})
    });
}
