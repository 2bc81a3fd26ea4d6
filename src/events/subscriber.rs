//! `GET /ws/events`: one actor per subscriber socket. It reads ops (`subscribe`, `unsubscribe`) and writes
//! the events the bus queued for it; a `stats` subscription adds a timer. In a cluster it is welcomed once the
//! other nodes know this node has a subscriber ([`EventBus::ready`]).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_ws::CloseCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{validate_topic, EventBus, Subscription};
use crate::devices::transport::{OutFrame, Outbox, WsEvent};
use crate::registry::{ListConnected, Registry};

/// Events written per wake-up, so one busy subscriber cannot hog its arbiter.
const BATCH: usize = 64;
const DEFAULT_STATS_INTERVAL: f64 = 5.0;

pub struct EventSubscriber {
    subscription: Arc<Subscription>,
    bus: EventBus,
    outbox: Outbox,
    registry: Addr<Registry>,
    stats: Option<SpawnHandle>,
}

/// "The bus queued something for you."
#[derive(Message)]
#[rtype(result = "()")]
struct Wake;

/// The wire form of a client op, before it is checked.
#[derive(Deserialize)]
struct RawOp {
    op: String,
    #[serde(default)]
    topics: Vec<String>,
    interval: Option<f64>,
}

/// What a client op asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Subscribe,
    Unsubscribe,
}

impl OpKind {
    /// The `op` name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Subscribe => "subscribe",
            OpKind::Unsubscribe => "unsubscribe",
        }
    }
}

/// A client op whose topics passed [`validate_topic`]. `interval` is as sent: it is only checked (and only
/// matters) when a `subscribe` includes `stats`, after the topics have been applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub kind: OpKind,
    pub topics: Vec<String>,
    pub interval: Option<f64>,
}

/// Why an op was refused; `code` and `message` go into the `{"op":"error",…}` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct OpError {
    /// `bad_request`, `unknown_op` or `invalid_topic`.
    pub code: &'static str,
    pub message: String,
}

/// Parses one text frame from a subscriber: `{"op":"subscribe"|"unsubscribe","topics":[…],"interval":s}`.
///
/// # Errors
/// `bad_request` when the text is not such an object, `unknown_op` for any other `op`, `invalid_topic` (with
/// [`validate_topic`]'s message) for the first malformed topic. The op name is checked before the topics.
pub fn parse_op(text: &str) -> Result<Op, OpError> {
    let raw: RawOp = serde_json::from_str(text).map_err(|err| OpError {
        code: "bad_request",
        message: format!("expected {{\"op\":…,\"topics\":[…]}}: {err}"),
    })?;
    let kind = match raw.op.as_str() {
        "subscribe" => OpKind::Subscribe,
        "unsubscribe" => OpKind::Unsubscribe,
        other => {
            return Err(OpError {
                code: "unknown_op",
                message: format!("unknown op `{other}`: use subscribe or unsubscribe"),
            })
        }
    };
    if let Some(bad) = raw.topics.iter().find_map(|t| validate_topic(t).err()) {
        return Err(OpError {
            code: "invalid_topic",
            message: bad,
        });
    }
    Ok(Op {
        kind,
        topics: raw.topics,
        interval: raw.interval,
    })
}

impl EventSubscriber {
    pub fn new(bus: EventBus, outbox: Outbox, registry: Addr<Registry>) -> Self {
        let subscription = bus.subscribe();
        EventSubscriber {
            subscription,
            bus,
            outbox,
            registry,
            stats: None,
        }
    }

    fn send(&self, value: &Value, ctx: &mut Context<Self>) -> bool {
        match self.outbox.text(value.to_string()) {
            Ok(()) => true,
            Err(crate::devices::transport::OutboxError::Full) => false,
            Err(_) => {
                ctx.stop();
                false
            }
        }
    }

    fn error(&self, code: &str, message: String, ctx: &mut Context<Self>) {
        self.send(
            &json!({"op": "error", "error": code, "message": message}),
            ctx,
        );
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        let (events, dropped) = self.subscription.take(BATCH);
        let mut blocked = false;
        if dropped > 0 && !self.send(&json!({"op": "lagged", "dropped": dropped}), ctx) {
            // Not sent: keep the count for the next notice.
            self.subscription.add_dropped(dropped);
            blocked = true;
        }
        let mut unsent = Vec::new();
        for event in events {
            if blocked || !self.send(&event, ctx) {
                blocked = true;
                unsent.push(event);
            }
        }
        let more = !unsent.is_empty();
        self.subscription.unread(unsent);
        if more || blocked {
            // The socket is behind: try again shortly instead of spinning; the queue keeps (and bounds) the rest.
            ctx.run_later(Duration::from_millis(20), |act, ctx| act.drain(ctx));
        } else if !self.subscription.is_empty() {
            ctx.notify(Wake);
        }
    }

    fn on_op(&mut self, text: &str, ctx: &mut Context<Self>) {
        let op = match parse_op(text) {
            Ok(op) => op,
            Err(err) => return self.error(err.code, err.message, ctx),
        };
        match op.kind {
            OpKind::Subscribe => {
                self.subscription.set_topics(&op.topics, &[]);
                if op.topics.iter().any(|t| t == "stats") {
                    let seconds = op.interval.unwrap_or(DEFAULT_STATS_INTERVAL);
                    if !(0.1..=3600.0).contains(&seconds) {
                        return self.error(
                            "invalid_interval",
                            "interval is 0.1 to 3600 seconds".into(),
                            ctx,
                        );
                    }
                    self.start_stats(Duration::from_secs_f64(seconds), ctx);
                }
                self.send(&json!({"op": "subscribed", "topics": op.topics}), ctx);
            }
            OpKind::Unsubscribe => {
                self.subscription.set_topics(&[], &op.topics);
                if op.topics.iter().any(|t| t == "stats") {
                    if let Some(handle) = self.stats.take() {
                        ctx.cancel_future(handle);
                    }
                }
                self.send(&json!({"op": "unsubscribed", "topics": op.topics}), ctx);
            }
        }
    }

