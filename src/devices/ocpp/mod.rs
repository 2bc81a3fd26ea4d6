//! OCPP 1.6J charge points: `framing` (OCPP-J arrays), `messages` (charge point → central system requests and
//! our answers), `actions` (central system → charge point operations, validated), `handshake` (id,
//! subprotocol, Basic auth), `session` (the actor per socket), `dispatch` (REST → session, audit trail).

pub mod actions;
pub mod dispatch;
pub mod framing;
pub mod handshake;
pub mod messages;
pub mod session;

/// `device_kind` of OCPP rows in the `commands` table and `protocol` in listings.
pub const DEVICE_KIND: &str = "ocpp";
pub const PROTOCOL: &str = "ocpp1.6";

/// Actions that must not run twice when interrupted after being sent.
pub const UNSAFE_TO_REPEAT: &[&str] = &["Reset"];
