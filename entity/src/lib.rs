//! sea-orm entities: table shapes only. Queries and writes live in the server's `store` module.

pub mod attendance_log;
pub mod biometric_credential;
pub mod biometric_user;
pub mod command;
pub mod terminal;
