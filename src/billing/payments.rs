//! Bank transaction JSON: parsing, classification, and the import used by `gatehouse payments import`,
//! `POST /api/payments/import` and the periodic fetch of `PAYMENTS_FETCH_URL` (one code path for all three).
//!
//! The bank sends `[{"id":"…","amount":"50.00","currency":"CZK","vs":"12345"}, …]`: `amount` in currency
//! units as a string or a number (read from its text, never through a float), `vs` (the variable symbol) the
//! room key.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::money::{cents_from_json, AmountError};
use crate::events::EventBus;
use crate::store::{Store, StoreError};

/// Longest bank transaction id we store.
const MAX_ID_CHARS: usize = 128;

/// How many imported, skipped and rejected transactions one import saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// Credited to a room.
    pub imported: u64,
    /// Seen before (in either payment table) or twice in this batch.
    pub duplicates: u64,
    /// Recorded in the invalid payments, crediting nothing.
    pub invalid: u64,
}

/// Why a transaction credited nothing (stored as text; never rename one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidReason {
    ForeignCurrency,
    InvalidAmount,
    NonPositiveAmount,
    InvalidReference,
    UnknownRoom,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::ForeignCurrency => "foreign_currency",
            InvalidReason::InvalidAmount => "invalid_amount",
            InvalidReason::NonPositiveAmount => "non_positive_amount",
            InvalidReason::InvalidReference => "invalid_reference",
            InvalidReason::UnknownRoom => "unknown_room",
        }
    }
}

/// One bank transaction, read but not yet judged.
#[derive(Clone, Debug)]
pub struct BankTransaction {
    pub id: String,
    /// Cents, or why the amount could not be read.
    pub amount: Result<i64, AmountError>,
    pub currency: String,
    /// The variable symbol as text (empty when absent).
    pub reference: String,
}

impl BankTransaction {
    /// The room key and amount (cents) to credit, or why not; whether the room exists is the store's call.
    ///
    /// # Errors
    /// The [`InvalidReason`] of a transaction that must not credit anything.
    pub fn classify(&self, currency: &str) -> Result<(i64, i64), InvalidReason> {
        let amount = self
            .amount
            .clone()
            .map_err(|_| InvalidReason::InvalidAmount)?;
        if !self.currency.trim().eq_ignore_ascii_case(currency.trim()) {
            return Err(InvalidReason::ForeignCurrency);
        }
        if amount <= 0 {
            return Err(InvalidReason::NonPositiveAmount);
        }
        let reference = self.reference.trim();
        if reference.is_empty() || !reference.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidReason::InvalidReference);
        }
        let room = reference
            .parse::<i64>()
            .map_err(|_| InvalidReason::InvalidReference)?;
        Ok((room, amount))
    }
}

#[derive(Deserialize)]
struct WireTransaction {
    id: Value,
    amount: Box<RawValue>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    vs: Option<Value>,
}

/// Why a bank file could not be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the bank's transaction JSON is malformed: {0}")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not fetch the bank's transactions: {0}")]
    Fetch(String),
}

/// Text of a JSON string or integer (ids and variable symbols come as either).
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

/// Reads the bank's JSON array. A transaction whose amount cannot be read is kept (and recorded as invalid);
/// one without a usable id cannot be deduplicated, so it fails the whole file.
///
/// # Errors
/// [`ImportError::Malformed`] when the body is not such an array.
pub fn parse_bank_json(bytes: &[u8]) -> Result<Vec<BankTransaction>, ImportError> {
    let wire: Vec<WireTransaction> =
        serde_json::from_slice(bytes).map_err(|err| ImportError::Malformed(err.to_string()))?;
    wire.into_iter()
        .enumerate()
        .map(|(index, t)| {
            let id = text_of(&t.id)
                .filter(|id| !id.is_empty() && id.chars().count() <= MAX_ID_CHARS)
                .ok_or_else(|| {
                    ImportError::Malformed(format!(
                        "transaction {index}: `id` must be a non-empty string or integer of at most \
                         {MAX_ID_CHARS} characters"
                    ))
                })?;
            Ok(BankTransaction {
                id,
                amount: cents_from_json(&t.amount),
                currency: t.currency.unwrap_or_default(),
                reference: t.vs.as_ref().and_then(text_of).unwrap_or_default(),
            })
        })
        .collect()
}

