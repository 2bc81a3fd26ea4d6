//! Device families. Each has its wire protocol, its session actor and its typed command set; they share the
//! WebSocket edge ([`transport`]) and the supervisor ([`crate::registry`]).

use actix::Message;

pub mod ocpp;
pub mod sxdm;
pub mod tm20;
pub mod transport;
pub mod wire;

/// Why a command could not be queued on a device's session.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("{0} is not connected")]
    NotConnected(String),
    #[error("{0} has too many commands waiting")]
    QueueFull(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Tells a session to close its socket with `code` and `reason` and stop; it answers nothing afterwards.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub code: actix_ws::CloseCode,
    pub reason: String,
}

/// Graceful shutdown: finish the command in flight (at most `grace`), then close with 1001 (going away) so
/// the device reconnects, through the load balancer, to another node.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Drain {
    pub grace: std::time::Duration,
}

/// Source of connection ids: unique per process, so a late `Unregister` can never match a newer socket.
static NEXT_CONN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub fn next_conn_id() -> crate::registry::ConnId {
    NEXT_CONN_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The static name of a device protocol as carried in cluster routes.
pub fn protocol_name(name: &str) -> &'static str {
    match name {
        "tm20" => "tm20",
        "ocpp1.6" => "ocpp1.6",
        "sxdm" => "sxdm",
        _ => "unknown",
    }
}

/// Progress of one command, reported by the session that runs it.
#[derive(Debug)]
pub enum CommandEvent {
    Sent(chrono::DateTime<chrono::Utc>),
    Finished(CommandOutcome),
}

#[derive(Debug, Clone)]
pub enum CommandOutcome {
    /// The device answered (TM20: for paged reads every page merged into one object; OCPP: the CALLRESULT).
    Replied(serde_json::Value),
    /// The device answered with an error of its protocol (OCPP CALLERROR: `{"code","description","details"}`).
    DeviceError(serde_json::Value),
    /// Sent; the protocol defines no answer (TM20 `reboot`).
    Delivered,
    TimedOut,
    /// The socket closed before the answer.
    Disconnected,
}

/// Where a command row comes from.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// A new command: inserted now. `deliver_queued` commands go back to the queue if the device drops
    /// before answering.
    New {
        deliver_queued: bool,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// A queued command this node claimed for delivery; its row exists.
    Claimed { id: uuid::Uuid, token: uuid::Uuid },
    /// A plain command whose caller waits for the outcome: its row is held in memory (where reads find it)
    /// and written once, when it finishes, behind the answer. Three commits per command (requested, sent,
    /// finished), each awaited, were most of a command's cost. `shared`: the caller is on another node, which
    /// reads the database, not our memory: the row is committed before the answer goes back.
    Live { shared: bool },
}

impl Origin {
    /// A plain command, sent now (409 when offline).
    pub fn now() -> Self {
        Origin::New {
            deliver_queued: false,
            expires_at: None,
        }
    }

    /// The origin of a command run on a connected device: [`Origin::Live`] when the caller waits for a plain
    /// command's outcome. A `wait=false` caller gets an id to poll, possibly on another node: its row is
    /// written before the 202, as is a queued-delivery command's.
    pub fn for_caller(self, wait: bool) -> Self {
        match self {
            Origin::New {
                deliver_queued: false,
                expires_at: None,
            } if wait => Origin::Live { shared: false },
            other => other,
        }
    }

    /// The origin of a command another node forwarded to us: like [`Self::for_caller`], but a live row is
    /// committed before the answer (the other node's caller may read it from the database at once).
    pub fn forwarded(
        deliver_queued: bool,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        wait: bool,
    ) -> Self {
        match (Origin::New {
            deliver_queued,
            expires_at,
        })
        .for_caller(wait)
        {
            Origin::Live { .. } => Origin::Live { shared: true },
            other => other,
        }
    }

    /// Whether the row goes back to the queue when the device drops mid-command.
    pub fn requeues(&self) -> bool {
        match self {
            Origin::New { deliver_queued, .. } => *deliver_queued,
            Origin::Claimed { .. } => true,
            Origin::Live { .. } => false,
        }
    }