    fn start_stats(&mut self, every: Duration, ctx: &mut Context<Self>) {
        if let Some(handle) = self.stats.take() {
            ctx.cancel_future(handle);
        }
        let mut last = (
            self.bus
                .counters()
                .commands
                .load(std::sync::atomic::Ordering::Relaxed),
            self.bus
                .counters()
                .events
                .load(std::sync::atomic::Ordering::Relaxed),
            std::time::Instant::now(),
        );
        self.stats = Some(ctx.run_interval(every, move |act, ctx| {
            let counters = act.bus.counters();
            let now = (
                counters.commands.load(std::sync::atomic::Ordering::Relaxed),
                counters.events.load(std::sync::atomic::Ordering::Relaxed),
                std::time::Instant::now(),
            );
            let seconds = now.2.duration_since(last.2).as_secs_f64().max(0.001);
            let rates = ((now.0 - last.0) as f64 / seconds, (now.1 - last.1) as f64 / seconds);
            last = now;
            let node = act.bus.node().to_owned();
            let registry = act.registry.clone();
            let work = async move { registry.send(ListConnected).await.unwrap_or_default() };
            ctx.spawn(work.into_actor(act).map(move |connected, act, ctx| {
                let count = |kind: &str| connected.iter().filter(|c| c.protocol.starts_with(kind)).count();
                let stats = json!({
                    "type": "stats", "device": null, "kind": null, "node": node, "at": chrono::Utc::now(),
                    "data": {
                        "online": {"tm20": count("tm20"), "ocpp": count("ocpp"), "sxdm": count("sxdm")},
                        "commands_per_second": rates.0,
                        "events_per_second": rates.1,
                    },
                });
                act.subscription.push(stats);
                ctx.notify(Wake);
            }));
        }));
    }
}

impl Actor for EventSubscriber {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // In a cluster the other nodes publish for this node's subscribers only once they know it has some:
        // the welcome (and any op, which `wait` holds back) comes after that, so nothing published after the
        // welcome is missed.
        ctx.wait(self.bus.ready().into_actor(self).map(|(), act, ctx| {
            act.send(&json!({"op": "welcome", "id": act.subscription.id}), ctx);
        }));
        let subscription = Arc::clone(&self.subscription);
        let wakes = futures_util::stream::unfold(subscription, |subscription| async move {
            subscription.notify.notified().await;
            Some((Wake, subscription))
        });
        ctx.add_stream(wakes);
        ctx.run_interval(Duration::from_secs(30), |act, _| {
            let _ = act.outbox.send(OutFrame::Ping);
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.bus.unsubscribe(self.subscription.id);
    }
}

impl StreamHandler<Wake> for EventSubscriber {
    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.drain(ctx);
    }
}

impl Handler<Wake> for EventSubscriber {
    type Result = ();

    /// Writes what is queued.
    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.drain(ctx);
    }
}

impl StreamHandler<WsEvent> for EventSubscriber {
    fn handle(&mut self, event: WsEvent, ctx: &mut Context<Self>) {
        match event {
            WsEvent::Text(text) => self.on_op(&text, ctx),
            WsEvent::Ping(bytes) => {
                let _ = self.outbox.send(OutFrame::Pong(bytes));
            }
            WsEvent::Close(_) => ctx.stop(),
            WsEvent::Error(_) => {
                let _ = self
                    .outbox
                    .send(OutFrame::Close(CloseCode::Protocol, "bad frame".into()));
                ctx.stop();
            }
            WsEvent::Limited(_) => {
                self.send(
                    &serde_json::json!({"op": "error", "error": "rate_limited", "message": "too many ops; slow down"}),
                    ctx,
                );
            }
            WsEvent::Binary(_) | WsEvent::Pong => {}
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> &'static str {
        match parse_op(text) {
            Err(err) => err.code,
            Ok(op) => panic!("expected an error from {text:?}, got {op:?}"),
        }
    }

    #[test]
    fn parse_op_reads_subscribe_and_unsubscribe() {
        let op = parse_op(r#"{"op":"subscribe","topics":["stats","kind:ocpp"],"interval":2}"#);
        assert_eq!(
            op,
            Ok(Op {
                kind: OpKind::Subscribe,
                topics: vec!["stats".into(), "kind:ocpp".into()],
                interval: Some(2.0),
            })
        );
        let op = parse_op(r#"{"op":"unsubscribe"}"#);
        assert_eq!(
            op,
            Ok(Op {
                kind: OpKind::Unsubscribe,
                topics: vec![],
                interval: None,
            })
        );
    }

    #[test]
    fn parse_op_refuses_malformed_ops_with_the_answer_codes() {
        let table = [
            ("", "bad_request"),
            ("[]", "bad_request"),
            (r#"{"topics":[]}"#, "bad_request"),
            (r#"{"op":"subscribe","topics":"stats"}"#, "bad_request"),
            (r#"{"op":"subscribe","interval":"1"}"#, "bad_request"),
            (r#"{"op":"Subscribe"}"#, "unknown_op"),
            // The op name is checked before the topics.
            (r#"{"op":"watch","topics":["nope"]}"#, "unknown_op"),
            (r#"{"op":"subscribe","topics":["nope"]}"#, "invalid_topic"),
            (
                r#"{"op":"unsubscribe","topics":["device:"]}"#,
                "invalid_topic",
            ),
        ];
        for (text, expected) in table {
            assert_eq!(code(text), expected, "{text}");
        }
    }
}
