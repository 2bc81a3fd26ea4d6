//! TM20 / AiFace terminals: `protocol` parses what terminals send and builds our answers, `commands` is the
//! typed set of server → terminal commands with their paging, `session` is the actor per socket, `dispatch`
//! carries a REST command to a session and records its life in the `commands` table.

pub mod commands;
pub mod dispatch;
pub mod protocol;
pub mod session;

/// `device_kind` of TM20 rows in the `commands` table.
pub const DEVICE_KIND: &str = "tm20";

/// Commands that must not run twice: a queued one interrupted after it was sent fails instead of being
/// re-sent (they erase data).
pub const UNSAFE_TO_REPEAT: &[&str] = &["initsys", "cleanlog", "cleanuser"];
