//! `hold` (hidden subcommand): one share of a `cluster` run's terminals, in a process of its own, because one
//! process may hold at most its RLIMIT_NOFILE of sockets (20,000 on the reference machine) and a cluster run
//! holds 100,000.
//!
//! Talks to its parent over stdio, one JSON line each way per step:
//! 1. it connects and registers its terminals, then prints
//!    `{"registered":n,"elapsed_secs":s,"latency":[[µs,count],…],"errors":{…}}`;
//! 2. on a `check` line it prints `{"dropped":d}` (terminals whose socket is gone);
//! 3. on `stop` (or end of input) it prints `{"dropped":d}`, closes every terminal and exits.

use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::fleet::{connect_all, serial_numbers, AddrPool, Fleet};
use crate::Common;

pub struct HoldArgs {
    pub ws_url: String,
    pub prefix: String,
    pub count: usize,
    pub addr_offset: u32,
}

pub async fn run(common: &Common, args: HoldArgs) -> Result<(), String> {
    let pool = Arc::new(AddrPool::with_offset(
        !common.no_source_spread,
        common.sockets_per_addr,
        args.addr_offset,
    ));
    let sns = serial_numbers(&args.prefix, args.count);
    let fleet = connect_all(&args.ws_url, &sns, common.concurrency, &pool, "reg").await?;
    say(json!({
        "registered": fleet.registered,
        "elapsed_secs": fleet.elapsed.as_secs_f64(),
        "latency": fleet.latency.to_wire(),
        "errors": fleet.errors.to_wire(),
    }));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = lines.next_line().await.map_err(|e| e.to_string())?;
        match line.as_deref().map(str::trim) {
            Some("check") => say(json!({"dropped": dropped(&fleet)})),
            Some("stop") | None => break,
            Some(_) => {}
        }
    }
    say(json!({"dropped": dropped(&fleet)}));
    fleet.close_all().await;
    Ok(())
}

fn dropped(fleet: &Fleet) -> usize {
    fleet.live().filter(|t| !t.is_connected()).count()
}

fn say(value: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A parent that went away cannot be told anything; it will see the worker exit.
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}
