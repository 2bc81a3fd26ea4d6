//! Abuse limits: sockets per node and per client address, new connections per second per address, frames per
//! second per socket, REST requests per second per address and per token (with `actix-governor`), and a
//! back-off for addresses that keep presenting wrong tokens. Every refusal is counted in
//! `gatehouse_limited_total{limit}`. A limit set to 0 is off.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_governor::governor::clock::QuantaInstant;
use actix_governor::governor::middleware::NoOpMiddleware;
use actix_governor::{
    Governor, GovernorConfig, GovernorConfigBuilder, KeyExtractor, SimpleKeyExtractionError,
};
use actix_web::middleware::Condition;
use actix_web::{
    dev::ServiceRequest, http::header, HttpRequest, HttpResponse, HttpResponseBuilder,
};

use crate::config::Settings;

/// Addresses remembered for connection-rate and back-off bookkeeping before idle ones are swept.
const SWEEP_AT: usize = 10_000;

fn count(limit: &'static str) {
    metrics::counter!("gatehouse_limited_total", "limit" => limit).increment(1);
}

/// A token bucket: `rate` per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: f64, burst: u32) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self) -> bool {
        let elapsed = self.last.elapsed().as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// Why a new socket was refused at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this node holds GATEHOUSE_MAX_DEVICES sockets; try another node")]
    NodeFull,
    #[error("too many sockets from this address (IP_MAX_SOCKETS)")]
    TooManySockets,
    #[error("too many new connections from this address (IP_CONNECT_RATE); slow down")]
    TooFast,
}

impl Refusal {
    /// 503 for a full node (the load balancer should try another), 429 for one client's excess.
    pub fn response(self) -> HttpResponse {
        let (mut builder, code) = match self {
            Refusal::NodeFull => (HttpResponse::ServiceUnavailable(), "node_full"),
            Refusal::TooManySockets | Refusal::TooFast => {
                (HttpResponse::TooManyRequests(), "rate_limited")
            }
        };
        builder
            .insert_header((header::RETRY_AFTER, "1"))
            .json(serde_json::json!({"error": code, "message": self.to_string()}))
    }
}

#[derive(Debug)]
struct Peer {
    sockets: usize,
    connects: Option<Bucket>,
    auth_failures: u32,
    /// No token is even checked from this address before this instant.
    banned_until: Option<Instant>,
}

/// Shared by every worker of a node.
#[derive(Debug)]
pub struct Limits {
    max_sockets: usize,
    ip_max_sockets: usize,
    ip_connect_rate: f64,
    ip_connect_burst: u32,
    pub frame_rate: f64,
    pub frame_burst: u32,
    auth_fail_limit: u32,
    trust_forwarded: bool,
    sockets: AtomicUsize,
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

/// Holds one socket's place in the counts; dropping it (when the socket ends) gives the place back.
#[derive(Debug)]
pub struct SocketPermit {
    limits: Arc<Limits>,
    ip: Option<IpAddr>,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        self.limits.sockets.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut peers = self.limits.peers();
            if let Some(peer) = peers.get_mut(&ip) {
                peer.sockets = peer.sockets.saturating_sub(1);
            }
        }
    }
}

impl Limits {
    pub fn new(settings: &Settings) -> Arc<Limits> {
        Arc::new(Limits {
            max_sockets: settings.max_devices,
            ip_max_sockets: settings.ip_max_sockets,
            ip_connect_rate: settings.ip_connect_rate,
            ip_connect_burst: settings.ip_connect_burst,
            frame_rate: settings.device_frame_rate,
            frame_burst: settings.device_frame_burst,
            auth_fail_limit: settings.auth_fail_limit,
            trust_forwarded: settings.trust_forwarded_for,
            sockets: AtomicUsize::new(0),
            peers: Mutex::new(HashMap::new()),
        })
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Peer>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client's address: the peer, or with `TRUST_FORWARDED_FOR=1` the last address of
    /// `X-Forwarded-For` (the one our own proxy added).
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        client_ip(req.headers(), req.peer_addr(), self.trust_forwarded)
    }

