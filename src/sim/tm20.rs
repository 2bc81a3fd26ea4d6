//! Virtual TM20 / AiFace terminal speaking the "WebSocket + JSON" protocol
//! (`shared/protocols/tm20.md` §1.1–1.7).
//!
//! A [`SimTerminal`] behaves like the real device: it is the WebSocket *client*, sends `reg` with a
//! `devinfo` block, waits for `{"ret":"reg","result":true}` and from then on answers every server
//! command from its own in-memory user and log store. The server's integration tests drive it as a
//! library, `gatehouse simulate tm20` runs a fleet of them through [`run_fleet`], and a load
//! generator may run thousands, so each terminal is one tokio task that only wakes up for socket
//! traffic, a request from its handle, or a delayed reply falling due.
//!
//! The command logic lives in [`Device::handle`], a synchronous function over [`SimState`] plus a
//! few paging cursors, so it is unit-tested without sockets; the task around it only moves frames.
//!
//! Choices where the protocol notes leave room (all documented on the items below):
//! * paging replies use inclusive `from`/`to`, the last page has `to == count - 1`, and a request
//!   past the end gets Topdata's terminator `{"count":0,"from":0,"to":0,"record":[]}`;
//! * `deleteuser` with a single credential slot (0–11, 20–27, 30–37, 50) drops only that slot,
//!   12 drops fingerprints 0–9, and 13 or anything else drops the whole user;
//! * `send_logs` pushes records to the server but does not add them to the terminal's own log
//!   book, so `getnewlog`/`getalllog` always reflect exactly the seeded logs;
//! * `send_user` does store the credential locally, as a keypad enrolment would;
//! * [`SimState::devinfo`] is the `setdevinfo`/`getdevinfo` settings object; the `reg` devinfo
//!   is derived from the state on every registration by [`SimState::reg_devinfo`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{Local, NaiveDate, NaiveDateTime, TimeDelta};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `cloudtime` / log time format, device-local (§1.3.1).
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";
/// How long we wait for the server's reply to anything the terminal sends (brief: ≤10 s).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between dropping the socket on `reboot` and dialling again.
const REBOOT_PAUSE: Duration = Duration::from_millis(200);
/// Upper bound for the back-off between reconnect attempts after a reboot.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(2);
/// A rebooted device would retry forever; a simulator gives up so tests end.
const RECONNECT_ATTEMPTS: u32 = 10;
/// Bounded wait for a close handshake so a dead peer cannot stall shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// tungstenite allocates 128 KiB per socket by default; thousands of terminals need far less
/// (the buffer still grows for 150 KB photos).
const READ_BUFFER: usize = 8 * 1024;
/// Requests queued from the handle while the task is busy or reconnecting.
const OUTBOX_CAPACITY: usize = 64;
/// How many fleet terminals dial at the same time, so a big fleet does not SYN-flood the server.
const FLEET_CONNECT_CONCURRENCY: usize = 64;
/// Capacities advertised in `devinfo` (the doc's example values), raised if the state is bigger.
const ADVERTISED_CAPACITY: usize = 3000;
const ADVERTISED_LOG_CAPACITY: usize = 100_000;
/// Seeded card numbers are `CARD_BASE + enrollid`, passwords `PWD_BASE + enrollid`.
const CARD_BASE: i64 = 10_000_000;
const PWD_BASE: i64 = 100_000;
/// Seeded logs are eight punches a day (08:00..15:00) from this date on, so date filters of
/// `getalllog` have several days to work on and the records are the same on every run.
const SEED_LOG_YEAR: i32 = 2024;
const SEED_LOGS_PER_DAY: u32 = 8;
const SEED_LOG_FIRST_HOUR: u32 = 8;

const BACKUPNUM_PWD: i64 = 10;
const BACKUPNUM_CARD: i64 = 11;
const BACKUPNUM_ALL_FINGERPRINTS: i64 = 12;
const BACKUPNUM_PHOTO: i64 = 50;
/// Evo doc photo reason codes (§1.5): 5 = no face, 13 stands in for "other = decode failed".
const REASON_NO_FACE: i64 = 5;
const REASON_DECODE_FAILED: i64 = 13;
const REASON_BAD_REQUEST: i64 = 1;
const MSG_NO_USER: &str = "can not find the user";
const MSG_NO_COMMAND: &str = "can not find this command";

/// Settings of one virtual terminal.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Server URL, e.g. `ws://127.0.0.1:7788/pub/chat`.
    pub url: String,
    /// Serial number sent in `reg` and in every reply.
    pub sn: String,
    /// Initial enrolled users: enrollid 1..=users, names "User N", one fingerprint (backupnum 0)
    /// each and a card (backupnum 11) for every third user.
    pub users: u32,
    /// Initial stored logs, all unread by `getnewlog`.
    pub logs: u32,
    /// Page size of `getuserlist`/`getnewlog`/`getalllog` replies (0 is treated as 1).
    pub page_size: u32,
    /// Delay before answering a server command.
    pub reply_delay: Duration,
    /// `false`: record commands but never answer or apply them (a hung device, for time-out tests).
    pub answer_commands: bool,
    pub model: String,
    pub firmware: String,
    /// Source address of the socket (`127.0.0.2`, …): one source address has ~28k ephemeral ports, so
    /// load tests spread large fleets over several. `None`: the OS picks.
    pub local_addr: Option<std::net::IpAddr>,
}

