//! Simulated devices: used by the integration tests, `gatehouse simulate`, and the benchmarks.

pub mod tm20;
