//! `hold` (hidden subcommand): one share of a `cluster` run's terminals, in a process of its own, because one
//! process may hold at most its RLIMIT_NOFILE of sockets (20,000 on the reference machine) and a cluster run
//! holds 100,000.
//!
//! Talks to its parent over stdio, one JSON line each way per step:
//! 1. it connects and registers its terminals, then prints
//!    `{"registered":n,"elapsed_secs":s,"latency":[[µs,count],…],"errors":{…},"retried":r,"failed":[i,…]}`
//!    (`failed`: the 1-based indices of the serial numbers that never registered);
//! 2. on a `check` line it prints `{"dropped":d}` (terminals whose socket is gone);
//! 3. on `stop` (or end of input) it prints `{"dropped":d}`, closes every terminal and exits.

use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::fleet::{connect_all, serial_numbers, AddrPool};
use crate::Common;

pub struct HoldArgs {
    pub ws_url: String,
    pub prefix: String,
    pub count: usize,
    pub addr_offset: u32,
    /// Times a terminal whose handshake or `reg` failed dials again, as real terminals do after a pause.
    pub retries: u32,
}

/// Pause before a failed terminal dials again.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn run(common: &Common, args: HoldArgs) -> Result<(), String> {
    let pool = Arc::new(AddrPool::with_offset(
        !common.no_source_spread,
        common.sockets_per_addr,
        args.addr_offset,
    ));
    let sns = serial_numbers(&args.prefix, args.count);
    let started = std::time::Instant::now();
    let mut fleet = connect_all(&args.ws_url, &sns, common.concurrency, &pool, "reg").await?;
    // Failed attempts are reported (`retried`, with what went wrong the first time in `retry_errors`); only
    // terminals still unregistered after the last retry count as errors.
    let mut retried = 0usize;
    let mut retry_errors = crate::stats::ErrorCounts::default();
    for _ in 0..args.retries {
        let missing: Vec<usize> = (0..sns.len())
            .filter(|&i| fleet.terminals[i].is_none())
            .collect();
        if missing.is_empty() {
            break;
        }
        retried += missing.len();
        retry_errors.merge(&std::mem::take(&mut fleet.errors));
        tokio::time::sleep(RETRY_PAUSE).await;
        let again: Vec<String> = missing.iter().map(|&i| sns[i].clone()).collect();
        let second = connect_all(&args.ws_url, &again, common.concurrency, &pool, "reg").await?;
        fleet.errors = second.errors;
        fleet.registered += second.registered;
        let _ = fleet.latency.merge(&second.latency);
        for (i, terminal) in missing.into_iter().zip(second.terminals) {
            fleet.terminals[i] = terminal;
        }
    }
    let failed: Vec<usize> = (0..sns.len())
        .filter(|&i| fleet.terminals[i].is_none())
        .map(|i| i + 1)
        .collect();
    say(json!({
        "registered": fleet.registered,
        "elapsed_secs": started.elapsed().as_secs_f64(),
        "latency": fleet.latency.to_wire(),
        "errors": fleet.errors.to_wire(),
        "retried": retried,
        "retry_errors": retry_errors.to_wire(),
        "failed": failed,
    }));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = lines.next_line().await.map_err(|e| e.to_string())?;
        match line.as_deref().map(str::trim) {
            Some("check") => say(json!({"dropped": fleet.dropped()})),
            Some("stop") | None => break,
            Some(_) => {}
        }
    }
    say(json!({"dropped": fleet.dropped()}));
    fleet.close_all().await;
    Ok(())
}

fn say(value: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A parent that went away cannot be told anything; it will see the worker exit.
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}
