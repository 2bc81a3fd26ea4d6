//! Many simulated terminals: connecting them with bounded concurrency, spreading their source addresses over
//! 127.0.0.2, 127.0.0.3, … (one address has ~28k ephemeral ports), and closing them.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gatehouse::sim::tm20::{SimConfig, SimError, SimTerminal};

use crate::stats::{ErrorCounts, Latency};

/// Hands out client source addresses, at most `per_addr` sockets each. Addresses are never reused within a
/// run, so sockets a storm leaves in TIME_WAIT cannot collide with the reconnections.
pub struct AddrPool {
    next: AtomicU32,
    per_addr: u32,
    enabled: bool,
    /// Addresses skipped before the first one: the worker processes of one run get disjoint ranges.
    offset: u32,
}

/// The first address handed out; 127.0.0.1 stays for the server and the REST callers.
const FIRST: u32 = u32::from_be_bytes([127, 0, 0, 2]);
/// Last usable address of 127.0.0.0/8.
const LAST: u32 = u32::from_be_bytes([127, 255, 255, 254]);

impl AddrPool {
    /// Spreading is only possible (and only done) when the server is on IPv4 loopback.
    pub fn new(server_is_loopback_v4: bool, per_addr: u32) -> AddrPool {
        Self::with_offset(server_is_loopback_v4, per_addr, 0)
    }

    /// A pool whose first address is `offset` addresses after 127.0.0.2.
    pub fn with_offset(server_is_loopback_v4: bool, per_addr: u32, offset: u32) -> AddrPool {
        AddrPool {
            next: AtomicU32::new(0),
            per_addr: per_addr.max(1),
            enabled: server_is_loopback_v4,
            offset,
        }
    }

    pub fn next(&self) -> Option<IpAddr> {
        if !self.enabled {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let ip = FIRST
            .saturating_add(self.offset)
            .saturating_add(n / self.per_addr)
            .min(LAST);
        Some(IpAddr::V4(Ipv4Addr::from(ip)))
    }

    /// How many source addresses have been used so far.
    pub fn addresses_used(&self) -> u32 {
        if !self.enabled {
            return 0;
        }
        self.next.load(Ordering::Relaxed).div_ceil(self.per_addr)
    }
}

/// Serial numbers `{prefix}{index:06}`, index from 1.
pub fn serial_numbers(prefix: &str, count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("{prefix}{i:06}")).collect()
}

/// A prefix unique to this run, so repeated runs against one database never share a terminal.
pub fn run_prefix(scenario: char) -> String {
    format!("B{scenario}{:05X}", rand::random::<u32>() & 0xF_FFFF)
}

/// The counting key of a simulator error.
pub fn sim_error_kind(err: &SimError) -> &'static str {
    match err {
        SimError::Connect(_) => "connect",
        SimError::Rejected(_) => "rejected",
        SimError::Closed => "closed",
        SimError::Timeout => "timeout",
        SimError::Protocol(_) => "protocol",
    }
}

pub struct Fleet {
    /// In the order of the serial numbers; `None` where registration failed (counted in `errors`).
    pub terminals: Vec<Option<SimTerminal>>,
    pub errors: ErrorCounts,
    /// From dialling to the `reg` reply, per terminal.
    pub latency: Latency,
    /// Until the last terminal was registered (or failed).
    pub elapsed: Duration,
    pub registered: usize,
}

impl Fleet {
    pub fn live(&self) -> impl Iterator<Item = &SimTerminal> {
        self.terminals.iter().flatten()
    }

    /// Registered terminals whose socket has closed since.
    pub fn dropped(&self) -> usize {
        self.live().filter(|t| !t.is_connected()).count()
    }

    /// Closes every terminal at once (close frame, then the socket) and waits for all.
    pub async fn close_all(self) {
        close_all(self.terminals.into_iter().flatten()).await;
    }
}

pub async fn close_all(terminals: impl IntoIterator<Item = SimTerminal>) {
    futures_util::future::join_all(terminals.into_iter().map(SimTerminal::close)).await;
}

/// Connects and registers one terminal per serial number, `concurrency` at a time; failures are counted as
/// `{error_prefix}_{kind}`.
pub async fn connect_all(
    ws_url: &str,
    sns: &[String],
    concurrency: usize,
    pool: &Arc<AddrPool>,
    error_prefix: &str,
) -> Result<Fleet, String> {
    let started = Instant::now();
    let mut terminals: Vec<Option<SimTerminal>> = Vec::with_capacity(sns.len());
    terminals.resize_with(sns.len(), || None);
    let mut errors = ErrorCounts::default();
    let mut latency = Latency::new()?;
    let mut registered = 0;
    let mut results = futures_util::stream::iter(sns.iter().cloned().enumerate())
        .map(|(index, sn)| {
            let mut cfg = SimConfig::new(ws_url, sn);
            cfg.users = 0;
            cfg.logs = 0;
            cfg.local_addr = pool.next();
            // Each handshake runs as its own task so they spread over the runtime's threads.
            tokio::spawn(async move {
                let dialled = Instant::now();
                let result = SimTerminal::connect(cfg).await;
                (index, result, dialled.elapsed())
            })
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(joined) = results.next().await {
        match joined {
            Ok((index, Ok(terminal), took)) => {
                latency.record(took);
                registered += 1;
                if let Some(slot) = terminals.get_mut(index) {
                    *slot = Some(terminal);
                }
            }
            Ok((_, Err(err), _)) => {
                errors.add_with(
                    format!("{error_prefix}_{}", sim_error_kind(&err)),
                    err.to_string(),
                );
            }
            Err(join) => errors.add_with(format!("{error_prefix}_panic"), join.to_string()),
        }
    }
    Ok(Fleet {
        terminals,
        errors,
        latency,
        elapsed: started.elapsed(),
        registered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_spread_and_never_reused() {
        let pool = AddrPool::new(true, 2);
        let got: Vec<_> = (0..5).filter_map(|_| pool.next()).collect();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            got,
            vec![
                ip("127.0.0.2"),
                ip("127.0.0.2"),
                ip("127.0.0.3"),
                ip("127.0.0.3"),
                ip("127.0.0.4")
            ]
        );
        assert_eq!(pool.addresses_used(), 3);
        let big = AddrPool::new(true, 1);
        big.next.store(254, Ordering::Relaxed);
        assert_eq!(big.next(), Some(ip("127.0.1.0")));
        assert_eq!(AddrPool::new(false, 10).next(), None);
        let shifted = AddrPool::with_offset(true, 2, 256);
        assert_eq!(shifted.next(), Some(ip("127.0.1.2")));
    }

    #[test]
    fn serials() {
        assert_eq!(serial_numbers("BX", 2), vec!["BX000001", "BX000002"]);
        assert!(run_prefix('C').starts_with("BC"));
    }
}