/// Parses and imports a bank file, then publishes a `payment` event per credited or rejected transaction.
///
/// # Errors
/// [`ImportError`] for a malformed file or a database failure; then nothing is imported.
pub async fn import(
    store: &Store,
    events: Option<&EventBus>,
    bytes: &[u8],
    currency: &str,
) -> Result<ImportSummary, ImportError> {
    let transactions = parse_bank_json(bytes)?;
    let outcome = store.import_payments(&transactions, currency).await?;
    if let Some(events) = events {
        for row in &outcome.credited {
            events.publish(
                "payment",
                None,
                Some(super::EVENT_KIND),
                json!({"valid": true, "transaction_id": row.transaction_id, "room": row.room_key,
                       "amount": row.amount, "currency": row.currency}),
            );
        }
        for row in &outcome.rejected {
            events.publish(
                "payment",
                None,
                Some(super::EVENT_KIND),
                json!({"valid": false, "transaction_id": row.transaction_id, "reference": row.reference,
                       "amount": row.amount, "currency": row.currency, "reason": row.reason}),
            );
        }
    }
    tracing::info!(
        imported = outcome.summary.imported,
        duplicates = outcome.summary.duplicates,
        invalid = outcome.summary.invalid,
        "payments imported"
    );
    Ok(outcome.summary)
}

/// Largest bank answer the poller reads.
const MAX_FETCH_BYTES: usize = 16 * 1024 * 1024;

/// One poll of the bank endpoint, imported like a file.
///
/// # Errors
/// [`ImportError`] when the endpoint cannot be reached, answers non-2xx, or the import fails.
pub async fn fetch_once(
    client: &awc::Client,
    url: &str,
    store: &Store,
    events: &EventBus,
    currency: &str,
) -> Result<ImportSummary, ImportError> {
    let mut response = client
        .get(url)
        .insert_header(("Accept", "application/json"))
        .send()
        .await
        .map_err(|err| ImportError::Fetch(err.to_string()))?;
    if !response.status().is_success() {
        return Err(ImportError::Fetch(format!(
            "the bank answered {}",
            response.status()
        )));
    }
    let body = response
        .body()
        .limit(MAX_FETCH_BYTES)
        .await
        .map_err(|err| ImportError::Fetch(err.to_string()))?;
    import(store, Some(events), &body, currency).await
}

/// Polls `url` every `interval` (the first poll at once) for as long as the node runs. Failures are logged and
/// retried at the next tick; every poll is idempotent, so overlapping bank windows are harmless.
pub fn spawn_fetcher(
    url: String,
    interval: std::time::Duration,
    store: Store,
    events: EventBus,
    currency: String,
) {
    actix_rt::spawn(async move {
        let client = awc::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .finish();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(err) = fetch_once(&client, &url, &store, &events, &currency).await {
                tracing::warn!(%err, url = %crate::config::mask_url(&url), "payment fetch failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bank_json_is_read_with_exact_amounts() {
        let transactions = parse_bank_json(
            br#"[{"id":"T1","amount":"50.00","currency":"CZK","vs":"12345"},
                 {"id":2,"amount":0.29,"currency":"czk","vs":12345},
                 {"id":"T3","amount":"1,50","currency":"CZK"}]"#,
        )
        .unwrap();
        assert_eq!(transactions.len(), 3);
        assert_eq!(transactions[0].classify("CZK"), Ok((12345, 5000)));
        assert_eq!(transactions[1].id, "2");
        assert_eq!(transactions[1].classify("CZK"), Ok((12345, 29)));
        assert_eq!(
            transactions[2].classify("CZK"),
            Err(InvalidReason::InvalidAmount)
        );
    }

    #[test]
    fn transactions_that_cannot_credit_say_why() {
        let tx = |amount: &str, currency: &str, vs: &str| BankTransaction {
            id: "x".into(),
            amount: super::super::money::parse_cents(amount),
            currency: currency.into(),
            reference: vs.into(),
        };
        for (t, reason) in [
            (tx("5", "EUR", "12345"), InvalidReason::ForeignCurrency),
            (tx("0", "CZK", "12345"), InvalidReason::NonPositiveAmount),
            (tx("-5", "CZK", "12345"), InvalidReason::NonPositiveAmount),
            (tx("5", "CZK", ""), InvalidReason::InvalidReference),
            (tx("5", "CZK", "12a45"), InvalidReason::InvalidReference),
            (
                tx("5", "CZK", "99999999999999999999"),
                InvalidReason::InvalidReference,
            ),
            (tx("5.001", "CZK", "12345"), InvalidReason::InvalidAmount),
        ] {
            assert_eq!(t.classify("CZK"), Err(reason));
        }
    }

    #[test]
    fn files_without_usable_ids_are_refused_whole() {
        for body in [
            &br#"{"id":"T1"}"#[..],
            br#"[{"amount":"5","currency":"CZK","vs":"1"}]"#,
            br#"[{"id":"","amount":"5","currency":"CZK","vs":"1"}]"#,
            br#"[{"id":1.5,"amount":"5","currency":"CZK","vs":"1"}]"#,
            br#"[{"id":"T1","currency":"CZK","vs":"1"}]"#,
            b"not json",
        ] {
            assert!(matches!(
                parse_bank_json(body),
                Err(ImportError::Malformed(_))
            ));
        }
    }
}
