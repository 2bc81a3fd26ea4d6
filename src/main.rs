//! The `gatehouse` binary: parses the command line, loads `.env`, starts tracing, calls into the library.

use clap::{Parser, Subcommand};
use gatehouse::config::{Settings, DEFAULT_DATABASE_URL};
use gatehouse::startup::Application;
use gatehouse::store::Store;

// jemalloc instead of glibc's malloc: measured on this project's load (BENCHMARKS.md, session 6), it hands
// the pages of a large frame back instead of leaving them in per-thread arenas, and its thread caches make the
// many small allocations of a command or a sendlog batch cheaper.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at start-up (the `_RJEM_MALLOC_CONF` environment variable still overrides
/// them). Freed pages go back to the OS within about a second (`dirty_decay_ms`, default 10 s), and a
/// background thread does it even when no allocation happens to trigger it: after a registration burst or a
/// large frame an idle node otherwise kept the burst's pages (RSS per idle socket at 10,000: 7.9–8.3 →
/// 5.9 KiB).
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_OPTIONS: JemallocOptions =
    JemallocOptions(c"background_thread:true,dirty_decay_ms:1000".as_ptr());

/// A C string pointer jemalloc reads as `const char *malloc_conf`.
#[repr(transparent)]
struct JemallocOptions(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string literal.
unsafe impl Sync for JemallocOptions {}

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("GATEHOUSE_GIT_COMMIT"), ")"),
    about = "Device gateway for TM20 terminals, OCPP 1.6J charge points and more"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "GATEHOUSE_LOG_FORMAT", value_parser = ["pretty", "json"], default_value = "pretty")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: migrate the database, then serve terminals and the REST API.
    Serve(Box<Settings>),
    /// Print the effective configuration (environment, .env and flags) with secrets masked, and exit.
    Config(Box<Settings>),
    /// Exit 0 when the node on GATEHOUSE_BIND answers /healthz (for container health checks).
    Healthcheck {
        #[arg(long, env = "GATEHOUSE_BIND", default_value = "0.0.0.0:7788")]
        bind: String,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
    },
    /// Run simulated devices against a node.
    #[command(subcommand)]
    Simulate(Simulate),
    /// Bank payments of rooms.
    #[command(subcommand)]
    Payments(Payments),
}

#[derive(Subcommand)]
enum Payments {
    /// Import the bank's transaction JSON; prints {"imported":n,"duplicates":n,"invalid":n}.
    Import {
        /// The bank's transaction JSON file.
        file: std::path::PathBuf,
        #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
        database_url: String,
        /// The only currency credited; other currencies are recorded as invalid.
        #[arg(long, env = "PAYMENTS_CURRENCY", default_value = "CZK")]
        currency: String,
    },
}

#[derive(Subcommand)]
enum Simulate {
    /// Virtual TM20 terminals that register, answer commands and keep their own users and logs.
    Tm20 {
        #[arg(long, default_value = "ws://127.0.0.1:7788/pub/chat")]
        url: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Serial numbers are this prefix plus a six-digit index.
        #[arg(long, default_value = "SIM")]
        sn_prefix: String,
        /// Users enrolled on each terminal at start.
        #[arg(long, default_value_t = 10)]
        users: u32,
        /// Stored, not yet uploaded logs on each terminal at start.
        #[arg(long, default_value_t = 0)]
        logs: u32,
    },
    /// Virtual OCPP 1.6J charge points that boot, report status, heartbeat, charge, and answer every
    /// central-system operation.
    Ocpp {
        /// Base URL; each charger appends its id.
        #[arg(long, default_value = "ws://127.0.0.1:7788/ocpp")]
        url: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Ids are this prefix plus a five-digit index.
        #[arg(long, default_value = "CP")]
        id_prefix: String,
        /// Seconds between charging sessions of each charger (0: none).
        #[arg(long, default_value_t = 30.0)]
        session_every: f64,
    },
    /// Virtual Shenxing panels that log in (random + login) and answer the panel REST API calls forwarded to
    /// them (`sxdmSn`), from their own in-memory state.
    Sxdm {
        #[arg(long, default_value = "ws://127.0.0.1:8888/api/websocket/")]
        url: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Serial numbers are this prefix plus a four-digit index.
        #[arg(long, default_value = "SXSIM")]
        sn_prefix: String,
        /// The login password (checked only when an admin set a secret for the panel).
        #[arg(long, default_value = "123456")]
        password: String,
    },
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    // A missing .env is normal; a broken one is worth saying before anything else runs.
    if let Err(err) = dotenvy::dotenv() {
        if !err.not_found() {
            eprintln!("warning: could not read .env: {err}");
        }
    }
    let cli = Cli::parse();
    gatehouse::telemetry::init(cli.log_format == "json");
    let result = match cli.command {
        Command::Serve(settings) => serve(*settings).await,
        Command::Migrate { database_url } => migrate(&database_url).await,
        Command::Config(settings) => {
            println!("{}", settings.describe_masked());
            Ok(())
        }
        Command::Healthcheck { bind } => healthcheck(&bind),
        Command::Payments(Payments::Import {
            file,
            database_url,
            currency,
        }) => import_payments(&file, &database_url, &currency).await,
        Command::Simulate(Simulate::Tm20 {
            url,
            count,
            sn_prefix,
            users,
            logs,
        }) => gatehouse::sim::tm20::run_fleet(&url, count, &sn_prefix, users, logs)
            .await
            .map_err(|err| err.to_string()),
        Command::Simulate(Simulate::Ocpp {
            url,
            count,
            id_prefix,
            session_every,
        }) => {
            let every =
                (session_every > 0.0).then(|| std::time::Duration::from_secs_f64(session_every));
            gatehouse::sim::ocpp::run_fleet(&url, count, &id_prefix, every)
                .await
                .map_err(|err| err.to_string())
        }
        Command::Simulate(Simulate::Sxdm {
            url,
            count,
            sn_prefix,
            password,
        }) => gatehouse::sim::sxdm::run_fleet(&url, count, &sn_prefix, &password)
            .await
            .map_err(|err| err.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> Result<(), String> {
    let app = Application::build(settings)
        .await
        .map_err(|e| e.to_string())?;
    app.run_until_signalled().await.map_err(|e| e.to_string())
}

/// A minimal HTTP/1.0 probe of `/healthz`, so the container image needs no curl.
fn healthcheck(bind: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let port = bind.rsplit(':').next().unwrap_or("7788");
    let mut stream =
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!(
            "unhealthy: {}",
            answer.lines().next().unwrap_or("no answer")
        ))
    }
}

async fn migrate(database_url: &str) -> Result<(), String> {
    let store = Store::connect(database_url)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    tracing::info!("migrations applied");
    Ok(())
}

/// `gatehouse payments import FILE`: the same import as `POST /api/payments/import`, on a migrated database.
async fn import_payments(
    file: &std::path::Path,
    database_url: &str,
    currency: &str,
) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let store = Store::connect(database_url)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let summary =
        gatehouse::billing::payments::import(&store, None, &bytes, &currency.trim().to_uppercase())
            .await
            .map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::to_string(&summary).map_err(|e| e.to_string())?
    );
    Ok(())
}