    pub fn token(&self) -> Option<uuid::Uuid> {
        match self {
            Origin::Claimed { token, .. } => Some(*token),
            Origin::New { .. } | Origin::Live { .. } => None,
        }
    }
}

/// A command the session refused to queue (full, closing): a queued-delivery command goes back to the queue
/// (it was never sent), any other one fails with the reason.
///
/// # Errors
/// On a database failure.
pub(crate) async fn reject_row(
    store: &crate::store::Store,
    id: uuid::Uuid,
    origin: Origin,
    reason: String,
) -> Result<(), crate::store::StoreError> {
    if origin.requeues() {
        store
            .requeue_after_drop(id, origin.token(), false)
            .await
            .map(|_| ())
    } else {
        store
            .finish_command(id, crate::store::CommandState::Failed, None, Some(reason))
            .await
    }
}

/// Records a command's row (`record`), hands the command to its session (`admit`), then follows it (`track`,
/// given what the session answered), in a task of their own rather than the REST caller's. A caller may go
/// away at any await (actix-web drops the handler when its client disconnects): after the row's insert was
/// committed, nothing would send the command; while the message waits in the session's mailbox, actix skips
/// the handler and drops the message; between the session's yes and the tracker's start, nobody would follow
/// the command. Each left a row unsettled for good. In a task the row is recorded, the message handled and
/// the row settled whatever the caller does. A refused command's row is settled (see [`reject_row`]) before
/// the caller hears why.
///
/// # Errors
/// The refusal, or a database error while recording the row or settling the refused command's row.
///
/// The task is spawned at the call, and what is returned only waits for its word: the caller's future stays
/// small (it is moved, and its size copied, at every hand-off between actix's futures).
#[allow(clippy::too_many_arguments)]
pub(crate) fn admit_then_track<A, Track>(
    store: &crate::store::Store,
    id: uuid::Uuid,
    origin: Origin,
    device: &str,
    record: impl std::future::Future<Output = Result<(), crate::store::StoreError>> + 'static,
    admit: impl std::future::Future<Output = Result<A, DispatchError>> + 'static,
    track: impl FnOnce(A) -> Track + 'static,
) -> impl std::future::Future<Output = Result<(), DispatchError>>
where
    A: 'static,
    Track: std::future::Future<Output = ()> + 'static,
{
    let (admitted_tx, admitted_rx) = tokio::sync::oneshot::channel();
    let store = store.clone();
    // Each step boxed: inline, the task's future was as big as all of them together (sea-orm's and the
    // session's futures are kilobytes), and that whole future was copied when tokio spawned the task, when an
    // awaited step was moved into its slot and when tokio stored the task's output: memcpy was 154k of the
    // device node's 368k instructions per forwarded command, 29k of 239k boxed (callgrind, BENCHMARKS.md
    // session 13).
    let record = Box::pin(record);
    let admit = Box::pin(admit);
    actix_rt::spawn(async move {
        if let Err(err) = record.await {
            // No row, nothing sent: the caller hears the database error.
            let _ = admitted_tx.send(Err(err.into()));
            return;
        }
        match admit.await {
            Ok(answer) => {
                let _ = admitted_tx.send(Ok(()));
                Box::pin(track(answer)).await;
            }
            Err(refusal) => {
                let settled = Box::pin(reject_row(&store, id, origin, refusal.to_string())).await;
                if let Err(err) = &settled {
                    tracing::error!(%id, %err, "could not settle a refused command");
                }
                let _ = admitted_tx.send(match settled {
                    Ok(()) => Err(refusal),
                    Err(err) => Err(err.into()),
                });
            }
        }
    });
    // The task ends without a word only when its runtime stops (the node is shutting down) or it panicked:
    // then its row may be left as it was, which the caller cannot change either.
    let device = device.to_owned();
    async move {
        admitted_rx
            .await
            .unwrap_or_else(|_| Err(DispatchError::NotConnected(device)))
    }
}

