//! sea-orm entities: table shapes only. Queries and writes live in the server's `store` module.

pub mod account;
pub mod appliance;
pub mod appliance_state;
pub mod attendance_log;
pub mod biometric_credential;
pub mod biometric_user;
pub mod charger;
pub mod command;
pub mod connector;
pub mod connector_status_history;
pub mod endpoint;
pub mod id_tag;
pub mod meter_value;
pub mod ocpp_message;
pub mod panel;
pub mod payment_invalid;
pub mod payment_valid;
pub mod product;
pub mod room;
pub mod room_adjustment;
pub mod room_totp;
pub mod run;
pub mod subscription;
pub mod terminal;
pub mod transaction;
