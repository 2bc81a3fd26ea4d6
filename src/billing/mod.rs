//! Rooms, appliances and payments: pay-per-use appliance control in shared laundry rooms.
//!
//! A resident proves presence with the room's TOTP code at an endpoint device (challenge → verify), the
//! endpoint starts an appliance and the price is reserved from the room's prepaid balance (start), and the
//! difference is refunded when the run ends (finish). Balances are topped up from bank transfers (payments).
//!
//! # Layout
//! - [`config`]: `BILLING_*` / `PAYMENTS_*` settings.
//! - [`jwt`]: the endpoints' purpose-bound tokens.
//! - [`totp`]: RFC 6238 codes.
//! - [`money`]: exact decimal → cents.
//! - [`payments`]: bank JSON, import, periodic fetch.
//!
//! The HTTP side is `api::billing`, the database side `store::billing`.

use std::time::Duration;

use crate::events::EventBus;
use crate::store::Store;

pub mod config;
pub mod jwt;
pub mod money;
pub mod payments;
pub mod totp;

pub use config::BillingSettings;

/// The `kind` of `run` and `payment` events.
pub const EVENT_KIND: &str = "billing";

/// Issuer shown by authenticator apps for room secrets.
pub const TOTP_ISSUER: &str = "Gatehouse";

/// Billing as a running node holds it; built once at start.
#[derive(Clone, Debug)]
pub struct Billing {
    /// `None` when no signing key is configured (and not in dev mode): the endpoint calls answer 503.
    pub keys: Option<jwt::TokenKeys>,
    pub challenge_ttl: Duration,
    pub access_ttl: Duration,
    pub run_ttl: Duration,
    pub currency: String,
}

impl Billing {
    /// Resolves the signing key; never fails, so the rest of the gateway runs without billing configured.
    pub fn from_settings(settings: &BillingSettings) -> Billing {
        let secret = settings
            .jwt_secret
            .as_deref()
            .filter(|s| !s.trim().is_empty());
        let keys = match (secret, settings.dev_mode) {
            (Some(secret), _) => Some(jwt::TokenKeys::new(secret.as_bytes())),
            (None, true) => {
                tracing::warn!(
                    "BILLING_DEV_MODE: billing tokens are signed with a random key of this process; \
                     set BILLING_JWT_SECRET in production"
                );
                let key: [u8; 32] = rand::random();
                Some(jwt::TokenKeys::new(&key))
            }
            (None, false) => {
                tracing::warn!(
                    "BILLING_JWT_SECRET is not set: the appliance endpoints (/api/auth/*, /api/appliance/*) \
                     answer 503"
                );
                None
            }
        };
        Billing {
            keys,
            challenge_ttl: settings.challenge_ttl,
            access_ttl: settings.access_ttl,
            run_ttl: settings.run_ttl,
            currency: settings.payments_currency.trim().to_uppercase(),
        }
    }
}

/// Billing for a starting node: the signing key, and the bank poller when `PAYMENTS_FETCH_URL` is set.
/// Must run inside the actix system (the poller is a local task).
pub fn start(settings: &BillingSettings, store: &Store, events: &EventBus) -> Billing {
    let billing = Billing::from_settings(settings);
    if let Some(url) = settings
        .payments_fetch_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        tracing::info!(
            url = %crate::config::mask_url(url),
            every = ?settings.payments_fetch_interval,
            "polling the bank for payments"
        );
        payments::spawn_fetcher(
            url.trim().to_owned(),
            settings.payments_fetch_interval,
            store.clone(),
            events.clone(),
            billing.currency.clone(),
        );
    }
    billing
}
