//! Carries one call to a panel's session and records it in the `commands` table: method and path, the
//! panel's status and the time it took, never the body (bodies carry face photos and passwords). Only a call
//! queued for later delivery keeps its body in the row, since it must be sent from there.

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::session::{answer_from_json, CallRejected, PanelSession, QueuedCall, SendCall};
use super::{PanelAnswer, PanelCall};
use crate::devices::{CommandEvent, CommandOutcome, Origin};
use crate::store::{CommandState, Store};

pub use crate::devices::DispatchError;

/// The final word on a call.
#[derive(Debug, Clone)]
pub enum Finished {
    Answered(PanelAnswer),
    TimedOut,
    Disconnected,
}

/// The audit row's params of a call: no body unless it must be delivered later.
pub fn params_of(call: &PanelCall, keep_body: bool) -> Value {
    let mut params = json!({"method": call.method, "path": call.path});
    if keep_body {
        if let Some(body) = &call.body {
            params["body"] = body.clone();
        }
    }
    params
}

/// Records the call, sends it to the panel and starts its tracker.
///
/// # Errors
/// Not connected or not logged in, too many calls in flight (the row is then closed), or a database error.
pub async fn dispatch(
    store: &Store,
    events: &crate::events::EventBus,
    session: &actix::Addr<PanelSession>,
    sn: &str,
    call: PanelCall,
    origin: Origin,
) -> Result<(Uuid, oneshot::Receiver<Finished>), DispatchError> {
    let name = call.name();
    let id = crate::devices::command_row_id(origin);
    let record = crate::devices::record_command_row(
        store.clone(),
        id,
        origin,
        super::DEVICE_KIND,
        sn.to_owned(),
        name.clone(),
        params_of(&call, false),
    );
    let (events_tx, events_rx) = mpsc::channel(2);
    let method = metric_method(&call.method);
    let queued = QueuedCall {
        call,
        events: events_tx,
    };
    let session = session.clone();
    let device = sn.to_owned();
    let admit = async move {
        match session.send(SendCall(queued)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(CallRejected::QueueFull)) => Err(DispatchError::QueueFull(device)),
            Ok(Err(CallRejected::NotReady)) | Err(_) => Err(DispatchError::NotConnected(device)),
        }
    };
    let (done_tx, done_rx) = oneshot::channel();
    let (store_, events, device) = (store.clone(), events.clone(), sn.to_owned());
    crate::devices::admit_then_track(store, id, origin, sn, record, admit, move |()| {
        track(
            store_, events, device, id, name, method, origin, events_rx, done_tx,
        )
    })
    .await?;
    Ok((id, done_rx))
}

/// Metric labels stay bounded: the method, never the path.
fn metric_method(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        _ => "other",
    }
}

#[allow(clippy::too_many_arguments)]
async fn track(
    store: Store,
    events: crate::events::EventBus,
    sn: String,
    id: Uuid,
    name: String,
    method: &'static str,
    origin: Origin,
    mut progress: mpsc::Receiver<CommandEvent>,
    done: oneshot::Sender<Finished>,
) {
    let started = std::time::Instant::now();
    let outcome = loop {
        match progress.recv().await {
            // Not written: a call is answered in milliseconds, and a third write per call costs more than
            // the `sent` state tells anyone. Queued deliveries do get it (they may wait a long time).
            Some(CommandEvent::Sent(at)) => {
                if origin.requeues() {
                    if let Err(err) = store.mark_command_sent(id, at).await {
                        tracing::warn!(%id, %err, "could not mark command sent");
                    }
                    events.command_state(&sn, super::DEVICE_KIND, id, &name, "sent");
                }
            }
            Some(CommandEvent::Finished(outcome)) => break outcome,
            None => break CommandOutcome::Disconnected,
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let finished = match outcome {
        CommandOutcome::Replied(value) | CommandOutcome::DeviceError(value) => {
            match answer_from_json(&value) {
                Some(answer) => Finished::Answered(answer),
                None => Finished::Disconnected,
            }
        }
        CommandOutcome::Delivered => Finished::Answered(PanelAnswer {
            status: 200,
            body: Value::Null,
        }),
        CommandOutcome::TimedOut => Finished::TimedOut,
        CommandOutcome::Disconnected => Finished::Disconnected,
    };
    let (state, reply, error) = match &finished {
        Finished::Answered(answer) if answer.status < 400 => (
            CommandState::Succeeded,
            Some(json!({"status": answer.status, "elapsed_ms": elapsed_ms})),
            None,
        ),
        Finished::Answered(answer) => (
            CommandState::Failed,
            Some(json!({"status": answer.status, "elapsed_ms": elapsed_ms})),
            Some(format!("the panel answered {}", answer.status)),
        ),
        Finished::TimedOut => (
            CommandState::TimedOut,
            Some(json!({"elapsed_ms": elapsed_ms})),
            Some("the panel did not answer in time".to_owned()),
        ),
        Finished::Disconnected => (
            CommandState::Failed,
            None,
            Some("the panel disconnected before answering".to_owned()),
        ),
    };
    let recorded = if matches!(finished, Finished::Disconnected) && origin.requeues() {
        store
            .requeue_after_drop(
                id,
                origin.token(),
                super::UNSAFE_TO_REPEAT.contains(&name.as_str()),
            )
            .await
            .map(|new_state| {
                events.command_state(&sn, super::DEVICE_KIND, id, &name, new_state);
            })
    } else {
        store.finish_command(id, state, reply.clone(), error).await
    };
    if let Err(err) = recorded {
        tracing::error!(%id, %err, "could not record a panel call's outcome");
    }
    events
        .counters()
        .commands
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    metrics::counter!("gatehouse_commands_total", "kind" => super::DEVICE_KIND, "command" => method, "outcome" => state.as_str())
        .increment(1);
    metrics::histogram!("gatehouse_command_duration_seconds", "kind" => super::DEVICE_KIND)
        .record(started.elapsed().as_secs_f64());
    let event_state = match state {
        CommandState::Succeeded => "succeeded",
        CommandState::TimedOut => "timed_out",
        _ => "failed",
    };
    events.publish(
        "command",
        Some(&sn),
        Some(super::DEVICE_KIND),
        json!({"id": id, "command": name, "state": event_state, "reply": reply}),
    );
    let _ = done.send(finished);
}
