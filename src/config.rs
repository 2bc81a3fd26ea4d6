//! Settings: one struct, defaults in code, overridden by environment variables (and an optional `.env`,
//! loaded by `main` before parsing) or command-line flags. Every variable is documented in `.env.example`.

use std::time::Duration;

use clap::builder::BoolishValueParser;

/// Default SQLite file, created on first start (`mode=rwc`).
pub const DEFAULT_DATABASE_URL: &str = "sqlite://gatehouse.db?mode=rwc";

/// Largest WebSocket message a terminal may send. Enrolment photos are JPEGs of up to ~150 KB, i.e. ~200 KB of
/// base64 inside a `senduser`/`sendlog` frame; the vendor's own server allows 2,048,000 bytes, so we match it.
pub const DEFAULT_TM20_MAX_FRAME_BYTES: usize = 2_048_000;

/// Largest frame the installer's echo socket takes: enough for any check of a proxy's path, small enough that
/// an open, unauthenticated endpoint cannot be used to park memory (64 queued frames per socket at most).
pub const DEFAULT_ECHO_MAX_FRAME_BYTES: usize = 65_536;

/// SxDeviceManager's port, which panels and third-party clients hard-code.
pub const DEFAULT_SXDM_BIND: &str = "0.0.0.0:8888";

/// Largest panel frame: a person with a face photo (`face_list[].data`, base64 JPEG) fits, as for terminals.
pub const DEFAULT_SXDM_MAX_FRAME_BYTES: usize = 2_048_000;