impl SimConfig {
    pub fn new(url: impl Into<String>, sn: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            sn: sn.into(),
            users: 10,
            logs: 20,
            page_size: 40,
            reply_delay: Duration::ZERO,
            answer_commands: true,
            model: "AiFace".to_owned(),
            firmware: "ai806_f06v_v5.06".to_owned(),
            local_addr: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// TCP connect or WebSocket handshake failed.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The server answered `reg` with `result:false`; the text is its `reason`.
    #[error("registration rejected: {0}")]
    Rejected(String),
    /// The connection (or the terminal task) ended before the answer came.
    #[error("connection closed")]
    Closed,
    /// No answer within 10 s.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The WebSocket layer failed while registering.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// One enrolled person and their credentials.
#[derive(Clone, Debug, PartialEq)]
pub struct SimUser {
    pub enrollid: i64,
    pub name: String,
    /// 0 user, 1 admin, 2 super admin.
    pub admin: i64,
    pub enabled: bool,
    /// backupnum -> record (hex string for fingerprints, number for password/card, base64 photo).
    pub credentials: BTreeMap<i64, Value>,
}

impl SimUser {
    fn named(enrollid: i64, name: String) -> Self {
        Self {
            enrollid,
            name,
            admin: 0,
            enabled: true,
            credentials: BTreeMap::new(),
        }
    }
}

/// Everything the terminal stores; [`SimTerminal::state`] hands out snapshots of it.
#[derive(Clone, Debug, Default)]
pub struct SimState {
    pub users: BTreeMap<i64, SimUser>,
    pub logs: Vec<Value>,
    /// Index of the first log that `getnewlog` has not returned yet.
    pub unread_from: usize,
    /// Every server command frame, in arrival order (also when `answer_commands` is false).
    pub commands_received: Vec<Value>,
    pub door_opened: u32,
    /// Last `settime` cloudtime or `reg` reply cloudtime.
    pub clock: Option<String>,
    /// The `setdevinfo`/`getdevinfo` settings object (deviceid, language, volume, …).
    pub devinfo: Value,
    /// The last `ret:"reg"` frame received.
    pub reg_reply: Option<Value>,
    /// WebSocket ping frames seen.
    pub pings_received: u32,
}

impl SimState {
    /// The initial state described by [`SimConfig::users`] and [`SimConfig::logs`].
    pub fn seeded(users: u32, logs: u32) -> Self {
        let mut state = Self {
            devinfo: default_settings(),
            ..Self::default()
        };
        for id in 1..=i64::from(users) {
            let mut user = SimUser::named(id, format!("User {id}"));
            user.credentials.insert(0, fake_credential(id, 0));
            if id % 3 == 0 {
                user.credentials
                    .insert(BACKUPNUM_CARD, fake_credential(id, BACKUPNUM_CARD));
            }
            state.users.insert(id, user);
        }
        let epoch = NaiveDate::from_ymd_opt(SEED_LOG_YEAR, 1, 1)
            .and_then(|d| d.and_hms_opt(SEED_LOG_FIRST_HOUR, 0, 0))
            .unwrap_or_default();
        state.logs = (0..logs)
            .map(|i| {
                let offset = TimeDelta::days(i64::from(i / SEED_LOGS_PER_DAY))
                    + TimeDelta::hours(i64::from(i % SEED_LOGS_PER_DAY));
                let time = epoch.checked_add_signed(offset).unwrap_or(epoch);
                let enrollid = if users == 0 {
                    1
                } else {
                    i64::from(i % users) + 1
                };
                json!({
                    "enrollid": enrollid,
                    "time": time.format(TIME_FORMAT).to_string(),
                    "mode": 0,
                    "inout": i % 2,
                    "event": 0,
                })
            })
            .collect();
        state
    }

    /// The `devinfo` object of `reg` (§1.3.1) with the `used*` counters taken from this state.
    pub fn reg_devinfo(&self, model: &str, firmware: &str, sn: &str, time: &str) -> Value {
        let slots = || self.users.values().flat_map(|u| u.credentials.keys());
        let count = |f: fn(i64) -> bool| slots().filter(|b| f(**b)).count();
        let used_fp = count(|b| (0..=9).contains(&b));
        let used_pwd = count(|b| b == BACKUPNUM_PWD);
        let used_card = count(|b| b == BACKUPNUM_CARD);
        let used_face = count(|b| (20..=27).contains(&b) || b == BACKUPNUM_PHOTO);
        let used_palm = count(|b| (30..=37).contains(&b));
        let capacity = |used: usize| used.max(ADVERTISED_CAPACITY);
        json!({
            "modelname": model,
            "usersize": capacity(self.users.len()),
            "fpsize": capacity(used_fp),
            "cardsize": capacity(used_card),
            "pwdsize": capacity(used_pwd),
            "facesize": capacity(used_face),
            "palmsize": capacity(used_palm),
            "logsize": self.logs.len().max(ADVERTISED_LOG_CAPACITY),
            "useduser": self.users.len(),
            "usedfp": used_fp,
            "usedcard": used_card,
            "usedpwd": used_pwd,
            "usedface": used_face,
            "usedpalm": used_palm,
            "usedlog": self.logs.len(),
            "usednewlog": self.logs.len().saturating_sub(self.unread_from),
            "fpalgo": "thbio3.0",
            "firmware": firmware,
            "time": time,
            "mac": fake_mac(sn),
        })
    }
}

/// Inclusive `(from, to)` indexes of the page starting at `start`, or `None` past the end.
pub fn page_window(total: usize, start: usize, page_size: usize) -> Option<(usize, usize)> {
    if start >= total {
        return None;
    }
    let end = start.saturating_add(page_size.max(1)).min(total);
    Some((start, end - 1))
}

// ---------------------------------------------------------------------------------------------
// Command handling: synchronous, socket-free.
// ---------------------------------------------------------------------------------------------

/// What the device does with one server command.
#[derive(Debug, PartialEq)]
enum Outcome {
    Reply(Value),
    /// `reboot`: no reply, drop the socket and register again.
    Reboot,
}

/// The logs a `getnewlog`/`getalllog` sequence pages over, fixed by its `stn:true` request.
#[derive(Debug)]
enum Selection {
    Range(usize, usize),
    List(Vec<usize>),
}

impl Selection {
    fn len(&self) -> usize {
        match self {
            Self::Range(start, end) => end.saturating_sub(*start),
            Self::List(indexes) => indexes.len(),
        }
    }

    fn get(&self, i: usize) -> Option<usize> {
        match self {
            Self::Range(start, _) => (i < self.len()).then(|| start + i),
            Self::List(indexes) => indexes.get(i).copied(),
        }
    }
}

#[derive(Debug)]
struct LogCursor {
    selection: Selection,
    next: usize,
    /// For `getnewlog`: `unread_from` becomes this once the last page has been sent.
    mark_read_upto: Option<usize>,
}

/// The terminal's state plus what the protocol keeps per session (paging cursors) and the
/// settings that have no field in [`SimState`].
#[derive(Debug)]
struct Device {
    state: SimState,
    page_size: usize,
    /// Device clock = local time + offset, set by `settime` and the `reg` reply.
    clock_offset: TimeDelta,
    user_cursor: Option<usize>,
    alluser_cursor: Option<usize>,
    newlog_cursor: Option<LogCursor>,
    alllog_cursor: Option<LogCursor>,
    /// `None` until first read or set: the factory key set is ~80 KiB of small JSON maps, which every one of
    /// the tens of thousands of terminals a load run holds would otherwise build and keep (it was two thirds of
    /// the load generator's memory and most of its page faults).
    devlock: Option<Value>,
    user_locks: BTreeMap<i64, Value>,
    questionnaire: Value,
    holidays: Vec<Value>,
    profiles: BTreeMap<i64, String>,
    disabled: bool,
}

impl Device {
    fn new(state: SimState, page_size: u32) -> Self {
        Self {
            state,
            page_size: usize::try_from(page_size).unwrap_or(usize::MAX).max(1),
            clock_offset: TimeDelta::zero(),
            user_cursor: None,
            alluser_cursor: None,
            newlog_cursor: None,
            alllog_cursor: None,
            devlock: None,
            user_locks: BTreeMap::new(),
            questionnaire: default_questionnaire(),
            holidays: Vec::new(),
            profiles: BTreeMap::new(),
            disabled: false,
        }
    }

    /// A reboot forgets half-finished paging sequences.
    fn reset_session(&mut self) {
        self.user_cursor = None;
        self.alluser_cursor = None;
        self.newlog_cursor = None;
        self.alllog_cursor = None;
    }

    fn device_time(&self, now: NaiveDateTime) -> String {
        now.checked_add_signed(self.clock_offset)
            .unwrap_or(now)
            .format(TIME_FORMAT)
            .to_string()
    }

    fn set_clock(&mut self, cloudtime: &str, now: NaiveDateTime) {
        self.state.clock = Some(cloudtime.to_owned());
        // An unparsable time is still recorded as received, but cannot move the clock.
        if let Ok(t) = NaiveDateTime::parse_from_str(cloudtime.trim(), TIME_FORMAT) {
            self.clock_offset = t.signed_duration_since(now);
        }
    }

    fn reg_frame(&self, cfg: &SimConfig, now: NaiveDateTime) -> Value {
        let time = self.device_time(now);
        json!({
            "cmd": "reg",
            "sn": cfg.sn,
            "cpusn": fnv1a(cfg.sn.as_bytes()).to_string(),
            "devinfo": self.state.reg_devinfo(&cfg.model, &cfg.firmware, &cfg.sn, &time),
        })
    }

    fn accept_reg_reply(&mut self, frame: &Value, now: NaiveDateTime) {
        if let Some(cloudtime) = frame.get("cloudtime").and_then(Value::as_str) {
            self.set_clock(cloudtime, now);
        }
        self.state.reg_reply = Some(frame.clone());
    }

    /// Applies one server command and builds the reply (§1.5). Every reply carries `ret` and `sn`.
    fn handle(&mut self, sn: &str, frame: &Value, now: NaiveDateTime) -> Outcome {
        let cmd = frame.get("cmd").and_then(Value::as_str).unwrap_or_default();
        let mut reply = match cmd.to_ascii_lowercase().as_str() {
            "reboot" => return Outcome::Reboot,
            "getuserlist" => self.get_user_list(frame),
            "getuserinfo" => self.get_user_info(frame),
            "setuserinfo" => self.set_user_info(frame),
            "deleteuser" => self.delete_user(frame),
            "getusername" => self.get_user_name(frame),
            "setusername" => self.set_user_name(frame),
            "enableuser" => self.enable_user(frame),
            "cleanuser" => {
                self.clear_users();
                ok()
            }
            "getnewlog" => self.log_page(frame, true),
            "getalllog" => self.log_page(frame, false),
            "cleanlog" => {
                self.clear_logs();
                ok()
            }
            "initsys" => {
                self.clear_users();
                self.clear_logs();
                ok()
            }
            "cleanadmin" => {
                self.state.users.values_mut().for_each(|u| u.admin = 0);
                ok()
            }
            "settime" => match frame.get("cloudtime").and_then(Value::as_str) {
                Some(t) => {
                    self.set_clock(t, now);
                    ok()
                }
                None => fail(REASON_BAD_REQUEST),
            },
            "gettime" => obj(json!({"result": true, "time": self.device_time(now)})),
            "setdevinfo" => {
                merge_fields(&mut self.state.devinfo, frame);
                ok()
            }
            "getdevinfo" => with_fields(ok(), &self.state.devinfo),
            "opendoor" => {
                self.state.door_opened = self.state.door_opened.saturating_add(1);
                ok()
            }
            "setdevlock" => {
                merge_fields(self.devlock.get_or_insert_with(default_devlock), frame);
                ok()
            }
            "getdevlock" => with_fields(ok(), self.devlock.get_or_insert_with(default_devlock)),
            "getuserlock" => self.get_user_lock(frame),
            "setuserlock" => self.set_user_lock(frame),
            "deleteuserlock" => {
                if let Some(id) = field_i64(frame, "enrollid") {
                    self.user_locks.remove(&id);
                }
                ok()
            }
            "cleanuserlock" => {
                self.user_locks.clear();
                ok()
            }
            "disabledevice" => {
                self.disabled = true;
                ok()
            }
            "enabledevice" => {
                self.disabled = false;
                ok()
            }
            "getquestionnaire" => with_fields(ok(), &self.questionnaire),
            "setquestionnaire" => {
                merge_fields(&mut self.questionnaire, frame);
                ok()
            }
            "setholiday" => self.set_holiday(frame),
            "getholiday" => obj(
                json!({"result": true, "count": self.holidays.len(), "holidays": self.holidays}),
            ),
            "deleteholiday" => self.delete_holiday(frame),
            "cleanholiday" => {
                self.holidays.clear();
                ok()
            }
            "getallusers" => self.get_all_users(frame),
            "adduser" => self.add_user(frame),
            "setuserprofile" => self.set_user_profile(frame),
            "getuserprofile" => {
                let id = field_i64(frame, "enrollid").unwrap_or(0);
                let profile = self.profiles.get(&id).cloned().unwrap_or_default();
                obj(json!({"result": true, "enrollid": id, "profile": profile}))
            }
            "getuserids" => {
                let ids: Vec<i64> = self.state.users.keys().copied().collect();
                obj(json!({"result": true, "count": ids.len(), "record": ids}))
            }
            _ => obj(json!({"result": false, "reason": MSG_NO_COMMAND})),
        };
        reply.insert("ret".to_owned(), Value::String(cmd.to_owned()));
        reply.insert("sn".to_owned(), Value::String(sn.to_owned()));
        Outcome::Reply(Value::Object(reply))
    }

    fn clear_users(&mut self) {
        self.state.users.clear();
        self.user_locks.clear();
        self.profiles.retain(|id, _| *id == 0); // enrollid 0 is the notice for everyone
        self.user_cursor = None;
        self.alluser_cursor = None;
    }

    fn clear_logs(&mut self) {
        self.state.logs.clear();
        self.state.unread_from = 0;
        self.newlog_cursor = None;
        self.alllog_cursor = None;
    }

    /// §1.6: `count` is the number of users, `from`/`to` are user indexes, `record` has one entry
    /// per credential of those users (users without credentials contribute none).
    fn get_user_list(&mut self, frame: &Value) -> Map<String, Value> {
        let start = if field_bool(frame, "stn").unwrap_or(true) {
            0
        } else {
            self.user_cursor.unwrap_or(0)
        };
        let total = self.state.users.len();
        let Some((from, to)) = page_window(total, start, self.page_size) else {
            self.user_cursor = Some(total);
            return empty_page();
        };
        self.user_cursor = Some(to + 1);
        let record: Vec<Value> = self
            .state
            .users
            .values()
            .skip(from)
            .take(to + 1 - from)
            .flat_map(|u| {
                u.credentials
                    .keys()
                    .map(move |b| json!({"enrollid": u.enrollid, "admin": u.admin, "backupnum": b}))
            })
            .collect();
        obj(json!({"result": true, "count": total, "from": from, "to": to, "record": record}))
    }

    fn get_user_info(&self, frame: &Value) -> Map<String, Value> {
        let id = field_i64(frame, "enrollid");
        let Some(user) = id.and_then(|id| self.state.users.get(&id)) else {
            return not_found(frame);
        };
        // Without a backupnum the device's first credential is the most useful answer.
        let backupnum =
            field_i64(frame, "backupnum").or_else(|| user.credentials.keys().next().copied());
        let Some((backupnum, record)) =
            backupnum.and_then(|b| user.credentials.get(&b).map(|r| (b, r)))
        else {
            return not_found(frame);
        };
        obj(json!({
            "result": true,
            "enrollid": user.enrollid,
            "name": user.name,
            "backupnum": backupnum,
            "admin": user.admin,
            "record": record,
        }))
    }

    /// Classic form (backupnum + record) and the v2.9 profile form (card, pwd, enable, …).
    fn set_user_info(&mut self, frame: &Value) -> Map<String, Value> {
        let Some(id) = field_i64(frame, "enrollid").filter(|id| *id > 0) else {
            return fail(REASON_BAD_REQUEST);
        };
        let backupnum = field_i64(frame, "backupnum");
        let record = frame.get("record").filter(|r| !r.is_null());
        // Validate before touching the user, so a rejected photo leaves nothing half-written.
        let credential = match (backupnum, record) {
            (Some(b), Some(r)) => match normalise_credential(b, r) {
                Ok(value) => Some((b, value)),
                Err(reason) => return fail(reason),
            },
            _ => None,
        };
        let user = self
            .state
            .users
            .entry(id)
            .or_insert_with(|| SimUser::named(id, String::new()));
        if let Some(name) = field_str(frame, "name") {
            user.name = name;
        }
        if let Some(admin) = field_i64(frame, "admin") {
            user.admin = admin;
        }
        if let Some(enable) = field_bool(frame, "enable") {
            user.enabled = enable;
        }
        // Profile form: 0 means "no card/password".
        for (key, slot) in [("card", BACKUPNUM_CARD), ("pwd", BACKUPNUM_PWD)] {
            match field_i64(frame, key) {
                Some(0) => {
                    user.credentials.remove(&slot);
                }
                Some(n) => {
                    user.credentials.insert(slot, json!(n));
                }
                None => {}
            }
        }
        if let Some((b, value)) = credential {
            user.credentials.insert(b, value);
        }
        ok()
    }

    /// §1.4: 12 = all fingerprints, a single credential slot = that slot, 13 or anything else
    /// (including no backupnum) = the whole user.
    fn delete_user(&mut self, frame: &Value) -> Map<String, Value> {
        let Some(id) = field_i64(frame, "enrollid").filter(|id| self.state.users.contains_key(id))
        else {
            return not_found(frame);
        };
        match field_i64(frame, "backupnum") {
            Some(BACKUPNUM_ALL_FINGERPRINTS) => {
                if let Some(user) = self.state.users.get_mut(&id) {
                    user.credentials.retain(|b, _| !(0..=9).contains(b));
                }
            }
            Some(b) if is_credential_slot(b) => {
                if let Some(user) = self.state.users.get_mut(&id) {
                    user.credentials.remove(&b);
                }
            }
            _ => {
                self.state.users.remove(&id);
                self.user_locks.remove(&id);
                self.profiles.remove(&id);
            }
        }
        ok()
    }

    fn get_user_name(&self, frame: &Value) -> Map<String, Value> {
        match field_i64(frame, "enrollid").and_then(|id| self.state.users.get(&id)) {
            Some(u) => obj(json!({"result": true, "enrollid": u.enrollid, "record": u.name})),
            None => not_found(frame),
        }
    }

    /// Creates name-only users for unknown ids, like the vendor's "set name only" path (§1.4, -1).
    fn set_user_name(&mut self, frame: &Value) -> Map<String, Value> {
        let Some(records) = frame.get("record").and_then(Value::as_array) else {
            return fail(REASON_BAD_REQUEST);
        };
        for r in records {
            if let (Some(id), Some(name)) = (field_i64(r, "enrollid"), field_str(r, "name")) {
                self.state
                    .users
                    .entry(id)
                    .or_insert_with(|| SimUser::named(id, String::new()))
                    .name = name;
            }
        }
        ok()
    }

    fn enable_user(&mut self, frame: &Value) -> Map<String, Value> {
        let enable = field_bool(frame, "enflag").unwrap_or(true);
        match field_i64(frame, "enrollid").and_then(|id| self.state.users.get_mut(&id)) {
            Some(user) => {
                user.enabled = enable;
                ok()
            }
            None => not_found(frame),
        }
    }

    /// `getnewlog` (`unread_only`) pages over the logs not yet returned and marks them read once
    /// the last page is out; `getalllog` pages over all logs, optionally limited by the
    /// `from`/`to` dates of the first request.
    fn log_page(&mut self, frame: &Value, unread_only: bool) -> Map<String, Value> {
        let logs = &self.state.logs;
        let slot = if unread_only {
            &mut self.newlog_cursor
        } else {
            &mut self.alllog_cursor
        };
        let mut cursor = match slot.take() {
            Some(c) if field_bool(frame, "stn") == Some(false) => c,
            _ if unread_only => LogCursor {
                selection: Selection::Range(self.state.unread_from.min(logs.len()), logs.len()),
                next: 0,
                mark_read_upto: Some(logs.len()),
            },
            _ => LogCursor {
                selection: select_logs_by_date(
                    logs,
                    frame.get("from").and_then(Value::as_str),
                    frame.get("to").and_then(Value::as_str),
                ),
                next: 0,
                mark_read_upto: None,
            },
        };
        let total = cursor.selection.len();
        let reply = match page_window(total, cursor.next, self.page_size) {
            None => {
                cursor.next = total;
                empty_page()
            }
            Some((from, to)) => {
                let record: Vec<Value> = (from..=to)
                    .filter_map(|i| cursor.selection.get(i))
                    .filter_map(|i| logs.get(i).cloned())
                    .collect();
                cursor.next = to + 1;
                if to + 1 == total {
                    if let Some(upto) = cursor.mark_read_upto {
                        self.state.unread_from = self.state.unread_from.max(upto.min(logs.len()));
                    }
                }
                obj(
                    json!({"result": true, "count": total, "from": from, "to": to, "record": record}),
                )
            }
        };
        *slot = Some(cursor);
        reply
    }

    fn get_user_lock(&self, frame: &Value) -> Map<String, Value> {
        let Some(id) = field_i64(frame, "enrollid").filter(|id| self.state.users.contains_key(id))
        else {
            return not_found(frame);
        };
        let lock = self.user_locks.get(&id).cloned().unwrap_or_else(|| {
            json!({
                "weekzone": 1, "weekzone2": 1, "weekzone3": 1, "weekzone4": 1, "group": 1,
                "starttime": "2000-01-01 00:00:00", "endtime": "2099-12-31 23:59:00",
            })
        });
        let mut reply = with_fields(ok(), &lock);
        reply.insert("enrollid".to_owned(), json!(id));
        reply
    }

    fn set_user_lock(&mut self, frame: &Value) -> Map<String, Value> {
        let Some(records) = frame.get("record").and_then(Value::as_array) else {
            return fail(REASON_BAD_REQUEST);
        };
        for r in records {
            if let Some(id) = field_i64(r, "enrollid") {
                let mut lock = r.clone();
                if let Some(m) = lock.as_object_mut() {
                    m.remove("enrollid");
                }
                self.user_locks.insert(id, lock);
            }
        }
        ok()
    }

    /// Doc form replaces the list with `holidays`; the C# form stores one entry at `index`.
    fn set_holiday(&mut self, frame: &Value) -> Map<String, Value> {
        if let Some(list) = frame.get("holidays").and_then(Value::as_array) {
            self.holidays = list.clone();
            return ok();
        }
        let mut entry = Value::Object(Map::new());
        merge_fields(&mut entry, frame);
        if let Some(m) = entry.as_object_mut() {
            m.remove("stn");
        }
        let index = field_i64(frame, "index").and_then(|i| usize::try_from(i).ok());
        match index {
            Some(i) if i < self.holidays.len() => self.holidays[i] = entry,
            _ => self.holidays.push(entry),
        }
        ok()
    }

    fn delete_holiday(&mut self, frame: &Value) -> Map<String, Value> {
        if let Some(i) = field_i64(frame, "index").and_then(|i| usize::try_from(i).ok()) {
            if i < self.holidays.len() {
                self.holidays.remove(i);
            }
        } else if let Some(name) = field_str(frame, "name") {
            self.holidays
                .retain(|h| h.get("name").and_then(Value::as_str) != Some(name.as_str()));
        }
        ok()
    }

    /// C# demo download: one credential per reply; `stn:false` moves to the next index.
    fn get_all_users(&mut self, frame: &Value) -> Map<String, Value> {
        let index = if field_bool(frame, "stn").unwrap_or(true) {
            0
        } else {
            self.alluser_cursor.map_or(0, |i| i + 1)
        };
        self.alluser_cursor = Some(index);
        let entries = || {
            self.state
                .users
                .values()
                .flat_map(|u| u.credentials.iter().map(move |(b, r)| (u, *b, r)))
        };
        let count = entries().count();
        let mut reply = obj(json!({"result": true, "count": count, "index": index}));
        if let Some((user, backupnum, record)) = entries().nth(index) {
            reply.extend(obj(json!({
                "enrollid": user.enrollid,
                "name": user.name,
                "backupnum": backupnum,
                "admin": user.admin,
                "record": record,
            })));
        }
        reply
    }

    /// On-device enrolment: the simulated person "scans" at once and the new credential is stored.
    fn add_user(&mut self, frame: &Value) -> Map<String, Value> {
        let Some(id) = field_i64(frame, "enrollid").filter(|id| *id > 0) else {
            return fail(REASON_BAD_REQUEST);
        };
        let backupnum = field_i64(frame, "backupnum").unwrap_or(BACKUPNUM_PHOTO);
        if !is_credential_slot(backupnum) {
            return fail(REASON_BAD_REQUEST);
        }
        let user = self
            .state
            .users
            .entry(id)
            .or_insert_with(|| SimUser::named(id, String::new()));
        if let Some(name) = field_str(frame, "name") {
            user.name = name;
        }
        if let Some(admin) = field_i64(frame, "admin") {
            user.admin = admin;
        }
        user.credentials
            .insert(backupnum, fake_credential(id, backupnum));
        obj(json!({
            "result": true,
            "enrollid": id,
            "backupnum": backupnum,
            "admin": user.admin,
            "name": user.name,
        }))
    }

    fn set_user_profile(&mut self, frame: &Value) -> Map<String, Value> {
        let Some(id) = field_i64(frame, "enrollid").filter(|id| *id >= 0) else {
            return fail(REASON_BAD_REQUEST);
        };
        let profile = field_str(frame, "profile").unwrap_or_default();
        self.profiles.insert(id, profile);
        ok()
    }
}

fn select_logs_by_date(logs: &[Value], from: Option<&str>, to: Option<&str>) -> Selection {
    if from.is_none() && to.is_none() {
        return Selection::Range(0, logs.len());
    }
    // Dates are compared as `YYYY-MM-DD` strings, which order like the dates themselves.
    let day = |s: &str| s.trim().get(..10).unwrap_or(s.trim()).to_owned();
    let (from, to) = (from.map(day), to.map(day));
    let indexes = logs
        .iter()
        .enumerate()
        .filter(|(_, log)| {
            let Some(date) = log.get("time").and_then(Value::as_str).map(day) else {
                return false;
            };
            from.as_ref().is_none_or(|f| date >= *f) && to.as_ref().is_none_or(|t| date <= *t)
        })
        .map(|(i, _)| i)
        .collect();
    Selection::List(indexes)
}

fn is_credential_slot(backupnum: i64) -> bool {
    matches!(backupnum, 0..=11 | 20..=27 | 30..=37 | BACKUPNUM_PHOTO)
}

/// Checks a `setuserinfo` record the way firmware would: passwords and cards are numbers, a photo
/// must be a non-empty base64 string. `Err` holds the reply's reason code.
fn normalise_credential(backupnum: i64, record: &Value) -> Result<Value, i64> {
    match backupnum {
        BACKUPNUM_PWD | BACKUPNUM_CARD => value_i64(record)
            .map(|n| json!(n))
            .ok_or(REASON_BAD_REQUEST),
        BACKUPNUM_PHOTO => match record {
            Value::String(s) if s.trim().is_empty() => Err(REASON_NO_FACE),
            Value::String(_) => Ok(record.clone()),
            _ => Err(REASON_DECODE_FAILED),
        },
        b if is_credential_slot(b) => match record {
            Value::String(s) if !s.is_empty() => Ok(record.clone()),
            _ => Err(REASON_BAD_REQUEST),
        },
        _ => Err(REASON_BAD_REQUEST),
    }
}

fn fake_credential(enrollid: i64, backupnum: i64) -> Value {
    match backupnum {
        BACKUPNUM_PWD => json!(PWD_BASE + enrollid),
        BACKUPNUM_CARD => json!(CARD_BASE + enrollid),
        // A tiny JPEG header is enough for a server that only stores the string.
        BACKUPNUM_PHOTO => json!(format!("/9j/4AAQSkZJRgABAQAAAQABAAD/{enrollid}")),
        b => {
            let seed = fnv1a(format!("{enrollid}:{b}").as_bytes());
            json!(format!("c52d{seed:016x}{:016x}", seed.rotate_left(29)))
        }
    }
}

/// Stable per-SN identifiers (MAC, cpusn) without a random-number dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fake_mac(sn: &str) -> String {
    let h = fnv1a(sn.as_bytes()).to_be_bytes();
    format!("00-01-A9-{:02X}-{:02X}-{:02X}", h[5], h[6], h[7])
}

fn default_settings() -> Value {
    json!({
        "deviceid": 1, "language": 0, "volume": 6, "screensaver": 1, "verifymode": 0,
        "sleep": 0, "userfpnum": 3, "loghint": 1000, "reverifytime": 5,
    })
}

/// The `setdevlock` key set of §1.5 #20 (8 day zones × 5 sections, 8 week zones × 7 days, …).
fn default_devlock() -> Value {
    let repeat = |n: usize, item: Value| Value::Array(vec![item; n]);
    json!({
        "opendelay": 5, "doorsensor": 0, "alarmdelay": 0, "threat": 0, "InputAlarm": 0,
        "antpass": 0, "interlock": 0, "mutiopen": 0, "tryalarm": 0, "tamper": 0,
        "wgformat": 0, "wgoutput": 0, "cardoutput": 0,
        "dayzone": repeat(8, json!({"day": repeat(5, json!({"section": "00:00~00:00"}))})),
        "weekzone": repeat(8, json!({"week": repeat(7, json!({"day": 0}))})),
        "lockgroup": repeat(5, json!({"group": 0})),
        "nopentime": repeat(7, json!({"day": 0})),
    })
}

fn default_questionnaire() -> Value {
    json!({
        "title": "", "voice": "", "errmsg": "", "radio": true, "optionflag": 0,
        "usequestion": false, "useschedule": false, "card": 0, "items": [], "schedules": [],
    })
}

// ---------------------------------------------------------------------------------------------
// Lenient JSON helpers (§1.1: devices and servers alike send numbers as strings, trailing commas).
// ---------------------------------------------------------------------------------------------

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn ok() -> Map<String, Value> {
    obj(json!({"result": true}))
}

fn fail(reason: i64) -> Map<String, Value> {
    obj(json!({"result": false, "reason": reason}))
}

fn not_found(frame: &Value) -> Map<String, Value> {
    let mut reply = obj(json!({"result": false, "msg": MSG_NO_USER}));
    for key in ["enrollid", "backupnum"] {
        if let Some(v) = frame.get(key) {
            reply.insert(key.to_owned(), v.clone());
        }
    }
    reply
}

fn empty_page() -> Map<String, Value> {
    obj(json!({"result": true, "count": 0, "from": 0, "to": 0, "record": []}))
}

/// Copies every field of `src` except the envelope (`cmd`, `sn`) into `target`.
fn merge_fields(target: &mut Value, src: &Value) {
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let (Some(t), Some(s)) = (target.as_object_mut(), src.as_object()) {
        for (k, v) in s {
            if k != "cmd" && k != "sn" {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

fn with_fields(mut reply: Map<String, Value>, fields: &Value) -> Map<String, Value> {
    if let Some(f) = fields.as_object() {
        for (k, v) in f {
            reply.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    reply
}

fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|x| x.fract() == 0.0 && x.abs() < 9.0e15)
                .map(|x| x as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

fn value_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(_) => value_i64(v).map(|n| n != 0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn field_i64(frame: &Value, key: &str) -> Option<i64> {
    frame.get(key).and_then(value_i64)
}

fn field_bool(frame: &Value, key: &str) -> Option<bool> {
    frame.get(key).and_then(value_bool)
}

fn field_str(frame: &Value, key: &str) -> Option<String> {
    match frame.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses one frame, retrying without trailing commas (`…},]}`) as real devices produce them.
fn parse_frame(text: &str) -> Option<Value> {
    serde_json::from_str::<Value>(text)
        .ok()
        .or_else(|| serde_json::from_str(&strip_trailing_commas(text)).ok())
        .filter(Value::is_object)
}

fn strip_trailing_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c == '"' {
            in_string = true;
        } else if c == ',' {
            let rest = text[i + 1..].trim_start();
            if rest.starts_with(']') || rest.starts_with('}') {
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn frame_of(msg: &Message) -> Option<Value> {
    match msg {
        Message::Text(t) => parse_frame(t.as_str()),
        Message::Binary(b) => std::str::from_utf8(b).ok().and_then(parse_frame),
        _ => None,
    }
}

fn local_now() -> NaiveDateTime {
    Local::now().naive_local()
}

// ---------------------------------------------------------------------------------------------
// The connection task.
// ---------------------------------------------------------------------------------------------

struct Shared {
    cfg: SimConfig,
    device: Mutex<Device>,
    connected: AtomicBool,
    next_logindex: AtomicI64,
}

impl Shared {
    fn device(&self) -> MutexGuard<'_, Device> {
        // The lock is never held across an await or a panic-prone call; a poisoned lock still
        // holds a usable state, and a simulator is more useful limping on than aborting.
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A device-initiated frame and who waits for its `ret`.
struct Request {
    text: String,
    expect_ret: String,
    reply: oneshot::Sender<Value>,
}

struct Waiter {
    ret: String,
    /// Kept so an unanswered frame can be re-sent after a reboot, as the device does (§1.2.6).
    text: String,
    reply: oneshot::Sender<Value>,
}

enum Action {
    Send(Value),
    Reboot,
}

enum SessionEnd {
    Shutdown,
    Reboot,
    Closed(Option<String>),
}

#[derive(Clone, Debug)]
enum Link {
    Open,
    Closed(Option<String>),
}

/// Handle of one running virtual terminal. Dropping it (or [`SimTerminal::close`]) ends its task.
pub struct SimTerminal {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
    /// Dropping this sender is itself the shutdown signal for the task.
    shutdown: watch::Sender<bool>,
    link: watch::Receiver<Link>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SimTerminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTerminal")
            .field("sn", &self.shared.cfg.sn)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl SimTerminal {
    /// Connects, sends reg, waits (≤10 s) for the reg reply. Err(SimError::Rejected(reason)) on result:false.
    pub async fn connect(cfg: SimConfig) -> Result<SimTerminal, SimError> {
        let device = Device::new(SimState::seeded(cfg.users, cfg.logs), cfg.page_size);
        let shared = Arc::new(Shared {
            cfg,
            device: Mutex::new(device),
            connected: AtomicBool::new(false),
            next_logindex: AtomicI64::new(0),
        });
        let (ws, early) = register(&shared).await?;
        shared.connected.store(true, Ordering::SeqCst);
        let (requests, request_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (link_tx, link) = watch::channel(Link::Open);
        let task = tokio::spawn(run(
            Arc::clone(&shared),
            ws,
            early,
            request_rx,
            shutdown_rx,
            link_tx,
        ));
        Ok(SimTerminal {
            shared,
            requests,
            shutdown,
            link,
            task,
        })
    }

    pub fn sn(&self) -> &str {
        &self.shared.cfg.sn
    }

    /// Sends one `sendlog` batch with the next per-terminal `logindex` (0, 1, 2, …) and waits
    /// ≤10 s for the `ret:"sendlog"` ack, which is returned whatever its `result`.
    pub async fn send_logs(&self, records: Vec<Value>) -> Result<Value, SimError> {
        let logindex = self.shared.next_logindex.fetch_add(1, Ordering::SeqCst);
        self.send_logs_with_index(logindex, records).await
    }

    /// Same but with a caller-chosen logindex (tests re-send the same batch to check idempotency).
    pub async fn send_logs_with_index(
        &self,
        logindex: i64,
        records: Vec<Value>,
    ) -> Result<Value, SimError> {
        let frame = json!({
            "cmd": "sendlog",
            "sn": self.sn(),
            "count": records.len(),
            "logindex": logindex,
            "record": records,
        });
        self.request(frame.to_string(), "sendlog").await
    }

    /// Sends `senduser` (a keypad enrolment) and waits for its ack. The credential is stored in
    /// the terminal's own state first, as the device has it regardless of the server's answer.
    pub async fn send_user(
        &self,
        enrollid: i64,
        name: &str,
        backupnum: i64,
        record: Value,
    ) -> Result<Value, SimError> {
        let admin = {
            let mut device = self.shared.device();
            let user = device
                .state
                .users
                .entry(enrollid)
                .or_insert_with(|| SimUser::named(enrollid, String::new()));
            user.name = name.to_owned();
            if is_credential_slot(backupnum) {
                user.credentials.insert(backupnum, record.clone());
            }
            user.admin
        };
        let frame = json!({
            "cmd": "senduser",
            "sn": self.sn(),
            "enrollid": enrollid,
            "aliasid": enrollid.to_string(),
            "name": name,
            "backupnum": backupnum,
            "admin": admin,
            "record": record,
        });
        self.request(frame.to_string(), "senduser").await
    }

    /// Sends an arbitrary text frame and returns the next frame whose `ret` equals `expect_ret` (≤10 s).
    pub async fn send_raw(&self, text: String, expect_ret: &str) -> Result<Value, SimError> {
        self.request(text, expect_ret).await
    }

    /// A snapshot of the terminal's state.
    pub fn state(&self) -> SimState {
        self.shared.device().state.clone()
    }

    /// Resolves when the server closes the socket (or the connection fails); returns the close
    /// reason text if any. After a reboot whose reconnection failed, the reason says so.
    pub async fn closed(&self) -> Option<String> {
        let mut link = self.link.clone();
        let reason = match link.wait_for(|l| matches!(l, Link::Closed(_))).await {
            Ok(l) => match &*l {
                Link::Closed(reason) => reason.clone(),
                Link::Open => None,
            },
            // The task is gone without saying why (it panicked): treat as closed.
            Err(_) => None,
        };
        reason
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Closes the socket with a close frame and waits for the task to end.
    pub async fn close(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(sn = %self.shared.cfg.sn, error = %e, "terminal task failed");
        }
    }

    async fn request(&self, text: String, expect_ret: &str) -> Result<Value, SimError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            text,
            expect_ret: expect_ret.to_owned(),
            reply,
        };
        // One deadline for queueing and answering, so a terminal that is reconnecting after a
        // reboot still honours the 10 s promise.
        let exchange = async {
            self.requests
                .send(request)
                .await
                .map_err(|_| SimError::Closed)?;
            answer.await.map_err(|_| SimError::Closed)
        };
        tokio::time::timeout(REPLY_TIMEOUT, exchange)
            .await
            .map_err(|_| SimError::Timeout)?
    }
}

/// TCP connect (from `cfg.local_addr` when set) and WebSocket handshake.
async fn open_socket(cfg: &SimConfig, config: WebSocketConfig) -> Result<Ws, String> {
    let Some(local) = cfg.local_addr else {
        return tokio_tungstenite::connect_async_with_config(cfg.url.as_str(), Some(config), true)
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| e.to_string());
    };
    let authority = cfg
        .url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
        .ok_or_else(|| format!("not a ws:// URL: {}", cfg.url))?;
    let server = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| e.to_string())?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| format!("no address for {authority}"))?;
    let socket = if local.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    socket
        .bind(std::net::SocketAddr::new(local, 0))
        .map_err(|e| e.to_string())?;
    let stream = socket.connect(server).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    tokio_tungstenite::client_async_with_config(
        cfg.url.as_str(),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .map(|(ws, _)| ws)
    .map_err(|e| e.to_string())
}

/// Opens the socket, sends `reg` and waits for the reg reply. Frames that arrive before the reply
/// are returned so the session can handle them in order.
async fn register(shared: &Shared) -> Result<(Ws, Vec<Value>), SimError> {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    let connecting = open_socket(&shared.cfg, config);
    let mut ws = tokio::time::timeout(REPLY_TIMEOUT, connecting)
        .await
        .map_err(|_| SimError::Timeout)?
        .map_err(|e| SimError::Connect(format!("{}: {e}", shared.cfg.url)))?;
    let reg = shared.device().reg_frame(&shared.cfg, local_now());
    ws.send(Message::text(reg.to_string()))
        .await
        .map_err(|e| SimError::Protocol(e.to_string()))?;

    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut early = Vec::new();
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(SimError::Timeout),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Err(SimError::Closed),
            Ok(Some(Err(e))) => return Err(SimError::Protocol(e.to_string())),
            Ok(Some(Ok(msg))) => msg,
        };
        if msg.is_ping() {
            count_ping(shared, &mut ws).await;
            continue;
        }
        let Some(frame) = frame_of(&msg) else {
            continue;
        };
        if frame.get("ret").and_then(Value::as_str) != Some("reg") {
            early.push(frame);
            continue;
        }
        shared.device().accept_reg_reply(&frame, local_now());
        if field_bool(&frame, "result").unwrap_or(false) {
            tracing::debug!(sn = %shared.cfg.sn, "registered");
            return Ok((ws, early));
        }
        let reason = frame.get("reason").map(value_text).unwrap_or_default();
        let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
        return Err(SimError::Rejected(reason));
    }
}

async fn count_ping(shared: &Shared, ws: &mut Ws) {
    {
        let mut device = shared.device();
        device.state.pings_received = device.state.pings_received.saturating_add(1);
    }
    // tungstenite queues the pong itself; flushing sends it now rather than with the next frame.
    let _ = ws.flush().await;
}

/// The terminal task: one session per connection, reconnecting only after `reboot`.
async fn run(
    shared: Arc<Shared>,
    ws: Ws,
    early: Vec<Value>,
    mut requests: mpsc::Receiver<Request>,
    mut shutdown: watch::Receiver<bool>,
    link: watch::Sender<Link>,
) {
    let mut waiters = Vec::new();
    let mut connection = (ws, early);
    let reason = loop {
        let (ws, early) = connection;
        let end = session(
            &shared,
            ws,
            early,
            &mut requests,
            &mut shutdown,
            &mut waiters,
        )
        .await;
        shared.connected.store(false, Ordering::SeqCst);
        match end {
            SessionEnd::Shutdown => break None,
            SessionEnd::Closed(reason) => break reason,
            SessionEnd::Reboot => {
                // Frames still unanswered are re-sent on the new connection (§1.2.6); those
                // whose caller already gave up are dropped.
                waiters.retain(|w| !w.reply.is_closed());
                shared.device().reset_session();
                match reconnect(&shared, &mut shutdown).await {
                    Ok(Some(next)) => {
                        shared.connected.store(true, Ordering::SeqCst);
                        connection = next;
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(format!("reconnect after reboot failed: {e}")),
                }
            }
        }
    };
    tracing::debug!(sn = %shared.cfg.sn, ?reason, "terminal closed");
    link.send_replace(Link::Closed(reason));
}

/// `Ok(None)` when the handle asked to shut down while we were reconnecting.
async fn reconnect(
    shared: &Shared,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<(Ws, Vec<Value>)>, SimError> {
    let mut pause = REBOOT_PAUSE;
    let mut last_error = SimError::Closed;
    for _ in 0..RECONNECT_ATTEMPTS {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return Ok(None),
        }
        let attempt = tokio::select! {
            r = register(shared) => r,
            _ = shutdown.changed() => return Ok(None),
        };
        match attempt {
            Ok(connection) => return Ok(Some(connection)),
            // The server said no; dialling again would only get the same answer.
            Err(SimError::Rejected(reason)) => return Err(SimError::Rejected(reason)),
            Err(e) => {
                tracing::debug!(sn = %shared.cfg.sn, error = %e, "reconnect attempt failed");
                last_error = e;
            }
        }
        pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
    }
    Err(last_error)
}

async fn session(
    shared: &Shared,
    mut ws: Ws,
    early: Vec<Value>,
    requests: &mut mpsc::Receiver<Request>,
    shutdown: &mut watch::Receiver<bool>,
    waiters: &mut Vec<Waiter>,
) -> SessionEnd {
    // Replies wait here until their `reply_delay` has passed; the delay is the same for all, so
    // the queue stays in arrival order.
    let mut outbox: VecDeque<(Instant, Action)> = VecDeque::new();
    // Only non-empty after a reboot: the device re-sends what was never acknowledged.
    for waiter in waiters.iter() {
        if let Err(e) = ws.send(Message::text(waiter.text.clone())).await {
            tracing::debug!(sn = %shared.cfg.sn, error = %e, "re-send failed");
            return SessionEnd::Closed(None);
        }
    }
    for frame in early {
        on_frame(shared, frame, waiters, &mut outbox);
    }
    loop {
        while outbox
            .front()
            .is_some_and(|(due, _)| *due <= Instant::now())
        {
            let Some((_, action)) = outbox.pop_front() else {
                break;
            };
            match action {
                Action::Send(reply) => {
                    if let Err(e) = ws.send(Message::text(reply.to_string())).await {
                        tracing::debug!(sn = %shared.cfg.sn, error = %e, "send failed");
                        return SessionEnd::Closed(None);
                    }
                }
                Action::Reboot => {
                    tracing::debug!(sn = %shared.cfg.sn, "rebooting");
                    let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
                    return SessionEnd::Reboot;
                }
            }
        }
        let next_due = outbox.front().map(|(due, _)| *due);
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
                return SessionEnd::Shutdown;
            }
            request = requests.recv() => {
                let Some(request) = request else {
                    let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
                    return SessionEnd::Shutdown;
                };
                let text = Message::text(request.text.clone());
                waiters.push(Waiter { ret: request.expect_ret, text: request.text, reply: request.reply });
                if let Err(e) = ws.send(text).await {
                    tracing::debug!(sn = %shared.cfg.sn, error = %e, "send failed");
                    return SessionEnd::Closed(None);
                }
            }
            msg = ws.next() => match msg {
                None => return SessionEnd::Closed(None),
                Some(Err(e)) => {
                    tracing::debug!(sn = %shared.cfg.sn, error = %e, "connection failed");
                    return SessionEnd::Closed(None);
                }
                Some(Ok(Message::Close(frame))) => {
                    // tungstenite has queued the close reply; flush so the server sees it.
                    let _ = tokio::time::timeout(CLOSE_GRACE, ws.flush()).await;
                    let reason = frame.map(|f| f.reason.to_string()).filter(|r| !r.is_empty());
                    return SessionEnd::Closed(reason);
                }
                Some(Ok(msg)) if msg.is_ping() => count_ping(shared, &mut ws).await,
                Some(Ok(msg)) => match frame_of(&msg) {
                    Some(frame) => on_frame(shared, frame, waiters, &mut outbox),
                    None => tracing::debug!(sn = %shared.cfg.sn, "ignoring non-JSON frame"),
                },
            },
            _ = sleep_until(next_due) => {}
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Routes one parsed frame: a `ret` goes to whoever waits for it, a `cmd` is recorded and,
/// unless the terminal plays dead, applied with its reply scheduled.
fn on_frame(
    shared: &Shared,
    frame: Value,
    waiters: &mut Vec<Waiter>,
    outbox: &mut VecDeque<(Instant, Action)>,
) {
    if let Some(ret) = frame.get("ret").and_then(Value::as_str) {
        if ret == "reg" {
            shared.device().accept_reg_reply(&frame, local_now());
        }
        // Callers that timed out dropped their receiver; skip them so they cannot eat a reply.
        waiters.retain(|w| !w.reply.is_closed());
        match waiters.iter().position(|w| w.ret == ret) {
            Some(i) => {
                let waiter = waiters.remove(i);
                let _ = waiter.reply.send(frame);
            }
            None => tracing::debug!(sn = %shared.cfg.sn, ret, "unsolicited reply"),
        }
        return;
    }
    if frame.get("cmd").is_none() {
        tracing::debug!(sn = %shared.cfg.sn, "frame without cmd or ret");
        return;
    }
    let outcome = {
        let mut device = shared.device();
        device.state.commands_received.push(frame.clone());
        if !shared.cfg.answer_commands {
            return;
        }
        device.handle(&shared.cfg.sn, &frame, local_now())
    };
    let action = match outcome {
        Outcome::Reply(reply) => Action::Send(reply),
        Outcome::Reboot => Action::Reboot,
    };
    outbox.push_back((Instant::now() + shared.cfg.reply_delay, action));
}

/// Runs `count` terminals with serial numbers `{sn_prefix}{index:06}` (e.g. SIM000001) against
/// `url`, printing a line when each registers, until ctrl-c. Returns an error only if none could
/// connect.
pub async fn run_fleet(
    url: &str,
    count: u32,
    sn_prefix: &str,
    users: u32,
    logs: u32,
) -> Result<(), SimError> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut connecting = futures_util::stream::iter(1..=count)
        .map(|index| {
            let mut cfg = SimConfig::new(url, format!("{sn_prefix}{index:06}"));
            cfg.users = users;
            cfg.logs = logs;
            SimTerminal::connect(cfg)
        })
        .buffer_unordered(FLEET_CONNECT_CONCURRENCY);
    let mut terminals = Vec::new();
    let mut last_error = None;
    let mut interrupted = false;
    loop {
        tokio::select! {
            next = connecting.next() => match next {
                Some(Ok(terminal)) => {
                    println!("{} registered", terminal.sn());
                    terminals.push(terminal);
                }
                Some(Err(e)) => {
                    eprintln!("terminal failed to register: {e}");
                    last_error = Some(e);
                }
                None => break,
            },
            _ = &mut ctrl_c => {
                interrupted = true;
                break;
            }
        }
    }
    drop(connecting);
    if terminals.is_empty() {
        return Err(last_error.unwrap_or_else(|| SimError::Connect("no terminal connected".into())));
    }
    println!(
        "{} of {count} terminals registered with {url}",
        terminals.len()
    );
    if !interrupted {
        println!("press ctrl-c to stop");
        if let Err(e) = ctrl_c.await {
            eprintln!("cannot wait for ctrl-c ({e}); stopping");
        }
    }
    futures_util::future::join_all(terminals.into_iter().map(SimTerminal::close)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SN: &str = "SIMTEST1";

    fn device(users: u32, logs: u32, page_size: u32) -> Device {
        Device::new(SimState::seeded(users, logs), page_size)
    }

    fn now() -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2025, 6, 1)
            .and_then(|d| d.and_hms_opt(12, 0, 0))
            .expect("valid date")
    }

    fn reply(d: &mut Device, cmd: Value) -> Value {
        match d.handle(SN, &cmd, now()) {
            Outcome::Reply(r) => {
                assert_eq!(r["sn"], SN, "every reply carries sn: {r}");
                assert_eq!(r["ret"], cmd["cmd"]);
                r
            }
            Outcome::Reboot => panic!("unexpected reboot for {cmd}"),
        }
    }

    /// Drives a paged command to its end with the §1.6 robust stop rule.
    fn page_all(d: &mut Device, cmd: &str) -> (Vec<Value>, Vec<Value>) {
        let mut pages = Vec::new();
        let mut records = Vec::new();
        let mut stn = true;
        for _ in 0..10_000 {
            let r = reply(d, json!({"cmd": cmd, "stn": stn}));
            stn = false;
            let rec = r["record"].as_array().cloned().unwrap_or_default();
            records.extend(rec.iter().cloned());
            let count = r["count"].as_i64().expect("count");
            let to = r["to"].as_i64().expect("to");
            pages.push(r);
            if rec.is_empty() || count == 0 || to >= count - 1 {
                return (pages, records);
            }
        }
        panic!("paging never ended");
    }

    #[test]
    fn page_window_is_inclusive_and_ends() {
        assert_eq!(page_window(0, 0, 40), None);
        assert_eq!(page_window(10, 0, 40), Some((0, 9)));
        assert_eq!(page_window(80, 40, 40), Some((40, 79)));
        assert_eq!(page_window(81, 80, 40), Some((80, 80)));
        assert_eq!(page_window(80, 80, 40), None);
        assert_eq!(page_window(3, 0, 0), Some((0, 0)), "page size 0 acts as 1");
    }

    #[test]
    fn seeded_state_matches_config() {
        let s = SimState::seeded(7, 20);
        assert_eq!(s.users.len(), 7);
        assert_eq!(s.users[&1].name, "User 1");
        assert!(s.users[&1].credentials.contains_key(&0));
        assert!(!s.users[&1].credentials.contains_key(&BACKUPNUM_CARD));
        assert_eq!(
            s.users[&3].credentials[&BACKUPNUM_CARD],
            json!(CARD_BASE + 3)
        );
        assert_eq!(s.logs.len(), 20);
        assert_eq!(s.unread_from, 0);
        assert_eq!(s.logs[0]["time"], "2024-01-01 08:00:00");
        assert_eq!(s.logs[8]["time"], "2024-01-02 08:00:00");
        assert_eq!(s.logs[9]["enrollid"], 3);
    }

    #[test]
    fn reg_devinfo_reflects_state() {
        let d = device(6, 10, 40);
        let reg = d.reg_frame(&SimConfig::new("ws://x", SN), now());
        assert_eq!(reg["cmd"], "reg");
        assert_eq!(reg["sn"], SN);
        let info = &reg["devinfo"];
        assert_eq!(info["useduser"], 6);
        assert_eq!(info["usedfp"], 6);
        assert_eq!(info["usedcard"], 2);
        assert_eq!(info["usedlog"], 10);
        assert_eq!(info["usednewlog"], 10);
        assert_eq!(info["modelname"], "AiFace");
        assert_eq!(info["time"], "2025-06-01 12:00:00");
    }

    #[test]
    fn getuserlist_pages_return_every_user() {
        for users in [1, 39, 40, 41, 100] {
            let mut d = device(users, 0, 40);
            let (pages, records) = page_all(&mut d, "getuserlist");
            let mut ids: Vec<i64> = records
                .iter()
                .filter_map(|r| r["enrollid"].as_i64())
                .collect();
            ids.dedup();
            assert_eq!(ids, (1..=i64::from(users)).collect::<Vec<_>>());
            let cards = records.iter().filter(|r| r["backupnum"] == 11).count();
            assert_eq!(cards as u32, users / 3);
            let last = pages.last().expect("a page");
            assert_eq!(last["to"], i64::from(users) - 1);
            assert_eq!(last["count"], users);
            assert_eq!(pages[0]["from"], 0);
            // One more stn:false (the vendor C# rule) gets the terminator page.
            let extra = reply(&mut d, json!({"cmd": "getuserlist", "stn": false}));
            assert_eq!(extra["count"], 0);
            assert_eq!(extra["record"], json!([]));
        }
    }

    #[test]
    fn getuserlist_without_users_is_empty() {
        let mut d = device(0, 0, 40);
        let r = reply(&mut d, json!({"cmd": "getuserlist", "stn": true}));
        assert_eq!(r["result"], true);
        assert_eq!(r["count"], 0);
        assert_eq!(r["record"], json!([]));
    }

    #[test]
    fn getuserinfo_found_and_missing() {
        let mut d = device(3, 0, 40);
        let r = reply(
            &mut d,
            json!({"cmd": "getuserinfo", "enrollid": 3, "backupnum": 11}),
        );
        assert_eq!(r["result"], true);
        assert_eq!(r["record"], CARD_BASE + 3);
        assert_eq!(r["name"], "User 3");
        let r = reply(
            &mut d,
            json!({"cmd": "getuserinfo", "enrollid": "2", "backupnum": 0}),
        );
        assert_eq!(r["result"], true, "string enrollid is accepted");
        let r = reply(
            &mut d,
            json!({"cmd": "getuserinfo", "enrollid": 9, "backupnum": 0}),
        );
        assert_eq!(r["result"], false);
        assert_eq!(r["msg"], MSG_NO_USER);
        let r = reply(
            &mut d,
            json!({"cmd": "getuserinfo", "enrollid": 1, "backupnum": 50}),
        );
        assert_eq!(r["result"], false, "user exists but has no photo");
    }

    #[test]
    fn setuserinfo_classic_and_profile_forms() {
        let mut d = device(0, 0, 40);
        let r = reply(
            &mut d,
            json!({"cmd": "setuserinfo", "enrollid": 5, "name": "Ana", "backupnum": 50,
                   "admin": 1, "record": "/9j/abc"}),
        );
        assert_eq!(r["result"], true);
        let u = &d.state.users[&5];
        assert_eq!((u.name.as_str(), u.admin), ("Ana", 1));
        assert_eq!(u.credentials[&50], "/9j/abc");

        reply(
            &mut d,
            json!({"cmd": "setuserinfo", "enrollid": 5, "card": "123456", "pwd": 42, "enable": 0}),
        );
        let u = &d.state.users[&5];
        assert_eq!(u.credentials[&11], 123456);
        assert_eq!(u.credentials[&10], 42);
        assert!(!u.enabled);
        assert_eq!(u.name, "Ana", "profile form without name keeps it");

        let r = reply(
            &mut d,
            json!({"cmd": "setuserinfo", "enrollid": 6, "backupnum": 50, "record": ""}),
        );
        assert_eq!(
            (r["result"].clone(), r["reason"].clone()),
            (json!(false), json!(5))
        );
        assert!(
            !d.state.users.contains_key(&6),
            "rejected photo creates nothing"
        );
        let r = reply(
            &mut d,
            json!({"cmd": "setuserinfo", "enrollid": 6, "backupnum": 11, "record": "abc"}),
        );
        assert_eq!(r["result"], false);
        let r = reply(&mut d, json!({"cmd": "setuserinfo", "name": "x"}));
        assert_eq!(r["result"], false);
    }

    #[test]
    fn deleteuser_follows_backupnum() {
        let mut d = device(6, 0, 40);
        d.state.users.entry(3).and_modify(|u| {
            u.credentials.insert(1, json!("ab"));
        });
        reply(
            &mut d,
            json!({"cmd": "deleteuser", "enrollid": 3, "backupnum": 12}),
        );
        let creds: Vec<i64> = d.state.users[&3].credentials.keys().copied().collect();
        assert_eq!(creds, vec![11]);
        reply(
            &mut d,
            json!({"cmd": "deleteuser", "enrollid": 3, "backupnum": 11}),
        );
        assert!(d.state.users[&3].credentials.is_empty());
        assert!(d.state.users.contains_key(&3));
        reply(
            &mut d,
            json!({"cmd": "deleteuser", "enrollid": 3, "backupnum": 13}),
        );
        assert!(!d.state.users.contains_key(&3));
        reply(&mut d, json!({"cmd": "deleteuser", "enrollid": 4}));
        assert!(!d.state.users.contains_key(&4));
        let r = reply(
            &mut d,
            json!({"cmd": "deleteuser", "enrollid": 4, "backupnum": 13}),
        );
        assert_eq!(r["msg"], MSG_NO_USER);
    }

    #[test]
    fn names_enable_and_admins() {
        let mut d = device(2, 0, 40);
        reply(
            &mut d,
            json!({"cmd": "setusername", "count": 2,
                   "record": [{"enrollid": 1, "name": "A"}, {"enrollid": 9, "name": "B"}]}),
        );
        let r = reply(&mut d, json!({"cmd": "getusername", "enrollid": 9}));
        assert_eq!(r["record"], "B");
        assert_eq!(d.state.users[&1].name, "A");
        reply(
            &mut d,
            json!({"cmd": "enableuser", "enrollid": 1, "enflag": 0}),
        );
        assert!(!d.state.users[&1].enabled);
        d.state.users.entry(2).and_modify(|u| u.admin = 2);
        reply(&mut d, json!({"cmd": "cleanadmin"}));
        assert!(d.state.users.values().all(|u| u.admin == 0));
        reply(&mut d, json!({"cmd": "cleanuser"}));
        assert!(d.state.users.is_empty());
    }

    #[test]
    fn getnewlog_marks_read_after_last_page() {
        let mut d = device(3, 95, 40);
        let first = reply(&mut d, json!({"cmd": "getnewlog", "stn": true}));
        assert_eq!(
            (first["count"].clone(), first["to"].clone()),
            (json!(95), json!(39))
        );
        assert_eq!(d.state.unread_from, 0, "not read until the last page");
        let (_, records) = {
            reply(&mut d, json!({"cmd": "getnewlog", "stn": false}));
            let last = reply(&mut d, json!({"cmd": "getnewlog", "stn": false}));
            assert_eq!(
                (last["from"].clone(), last["to"].clone()),
                (json!(80), json!(94))
            );
            ((), last["record"].as_array().cloned().unwrap_or_default())
        };
        assert_eq!(records.len(), 15);
        assert_eq!(d.state.unread_from, 95);
        let again = reply(&mut d, json!({"cmd": "getnewlog", "stn": true}));
        assert_eq!(again["count"], 0);
        assert_eq!(again["record"], json!([]));
        // getalllog still sees everything.
        let (_, all) = page_all(&mut d, "getalllog");
        assert_eq!(all.len(), 95);
    }

    #[test]
    fn getalllog_honours_dates() {
        let mut d = device(2, 40, 40);
        let r = reply(
            &mut d,
            json!({"cmd": "getalllog", "stn": true, "from": "2024-01-02", "to": "2024-01-03"}),
        );
        assert_eq!(r["count"], 16);
        assert_eq!(r["record"][0]["time"], "2024-01-02 08:00:00");
        assert_eq!(r["record"][15]["time"], "2024-01-03 15:00:00");
        let r = reply(
            &mut d,
            json!({"cmd": "getalllog", "stn": true, "from": "2024-01-05"}),
        );
        assert_eq!(r["count"], 8);
    }

    #[test]
    fn cleanlog_and_initsys() {
        let mut d = device(4, 10, 40);
        reply(&mut d, json!({"cmd": "cleanlog"}));
        assert!(d.state.logs.is_empty());
        assert_eq!(d.state.users.len(), 4);
        let mut d = device(4, 10, 40);
        reply(&mut d, json!({"cmd": "setdevinfo", "volume": 2}));
        reply(&mut d, json!({"cmd": "initsys"}));
        assert!(d.state.logs.is_empty() && d.state.users.is_empty());
        assert_eq!(d.state.devinfo["volume"], 2, "settings survive initsys");
    }

    #[test]
    fn clock_settings_and_door() {
        let mut d = device(1, 0, 40);
        reply(
            &mut d,
            json!({"cmd": "settime", "cloudtime": "2030-01-02 03:04:05"}),
        );
        assert_eq!(d.state.clock.as_deref(), Some("2030-01-02 03:04:05"));
        let r = reply(&mut d, json!({"cmd": "gettime"}));
        assert_eq!(r["time"], "2030-01-02 03:04:05");
        assert_eq!(r["result"], true);

        reply(
            &mut d,
            json!({"cmd": "setdevinfo", "volume": 3, "server_verify": 1}),
        );
        let r = reply(&mut d, json!({"cmd": "getdevinfo"}));
        assert_eq!(
            (r["volume"].clone(), r["server_verify"].clone()),
            (json!(3), json!(1))
        );
        assert_eq!(r["deviceid"], 1);
        assert_eq!(r["result"], true);

        reply(&mut d, json!({"cmd": "opendoor"}));
        reply(&mut d, json!({"cmd": "opendoor", "doornum": 2}));
        assert_eq!(d.state.door_opened, 2);

        // The factory set, built on first use, before anything was set…
        let r = reply(&mut d, json!({"cmd": "getdevlock"}));
        assert_eq!(r["opendelay"], 5);
        assert_eq!(r["weekzone"].as_array().map(Vec::len), Some(8));
        assert_eq!(r["dayzone"][7]["day"].as_array().map(Vec::len), Some(5));
        // …and a set merged into it.
        reply(&mut d, json!({"cmd": "setdevlock", "opendelay": 9}));
        let r = reply(&mut d, json!({"cmd": "getdevlock"}));
        assert_eq!(r["opendelay"], 9);
        assert_eq!(r["dayzone"].as_array().map(Vec::len), Some(8));
    }

    #[test]
    fn locks_profiles_holidays_and_misc() {
        let mut d = device(2, 0, 40);
        reply(
            &mut d,
            json!({"cmd": "setuserlock", "count": 1,
                   "record": [{"enrollid": 1, "weekzone": 3, "group": 2}]}),
        );
        let r = reply(&mut d, json!({"cmd": "getuserlock", "enrollid": 1}));
        assert_eq!(
            (r["weekzone"].clone(), r["enrollid"].clone()),
            (json!(3), json!(1))
        );
        reply(&mut d, json!({"cmd": "deleteuserlock", "enrollid": 1}));
        let r = reply(&mut d, json!({"cmd": "getuserlock", "enrollid": 1}));
        assert_eq!(r["weekzone"], 1);

        reply(
            &mut d,
            json!({"cmd": "setuserprofile", "enrollid": 0, "profile": "hello"}),
        );
        let r = reply(&mut d, json!({"cmd": "getuserprofile", "enrollid": 0}));
        assert_eq!(r["profile"], "hello");

        reply(
            &mut d,
            json!({"cmd": "setholiday", "holidays": [{"name": "h1", "startday": "01-01"}]}),
        );
        let r = reply(&mut d, json!({"cmd": "getholiday", "stn": true}));
        assert_eq!(r["count"], 1);

        let r = reply(&mut d, json!({"cmd": "getuserids"}));
        assert_eq!(r["record"], json!([1, 2]));

        let r = reply(
            &mut d,
            json!({"cmd": "adduser", "enrollid": 888, "backupnum": 50, "name": "test"}),
        );
        assert_eq!(r["result"], true);
        assert!(d.state.users[&888].credentials.contains_key(&50));

        for cmd in [
            "disabledevice",
            "enabledevice",
            "cleanuserlock",
            "getquestionnaire",
            "setquestionnaire",
        ] {
            assert_eq!(reply(&mut d, json!({"cmd": cmd}))["result"], true, "{cmd}");
        }
        let r = reply(&mut d, json!({"cmd": "frobnicate"}));
        assert_eq!(r["result"], false);
        assert_eq!(r["reason"], MSG_NO_COMMAND);
        assert_eq!(
            d.handle(SN, &json!({"cmd": "reboot"}), now()),
            Outcome::Reboot
        );
    }

    #[test]
    fn getallusers_one_credential_per_reply() {
        let mut d = device(3, 0, 40);
        let mut seen = Vec::new();
        let mut r = reply(&mut d, json!({"cmd": "getallusers", "stn": true}));
        loop {
            seen.push((r["enrollid"].clone(), r["backupnum"].clone()));
            let (index, count) = (r["index"].as_i64(), r["count"].as_i64());
            if index >= count.map(|c| c - 1) {
                break;
            }
            r = reply(&mut d, json!({"cmd": "getallusers", "stn": false}));
        }
        assert_eq!(
            seen,
            vec![
                (json!(1), json!(0)),
                (json!(2), json!(0)),
                (json!(3), json!(0)),
                (json!(3), json!(11))
            ]
        );
    }

    #[test]
    fn lenient_parsing() {
        let v =
            parse_frame(r#"{"ret":"getdevlock","dayzone":[{"section":"00:00~00:00"},],"s":"a,]"}"#)
                .expect("trailing comma fixed");
        assert_eq!(v["dayzone"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["s"], "a,]", "commas inside strings are kept");
        assert!(parse_frame("not json").is_none());
        assert!(parse_frame("[1,2]").is_none(), "frames are objects");
        assert_eq!(value_bool(&json!("true")), Some(true));
        assert_eq!(value_bool(&json!(0)), Some(false));
        assert_eq!(value_i64(&json!(" 12 ")), Some(12));
        assert_eq!(value_i64(&json!(3.0)), Some(3));
    }

    // -------------------------------------------------------------------------------------
    // Integration: a tiny WebSocket server inside the test.
    // -------------------------------------------------------------------------------------

    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    type ServerWs = WebSocketStream<TcpStream>;
    const STEP: Duration = Duration::from_secs(5);

    async fn accept(listener: &TcpListener) -> ServerWs {
        let (tcp, _) = tokio::time::timeout(STEP, listener.accept())
            .await
            .expect("accept in time")
            .expect("accept");
        tokio::time::timeout(STEP, tokio_tungstenite::accept_async(tcp))
            .await
            .expect("handshake in time")
            .expect("handshake")
    }

    /// Next JSON frame, or `None` once the client has closed.
    async fn next_json(ws: &mut ServerWs) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(STEP, ws.next())
                .await
                .expect("frame in time");
            match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(m)) => {
                    if let Some(v) = frame_of(&m) {
                        return Some(v);
                    }
                }
            }
        }
    }

    async fn send(ws: &mut ServerWs, v: Value) {
        ws.send(Message::text(v.to_string())).await.expect("send");
    }

    async fn answer_reg(ws: &mut ServerWs) -> Value {
        let reg = next_json(ws).await.expect("reg frame");
        assert_eq!(reg["cmd"], "reg");
        send(
            ws,
            json!({"ret": "reg", "result": true, "cloudtime": "2025-01-02 03:04:05"}),
        )
        .await;
        reg
    }

    async fn ack_sendlog(ws: &mut ServerWs) -> Value {
        let log = next_json(ws).await.expect("sendlog frame");
        assert_eq!(log["cmd"], "sendlog");
        send(
            ws,
            json!({"ret": "sendlog", "result": true, "count": log["count"],
                   "logindex": log["logindex"], "cloudtime": "2025-01-02 03:04:06"}),
        )
        .await;
        log
    }

    #[tokio::test]
    async fn terminal_against_a_tiny_server() {
        const USERS: u32 = 95;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!(
            "ws://{}/pub/chat",
            listener.local_addr().expect("local addr")
        );
        let (paged_tx, paged_rx) = oneshot::channel();
        let (rebooted_tx, rebooted_rx) = oneshot::channel();
        let server = tokio::spawn(async move {
            let mut ws = accept(&listener).await;
            let reg = answer_reg(&mut ws).await;
            ws.send(Message::Ping(Vec::new().into()))
                .await
                .expect("ping");

            let mut ids = Vec::new();
            let mut stn = true;
            loop {
                send(&mut ws, json!({"cmd": "getuserlist", "stn": stn})).await;
                stn = false;
                let page = next_json(&mut ws).await.expect("getuserlist reply");
                assert_eq!(page["ret"], "getuserlist");
                assert_eq!(page["sn"], "SIM000042");
                let records = page["record"].as_array().cloned().unwrap_or_default();
                ids.extend(records.iter().filter_map(|r| r["enrollid"].as_i64()));
                let (count, to) = (page["count"].as_i64(), page["to"].as_i64());
                if records.is_empty() || count == Some(0) || to >= count.map(|c| c - 1) {
                    break;
                }
            }
            let _ = paged_tx.send((reg, ids));
            let first = ack_sendlog(&mut ws).await;

            // Reboot: no reply, the socket goes away and the device registers again.
            send(&mut ws, json!({"cmd": "reboot"})).await;
            assert!(
                next_json(&mut ws).await.is_none(),
                "reboot closes the socket"
            );
            let mut ws = accept(&listener).await;
            let reg_again = answer_reg(&mut ws).await;
            let _ = rebooted_tx.send(reg_again);
            let second = ack_sendlog(&mut ws).await;
            let close = CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            };
            ws.close(Some(close)).await.expect("close");
            (first, second)
        });

        let mut cfg = SimConfig::new(url, "SIM000042");
        cfg.users = USERS;
        cfg.page_size = 40;
        let term = SimTerminal::connect(cfg).await.expect("registered");
        assert!(term.is_connected());
        assert_eq!(term.sn(), "SIM000042");

        let (reg, mut ids) = tokio::time::timeout(STEP, paged_rx)
            .await
            .expect("paging in time")
            .expect("server paged");
        assert_eq!(reg["devinfo"]["useduser"], USERS);
        ids.dedup();
        assert_eq!(ids, (1..=i64::from(USERS)).collect::<Vec<_>>());

        let state = term.state();
        assert_eq!(state.commands_received.len(), 3);
        assert_eq!(state.pings_received, 1);
        assert_eq!(state.clock.as_deref(), Some("2025-01-02 03:04:05"));
        assert_eq!(
            state.reg_reply.as_ref().map(|r| r["result"].clone()),
            Some(json!(true))
        );

        let record = json!({"enrollid": 1, "time": "2025-01-02 03:04:00", "mode": 0, "inout": 0, "event": 0});
        let ack = term.send_logs(vec![record.clone()]).await.expect("ack");
        assert_eq!(
            (ack["result"].clone(), ack["logindex"].clone()),
            (json!(true), json!(0))
        );

        // Survives the reboot: the same handle sends over the new connection.
        let reg_again = tokio::time::timeout(STEP, rebooted_rx)
            .await
            .expect("re-registered in time")
            .expect("server saw the second reg");
        assert_eq!(reg_again["sn"], "SIM000042");
        let ack = term
            .send_logs(vec![record])
            .await
            .expect("ack after reboot");
        assert_eq!(
            (ack["count"].clone(), ack["logindex"].clone()),
            (json!(1), json!(1))
        );

        let reason = tokio::time::timeout(STEP, term.closed())
            .await
            .expect("closed in time");
        assert_eq!(reason.as_deref(), Some("bye"));
        assert!(!term.is_connected());
        let (first, second) = tokio::time::timeout(STEP, server)
            .await
            .expect("server done")
            .expect("server ok");
        assert_eq!(first["sn"], "SIM000042");
        assert_eq!(second["record"][0]["enrollid"], 1);
        assert!(matches!(
            term.send_raw("{}".into(), "x").await,
            Err(SimError::Closed)
        ));
        term.close().await;
    }
}