/// The `reason` label of `gatehouse_disconnects_total` for a socket we closed.
pub fn disconnect_reason(code: actix_ws::CloseCode, reason: &str) -> &'static str {
    use actix_ws::CloseCode;
    match code {
        CloseCode::Away => "shutdown",
        CloseCode::Size | CloseCode::Protocol => "bad_input",
        _ if reason.contains("replaced") => "replaced",
        _ if reason.contains("timeout") || reason.contains("no reg") => "timeout",
        _ if reason.contains("malformed") || reason.contains("serial number changed") => {
            "bad_input"
        }
        _ => "closed",
    }
}

/// A new command's id: time-ordered (UUIDv7), so the audit trail's primary-key index grows at its right edge
/// instead of dirtying a random leaf page per command (random v4 ids made every batch write a page per row
/// to SQLite's WAL).
fn command_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// The id of a command's row: a new one, or the claimed queued command's own.
pub(crate) fn command_row_id(origin: Origin) -> uuid::Uuid {
    match origin {
        Origin::Claimed { id, .. } => id,
        Origin::New { .. } | Origin::Live { .. } => command_id(),
    }
}

/// Records the audit row `id` of a command about to be queued on a session: inserted (and committed) for a new
/// command, put in memory for a live one, left as it is for a claimed queued command.
///
/// # Errors
/// On a database failure.
pub(crate) async fn record_command_row(
    store: crate::store::Store,
    id: uuid::Uuid,
    origin: Origin,
    device_kind: &'static str,
    device: String,
    command: String,
    params: serde_json::Value,
) -> Result<(), crate::store::StoreError> {
    match origin {
        Origin::New {
            deliver_queued,
            expires_at,
        } => {
            store
                .insert_command(crate::store::NewCommand {
                    id,
                    device_kind,
                    device,
                    command,
                    params,
                    deliver_queued,
                    expires_at,
                })
                .await
        }
        Origin::Live { shared } => {
            begin_live_row(&store, id, shared, device_kind, device, command, params);
            Ok(())
        }
        Origin::Claimed { .. } => Ok(()),
    }
}

/// The [`Origin::Live`] arm of [`record_command_row`], for a caller that must not hold a future: the row goes
/// into memory at once.
pub(crate) fn begin_live_row(
    store: &crate::store::Store,
    id: uuid::Uuid,
    shared: bool,
    device_kind: &'static str,
    device: String,
    command: String,
    params: serde_json::Value,
) {
    store.begin_live_command(
        crate::store::NewCommand {
            id,
            device_kind,
            device,
            command,
            params,
            deliver_queued: false,
            expires_at: None,
        },
        shared,
    );
}