    /// Admits a new socket from `ip`, or says why not.
    ///
    /// # Errors
    /// The limit the socket would break.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<SocketPermit, Refusal> {
        if self.max_sockets > 0 && self.sockets.load(Ordering::Relaxed) >= self.max_sockets {
            count("max_devices");
            return Err(Refusal::NodeFull);
        }
        if let Some(ip) = ip {
            let mut peers = self.peers();
            if peers.len() >= SWEEP_AT {
                // Forget idle addresses: no socket, a full bucket, no pending back-off.
                let now = Instant::now();
                peers.retain(|_, p| {
                    p.sockets > 0
                        || p.connects.as_ref().is_some_and(|b| !b.is_full())
                        || p.banned_until.is_some_and(|t| t > now)
                });
            }
            let peer = peers.entry(ip).or_insert_with(|| Peer {
                sockets: 0,
                connects: None,
                auth_failures: 0,
                banned_until: None,
            });
            if self.ip_max_sockets > 0 && peer.sockets >= self.ip_max_sockets {
                count("ip_sockets");
                return Err(Refusal::TooManySockets);
            }
            if self.ip_connect_rate > 0.0 {
                let (rate, burst) = (self.ip_connect_rate, self.ip_connect_burst);
                let bucket = peer
                    .connects
                    .get_or_insert_with(|| Bucket::new(rate, burst));
                if !bucket.take() {
                    count("ip_connect_rate");
                    return Err(Refusal::TooFast);
                }
            }
            peer.sockets += 1;
        }
        self.sockets.fetch_add(1, Ordering::Relaxed);
        Ok(SocketPermit {
            limits: Arc::clone(self),
            ip,
        })
    }

    /// The frame budget of a new socket (`None` when frame limits are off).
    pub fn frame_budget(&self) -> Option<FrameBudget> {
        (self.frame_rate > 0.0).then(|| FrameBudget {
            bucket: Bucket::new(self.frame_rate, self.frame_burst),
            strikes: 0,
            tolerance: self.frame_burst.max(1),
        })
    }

    /// How long `ip` must still wait before a token is checked again (wrong tokens back off).
    pub fn auth_banned(&self, ip: Option<IpAddr>) -> Option<Duration> {
        let ip = ip?;
        let peers = self.peers();
        let until = peers.get(&ip)?.banned_until?;
        until.checked_duration_since(Instant::now())
    }

    /// Records a wrong token from `ip`: past `AUTH_FAIL_LIMIT` failures, each one doubles the back-off
    /// (1 s, 2 s, 4 s … at most 60 s).
    pub fn auth_failed(&self, ip: Option<IpAddr>) {
        let (Some(ip), true) = (ip, self.auth_fail_limit > 0) else {
            return;
        };
        let mut peers = self.peers();
        let peer = peers.entry(ip).or_insert_with(|| Peer {
            sockets: 0,
            connects: None,
            auth_failures: 0,
            banned_until: None,
        });
        peer.auth_failures = peer.auth_failures.saturating_add(1);
        if peer.auth_failures >= self.auth_fail_limit {
            let over = (peer.auth_failures - self.auth_fail_limit).min(6);
            let wait = Duration::from_secs(1 << over).min(Duration::from_secs(60));
            peer.banned_until = Some(Instant::now() + wait);
            count("auth_backoff");
        }
    }

    /// A right token resets the address's failures.
    pub fn auth_succeeded(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        if let Some(peer) = self.peers().get_mut(&ip) {
            peer.auth_failures = 0;
            peer.banned_until = None;
        }
    }
}

/// See [`Limits::client_ip`].
pub fn client_ip(
    headers: &header::HeaderMap,
    peer: Option<std::net::SocketAddr>,
    trust_forwarded: bool,
) -> Option<IpAddr> {
    if trust_forwarded {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer.map(|p| p.ip())
}

/// Frames per second of one socket: over the rate the frame is answered with the protocol's error and not
/// processed; when it persists (more refused frames than the burst in a row) the socket is closed.
#[derive(Debug, Clone)]
pub struct FrameBudget {
    bucket: Bucket,
    strikes: u32,
    tolerance: u32,
}

/// What to do with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameVerdict {
    Process,
    /// Answer with the protocol's error, do not process.
    Refuse,
    /// Close the socket.
    Flood,
}

impl FrameBudget {
    pub fn check(&mut self) -> FrameVerdict {
        if self.bucket.take() {
            self.strikes = 0;
            return FrameVerdict::Process;
        }
        self.strikes += 1;
        count("frame_rate");
        if self.strikes > self.tolerance {
            FrameVerdict::Flood
        } else {
            FrameVerdict::Refuse
        }
    }
}

