//! Simulated devices: used by the integration tests, `gatehouse simulate`, and the benchmarks.

pub mod ocpp;
pub mod sxdm;
pub mod tm20;
