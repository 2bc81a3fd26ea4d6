//! Building and running one node: database (migrated), registry actor, HTTP + WebSocket listener.

use std::sync::Arc;

use actix::Actor;
use actix_web::{
    dev::Server,
    middleware::{from_fn, NormalizePath},
    web, App, HttpServer,
};

use crate::edge::{self, ListenerOptions};

use actix::Addr;

use crate::api::{self, AppState};
use crate::cluster::{Cluster, ClusterError};
use crate::config::Settings;
use crate::devices::tm20::session::SessionDeps;
use crate::error;
use crate::limits::{Limits, RestLimits};
use crate::registry::{Registry, Shutdown};
use crate::store::{Store, StoreError};

/// Largest REST body: command params carry at most a photo (~200 KB base64) plus JSON.
const MAX_JSON_BODY: usize = 1024 * 1024;

/// Why a node did not start. Every message starts with the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("DATABASE_URL: cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("{variable}: cannot listen on {addr}: {source}")]
    Bind {
        variable: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("REDIS_URL: invalid cluster configuration: {0}")]
    Cluster(#[from] ClusterError),
}

/// A built node, listening but not yet serving until [`Application::run_until_stopped`] is awaited.
pub struct Application {
    port: u16,
    /// The dedicated panel listener's port (`SXDM_BIND`), when it is on.
    sxdm_port: Option<u16>,
    api_token: String,
    server: Server,
    stopper: Stopper,
}

/// Stops a node gracefully: stop accepting, leave the cluster, let sessions finish their command in flight
/// and close with 1001, remove this node's routes, stop the server. Cheap to clone.
#[derive(Clone)]
pub struct Stopper {
    server: actix_web::dev::ServerHandle,
    sxdm_server: Option<actix_web::dev::ServerHandle>,
    registry: Addr<Registry>,
    cluster: Option<Cluster>,
    grace: std::time::Duration,
    store: Store,
}

impl Stopper {
    pub async fn stop(&self) {
        tracing::info!("graceful shutdown: closing device sockets");
        self.server.pause().await;
        if let Some(sxdm) = &self.sxdm_server {
            sxdm.pause().await;
        }
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        let _ = self.registry.send(Shutdown { grace: self.grace }).await;
        // Sessions just closed; let the writes they started (last_seen, command outcomes) finish before the
        // workers' runtimes go away, so no database connection is dropped outside a runtime.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // Then close the pool: it waits for the connections still in use, and later writes fail at once
        // instead of taking one. Stopping the workers drops their tasks; a task holding a pooled connection
        // at that moment would return it outside any runtime (a panic in sqlx).
        self.store.close(std::time::Duration::from_secs(5)).await;
        if let Some(sxdm) = &self.sxdm_server {
            sxdm.stop(true).await;
        }
        self.server.stop(true).await;
        tracing::info!("graceful shutdown complete");
    }
}