/// Settings of `gatehouse serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct Settings {
    /// Address the HTTP + WebSocket listener binds to.
    #[arg(long, env = "GATEHOUSE_BIND", default_value = "0.0.0.0:7788")]
    pub bind: String,

    /// sea-orm database URL: `sqlite://FILE?mode=rwc` or `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Bearer token for `/api/`; a random one is generated and logged once when unset.
    #[arg(long, env = "GATEHOUSE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Where the generated token is saved (and read back on the next start) when GATEHOUSE_API_TOKEN is unset.
    #[arg(
        long,
        env = "GATEHOUSE_API_TOKEN_FILE",
        default_value = "gatehouse-token"
    )]
    pub api_token_file: String,

    /// Seconds between WebSocket pings to a terminal.
    #[arg(long, env = "TM20_HEARTBEAT_INTERVAL", default_value = "30", value_parser = parse_seconds)]
    pub tm20_heartbeat_interval: Duration,

    /// Seconds without any frame after which a terminal's socket is closed; also the time a new socket has to
    /// send `reg`.
    #[arg(long, env = "TM20_CONNECTION_TIMEOUT", default_value = "120", value_parser = parse_seconds)]
    pub tm20_connection_timeout: Duration,

    /// 1: only whitelisted terminals may register.
    #[arg(long, env = "TM20_REQUIRE_WHITELIST", default_value = "0", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub tm20_require_whitelist: bool,

    /// Largest WebSocket message a terminal may send, in bytes.
    #[arg(long, env = "TM20_MAX_FRAME_BYTES", default_value_t = DEFAULT_TM20_MAX_FRAME_BYTES)]
    pub tm20_max_frame_bytes: usize,

    /// Offset of the terminals' local clock from UTC (`+02:00`); the server's own zone when unset. The
    /// protocol's `cloudtime` carries no zone, so the terminal shows whatever wall-clock we send.
    #[arg(long, env = "TM20_UTC_OFFSET", value_parser = parse_utc_offset)]
    pub tm20_utc_offset: Option<chrono::FixedOffset>,

    /// Seconds a command (and each page of a paged read) waits for the device's answer.
    #[arg(long, env = "COMMAND_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub command_timeout: Duration,

    /// Commands that may wait behind the one in flight, per device; more get 429.
    #[arg(long, env = "COMMAND_QUEUE_SIZE", default_value_t = 32)]
    pub command_queue_size: usize,

    /// Commands that may wait in the durable queue (`deliver=queued`) per device; more get 429.
    #[arg(long, env = "COMMAND_QUEUE_MAX", default_value_t = 1000)]
    pub command_queue_max: u64,

    /// Separate listener serving `/metrics` without the token (e.g. `127.0.0.1:9090`, internal networks).
    #[arg(long, env = "GATEHOUSE_METRICS_BIND")]
    pub metrics_bind: Option<String>,

    /// Redis URL; setting it turns cluster mode on.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel, so several clusters (or test runs) can share one Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "gatehouse")]
    pub redis_prefix: String,

    /// This node's id in the cluster; a fresh UUID per start when unset.
    #[arg(long, env = "GATEHOUSE_NODE_ID")]
    pub node_id: Option<String>,

    /// Human name of this node in `/api/nodes`; the host name when unset.
    #[arg(long, env = "GATEHOUSE_NODE_NAME")]
    pub node_name: Option<String>,

    /// Address other people reach this node at, shown in `/api/nodes`; the bound address when unset.
    #[arg(long, env = "GATEHOUSE_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// Seconds a device's route lives in Redis unless its node refreshes it.
    #[arg(long, env = "CLUSTER_ROUTE_TTL", default_value = "30", value_parser = parse_seconds)]
    pub cluster_route_ttl: Duration,

    /// Seconds between node announcements; a node is dead after 3 missed.
    #[arg(long, env = "CLUSTER_HEARTBEAT_INTERVAL", default_value = "2", value_parser = parse_seconds)]
    pub cluster_heartbeat_interval: Duration,

    /// 1: unknown charge points are created at their first connection; 0: they get 404 at the handshake.
    #[arg(long, env = "OCPP_AUTO_REGISTER", default_value = "1", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ocpp_auto_register: bool,

    /// Seconds between WebSocket pings to a charge point; closed after two intervals without any frame.
    #[arg(long, env = "OCPP_PING_INTERVAL", default_value = "60", value_parser = parse_seconds)]
    pub ocpp_ping_interval: Duration,

    /// Heartbeat interval (seconds) a charge point is told in the BootNotification answer.
    #[arg(long, env = "OCPP_HEARTBEAT_INTERVAL", default_value = "300", value_parser = parse_seconds)]
    pub ocpp_heartbeat_interval: Duration,

    /// Seconds an outgoing CALL waits for the charge point's answer.
    #[arg(long, env = "OCPP_CALL_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub ocpp_call_timeout: Duration,

    /// 1: reject the field quirks real chargers show (meterValue as an object, misspelled units, …).
    #[arg(long, env = "OCPP_STRICT", default_value = "0", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ocpp_strict: bool,

    /// 1: id tags missing from the id-tag table are Accepted; 0: Invalid.
    #[arg(long, env = "OCPP_ACCEPT_UNKNOWN_TAGS", default_value = "0", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ocpp_accept_unknown_tags: bool,

    /// Days the OCPP message log is kept.
    #[arg(long, env = "OCPP_MESSAGE_RETENTION_DAYS", default_value_t = 30)]
    pub ocpp_message_retention_days: u32,

    /// Largest WebSocket message a charge point may send, in bytes.
    #[arg(long, env = "OCPP_MAX_FRAME_BYTES", default_value_t = 1_048_576)]
    pub ocpp_max_frame_bytes: usize,

    /// 1: Authorize / StartTransaction (every idTagInfo) answer Blocked for a tag whose account has no active
    /// subscription, and for a tag without an account.
    #[arg(long, env = "OCPP_REQUIRE_SUBSCRIPTION", default_value = "0", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub ocpp_require_subscription: bool,

    /// Second bearer token, accepted by `POST /api/accounts/rfid-login` only (for kiosks, which should not hold
    /// the admin token). Unset: only the admin token works there.
    #[arg(long, env = "RFID_LOGIN_TOKEN", hide_env_values = true)]
    pub rfid_login_token: Option<String>,

    /// 1: `GET /ws/echo` echoes every frame back (no auth); 0: it answers 404.
    #[arg(long, env = "ECHO_ENABLED", default_value = "1", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub echo_enabled: bool,

    /// Largest message the echo socket takes, in bytes; a larger one closes the socket with 1009.
    #[arg(long, env = "ECHO_MAX_FRAME_BYTES", default_value_t = DEFAULT_ECHO_MAX_FRAME_BYTES)]
    pub echo_max_frame_bytes: usize,

    /// Seconds an echo socket may stay silent (or unable to take our answer) before it is closed.
    #[arg(long, env = "ECHO_IDLE_TIMEOUT", default_value = "60", value_parser = parse_seconds)]
    pub echo_idle_timeout: Duration,

    /// Dedicated listener for Shenxing panels and SxDeviceManager clients (panel WebSocket, `sxdmSn` API,
    /// status); `off` disables it. The main port serves the same routes.
    #[arg(long, env = "SXDM_BIND", default_value = DEFAULT_SXDM_BIND)]
    pub sxdm_bind: String,

    /// Token third parties send in the `sxdmToken` header; unset: no token needed.
    #[arg(long, env = "SXDM_AUTH_TOKEN", hide_env_values = true)]
    pub sxdm_auth_token: Option<String>,

    /// Seconds a forwarded `sxdmSn` call waits for the panel's answer before 408.
    #[arg(long, env = "SXDM_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub sxdm_timeout: Duration,

    /// Seconds without any frame (a pong counts) after which a panel's socket is closed.
    #[arg(long, env = "SXDM_SESSION_TIMEOUT", default_value = "300", value_parser = parse_seconds)]
    pub sxdm_session_timeout: Duration,

    /// Seconds between WebSocket pings to a panel.
    #[arg(long, env = "SXDM_PING_INTERVAL", default_value = "60", value_parser = parse_seconds)]
    pub sxdm_ping_interval: Duration,

    /// Seconds a new panel socket has to complete the random + login exchange.
    #[arg(long, env = "SXDM_LOGIN_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub sxdm_login_timeout: Duration,

    /// 1: only panels an admin registered (`PUT /api/panels/{sn}`) and left active may log in.
    #[arg(long, env = "SXDM_REQUIRE_WHITELIST", default_value = "0", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub sxdm_require_whitelist: bool,

    /// Largest WebSocket message a panel may send, and largest `sxdmSn` request body, in bytes.
    #[arg(long, env = "SXDM_MAX_FRAME_BYTES", default_value_t = DEFAULT_SXDM_MAX_FRAME_BYTES)]
    pub sxdm_max_frame_bytes: usize,

    /// Sockets (devices, subscribers, echo) one node holds at most; more are refused with 503 at the
    /// handshake. 0: no cap. The default stays under the usual 20,000 open files per process.
    #[arg(long, env = "GATEHOUSE_MAX_DEVICES", default_value_t = 19_000)]
    pub max_devices: usize,

    /// Sockets one client address may hold at once (429 beyond). 0: no cap.
    #[arg(long, env = "IP_MAX_SOCKETS", default_value_t = 1_000)]
    pub ip_max_sockets: usize,

    /// New sockets per second one client address may open (429 beyond), after a burst of IP_CONNECT_BURST.
    /// 0: no limit.
    #[arg(long, env = "IP_CONNECT_RATE", default_value_t = 20.0)]
    pub ip_connect_rate: f64,

    #[arg(long, env = "IP_CONNECT_BURST", default_value_t = 200)]
    pub ip_connect_burst: u32,

    /// Frames per second one socket may send, after a burst of DEVICE_FRAME_BURST; beyond, each frame gets the
    /// protocol's error, and a socket that keeps going (more refused frames in a row than the burst) is closed.
    /// 0: no limit.
    #[arg(long, env = "DEVICE_FRAME_RATE", default_value_t = 50.0)]
    pub device_frame_rate: f64,

    #[arg(long, env = "DEVICE_FRAME_BURST", default_value_t = 200)]
    pub device_frame_burst: u32,

    /// REST requests per second per client address, after a burst of REST_BURST (429 beyond). 0: no limit.
    #[arg(long, env = "REST_RATE", default_value_t = 100)]
    pub rest_rate: u64,

    #[arg(long, env = "REST_BURST", default_value_t = 200)]
    pub rest_burst: u32,

    /// REST requests per second per bearer token, after a burst of REST_TOKEN_BURST. 0: no limit.
    #[arg(long, env = "REST_TOKEN_RATE", default_value_t = 500)]
    pub rest_token_rate: u64,

    #[arg(long, env = "REST_TOKEN_BURST", default_value_t = 1_000)]
    pub rest_token_burst: u32,

    /// Wrong tokens from one address before it must wait (1 s, doubling to 60 s) before any token is checked.
    /// 0: no back-off.
    #[arg(long, env = "AUTH_FAIL_LIMIT", default_value_t = 10)]
    pub auth_fail_limit: u32,

    /// 1: the client address is the last one in `X-Forwarded-For` (set only behind a proxy that adds it).
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value = "0", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,

    /// Seconds a client has to send a request's head (and so a WebSocket handshake) before it is dropped.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT", default_value = "5", value_parser = parse_seconds)]
    pub http_request_timeout: Duration,

    /// What carries WebSocket frames once a handshake is accepted: `lean` (the listener takes the socket over
    /// from the HTTP dispatcher: no per-socket HTTP buffers, a large frame's memory goes back after it) or
    /// `actix-ws` (frames stay inside actix-http's HTTP/1 dispatcher).
    #[arg(long, env = "DEVICE_TRANSPORT", value_enum, default_value = "lean")]
    pub device_transport: DeviceTransport,

    /// Threads that serve HTTP and the device sockets accepted on `GATEHOUSE_BIND`; 0: one per CPU core.
    #[arg(long, env = "GATEHOUSE_WORKERS", default_value = "0")]
    pub workers: usize,

    /// Seconds a graceful shutdown waits for commands in flight before closing device sockets.
    #[arg(long, env = "GATEHOUSE_SHUTDOWN_GRACE", default_value = "5", value_parser = parse_seconds)]
    pub shutdown_grace: Duration,

    /// Rooms, appliances and payments (`BILLING_*`, `PAYMENTS_*`).
    #[command(flatten)]
    pub billing: crate::billing::BillingSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: "0.0.0.0:7788".into(),
            database_url: DEFAULT_DATABASE_URL.into(),
            api_token: None,
            api_token_file: "gatehouse-token".into(),
            tm20_heartbeat_interval: Duration::from_secs(30),
            tm20_connection_timeout: Duration::from_secs(120),
            tm20_require_whitelist: false,
            tm20_max_frame_bytes: DEFAULT_TM20_MAX_FRAME_BYTES,
            tm20_utc_offset: None,
            command_timeout: Duration::from_secs(10),
            command_queue_size: 32,
            command_queue_max: 1000,
            metrics_bind: None,
            redis_url: None,
            redis_prefix: "gatehouse".into(),
            node_id: None,
            node_name: None,
            advertise_addr: None,
            cluster_route_ttl: Duration::from_secs(30),
            cluster_heartbeat_interval: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
            workers: 0,
            max_devices: 19_000,
            ip_max_sockets: 1_000,
            ip_connect_rate: 20.0,
            ip_connect_burst: 200,
            device_frame_rate: 50.0,
            device_frame_burst: 200,
            rest_rate: 100,
            rest_burst: 200,
            rest_token_rate: 500,
            rest_token_burst: 1_000,
            auth_fail_limit: 10,
            trust_forwarded_for: false,
            http_request_timeout: Duration::from_secs(5),
            device_transport: DeviceTransport::Lean,
            sxdm_bind: DEFAULT_SXDM_BIND.into(),
            sxdm_auth_token: None,
            sxdm_timeout: Duration::from_secs(30),
            sxdm_session_timeout: Duration::from_secs(300),
            sxdm_ping_interval: Duration::from_secs(60),
            sxdm_login_timeout: Duration::from_secs(30),
            sxdm_require_whitelist: false,
            sxdm_max_frame_bytes: DEFAULT_SXDM_MAX_FRAME_BYTES,
            ocpp_auto_register: true,
            ocpp_ping_interval: Duration::from_secs(60),
            ocpp_heartbeat_interval: Duration::from_secs(300),
            ocpp_call_timeout: Duration::from_secs(30),
            ocpp_strict: false,
            ocpp_accept_unknown_tags: false,
            ocpp_message_retention_days: 30,
            ocpp_max_frame_bytes: 1_048_576,
            ocpp_require_subscription: false,
            rfid_login_token: None,
            echo_enabled: true,
            echo_max_frame_bytes: DEFAULT_ECHO_MAX_FRAME_BYTES,
            echo_idle_timeout: Duration::from_secs(60),
            billing: crate::billing::BillingSettings::default(),
        }
    }
}

