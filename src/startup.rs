//! Building and running one node: database (migrated), registry actor, HTTP + WebSocket listener.

use std::net::TcpListener;
use std::sync::Arc;

use actix::Actor;
use actix_web::{dev::Server, middleware::NormalizePath, web, App, HttpServer};

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::devices::tm20::session::SessionDeps;
use crate::error;
use crate::registry::Registry;
use crate::store::{Store, StoreError};

/// Largest REST body: command params carry at most a photo (~200 KB base64) plus JSON.
const MAX_JSON_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A built node, listening but not yet serving until [`Application::run_until_stopped`] is awaited.
pub struct Application {
    port: u16,
    api_token: String,
    server: Server,
}

impl Application {
    /// Opens and migrates the database, starts the registry, binds the listener.
    ///
    /// # Errors
    /// When the database cannot be opened or migrated, or the address cannot be bound.
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let store = Store::connect(&settings.database_url).await?;
        store.migrate().await?;
        let api_token = match settings.api_token.clone().filter(|t| !t.trim().is_empty()) {
            Some(token) => token,
            None => {
                let token = generate_token();
                // Logged once, so that whoever started the node can use it; set GATEHOUSE_API_TOKEN to avoid this.
                tracing::warn!(token = %token, "GATEHOUSE_API_TOKEN is not set; generated a token for this run");
                token
            }
        };
        let registry = Registry::default().start();
        let bind_addr = settings.bind.clone();
        let bind_err = |source| StartupError::Bind {
            addr: bind_addr.clone(),
            source,
        };
        let listener = TcpListener::bind(&settings.bind).map_err(bind_err)?;
        let port = listener.local_addr().map_err(bind_err)?.port();
        let settings = Arc::new(settings);
        let state = web::Data::new(AppState {
            store: store.clone(),
            registry: registry.clone(),
            settings: Arc::clone(&settings),
            api_token: api_token.clone(),
            session_deps: Arc::new(SessionDeps {
                store,
                registry,
                settings: Arc::clone(&settings),
            }),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
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
                .configure(api::configure)
        })
        .listen(listener)
        .map_err(bind_err)?
        .shutdown_timeout(5)
        .run();
        tracing::info!(port, "gatehouse listening");
        Ok(Application {
            port,
            api_token,
            server,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn api_token(&self) -> &str {
        &self.api_token
    }

    /// A handle to stop the server (graceful when `stop(true)`).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped by a signal or the handle.
    ///
    /// # Errors
    /// When the server fails while running.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

fn generate_token() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 40)
}