/// [`record_command_row`] under a fresh id (or the claimed command's), which it returns.
///
/// # Errors
/// On a database failure.
pub(crate) async fn command_row(
    store: &crate::store::Store,
    origin: Origin,
    device_kind: &'static str,
    device: &str,
    command: &str,
    params: serde_json::Value,
) -> Result<uuid::Uuid, crate::store::StoreError> {
    let id = command_row_id(origin);
    record_command_row(
        store.clone(),
        id,
        origin,
        device_kind,
        device.to_owned(),
        command.to_owned(),
        params,
    )
    .await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::Store;

    /// A command whose row is stored at once (not live).
    const STORED: Origin = Origin::New {
        deliver_queued: false,
        expires_at: None,
    };

    /// A migrated store on a fresh SQLite file in `dir`, holding one new (not live) command row.
    async fn store_with_command(dir: &tempfile::TempDir) -> (Store, uuid::Uuid) {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("gh.db").display());
        let store = Store::connect(&url).await.expect("connect");
        store.migrate().await.expect("migrate");
        let origin = STORED;
        let id = command_row(
            &store,
            origin,
            "tm20",
            "SN1",
            "opendoor",
            serde_json::json!({}),
        )
        .await
        .expect("row");
        (store, id)
    }

    /// Polls `id`'s row until its state is `state` (five seconds at most); the row at the end.
    async fn row_in_state(store: &Store, id: uuid::Uuid, state: &str) -> entity::command::Model {
        for _ in 0..500 {
            let row = store.command(id).await.expect("read");
            if let Some(row) = row.filter(|row| row.state == state) {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store
            .command(id)
            .await
            .expect("read")
            .expect("the row exists")
    }

    /// The REST caller is gone (its future dropped) while the session has not answered yet.
    async fn caller_goes_away(call: impl std::future::Future<Output = Result<(), DispatchError>>) {
        assert!(
            tokio::time::timeout(Duration::from_millis(20), call)
                .await
                .is_err(),
            "the session answered before the caller went away"
        );
    }

    #[actix_rt::test]
    async fn a_command_refused_after_its_caller_went_away_is_settled() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, id) = store_with_command(&dir).await;
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<()>();
        let admit = async move {
            let _ = answer_rx.await;
            Err::<(), _>(DispatchError::QueueFull("SN1".into()))
        };
        let origin = STORED;
        let tracked = Arc::new(AtomicI32::new(0));
        let seen = tracked.clone();
        caller_goes_away(admit_then_track(
            &store,
            id,
            origin,
            "SN1",
            async { Ok(()) },
            admit,
            move |()| async move {
                seen.store(1, Ordering::SeqCst);
            },
        ))
        .await;
        answer_tx.send(()).expect("the admission still runs");
        let row = row_in_state(&store, id, "failed").await;
        assert_eq!(
            tracked.load(Ordering::SeqCst),
            0,
            "a refused command is not tracked"
        );
        assert_eq!(row.state, "failed");
        assert_eq!(
            row.error.as_deref(),
            Some("SN1 has too many commands waiting")
        );
    }

    #[actix_rt::test]
    async fn a_command_taken_after_its_caller_went_away_is_tracked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, id) = store_with_command(&dir).await;
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<()>();
        let admit = async move {
            let _ = answer_rx.await;
            Ok::<_, DispatchError>(7)
        };
        let tracked = Arc::new(AtomicI32::new(0));
        let seen = tracked.clone();
        let origin = STORED;
        caller_goes_away(admit_then_track(
            &store,
            id,
            origin,
            "SN1",
            async { Ok(()) },
            admit,
            move |answer| async move {
                seen.store(answer, Ordering::SeqCst);
            },
        ))
        .await;
        answer_tx.send(()).expect("the admission still runs");
        for _ in 0..500 {
            if tracked.load(Ordering::SeqCst) != 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(tracked.load(Ordering::SeqCst), 7, "tracked with the answer");
        let row = store.command(id).await.expect("read").expect("row");
        assert_eq!(row.state, "queued", "an admitted command is not rejected");
    }

    #[actix_rt::test]
    async fn a_row_recorded_after_its_caller_went_away_is_still_settled() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = store_with_command(&dir).await;
        let origin = STORED;
        let id = command_row_id(origin);
        let (insert_tx, insert_rx) = tokio::sync::oneshot::channel::<()>();
        let record = {
            let store = store.clone();
            async move {
                let _ = insert_rx.await;
                record_command_row(
                    store,
                    id,
                    origin,
                    "tm20",
                    "SN1".into(),
                    "opendoor".into(),
                    serde_json::json!({}),
                )
                .await
            }
        };
        let admit = async { Err::<(), _>(DispatchError::NotConnected("SN1".into())) };
        caller_goes_away(admit_then_track(
            &store,
            id,
            origin,
            "SN1",
            record,
            admit,
            |()| async {},
        ))
        .await;
        insert_tx.send(()).expect("the row is still recorded");
        let row = row_in_state(&store, id, "failed").await;
        assert_eq!(row.error.as_deref(), Some("SN1 is not connected"));
    }

    #[actix_rt::test]
    async fn a_refusal_reaches_a_caller_who_waits_after_the_row_is_settled() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, id) = store_with_command(&dir).await;
        let origin = STORED;
        let admit = async { Err::<(), _>(DispatchError::NotConnected("SN1".into())) };
        let refused = admit_then_track(
            &store,
            id,
            origin,
            "SN1",
            async { Ok(()) },
            admit,
            |()| async {},
        )
        .await;
        assert!(matches!(refused, Err(DispatchError::NotConnected(sn)) if sn == "SN1"));
        let row = store.command(id).await.expect("read").expect("row");
        assert_eq!(row.state, "failed");
        assert_eq!(row.error.as_deref(), Some("SN1 is not connected"));
    }
}
