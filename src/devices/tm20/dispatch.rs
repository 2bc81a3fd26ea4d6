//! Carries one REST command to a terminal's session and records its life in the `commands` table.
//!
//! The session reports `Sent` and `Finished` on a small channel; one tracker task per command turns those
//! into database updates *in order* (so `sent` never overwrites `succeeded`), stores what a paged read
//! returned, and then hands the outcome to the REST caller if it is waiting.
//!
//! A live command whose reply stores nothing but its own row (almost every REST command) needs no tracker:
//! its row lives in memory until written behind, so the session settles it on the spot ([`Inline`]) and hands
//! the outcome to the caller itself. That saves a task, a channel and two wake-ups per command, one of them
//! from the session's thread to the caller's (BENCHMARKS.md, session 10).

use std::sync::Arc;
use std::time::Instant;

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

/// Records the command, queues it on the session and starts its tracker (or has the session settle it, see
/// [`Inline`]). The returned receiver yields the outcome once it is stored (in memory, for a live command).
///
/// # Errors
/// [`DispatchError::NotConnected`] when the session is gone or not registered, [`DispatchError::QueueFull`]
/// when the terminal's queue is full (the row is then marked failed), or a database error (a stored row's;
/// a live row's write is logged, as for any live command).
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
    let id = crate::devices::command_row_id(origin);
    let (done_tx, done_rx) = oneshot::channel();
    let inline = matches!(origin, Origin::Live { shared: false }) && !REPLY_STORED.contains(&name);
    if inline {
        // A live row goes into memory at once: nothing a caller who goes away can interrupt, and no future
        // (holding a clone of the store) in this one's state.
        crate::devices::begin_live_row(
            store,
            id,
            false,
            super::DEVICE_KIND,
            sn.to_owned(),
            name.to_owned(),
            command.params_json(),
        );
        let (refusal_written_tx, refusal_written_rx) = oneshot::channel();
        let queued = QueuedCommand {
            id,
            exchange: Exchange::new(command),
            progress: Progress::Inline(Inline {
                settle: Some(Box::new(Settle {
                    store: store.clone(),
                    events: events.clone(),
                    sn: sn.to_owned(),
                    id,
                    command: name,
                    started: Instant::now(),
                    done: done_tx,
                })),
                armed: false,
                refusal: None,
                refusal_written: Some(refusal_written_tx),
            }),
        };
        // No task, so nothing here may be left half done when the caller goes away: a command the session
        // refuses, or that actix drops unhandled, settles its own row when dropped (see `Inline`'s `Drop`).
        let refusal = match session.send(SendCommand(queued)).await {
            Ok(Ok(_)) => return Ok((id, done_rx)),
            Ok(Err(why)) => refusal_error(sn, Some(why)),
            Err(_) => refusal_error(sn, None),
        };
        // The refused row is queued for writing before the caller hears why: a stalled database holds refused
        // callers back too, instead of piling up their rows in memory.
        let _ = refusal_written_rx.await;
        return Err(refusal);
    }
    let record = crate::devices::record_command_row(
        store.clone(),
        id,
        origin,
        super::DEVICE_KIND,
        sn.to_owned(),
        name.to_owned(),
        command.params_json(),
    );
    // Two events per command at most (Sent, Finished): the session never waits on this channel.
    let (events_tx, events_rx) = mpsc::channel(2);
    let queued = QueuedCommand {
        id,
        exchange: Exchange::new(command.clone()),
        progress: Progress::Tracked(events_tx),
    };
    let session = session.clone();
    let device = sn.to_owned();
    let admit = async move {
        match session.send(SendCommand(queued)).await {
            Ok(Ok(known)) => Ok(known),
            Ok(Err(why)) => Err(refusal_error(&device, Some(why))),
            Err(_) => Err(refusal_error(&device, None)),
        }
    };
    let (store_, events, device) = (store.clone(), events.clone(), sn.to_owned());
    crate::devices::admit_then_track(
        store,
        id,
        origin,
        sn,
        record,
        admit,
        move |known: Option<i32>| {
            track(
                store_,
                events,
                device,
                id,
                terminal_id.or(known),
                Arc::new(command),
                origin,
                events_rx,
                done_tx,
            )
        },
    )
    .await?;
    Ok((id, done_rx))
}

