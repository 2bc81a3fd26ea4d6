//! Billing settings, flattened into [`crate::config::Settings`]; every variable is documented in `.env.example`.

use std::time::Duration;

use clap::builder::BoolishValueParser;

use crate::config::parse_seconds;

#[derive(Clone, Debug, clap::Args)]
pub struct BillingSettings {
    /// Key that signs the endpoints' billing JWTs (HS256). Unset: the billing endpoints answer 503, unless
    /// BILLING_DEV_MODE is on.
    #[arg(
        long = "billing-jwt-secret",
        env = "BILLING_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// 1: without BILLING_JWT_SECRET, sign with a random key for this process only (tokens die at restart).
    /// For development; never in production.
    #[arg(long = "billing-dev-mode", env = "BILLING_DEV_MODE", default_value = "0", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub dev_mode: bool,

    /// Seconds a challenge token (`/api/auth/challenge/`) is valid: the time to type the room's code.
    #[arg(long = "billing-challenge-ttl", env = "BILLING_CHALLENGE_TTL", default_value = "60", value_parser = parse_seconds)]
    pub challenge_ttl: Duration,

    /// Seconds an access token (`/api/auth/verify/`) is valid: the time to choose and start an appliance.
    #[arg(long = "billing-access-ttl", env = "BILLING_ACCESS_TTL", default_value = "300", value_parser = parse_seconds)]
    pub access_ttl: Duration,

    /// Seconds a start token (`/api/appliance/start/`) is valid: at least the longest run an appliance makes.
    #[arg(long = "billing-run-ttl", env = "BILLING_RUN_TTL", default_value = "21600", value_parser = parse_seconds)]
    pub run_ttl: Duration,

    /// The only currency credited by payment imports; transfers in another go to the invalid payments.
    #[arg(
        long = "payments-currency",
        env = "PAYMENTS_CURRENCY",
        default_value = "CZK"
    )]
    pub payments_currency: String,

    /// Plain-HTTP URL answering the bank's transaction JSON; polled every PAYMENTS_FETCH_INTERVAL when set.
    #[arg(long = "payments-fetch-url", env = "PAYMENTS_FETCH_URL")]
    pub payments_fetch_url: Option<String>,

    /// Seconds between two polls of PAYMENTS_FETCH_URL.
    #[arg(long = "payments-fetch-interval", env = "PAYMENTS_FETCH_INTERVAL", default_value = "300", value_parser = parse_seconds)]
    pub payments_fetch_interval: Duration,
}

impl Default for BillingSettings {
    fn default() -> Self {
        BillingSettings {
            jwt_secret: None,
            dev_mode: false,
            challenge_ttl: Duration::from_secs(60),
            access_ttl: Duration::from_secs(300),
            run_ttl: Duration::from_secs(21_600),
            payments_currency: "CZK".into(),
            payments_fetch_url: None,
            payments_fetch_interval: Duration::from_secs(300),
        }
    }
}

impl BillingSettings {
    /// `VARIABLE=value` lines for `gatehouse config`, the secret masked.
    pub fn describe_masked(&self) -> Vec<String> {
        let secs = |d: Duration| format!("{}", d.as_secs_f64());
        vec![
            format!(
                "BILLING_JWT_SECRET={}",
                if self.jwt_secret.is_some() { "***" } else { "" }
            ),
            format!("BILLING_DEV_MODE={}", u8::from(self.dev_mode)),
            format!("BILLING_CHALLENGE_TTL={}", secs(self.challenge_ttl)),
            format!("BILLING_ACCESS_TTL={}", secs(self.access_ttl)),
            format!("BILLING_RUN_TTL={}", secs(self.run_ttl)),
            format!("PAYMENTS_CURRENCY={}", self.payments_currency),
            format!(
                "PAYMENTS_FETCH_URL={}",
                self.payments_fetch_url
                    .as_deref()
                    .map(crate::config::mask_url)
                    .unwrap_or_default()
            ),
            format!(
                "PAYMENTS_FETCH_INTERVAL={}",
                secs(self.payments_fetch_interval)
            ),
        ]
    }
}