// ---- REST (actix-governor) -----------------------------------------------------------------------------

/// The JSON 429 of a REST rate limit.
fn rest_limited(
    wait: Duration,
    mut response: HttpResponseBuilder,
    limit: &'static str,
) -> HttpResponse {
    count(limit);
    let secs = wait.as_secs().max(1);
    response
        .insert_header((header::RETRY_AFTER, secs.to_string()))
        .json(serde_json::json!({
            "error": "rate_limited",
            "message": format!("too many requests; retry in {secs} s"),
        }))
}

/// Requests that are not REST calls of a client: WebSocket upgrades (limited per address by [`Limits::admit`])
/// and health probes.
fn exempt(req: &ServiceRequest) -> bool {
    let path = req.path();
    path == "/healthz"
        || path == "/readyz"
        || req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Keys REST requests by client address.
#[derive(Clone, Debug)]
pub struct ByAddress {
    pub trust_forwarded: bool,
}

impl KeyExtractor for ByAddress {
    type Key = String;
    type KeyExtractionError = SimpleKeyExtractionError<&'static str>;

    fn extract(&self, req: &ServiceRequest) -> Result<String, Self::KeyExtractionError> {
        if exempt(req) {
            return Ok(String::new());
        }
        Ok(
            client_ip(req.headers(), req.peer_addr(), self.trust_forwarded)
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "unknown".into()),
        )
    }

    fn exceed_rate_limit_response(
        &self,
        negative: &actix_governor::governor::NotUntil<
            actix_governor::governor::clock::QuantaInstant,
        >,
        response: HttpResponseBuilder,
    ) -> HttpResponse {
        use actix_governor::governor::clock::{Clock, DefaultClock};
        rest_limited(
            negative.wait_time_from(DefaultClock::default().now()),
            response,
            "rest_ip",
        )
    }

    fn whitelisted_keys(&self) -> Vec<String> {
        vec![String::new()]
    }
}

/// Keys REST requests by the bearer token they present (a fingerprint, never the token itself); requests
/// without one are limited by address only.
#[derive(Clone, Debug)]
pub struct ByToken;

impl KeyExtractor for ByToken {
    type Key = String;
    type KeyExtractionError = SimpleKeyExtractionError<&'static str>;

    fn extract(&self, req: &ServiceRequest) -> Result<String, Self::KeyExtractionError> {
        if exempt(req) {
            return Ok(String::new());
        }
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .map(|(_, token)| token.trim());
        Ok(match token {
            Some(token) if !token.is_empty() => {
                use sha2::{Digest, Sha256};
                hex::encode(&Sha256::digest(token.as_bytes())[..12])
            }
            _ => String::new(),
        })
    }

    fn exceed_rate_limit_response(
        &self,
        negative: &actix_governor::governor::NotUntil<
            actix_governor::governor::clock::QuantaInstant,
        >,
        response: HttpResponseBuilder,
    ) -> HttpResponse {
        use actix_governor::governor::clock::{Clock, DefaultClock};
        rest_limited(
            negative.wait_time_from(DefaultClock::default().now()),
            response,
            "rest_token",
        )
    }

    fn whitelisted_keys(&self) -> Vec<String> {
        vec![String::new()]
    }
}

type AddressConfig = GovernorConfig<ByAddress, NoOpMiddleware<QuantaInstant>>;
type TokenConfig = GovernorConfig<ByToken, NoOpMiddleware<QuantaInstant>>;

/// The REST rate limiters of a node, shared by its workers (each builds its middleware from these).
#[derive(Clone)]
pub struct RestLimits {
    by_address: (bool, AddressConfig),
    by_token: (bool, TokenConfig),
}

impl RestLimits {
    pub fn new(settings: &Settings) -> RestLimits {
        // A disabled limiter still needs a config to build its (skipped) middleware from.
        let by_address = GovernorConfigBuilder::default()
            .requests_per_second(settings.rest_rate.max(1))
            .burst_size(settings.rest_burst.max(1))
            .key_extractor(ByAddress {
                trust_forwarded: settings.trust_forwarded_for,
            })
            .finish();
        let by_token = GovernorConfigBuilder::default()
            .requests_per_second(settings.rest_token_rate.max(1))
            .burst_size(settings.rest_token_burst.max(1))
            .key_extractor(ByToken)
            .finish();
        match (by_address, by_token) {
            (Some(address), Some(token)) => RestLimits {
                by_address: (settings.rest_rate > 0, address),
                by_token: (settings.rest_token_rate > 0, token),
            },
            // `finish` refuses only a zero period or burst, which `max(1)` rules out.
            _ => unreachable!("rate limiter settings are clamped to at least 1"),
        }
    }