/// What the caller of a command the session refused (`why`; `None`: it never answered) is told.
fn refusal_error(sn: &str, why: Option<CommandRejected>) -> DispatchError {
    match why {
        Some(CommandRejected::QueueFull) => DispatchError::QueueFull(sn.to_owned()),
        Some(CommandRejected::NotRegistered) | None => DispatchError::NotConnected(sn.to_owned()),
    }
}

/// Commands whose reply is stored beyond the command's own row (see [`store_read_results`]): always tracked.
const REPLY_STORED: [&str; 4] = ["getuserlist", "getnewlog", "getalllog", "getdevinfo"];

/// How a queued command reports its progress, from the session that runs it.
pub enum Progress {
    /// To its tracker task.
    Tracked(mpsc::Sender<CommandEvent>),
    /// Settled by the session itself.
    Inline(Inline),
}

impl Progress {
    /// The session has taken the command: from now on dropping it settles it as disconnected. Until then a
    /// drop (the session refused it, stopped with it in its mailbox, or actix skipped it because its caller
    /// went away) settles it as refused.
    pub(super) fn arm(&mut self) {
        if let Progress::Inline(inline) = self {
            inline.armed = true;
        }
    }

    /// The session refuses the command for `why`: the reason its row is settled with when dropped.
    pub(super) fn refuse(&mut self, why: CommandRejected) {
        if let Progress::Inline(inline) = self {
            inline.refusal = Some(why);
        }
    }

    pub(super) fn report(&mut self, event: CommandEvent) {
        match self {
            // Capacity covers both events of a command; a closed receiver only means nobody tracks it any
            // more.
            Progress::Tracked(events) => {
                let _ = events.try_send(event);
            }
            Progress::Inline(inline) => inline.report(event),
        }
    }
}

/// A live command settled where its session reports it (see the module's documentation).
pub struct Inline {
    /// Taken when it is settled.
    settle: Option<Box<Settle>>,
    armed: bool,
    /// Why the session refused it, if it said.
    refusal: Option<CommandRejected>,
    /// Dropped once a refused command's row is queued for writing ([`dispatch`] waits for it).
    refusal_written: Option<oneshot::Sender<()>>,
}

struct Settle {
    store: Store,
    events: crate::events::EventBus,
    sn: String,
    id: Uuid,
    command: &'static str,
    started: Instant,
    done: oneshot::Sender<Finished>,
}

impl Inline {
    fn report(&mut self, event: CommandEvent) {
        match event {
            CommandEvent::Sent(at) => {
                if let Some(settle) = &self.settle {
                    settle.store.mark_live_command_sent(settle.id, at);
                    settle.events.command_state(
                        &settle.sn,
                        super::DEVICE_KIND,
                        settle.id,
                        settle.command,
                        "sent",
                    );
                }
            }
            CommandEvent::Finished(outcome) => {
                if let Some(settle) = self.settle.take() {
                    settle.finish(outcome);
                }
            }
        }
    }
}

impl Drop for Inline {
    /// A session that drops a command it took without a word can only have died. One it never took was
    /// refused: its row fails with the reason [`dispatch`] gives its caller (if it still has one).
    fn drop(&mut self) {
        let Some(settle) = self.settle.take() else {
            return;
        };
        if self.armed {
            settle.finish(CommandOutcome::Disconnected);
            return;
        }
        let reason = refusal_error(&settle.sn, self.refusal);
        let written = self.refusal_written.take();
        if let Some(pending) = settle.store.finish_live_command_behind(
            settle.id,
            CommandState::Failed,
            None,
            Some(reason.to_string()),
        ) {
            // The rows' queue is full: a task waits for room, whether or not the caller still does.
            crate::store::spawn_detached("command_records", async move {
                pending.await;
                drop(written);
            });
        }
    }
}

impl Settle {
    fn finish(self, outcome: CommandOutcome) {
        let finished = finished_of(outcome);
        let (state, reply, error) = row_outcome(&finished, None);
        match self
            .store
            .finish_live_command_behind(self.id, state, reply, error)
        {
            None => self.answer(state, finished),
            // The row's writer is full (or the row needs a write of its own): answer once it is queued.
            Some(pending) => crate::store::spawn_detached("command_records", async move {
                pending.await;
                self.answer(state, finished);
            }),
        }
    }

    fn answer(self, state: CommandState, finished: Finished) {
        publish_command(
            &self.events,
            &self.sn,
            super::DEVICE_KIND,
            self.id,
            self.command,
            &finished,
        );
        count_finished(self.command, state, self.started);
        let _ = self.done.send(finished);
    }
}