impl Application {
    /// Opens and migrates the database, starts the registry, binds the listener.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated, or the address cannot be bound.
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        settings.validate()?;
        crate::telemetry_metrics::install();
        let store = Store::connect(&settings.database_url).await?;
        store.migrate().await?;
        let api_token = match settings.api_token.clone().filter(|t| !t.trim().is_empty()) {
            Some(token) => token,
            None => token_from_file(&settings.api_token_file)?,
        };
        let bind_addr = settings.bind.clone();
        let bind_err = |source| StartupError::Bind {
            variable: "GATEHOUSE_BIND",
            addr: bind_addr.clone(),
            source,
        };
        let listener = edge::bind(&settings.bind).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let port = local_addr.port();
        let cluster = match settings
            .redis_url
            .as_deref()
            .filter(|url| !url.trim().is_empty())
        {
            Some(url) => Some(Cluster::new(&settings, url, local_addr)?),
            None => None,
        };
        let node_id = cluster
            .as_ref()
            .map(|c| c.node_id().to_owned())
            .or_else(|| settings.node_id.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let registry = Registry::new(cluster.clone());
        let sessions = registry.sessions();
        let registry = registry.start();
        let events = crate::events::EventBus::new(node_id.clone());
        let grace = settings.shutdown_grace;
        let billing = crate::billing::start(&settings.billing, &store, &events);
        let settings = Arc::new(settings);
        let state = web::Data::new(AppState {
            store: store.clone(),
            registry: registry.clone(),
            settings: Arc::clone(&settings),
            api_token: api_token.clone(),
            session_deps: Arc::new(SessionDeps {
                store,
                registry: registry.clone(),
                sessions,
                settings: Arc::clone(&settings),
                events: events.clone(),
            }),
            cluster: cluster.clone(),
            node_id: node_id.clone(),
            started_at: chrono::Utc::now(),
            billing,
        });
        spawn_message_log_pruning(state.store.clone(), settings.ocpp_message_retention_days);
        let store_to_close = state.store.clone();
        if let Some(cluster) = &cluster {
            cluster.attach_events(events.clone());
            cluster.start(registry.clone(), api::commands::executor(state.clone()));
            tracing::info!(node = %node_id, "cluster mode: directory and command forwarding over redis");
        }
        let sxdm_listener = match settings.sxdm_bind.trim() {
            "" | "off" | "OFF" | "Off" => None,
            addr => Some(edge::bind(addr).map_err(|source| StartupError::Bind {
                variable: "SXDM_BIND",
                addr: addr.to_owned(),
                source,
            })?),
        };
        let sxdm_port = sxdm_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        let limits = web::Data::from(Limits::new(&settings));
        let rest_limits = RestLimits::new(&settings);
        rest_limits.sweep_now_and_then();
        let request_timeout = settings.http_request_timeout;
        let lean_sockets = settings.device_transport == crate::config::DeviceTransport::Lean;
        let sxdm_addr = settings.sxdm_bind.trim().to_owned();
        let sxdm_server = match sxdm_listener {
            Some(listener) => {
                let state = state.clone();
                let limits = limits.clone();
                let rest_limits = rest_limits.clone();
                let max_body = settings.sxdm_max_frame_bytes;
                let factory = move || {
                    App::new()
                        .app_data(state.clone())
                        .app_data(limits.clone())
                        .app_data(web::PayloadConfig::new(max_body))
                        .app_data(
                            web::PathConfig::default().error_handler(error::path_error_handler),
                        )
                        .wrap(NormalizePath::trim())
                        .wrap(from_fn(api::panels::intercept))
                        .wrap(rest_limits.by_token())
                        .wrap(rest_limits.by_address())
                        .wrap(from_fn(api::request_id::middleware))
                        .configure(api::configure_sxdm)
                        .default_service(web::to(api::panels::missing_sn))
                };
                let options = ListenerOptions {
                    name: "sxdm",
                    request_timeout,
                    workers: Some(1),
                    lean_sockets,
                };
                let server = edge::serve(listener, factory, &options).map_err(|source| {
                    StartupError::Bind {
                        variable: "SXDM_BIND",
                        addr: sxdm_addr.clone(),
                        source,
                    }
                })?;
                tracing::info!(port = sxdm_port, "panel manager listener (SXDM_BIND) up");
                Some(server)
            }
            None => None,
        };
        let max_panel_body = settings.sxdm_max_frame_bytes;
        let factory = move || {
            App::new()
                .app_data(state.clone())
                .app_data(limits.clone())
                // Only the panels' third-party API reads raw bodies (JSON routes have their own limit).
                .app_data(web::PayloadConfig::new(max_panel_body))
                .app_data(
                    web::JsonConfig::default()
                        .limit(MAX_JSON_BODY)
                        // `curl -d '{…}'` sends form content-type; admins should not need -H for JSON.
                        .content_type_required(false)
                        .error_handler(error::json_error_handler),
                )
                .app_data(web::QueryConfig::default().error_handler(error::query_error_handler))
                .app_data(web::PathConfig::default().error_handler(error::path_error_handler))
                .wrap(NormalizePath::trim())
                // Outermost: an `sxdmSn` call goes to its panel with the path exactly as sent.
                .wrap(from_fn(api::panels::intercept))
                .wrap(rest_limits.by_token())
                .wrap(rest_limits.by_address())
                .wrap(from_fn(api::request_id::middleware))
                .configure(api::configure)
        };
        // Signals are ours (see `run_until_stopped`): a plain stop would cut device sockets without 1001
        // and leave this node's routes behind.
        let options = ListenerOptions {
            name: "gatehouse",
            request_timeout,
            // 0: actix's default, one per CPU core.
            workers: (settings.workers > 0).then_some(settings.workers),
            lean_sockets,
        };
        let server = edge::serve(listener, factory, &options).map_err(bind_err)?;
        tracing::info!(port, node = %node_id, "gatehouse listening");
        if let Some(addr) = settings
            .metrics_bind
            .as_deref()
            .filter(|a| !a.trim().is_empty())
        {
            // Internal listener: no token, nothing but /metrics.
            let metrics_server = HttpServer::new(|| {
                App::new().route(
                    "/metrics",
                    web::get().to(|| async { api::metrics_response() }),
                )
            })
            .workers(1)
            .disable_signals()
            .bind(addr)
            .map_err(|source| StartupError::Bind {
                variable: "GATEHOUSE_METRICS_BIND",
                addr: addr.to_owned(),
                source,
            })?
            .run();
            actix_rt::spawn(metrics_server);
        }
        let sxdm_handle = sxdm_server.as_ref().map(|s| s.handle());
        if let Some(sxdm_server) = sxdm_server {
            actix_rt::spawn(sxdm_server);
        }
        let stopper = Stopper {
            server: server.handle(),
            sxdm_server: sxdm_handle,
            registry,
            cluster,
            grace,
            store: store_to_close,
        };
        Ok(Application {
            port,
            sxdm_port,
            api_token,
            server,
            stopper,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn sxdm_port(&self) -> Option<u16> {
        self.sxdm_port
    }

    pub fn api_token(&self) -> &str {
        &self.api_token
    }

    /// A handle to stop the server (graceful when `stop(true)`).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Graceful stop, usable from tests and signal handlers.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Serves until stopped through the handle or the stopper.
    ///
    /// # Errors
    /// When the server fails while running.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }

    /// Serves until SIGTERM or SIGINT, then stops gracefully.
    ///
    /// # Errors
    /// When the server fails while running.
    pub async fn run_until_signalled(self) -> std::io::Result<()> {
        let stopper = self.stopper.clone();
        actix_rt::spawn(async move {
            wait_for_signal().await;
            stopper.stop().await;
        });
        self.server.await
    }
}

/// Deletes OCPP message log rows older than the retention period, now and then every hour. (Every node of a
/// cluster does it; the deletes are idempotent.)
fn spawn_message_log_pruning(store: Store, retention_days: u32) {
    actix_rt::spawn(async move {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            ticker.tick().await;
            let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
            match store.prune_ocpp_messages(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned the OCPP message log"),
                Err(err) => tracing::warn!(%err, "could not prune the OCPP message log"),
            }
        }
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Without `GATEHOUSE_API_TOKEN`: the token saved in `path` by an earlier start, or a new one saved there
/// (owner-only permissions). The token itself is never logged, only where it is.
fn token_from_file(path: &str) -> Result<String, StartupError> {
    let failed = |what: &str, err: std::io::Error| {
        StartupError::Config(crate::config::ConfigError {
            variable: "GATEHOUSE_API_TOKEN",
            message: format!("not set, and the token file {path} cannot be {what} ({err}); set GATEHOUSE_API_TOKEN or GATEHOUSE_API_TOKEN_FILE"),
        })
    };
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {
            tracing::info!(file = %path, "GATEHOUSE_API_TOKEN is not set; using the API token saved in the token file");
            return Ok(text.trim().to_owned());
        }
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(failed("read", err)),
    }
    let token = generate_token();
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|err| failed("written", err))?;
        writeln!(file, "{token}").map_err(|err| failed("written", err))?;
    }
    tracing::warn!(file = %path, "GATEHOUSE_API_TOKEN is not set; generated an API token and saved it in the token file (read it from there; it is never logged)");
    Ok(token)
}

fn generate_token() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 40)
}