/// A setting that parsed but cannot work; the message starts with the variable's name.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

/// See [`Settings::device_transport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceTransport {
    Lean,
    ActixWs,
}

fn config_error(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

/// `host:port` with a numeric port (a host name is resolved when binding).
fn check_bind(variable: &'static str, value: &str) -> Result<(), ConfigError> {
    let valid = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        Ok(())
    } else {
        Err(config_error(
            variable,
            format!("`{value}` is not an address like 0.0.0.0:7788"),
        ))
    }
}

impl Settings {
    /// Checks what clap's parsers cannot: values that parse but cannot work. Called once by `serve` before
    /// anything starts, so a bad value stops it with one line naming the variable.
    ///
    /// # Errors
    /// The first bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_bind("GATEHOUSE_BIND", &self.bind)?;
        let sxdm = self.sxdm_bind.trim();
        if !sxdm.is_empty() && !sxdm.eq_ignore_ascii_case("off") {
            check_bind("SXDM_BIND", sxdm)?;
        }
        if let Some(metrics) = self
            .metrics_bind
            .as_deref()
            .filter(|m| !m.trim().is_empty())
        {
            check_bind("GATEHOUSE_METRICS_BIND", metrics)?;
        }
        let db = self.database_url.trim();
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(config_error(
                "DATABASE_URL",
                format!(
                    "`{}` is neither sqlite://FILE?mode=rwc nor postgres://user@host/db",
                    mask_url(db)
                ),
            ));
        }
        if let Some(url) = self.redis_url.as_deref().filter(|u| !u.trim().is_empty()) {
            if let Err(err) = redis::Client::open(url) {
                return Err(config_error(
                    "REDIS_URL",
                    format!("`{}` is not a Redis URL: {err}", mask_url(url)),
                ));
            }
        }
        // Zero would make a timer fire continuously (and tokio's interval refuses a zero period).
        for (variable, value) in [
            ("TM20_HEARTBEAT_INTERVAL", self.tm20_heartbeat_interval),
            ("TM20_CONNECTION_TIMEOUT", self.tm20_connection_timeout),
            ("COMMAND_TIMEOUT", self.command_timeout),
            (
                "CLUSTER_HEARTBEAT_INTERVAL",
                self.cluster_heartbeat_interval,
            ),
            ("CLUSTER_ROUTE_TTL", self.cluster_route_ttl),
            ("OCPP_PING_INTERVAL", self.ocpp_ping_interval),
            ("OCPP_CALL_TIMEOUT", self.ocpp_call_timeout),
            ("ECHO_IDLE_TIMEOUT", self.echo_idle_timeout),
            ("SXDM_TIMEOUT", self.sxdm_timeout),
            ("SXDM_SESSION_TIMEOUT", self.sxdm_session_timeout),
            ("SXDM_PING_INTERVAL", self.sxdm_ping_interval),
            ("SXDM_LOGIN_TIMEOUT", self.sxdm_login_timeout),
        ] {
            if value.is_zero() {
                return Err(config_error(variable, "must be more than 0 seconds"));
            }
        }
        for (variable, value) in [
            ("IP_CONNECT_RATE", self.ip_connect_rate),
            ("DEVICE_FRAME_RATE", self.device_frame_rate),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(config_error(
                    variable,
                    "must be a number of per second, 0 or more",
                ));
            }
        }
        if self.http_request_timeout.is_zero() {
            return Err(config_error(
                "HTTP_REQUEST_TIMEOUT",
                "must be more than 0 seconds",
            ));
        }
        for (variable, value) in [
            ("COMMAND_QUEUE_SIZE", self.command_queue_size),
            ("TM20_MAX_FRAME_BYTES", self.tm20_max_frame_bytes),
            ("OCPP_MAX_FRAME_BYTES", self.ocpp_max_frame_bytes),
            ("SXDM_MAX_FRAME_BYTES", self.sxdm_max_frame_bytes),
            ("ECHO_MAX_FRAME_BYTES", self.echo_max_frame_bytes),
        ] {
            if value == 0 {
                return Err(config_error(variable, "must be at least 1"));
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The terminals' wall-clock time now (for `cloudtime` and `settime`).
    pub fn device_now(&self) -> chrono::NaiveDateTime {
        let now = chrono::Utc::now();
        match self.tm20_utc_offset {
            Some(offset) => now.with_timezone(&offset).naive_local(),
            None => now.with_timezone(&chrono::Local).naive_local(),
        }
    }
}

impl Settings {
    /// The effective configuration as `VARIABLE=value` lines, secrets masked (`gatehouse config`).
    pub fn describe_masked(&self) -> String {
        let secs = |d: Duration| format!("{}", d.as_secs_f64());
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        let lines = [
            ("GATEHOUSE_BIND", self.bind.clone()),
            ("DATABASE_URL", mask_url(&self.database_url)),
            (
                "GATEHOUSE_API_TOKEN",
                if self.api_token.is_some() {
                    "***".into()
                } else {
                    format!("(generated, saved in {})", self.api_token_file)
                },
            ),
            (
                "TM20_HEARTBEAT_INTERVAL",
                secs(self.tm20_heartbeat_interval),
            ),
            (
                "TM20_CONNECTION_TIMEOUT",
                secs(self.tm20_connection_timeout),
            ),
            (
                "TM20_REQUIRE_WHITELIST",
                u8::from(self.tm20_require_whitelist).to_string(),
            ),
            (
                "TM20_MAX_FRAME_BYTES",
                self.tm20_max_frame_bytes.to_string(),
            ),
            (
                "TM20_UTC_OFFSET",
                self.tm20_utc_offset
                    .map(|o| o.to_string())
                    .unwrap_or_default(),
            ),
            ("COMMAND_TIMEOUT", secs(self.command_timeout)),
            ("COMMAND_QUEUE_SIZE", self.command_queue_size.to_string()),
            ("COMMAND_QUEUE_MAX", self.command_queue_max.to_string()),
            ("GATEHOUSE_METRICS_BIND", opt(&self.metrics_bind)),
            (
                "REDIS_URL",
                self.redis_url.as_deref().map(mask_url).unwrap_or_default(),
            ),
            ("REDIS_PREFIX", self.redis_prefix.clone()),
            ("GATEHOUSE_NODE_ID", opt(&self.node_id)),
            ("GATEHOUSE_NODE_NAME", opt(&self.node_name)),
            ("GATEHOUSE_ADVERTISE_ADDR", opt(&self.advertise_addr)),
            ("CLUSTER_ROUTE_TTL", secs(self.cluster_route_ttl)),
            (
                "CLUSTER_HEARTBEAT_INTERVAL",
                secs(self.cluster_heartbeat_interval),
            ),
            (
                "OCPP_AUTO_REGISTER",
                u8::from(self.ocpp_auto_register).to_string(),
            ),
            ("OCPP_PING_INTERVAL", secs(self.ocpp_ping_interval)),
            (
                "OCPP_HEARTBEAT_INTERVAL",
                secs(self.ocpp_heartbeat_interval),
            ),
            ("OCPP_CALL_TIMEOUT", secs(self.ocpp_call_timeout)),
            ("OCPP_STRICT", u8::from(self.ocpp_strict).to_string()),
            (
                "OCPP_ACCEPT_UNKNOWN_TAGS",
                u8::from(self.ocpp_accept_unknown_tags).to_string(),
            ),
            (
                "OCPP_MESSAGE_RETENTION_DAYS",
                self.ocpp_message_retention_days.to_string(),
            ),
            (
                "OCPP_MAX_FRAME_BYTES",
                self.ocpp_max_frame_bytes.to_string(),
            ),
            ("GATEHOUSE_MAX_DEVICES", self.max_devices.to_string()),
            ("IP_MAX_SOCKETS", self.ip_max_sockets.to_string()),
            ("IP_CONNECT_RATE", self.ip_connect_rate.to_string()),
            ("IP_CONNECT_BURST", self.ip_connect_burst.to_string()),
            ("DEVICE_FRAME_RATE", self.device_frame_rate.to_string()),
            ("DEVICE_FRAME_BURST", self.device_frame_burst.to_string()),
            ("REST_RATE", self.rest_rate.to_string()),
            ("REST_BURST", self.rest_burst.to_string()),
            ("REST_TOKEN_RATE", self.rest_token_rate.to_string()),
            ("REST_TOKEN_BURST", self.rest_token_burst.to_string()),
            ("AUTH_FAIL_LIMIT", self.auth_fail_limit.to_string()),
            (
                "TRUST_FORWARDED_FOR",
                u8::from(self.trust_forwarded_for).to_string(),
            ),
            ("HTTP_REQUEST_TIMEOUT", secs(self.http_request_timeout)),
            (
                "DEVICE_TRANSPORT",
                match self.device_transport {
                    DeviceTransport::Lean => "lean".into(),
                    DeviceTransport::ActixWs => "actix-ws".into(),
                },
            ),
            ("GATEHOUSE_WORKERS", self.workers.to_string()),
            ("SXDM_BIND", self.sxdm_bind.clone()),
            (
                "SXDM_AUTH_TOKEN",
                if self.sxdm_auth_token.is_some() {
                    "***".into()
                } else {
                    String::new()
                },
            ),
            ("SXDM_TIMEOUT", secs(self.sxdm_timeout)),
            ("SXDM_SESSION_TIMEOUT", secs(self.sxdm_session_timeout)),
            ("SXDM_PING_INTERVAL", secs(self.sxdm_ping_interval)),
            ("SXDM_LOGIN_TIMEOUT", secs(self.sxdm_login_timeout)),
            (
                "SXDM_REQUIRE_WHITELIST",
                u8::from(self.sxdm_require_whitelist).to_string(),
            ),
            (
                "SXDM_MAX_FRAME_BYTES",
                self.sxdm_max_frame_bytes.to_string(),
            ),
            ("GATEHOUSE_SHUTDOWN_GRACE", secs(self.shutdown_grace)),
        ];
        lines
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .chain(self.billing.describe_masked())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Hides the password of a URL (`postgres://user:secret@host/db` → `postgres://user:***@host/db`).
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Parses a number of seconds, decimals allowed (`0.5`), so tests can use short timings.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 365.0 * 86_400.0 {
        return Err(format!(
            "`{text}` must be between 0 and one year of seconds"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_utc_offset(text: &str) -> Result<chrono::FixedOffset, String> {
    text.trim()
        .parse::<chrono::FixedOffset>()
        .map_err(|_| format!("`{text}` is not a UTC offset like +02:00"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_accept_decimals_and_reject_nonsense() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds("30"), Ok(Duration::from_secs(30)));
        for bad in ["", "abc", "-1", "0", "NaN", "inf"] {
            assert!(parse_seconds(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn urls_are_masked() {
        assert_eq!(
            mask_url("postgres://gh:s3cret@db:5432/gh"),
            "postgres://gh:***@db:5432/gh"
        );
        assert_eq!(
            mask_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            mask_url("sqlite://gatehouse.db?mode=rwc"),
            "sqlite://gatehouse.db?mode=rwc"
        );
        let text = Settings {
            api_token: Some("top-secret".into()),
            ..Settings::default()
        }
        .describe_masked();
        assert!(text.contains("GATEHOUSE_API_TOKEN=***") && !text.contains("top-secret"));
    }

    #[test]
    fn utc_offsets_parse() {
        assert_eq!(
            parse_utc_offset("+05:30").map(|o| o.local_minus_utc()),
            Ok(5 * 3600 + 1800)
        );
        assert!(parse_utc_offset("CET").is_err());
    }
}
