//! The WebSocket edge shared by every device family: turns an HTTP upgrade into (a stream of [`WsEvent`]s, a
//! bounded [`Outbox`]). Session actors see only these two, so protocol code knows nothing of actix-ws.
//!
//! Two carriers, chosen by the listener (`DEVICE_TRANSPORT`, see [`crate::edge`]): the lean one
//! ([`super::wire`], default), where the listener takes the socket over after our 101, and actix-ws inside the
//! HTTP/1 dispatcher. Either way outgoing frames go through one bounded channel to one writer task, which keeps
//! their order. A device that stops reading fills the channel; the session then closes it instead of buffering
//! without bound.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::wire::FrameReader;
use crate::edge::{Plumbing, UpgradeSlot};
use crate::limits::{FrameBudget, FrameVerdict, Limits, SocketPermit};

/// Frames that may wait for the writer per socket. A terminal exchanges one command at a time, so a device
/// this far behind is not reading.
pub const OUTBOX_CAPACITY: usize = 64;

/// What a session actor receives from its socket.
#[derive(Debug)]
pub enum WsEvent {
    Text(String),
    Binary(web::Bytes),
    Ping(Vec<u8>),
    Pong,
    /// The peer closed; its reason text if any.
    Close(Option<String>),
    /// A data frame over the socket's frame rate (`DEVICE_FRAME_RATE`): answer it with the protocol's error
    /// (its text is given so the answer can name its id), do not process it.
    Limited(String),
    /// The frame stream failed (oversized frame, protocol violation, I/O, a persistent flood).
    Error(WsFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsFailure {
    TooLarge,
    Protocol,
    /// Frames kept coming over the rate limit: close with 1008.
    Flood,
}

/// What a session actor sends to its socket.
#[derive(Debug, PartialEq)]
pub enum OutFrame {
    Text(String),
    Binary(web::Bytes),
    Ping,
    Pong(Vec<u8>),
    Close(CloseCode, String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutboxError {
    #[error("the device is not reading: its outbox is full")]
    Full,
    #[error("the socket is closed")]
    Closed,
}

/// Bounded, ordered sink of outgoing frames; cloning shares the same queue.
#[derive(Clone, Debug)]
pub struct Outbox {
    /// Boxed: a channel allocates its first block of 32 slots up front, and a slot of a boxed frame is 8 bytes
    /// instead of 32 (about 0.75 KiB less per idle socket; one small allocation per frame sent).
    tx: mpsc::Sender<Box<OutFrame>>,
}

impl Outbox {
    /// Queues a frame without waiting.
    ///
    /// # Errors
    /// [`OutboxError::Full`] when the device is too far behind, [`OutboxError::Closed`] when the writer ended.
    pub fn send(&self, frame: OutFrame) -> Result<(), OutboxError> {
        self.tx.try_send(Box::new(frame)).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => OutboxError::Full,
            mpsc::error::TrySendError::Closed(_) => OutboxError::Closed,
        })
    }

    /// Queues a frame, waiting while the queue is full: for peers whose own reading pace should set ours (the
    /// echo socket), where a burst of frames must not be mistaken for a peer that stopped reading.
    ///
    /// # Errors
    /// [`OutboxError::Closed`] when the writer ended.
    pub async fn send_wait(&self, frame: OutFrame) -> Result<(), OutboxError> {
        self.tx
            .send(Box::new(frame))
            .await
            .map_err(|_| OutboxError::Closed)
    }

    pub fn text(&self, text: impl Into<String>) -> Result<(), OutboxError> {
        self.send(OutFrame::Text(text.into()))
    }

    /// A bare outbox whose frames land in the returned receiver (for tests of protocol code without sockets).
    pub fn detached(capacity: usize) -> (Outbox, mpsc::Receiver<Box<OutFrame>>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Outbox { tx }, rx)
    }
}

/// Performs the WebSocket handshake and starts the writer task.
///
/// # Errors
/// When the request is not a valid WebSocket upgrade (answered 400), or the socket limits refuse it.
pub fn accept(
    req: &HttpRequest,
    body: web::Payload,
    max_frame_bytes: usize,
) -> Result<Accepted, actix_web::Error> {
    accept_inner(req, body, max_frame_bytes, None)
}

fn accept_inner(
    req: &HttpRequest,
    body: web::Payload,
    max_frame_bytes: usize,
    protocol: Option<&'static str>,
) -> Result<Accepted, actix_web::Error> {
    let slot = req.extensions().get::<UpgradeSlot>().cloned();
    if let Some(slot) = slot {
        // The listener takes the socket over after our 101 (`crate::edge`): check the handshake here, and
        // leave it what the socket needs.
        let mut response = actix_http::ws::handshake(req.head())?;
        let guard = admit(req)?;
        if let Some(protocol) = protocol {
            response.insert_header((actix_web::http::header::SEC_WEBSOCKET_PROTOCOL, protocol));
        }
        let (permit, budget) = split_guard(guard);
        let (tx, outbox) = mpsc::channel::<Box<OutFrame>>(OUTBOX_CAPACITY);
        let (reader_tx, reader_rx) = oneshot::channel::<FrameReader>();
        slot.fill(Plumbing {
            reader: reader_tx,
            outbox,
            permit,
            max_message_bytes: max_frame_bytes,
        });
        let frames = futures_util::stream::once(reader_rx)
            .filter_map(|reader| std::future::ready(reader.ok()))
            .flat_map(|reader| {
                futures_util::stream::unfold(reader, |mut reader| async move {
                    reader.next_event().await.map(|event| (event, reader))
                })
            });
        let events = police(frames, budget);
        return Ok((
            response.finish().map_into_boxed_body().into(),
            Box::pin(events),
            Outbox { tx },
        ));
    }
    let guard = admit(req)?;
    let handshake = match protocol {
        Some(protocol) => actix_ws::handle_with_protocols(req, body, &[protocol])?,
        None => actix_ws::handle(req, body)?,
    };
    Ok(start(handshake, max_frame_bytes, guard))
}

fn split_guard(guard: Guard) -> (Option<SocketPermit>, Option<FrameBudget>) {
    match guard {
        Some((permit, budget)) => (Some(permit), budget),
        None => (None, None),
    }
}

/// Applies the socket's frame budget to its data frames (control frames do not spend it): over the rate a
/// frame becomes [`WsEvent::Limited`]; a persistent flood ends in [`WsFailure::Flood`] for every later frame.
fn police(
    frames: impl Stream<Item = WsEvent> + 'static,
    mut budget: Option<FrameBudget>,
) -> impl Stream<Item = WsEvent> + 'static {
    let mut flooded = false;
    frames.map(move |event| {
        let is_data = matches!(event, WsEvent::Text(_) | WsEvent::Binary(_));
        if !is_data {
            return event;
        }
        if flooded {
            return WsEvent::Error(WsFailure::Flood);
        }
        match budget.as_mut().map(FrameBudget::check) {
            None | Some(FrameVerdict::Process) => event,
            Some(FrameVerdict::Refuse) => match event {
                WsEvent::Text(text) => WsEvent::Limited(text),
                _ => WsEvent::Limited(String::new()),
            },
            Some(FrameVerdict::Flood) => {
                flooded = true;
                WsEvent::Error(WsFailure::Flood)
            }
        }
    })
}

