//! Gatehouse: a device gateway. Field devices (TM20 terminals, OCPP 1.6J charge points, Shenxing panels) hold a WebSocket open to a
//! node; admins drive them through a REST API; everything they report is stored with sea-orm.
//!
//! # Layout
//! - [`config`]: settings from environment / `.env`, with defaults.
//! - [`telemetry`]: tracing setup.
//! - [`startup`]: builds a node (database, registry, listener) and runs it.
//! - [`error`]: the REST error type and its JSON body.
//! - [`registry`]: the supervisor actor, serial number → live session.
//! - [`cluster`]: Redis directory of which node holds which device, command forwarding, node liveness.
//! - [`devices`]: one module per device family (wire protocol, session actor, commands) and the shared
//!   WebSocket edge.
//! - [`api`]: the REST routes and their OpenAPI document (`api::openapi`).
//! - [`delivery`]: queued commands delivered when their device comes online.
//! - [`limits`]: abuse limits (sockets, connection and frame rates, REST rates, wrong-token back-off).
//! - [`store`]: every database query and write.
//! - [`sim`]: simulated devices for tests, `gatehouse simulate` and benchmarks.
//! - [`billing`]: rooms, appliances and payments (TOTP, endpoint JWTs, bank imports).
//! - `fuzzing` (hidden): the properties behind the `cargo fuzz` targets and `tests/fuzz_corpus.rs`.
//!
//! Data flows one way: socket → session actor → store; REST → registry → session actor → socket → reply.

pub mod api;
pub mod billing;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod devices;
pub mod edge;
pub mod error;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod registry;
pub mod sim;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod telemetry_metrics;