/// What the REST caller is told of a command's outcome.
fn finished_of(outcome: CommandOutcome) -> Finished {
    match outcome {
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
    }
}

/// The final state, reply and error of a command's row; `not_stored` is why a successful read's records could
/// not be stored.
fn row_outcome(
    finished: &Finished,
    not_stored: Option<String>,
) -> (CommandState, Option<Value>, Option<String>) {
    match finished {
        Finished::Replied { result, reply } => {
            let state = if *result {
                CommandState::Succeeded
            } else {
                CommandState::Failed
            };
            (state, (!reply.is_null()).then(|| reply.clone()), not_stored)
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
    }
}

fn count_finished(command: &'static str, state: CommandState, started: Instant) {
    metrics::counter!("gatehouse_commands_total", "kind" => super::DEVICE_KIND, "command" => command, "outcome" => state.as_str())
        .increment(1);
    metrics::histogram!("gatehouse_command_duration_seconds", "kind" => super::DEVICE_KIND)
        .record(started.elapsed().as_secs_f64());
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
    let started = Instant::now();
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
    let finished = finished_of(outcome);
    let mut not_stored = None;
    if let Finished::Replied {
        result: true,
        reply,
    } = &finished
    {
        if let Err(err) = store_read_results(&store, &sn, terminal_id, &command, reply).await {
            tracing::error!(%id, %err, "could not store what a read command returned");
            not_stored = Some(format!("reply received but not stored: {err}"));
        }
    }
    let (state, reply, error) = row_outcome(&finished, not_stored);
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
    count_finished(command.name(), state, started);
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
    if !REPLY_STORED.contains(&command.name()) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sea_orm::EntityTrait;

    use super::*;

    /// A live command's row (in memory) and the `Inline` that settles it, as `dispatch` makes them.
    async fn live_command(
        dir: &tempfile::TempDir,
    ) -> (Store, Uuid, Inline, oneshot::Receiver<Finished>) {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("gh.db").display());
        let store = Store::connect(&url).await.expect("connect");
        store.migrate().await.expect("migrate");
        let origin = Origin::Live { shared: false };
        let id = crate::devices::command_row(&store, origin, "tm20", "SN1", "opendoor", json!({}))
            .await
            .expect("row");
        let (done_tx, done_rx) = oneshot::channel();
        let inline = Inline {
            settle: Some(Box::new(Settle {
                store: store.clone(),
                events: crate::events::EventBus::new("n1".into()),
                sn: "SN1".into(),
                id,
                command: "opendoor",
                started: Instant::now(),
                done: done_tx,
            })),
            armed: false,
            refusal: None,
            refusal_written: None,
        };
        (store, id, inline, done_rx)
    }

    async fn state_and_error(store: &Store, id: Uuid) -> (String, Option<String>) {
        let row = store.command(id).await.expect("read").expect("row");
        (row.state, row.error)
    }

    #[actix_rt::test]
    async fn a_command_dropped_before_its_session_took_it_fails_as_not_connected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, id, inline, done) = live_command(&dir).await;
        drop(inline);
        assert_eq!(
            state_and_error(&store, id).await,
            ("failed".into(), Some("SN1 is not connected".into()))
        );
        assert!(
            done.await.is_err(),
            "nobody is told: the caller hears the refusal from dispatch"
        );
        // Written behind: the committed row says the same once the writer's linger is over.
        let mut committed = None;
        for _ in 0..500 {
            committed = entity::command::Entity::find_by_id(id)
                .one(store.connection())
                .await
                .expect("read");
            if committed.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(committed.expect("committed").state, "failed");
    }

    #[actix_rt::test]
    async fn a_command_refused_for_a_full_queue_says_so() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, id, inline, _done) = live_command(&dir).await;
        let mut progress = Progress::Inline(inline);
        progress.refuse(CommandRejected::QueueFull);
        drop(progress);
        assert_eq!(
            state_and_error(&store, id).await,
            (
                "failed".into(),
                Some("SN1 has too many commands waiting".into())
            )
        );
    }

    #[actix_rt::test]
    async fn a_command_dropped_after_its_session_took_it_is_disconnected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, id, inline, done) = live_command(&dir).await;
        let mut progress = Progress::Inline(inline);
        progress.arm();
        drop(progress);
        let finished = tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("answered")
            .expect("an outcome");
        assert!(matches!(finished, Finished::Disconnected));
        assert_eq!(
            state_and_error(&store, id).await,
            (
                "failed".into(),
                Some("the terminal disconnected before answering".into())
            )
        );
    }
}