/// A socket's place in the node's limits and its frame budget (none when no [`Limits`] are installed, as in
/// unit tests).
type Guard = Option<(SocketPermit, Option<FrameBudget>)>;

/// Checks the socket limits before the handshake; a refusal is the HTTP answer (429 or 503).
fn admit(req: &HttpRequest) -> Result<Guard, actix_web::Error> {
    let Some(limits) = req.app_data::<web::Data<Limits>>() else {
        return Ok(None);
    };
    let limits = limits.clone().into_inner();
    let ip = limits.client_ip(req);
    match limits.admit(ip) {
        Ok(permit) => Ok(Some((permit, limits.frame_budget()))),
        Err(refusal) => {
            tracing::info!(client = ?ip, %refusal, "socket refused at the handshake");
            Err(actix_web::error::InternalError::from_response(refusal, refusal.response()).into())
        }
    }
}

/// Like [`accept`], echoing `protocol` as the negotiated subprotocol (the caller checked it was offered).
///
/// # Errors
/// When the request is not a valid WebSocket upgrade, or the socket limits refuse it.
pub fn accept_with_protocol(
    req: &HttpRequest,
    body: web::Payload,
    max_frame_bytes: usize,
    protocol: &'static str,
) -> Result<Accepted, actix_web::Error> {
    accept_inner(req, body, max_frame_bytes, Some(protocol))
}

/// The handshake answer, the frame stream, and the outbox of one accepted socket.
pub type Accepted = (HttpResponse, WsEvents, Outbox);

/// The frames of one socket, as [`WsEvent`]s.
pub type WsEvents = std::pin::Pin<Box<dyn Stream<Item = WsEvent> + 'static>>;

type Handshake = (HttpResponse, actix_ws::Session, actix_ws::MessageStream);

fn start((response, session, stream): Handshake, max_frame_bytes: usize, guard: Guard) -> Accepted {
    let (permit, budget) = split_guard(guard);
    let frames = stream
        .max_frame_size(max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(max_frame_bytes)
        .map(|item| match item {
            Ok(AggregatedMessage::Text(text)) => WsEvent::Text(text.to_string()),
            Ok(AggregatedMessage::Binary(bytes)) => WsEvent::Binary(bytes),
            Ok(AggregatedMessage::Ping(bytes)) => WsEvent::Ping(bytes.to_vec()),
            Ok(AggregatedMessage::Pong(_)) => WsEvent::Pong,
            Ok(AggregatedMessage::Close(reason)) => {
                WsEvent::Close(reason.and_then(|r| r.description))
            }
            Err(actix_ws::ProtocolError::Overflow) => WsEvent::Error(WsFailure::TooLarge),
            Err(actix_ws::ProtocolError::Io(err)) if err.to_string().contains("maximum") => {
                WsEvent::Error(WsFailure::TooLarge)
            }
            Err(_) => WsEvent::Error(WsFailure::Protocol),
        });
    let events = police(frames, budget);
    let (tx, mut rx) = mpsc::channel::<Box<OutFrame>>(OUTBOX_CAPACITY);
    actix_rt::spawn(async move {
        // The socket holds its place in the limits until the writer ends with it.
        let _permit = permit;
        let mut session = session;
        while let Some(frame) = rx.recv().await {
            let sent = match *frame {
                OutFrame::Text(text) => session.text(text).await,
                OutFrame::Binary(bytes) => session.binary(bytes).await,
                OutFrame::Ping => session.ping(b"").await,
                OutFrame::Pong(bytes) => session.pong(&bytes).await,
                OutFrame::Close(code, description) => {
                    let _ = session
                        .close(Some(CloseReason {
                            code,
                            description: Some(description),
                        }))
                        .await;
                    return;
                }
            };
            if sent.is_err() {
                return;
            }
        }
        // The session actor is gone without an explicit close: close politely.
        let _ = session.close(Some(CloseCode::Normal.into())).await;
    });
    (response, Box::pin(events), Outbox { tx })
}
