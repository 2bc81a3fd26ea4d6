//! `gatehouse-bench`: the load generator and benchmark suite for Gatehouse. It runs as its own process, starts
//! the server under test (or attaches to one), drives simulated TM20 terminals over WebSocket and admins over
//! REST, measures the server process alone (RSS and CPU time from `/proc`), and prints for every scenario a
//! human table followed by one JSON line.
//!
//! Scenarios: `conns`, `commands`, `ingest`, `ocpp`, `storm`, `cluster` (several nodes and worker processes),
//! and `smoke` (all of them at a tiny size; exits non-zero on any error, for CI). `plot` draws the SVG plots of
//! BENCHMARKS.md from saved JSON lines.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod fleet;
mod hold;
mod http;
mod plot;
mod procfs;
mod report;
mod scenarios;
mod server;
mod stats;

use report::Report;
use scenarios::Ctx;
use server::Server;
use stats::ErrorCounts;

// Every cycle the load generator spends is one the server under test, on the same box, does not get.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "gatehouse-bench",
    version,
    about = "Load generator and benchmarks for Gatehouse",
    after_help = "By default each scenario starts its own `gatehouse serve` (fresh SQLite file in a temporary \
directory, free port on 127.0.0.1, RUST_LOG=warn, hour-long heartbeat) and stops it afterwards. With \
--server-url (+ --server-pid to measure it) it attaches to a running node instead; --admin sends the REST \
calls to another node of the same cluster (start both nodes yourself). For PostgreSQL pass --database-url \
postgres://…/DB: the database must exist.\n\nFile descriptors: one process may hold at most its hard \
RLIMIT_NOFILE of sockets (20,000 on the reference machine). The bench raises its soft limit to the hard one, and \
a server it starts inherits that limit; one server process therefore holds at most ~19,900 terminals (storm \
needs twice its devices while old sockets close). Beyond that, raise the hard limit or spread the terminals over \
several nodes. Client sockets are spread over 127.0.0.2, 127.0.0.3, … (--sockets-per-addr each) so loopback \
runs are not capped by one address's ~28k ephemeral ports.\n\nEvery scenario prints a table, then one JSON line \
{\"scenario\":…, …figures…, \"errors\":{…}}. Exit status: 0, or 2 when a scenario could not run; with \
--smoke (or `smoke`) 1 when any scenario counted an error."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// Run the named scenario (or, without one, every scenario) at a tiny size; exit 1 on any error.
    #[arg(long, global = true)]
    smoke: bool,
    #[command(subcommand)]
    scenario: Option<Scenario>,
}

/// Options of every scenario.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// The `gatehouse` binary to start [default: `gatehouse` next to this executable].
    #[arg(long, global = true)]
    pub server_bin: Option<PathBuf>,
    /// Attach to a running node (`http://127.0.0.1:7788`) instead of starting one.
    #[arg(long, global = true)]
    pub server_url: Option<String>,
    /// Pid of the attached node, whose RSS and CPU are measured (without it those figures are null).
    #[arg(long, global = true, requires = "server_url")]
    pub server_pid: Option<u32>,
    /// Send REST calls to this node (`http://…`) while terminals connect to --server-url (cluster runs).
    #[arg(long, global = true, requires = "server_url")]
    pub admin: Option<String>,
    /// API token: required with --server-url; a random one for a server we start.
    #[arg(
        long,
        global = true,
        env = "GATEHOUSE_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// DATABASE_URL of a server we start [default: a fresh SQLite file]. A PostgreSQL database must exist.
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// Extra KEY=VALUE environment for a server we start (e.g. COMMAND_QUEUE_SIZE=64); repeatable.
    #[arg(long = "server-env", global = true, value_name = "KEY=VALUE")]
    pub server_env: Vec<String>,
    /// WebSocket path terminals connect to.
    #[arg(long, global = true, default_value = "/pub/chat")]
    pub ws_path: String,
    /// Terminals dialling and registering at the same time.
    #[arg(long, global = true, default_value_t = 500)]
    pub concurrency: usize,
    /// Client sockets per source address (127.0.0.2, 127.0.0.3, …); one address has ~28k ephemeral ports.
    #[arg(long, global = true, default_value_t = 20_000)]
    pub sockets_per_addr: u32,
    /// Let the OS pick every source address (limits a run to ~28k sockets).
    #[arg(long, global = true)]
    pub no_source_spread: bool,
    /// Seconds a REST call may take before it counts as a time-out.
    #[arg(long, global = true, default_value_t = 30.0)]
    pub request_timeout: f64,
}

impl Common {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout.clamp(0.1, 3600.0))
    }
}

