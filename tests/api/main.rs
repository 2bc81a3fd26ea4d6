//! Integration tests: a real node on a random port, real WebSocket terminals (the simulator or raw sockets)
//! and real HTTP. Set `TEST_DATABASE_URL=postgres://…/db` to run the same tests on PostgreSQL.
#![allow(clippy::unwrap_used)]

mod accounts;
mod bad_input;
mod billing;
mod cluster;
mod commands;
mod crash;
mod dashboard;
mod events;
mod helpers;
mod limits;
mod logs;
mod metrics;
mod ocpp;
mod openapi;
mod operability;
mod panels;
mod queue;
mod registration;
mod rest;
mod transport;