    pub fn by_address(&self) -> Condition<Governor<ByAddress, NoOpMiddleware<QuantaInstant>>> {
        Condition::new(self.by_address.0, Governor::new(&self.by_address.1))
    }

    pub fn by_token(&self) -> Condition<Governor<ByToken, NoOpMiddleware<QuantaInstant>>> {
        Condition::new(self.by_token.0, Governor::new(&self.by_token.1))
    }

    /// Forgets idle keys every minute, so a stream of new addresses cannot grow the limiters without bound.
    pub fn sweep_now_and_then(&self) {
        let (address, token) = (self.by_address.1.limiter(), self.by_token.1.limiter());
        actix_rt::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(60));
            loop {
                ticker.tick().await;
                address.retain_recent();
                token.retain_recent();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(tweak: impl FnOnce(&mut Settings)) -> Arc<Limits> {
        let mut settings = Settings::default();
        tweak(&mut settings);
        Limits::new(&settings)
    }

    #[test]
    fn sockets_per_address_and_per_node_are_capped_and_given_back() {
        let limits = limits(|s| {
            s.ip_max_sockets = 2;
            s.max_devices = 3;
            s.ip_connect_rate = 0.0;
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.admit(Some(a)).unwrap();
        let _second = limits.admit(Some(a)).unwrap();
        assert_eq!(limits.admit(Some(a)).unwrap_err(), Refusal::TooManySockets);
        drop(first);
        let _third = limits.admit(Some(a)).unwrap();
        let _fourth = limits.admit(Some(b)).unwrap();
        assert_eq!(limits.admit(Some(b)).unwrap_err(), Refusal::NodeFull);
    }

    #[test]
    fn new_connections_per_second_have_a_burst() {
        let limits = limits(|s| {
            s.ip_connect_rate = 0.001;
            s.ip_connect_burst = 3;
        });
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let permits: Vec<_> = (0..3).map(|_| limits.admit(Some(ip)).unwrap()).collect();
        assert_eq!(limits.admit(Some(ip)).unwrap_err(), Refusal::TooFast);
        drop(permits);
        // Closing sockets does not refill the bucket: it is about the rate of new ones.
        assert_eq!(limits.admit(Some(ip)).unwrap_err(), Refusal::TooFast);
    }

    #[test]
    fn a_flood_is_refused_then_closed_and_a_pause_resets_it() {
        let mut budget = FrameBudget {
            bucket: Bucket::new(1000.0, 2),
            strikes: 0,
            tolerance: 2,
        };
        assert_eq!(budget.check(), FrameVerdict::Process);
        assert_eq!(budget.check(), FrameVerdict::Process);
        assert_eq!(budget.check(), FrameVerdict::Refuse);
        assert_eq!(budget.check(), FrameVerdict::Refuse);
        assert_eq!(budget.check(), FrameVerdict::Flood);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(budget.check(), FrameVerdict::Process);
    }

    #[test]
    fn wrong_tokens_back_off_and_a_right_one_resets() {
        let limits = limits(|s| s.auth_fail_limit = 2);
        let ip: Option<IpAddr> = Some("10.0.0.5".parse().unwrap());
        limits.auth_failed(ip);
        assert!(limits.auth_banned(ip).is_none());
        limits.auth_failed(ip);
        let wait = limits.auth_banned(ip).expect("banned");
        assert!(wait <= Duration::from_secs(1));
        limits.auth_succeeded(ip);
        assert!(limits.auth_banned(ip).is_none());
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let mut headers = header::HeaderMap::new();
        headers.insert(
            header::HeaderName::from_static("x-forwarded-for"),
            header::HeaderValue::from_static("1.2.3.4, 10.9.8.7"),
        );
        let peer = Some("127.0.0.1:5000".parse().unwrap());
        assert_eq!(
            client_ip(&headers, peer, false),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            client_ip(&headers, peer, true),
            Some("10.9.8.7".parse().unwrap())
        );
    }
}