#[derive(Subcommand, Clone, Debug)]
enum Scenario {
    /// N terminals register and stay idle: registration rate, CPU per registration (server and bench), server
    /// RSS per connection, idle CPU.
    Conns {
        #[arg(long, default_value_t = 2000)]
        devices: usize,
        /// Seconds the server's idle CPU is measured over.
        #[arg(long, default_value_t = 10.0)]
        idle_secs: f64,
        /// After the idle window, each terminal sends one `sendlog` whose record carries a photo of this many
        /// bytes; the server's RSS per connection is read again once they are answered (0: skip).
        #[arg(long, default_value_t = 0)]
        photo_bytes: usize,
    },
    /// C REST callers send `opendoor` to random devices for S seconds: commands/s, latency, CPU per command.
    Commands {
        #[arg(long, default_value_t = 50)]
        devices: usize,
        #[arg(long, default_value_t = 32)]
        callers: usize,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// Terminals upload `sendlog` batches as fast as acks come back: records committed per second.
    Ingest {
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// Records per batch.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// D charge points send MeterValues (and StatusNotification) as fast as answered: messages persisted/s.
    Ocpp {
        #[arg(long, default_value_t = 50)]
        points: usize,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// All K terminals drop at once and reconnect while commands flow: time to recover, misrouted answers.
    Storm {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// REST callers sending commands during the storm.
        #[arg(long, default_value_t = 8)]
        callers: usize,
    },
    /// N terminals held by a cluster of K node processes (Redis, one database), one bench worker process per
    /// node: registration, every node's listing, RSS per connection, cross-node commands, none dropped.
    Cluster {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 3000)]
        devices: usize,
        /// Seconds the nodes' idle CPU is measured over.
        #[arg(long, default_value_t = 5.0)]
        idle_secs: f64,
        /// Cross-node commands sent once all are listed (each through the REST API of a node that does not
        /// hold the terminal).
        #[arg(long, default_value_t = 600)]
        commands: usize,
        #[arg(long, default_value_t = 8)]
        callers: usize,
        /// Times a terminal that failed to register dials again after a 1 s pause, as real terminals do
        /// (failed attempts are reported as `reg_retried`; only terminals still unregistered are errors).
        #[arg(long, default_value_t = 3)]
        retries: u32,
        /// The Redis the nodes share (each run uses a key prefix of its own).
        #[arg(
            long,
            env = "BENCH_REDIS_URL",
            default_value = "redis://127.0.0.1:6379/0"
        )]
        redis_url: String,
    },
    /// Every scenario at a tiny size (a few hundred devices, ~2 s each); exit 1 on any error. CI runs this.
    Smoke,
    /// Draws the SVG plots of BENCHMARKS.md from saved JSON lines (the output of any scenarios, e.g.
    /// `… | tee -a results.jsonl`): RSS per connection against connections (conns and cluster lines), and
    /// command latency and rate against concurrent callers (commands lines).
    Plot {
        /// Files holding the scenarios' output; lines that are not a scenario's JSON line are skipped.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Directory the SVG files are written to.
        #[arg(long, default_value = "bench/plots")]
        out: PathBuf,
    },
    /// (Internal) one worker process of `cluster`: holds a share of the terminals, talks to its parent on stdio.
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        ws_url: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        addr_offset: u32,
        #[arg(long, default_value_t = 0)]
        retries: u32,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Conns { .. } => "conns",
            Scenario::Commands { .. } => "commands",
            Scenario::Ingest { .. } => "ingest",
            Scenario::Ocpp { .. } => "ocpp",
            Scenario::Storm { .. } => "storm",
            Scenario::Cluster { .. } => "cluster",
            Scenario::Smoke => "smoke",
            Scenario::Plot { .. } => "plot",
            Scenario::Hold { .. } => "hold",
        }
    }

    /// The same scenario at smoke size.
    fn smoke_sized(&self) -> Vec<Scenario> {
        match self {
            Scenario::Conns { .. } => vec![Scenario::Conns {
                devices: 300,
                idle_secs: 2.0,
                photo_bytes: 150_000,
            }],
            Scenario::Commands { .. } => vec![Scenario::Commands {
                devices: 50,
                callers: 16,
                secs: 2.0,
            }],
            Scenario::Ingest { .. } => vec![Scenario::Ingest {
                devices: 20,
                batch: 20,
                secs: 2.0,
            }],
            Scenario::Ocpp { .. } => vec![Scenario::Ocpp {
                points: 20,
                secs: 2.0,
            }],
            Scenario::Storm { .. } => vec![Scenario::Storm {
                devices: 300,
                callers: 8,
            }],
            Scenario::Cluster { redis_url, .. } => vec![Scenario::Cluster {
                nodes: 2,
                devices: 300,
                idle_secs: 1.0,
                commands: 100,
                callers: 4,
                retries: 0,
                redis_url: redis_url.clone(),
            }],
            Scenario::Plot { .. } | Scenario::Hold { .. } => vec![self.clone()],
            Scenario::Smoke => [
                Scenario::Conns {
                    devices: 0,
                    idle_secs: 0.0,
                    photo_bytes: 0,
                },
                Scenario::Commands {
                    devices: 0,
                    callers: 0,
                    secs: 0.0,
                },
                Scenario::Ingest {
                    devices: 0,
                    batch: 0,
                    secs: 0.0,
                },
                Scenario::Ocpp {
                    points: 0,
                    secs: 0.0,
                },
                Scenario::Storm {
                    devices: 0,
                    callers: 0,
                },
                Scenario::Cluster {
                    nodes: 0,
                    devices: 0,
                    idle_secs: 0.0,
                    commands: 0,
                    callers: 0,
                    retries: 0,
                    redis_url: std::env::var("BENCH_REDIS_URL")
                        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
                },
            ]
            .iter()
            .flat_map(Scenario::smoke_sized)
            .collect(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Many sockets per process: take every file descriptor we may (a server we start inherits this limit).
    if let Err(e) = procfs::raise_nofile_limit() {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match &cli.scenario {
        Some(Scenario::Hold {
            ws_url,
            prefix,
            count,
            addr_offset,
            retries,
        }) => {
            let args = hold::HoldArgs {
                ws_url: ws_url.clone(),
                prefix: prefix.clone(),
                count: *count,
                addr_offset: *addr_offset,
                retries: *retries,
            };
            return match hold::run(&cli.common, args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: hold: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Scenario::Plot { inputs, out }) => {
            return match plot::run(inputs, out) {
                Ok(written) => {
                    for path in written {
                        println!("wrote {}", path.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: plot: {e}");
                    ExitCode::from(2)
                }
            };
        }
        _ => {}
    }
    let smoke = cli.smoke || matches!(cli.scenario, Some(Scenario::Smoke));
    let plan = match (&cli.scenario, smoke) {
        (Some(scenario), true) => scenario.smoke_sized(),
        (Some(scenario), false) => vec![scenario.clone()],
        (None, true) => Scenario::Smoke.smoke_sized(),
        (None, false) => {
            eprintln!(
                "error: name a scenario: conns, commands, ingest, ocpp, storm, cluster or smoke (see --help)"
            );
            return ExitCode::from(2);
        }
    };
    let mut all_errors = ErrorCounts::default();
    let mut could_not_run = false;
    for scenario in &plan {
        match run_one(&cli.common, scenario).await {
            Ok(report) => {
                report.print();
                all_errors.merge(&report.errors.prefixed(report.scenario));
            }
            Err(e) => {
                eprintln!("error: {} could not run: {e}", scenario.name());
                all_errors.add_with(format!("{}.could_not_run", scenario.name()), e);
                could_not_run = true;
            }
        }
    }
    if smoke {
        let mut summary = Report::new("smoke", "smoke: every scenario at a tiny size");
        summary.figure("passed", "passed", all_errors.is_empty(), "");
        summary.errors = all_errors.clone();
        summary.print();
        if !all_errors.is_empty() {
            return ExitCode::from(1);
        }
    }
    if could_not_run {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// One scenario against its own server (started for it and stopped after, unless attached).
async fn run_one(common: &Common, scenario: &Scenario) -> Result<Report, String> {
    if let Scenario::Cluster {
        nodes,
        devices,
        idle_secs,
        commands,
        callers,
        retries,
        redis_url,
    } = scenario
    {
        let args = scenarios::cluster::ClusterArgs {
            nodes: *nodes,
            devices: *devices,
            idle_secs: *idle_secs,
            commands: *commands,
            callers: *callers,
            retries: *retries,
            redis_url: redis_url.clone(),
        };
        return scenarios::cluster::run(common, &args).await;
    }
    let server = Server::start_or_attach(common).await?;
    let ctx = Ctx::new(&server, common);
    let result = match scenario {
        Scenario::Conns {
            devices,
            idle_secs,
            photo_bytes,
        } => scenarios::conns::run(&ctx, *devices, *idle_secs, *photo_bytes).await,
        Scenario::Commands {
            devices,
            callers,
            secs,
        } => scenarios::commands::run(&ctx, *devices, *callers, *secs).await,
        Scenario::Ingest {
            devices,
            batch,
            secs,
        } => scenarios::ingest::run(&ctx, *devices, *batch, *secs).await,
        Scenario::Ocpp { points, secs } => scenarios::ocpp::run(&ctx, *points, *secs).await,
        Scenario::Storm { devices, callers } => {
            scenarios::storm::run(&ctx, *devices, *callers).await
        }
        Scenario::Smoke
        | Scenario::Cluster { .. }
        | Scenario::Plot { .. }
        | Scenario::Hold { .. } => {
            Err(format!("{} is not run against one server", scenario.name()))
        }
    };
    drop(ctx);
    // The log up to now is the run's; what a spawned server logs after SIGTERM is its shutdown's.
    let during = server.read_log(0);
    let shutdown = server
        .stop(during.as_ref().map_or(0, |(_, end)| *end))
        .await;
    let mut report = result?;
    if let Some((during, _)) = during {
        report.set_server_log(during, shutdown);
    }
    Ok(report)
}
