//! Carries one REST action to a charge point's session and records its life in the `commands` table (as for
//! terminals: one tracker task per command writes the updates in order).

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::actions::CsAction;
use super::session::{CallRejected, OcppSession, QueuedCall, SendCall};
use crate::devices::{CommandEvent, CommandOutcome, Origin};
use crate::store::ocpp::ChargerField;
use crate::store::{CommandState, Store};

pub use crate::devices::DispatchError;

/// The final word on an action.
#[derive(Debug, Clone)]
pub enum Finished {
    /// CALLRESULT payload.
    Result(Value),
    /// CALLERROR `{"code","description","details"}`.
    Error(Value),
    TimedOut,
    Disconnected,
}

/// Records the action, queues it on the session and starts its tracker.
///
/// # Errors
/// Not connected, queue full (the row is then marked failed), or a database error.
pub async fn dispatch(
    store: &Store,
    events: &crate::events::EventBus,
    session: &actix::Addr<OcppSession>,
    charge_point_id: &str,
    charger_id: i32,
    action: CsAction,
    origin: Origin,
) -> Result<(Uuid, oneshot::Receiver<Finished>), DispatchError> {
    let name = action.action();
    let id = crate::devices::command_row_id(origin);
    let record = crate::devices::record_command_row(
        store.clone(),
        id,
        origin,
        super::DEVICE_KIND,
        charge_point_id.to_owned(),
        name.to_owned(),
        action.payload(),
    );
    let (events_tx, events_rx) = mpsc::channel(2);
    let call = QueuedCall {
        id,
        action,
        events: events_tx,
    };
    let session = session.clone();
    let device = charge_point_id.to_owned();
    let admit = async move {
        match session.send(SendCall(call)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(CallRejected::QueueFull)) => Err(DispatchError::QueueFull(device)),
            Ok(Err(CallRejected::Closing)) | Err(_) => Err(DispatchError::NotConnected(device)),
        }
    };
    let (done_tx, done_rx) = oneshot::channel();
    let (store_, events, device) = (store.clone(), events.clone(), charge_point_id.to_owned());
    crate::devices::admit_then_track(
        store,
        id,
        origin,
        charge_point_id,
        record,
        admit,
        move |()| {
            track(
                store_, events, device, id, charger_id, name, origin, events_rx, done_tx,
            )
        },
    )
    .await?;
    Ok((id, done_rx))
}

#[allow(clippy::too_many_arguments)]
async fn track(
    store: Store,
    events: crate::events::EventBus,
    device: String,
    id: Uuid,
    charger_id: i32,
    action: &'static str,
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
                events.command_state(&device, super::DEVICE_KIND, id, action, "sent");
            }
            Some(CommandEvent::Finished(outcome)) => break outcome,
            None => break CommandOutcome::Disconnected,
        }
    };
    let finished = match outcome {
        CommandOutcome::Replied(payload) => Finished::Result(payload),
        CommandOutcome::DeviceError(error) => Finished::Error(error),
        CommandOutcome::Delivered => Finished::Result(Value::Null),
        CommandOutcome::TimedOut => Finished::TimedOut,
        CommandOutcome::Disconnected => Finished::Disconnected,
    };
    let (state, reply, error) = match &finished {
        Finished::Result(payload) => {
            if action == "GetConfiguration" {
                if let Err(err) = store
                    .set_charger_field(charger_id, ChargerField::Configuration, payload.clone())
                    .await
                {
                    tracing::warn!(%id, %err, "could not store the configuration read");
                }
            }
            (CommandState::Succeeded, Some(payload.clone()), None)
        }
        Finished::Error(error) => (
            CommandState::Failed,
            Some(error.clone()),
            Some("the charge point answered with a CALLERROR".to_owned()),
        ),
        Finished::TimedOut => (
            CommandState::TimedOut,
            None,
            Some("the charge point did not answer in time".into()),
        ),
        Finished::Disconnected => (
            CommandState::Failed,
            None,
            Some("the charge point disconnected before answering".into()),
        ),
    };
    let recorded = if matches!(finished, Finished::Disconnected) && origin.requeues() {
        store
            .requeue_after_drop(
                id,
                origin.token(),
                super::UNSAFE_TO_REPEAT.contains(&action),
            )
            .await
            .map(|new_state| {
                events.command_state(&device, super::DEVICE_KIND, id, action, new_state);
            })
    } else {
        store.finish_command(id, state, reply, error).await
    };
    if let Err(err) = recorded {
        tracing::error!(%id, %err, "could not record an action's outcome");
    }
    events
        .counters()
        .commands
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    metrics::counter!("gatehouse_commands_total", "kind" => super::DEVICE_KIND, "command" => action, "outcome" => state.as_str())
        .increment(1);
    metrics::histogram!("gatehouse_command_duration_seconds", "kind" => super::DEVICE_KIND)
        .record(started.elapsed().as_secs_f64());
    events.publish_with("command", Some(&device), Some(super::DEVICE_KIND), || {
        let (event_state, payload) = match &finished {
            Finished::Result(payload) => ("succeeded", payload.clone()),
            Finished::Error(error) => ("failed", error.clone()),
            Finished::TimedOut => ("timed_out", Value::Null),
            Finished::Disconnected => ("failed", Value::Null),
        };
        serde_json::json!({"id": id, "command": action, "state": event_state, "reply": payload})
    });
    let _ = done.send(finished);
}
