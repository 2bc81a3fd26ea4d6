//! Rooms, appliances and payments over HTTP.
//!
//! The endpoint devices' calls (`/api/auth/challenge/`, `/api/auth/verify/`, `/api/appliance/start/`,
//! `/api/appliance/finish/`) keep the wire contract of the older backend the firmware was written for; they
//! carry their own JWTs instead of the admin token. Everything else here is admin API under `/api`.

use actix_web::{web, HttpResponse};
use entity::{appliance, endpoint, payment_invalid, payment_valid, room, room_adjustment, run};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::extract::JsonObject;
use super::AppState;
use crate::billing::jwt::{Claims, Purpose, TokenError, TokenKeys};
use crate::billing::money::{cents_from_json, format_cents};
use crate::billing::payments::ImportError;
use crate::billing::{payments, totp, EVENT_KIND, TOTP_ISSUER};
use crate::error::ApiError;
use crate::store::billing::{
    AdjustOutcome, ApplianceDelete, FinishOutcome, StartOutcome, ABORTED, FINISHED, RUNNING,
};

/// Units of one run: far above any real program, low enough that nothing overflows downstream.
const MAX_UNITS: i64 = 1_000_000;
/// Largest price, reservation or manual adjustment in cents (10 million currency units).
const MAX_CENTS: i64 = 1_000_000_000;
const MAX_NAME_CHARS: usize = 64;
const MAX_REASON_CHARS: usize = 200;
/// Wrong codes a room may see per throttling window before its login is refused until the window ends. With
/// 3 valid codes (±1 step) in a million, this caps a guesser at ~1,440 tries a day (≈ 0.4 % success), while a
/// resident who mistypes a few times is never locked out for long.
const MAX_CODE_FAILURES: i32 = 10;
/// Time steps (30 s) per throttling window: 10 minutes.
const FAILURE_WINDOW_STEPS: u64 = 20;

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidParams {
        field: field.into(),
        message: message.into(),
    }
}

fn keys(state: &AppState) -> Result<&TokenKeys, ApiError> {
    state.billing.keys.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "billing is not configured: set BILLING_JWT_SECRET (or BILLING_DEV_MODE=1 for development)"
                .into(),
        )
    })
}

fn token_error(err: TokenError) -> ApiError {
    ApiError::InvalidToken(err.to_string())
}

/// The claims of a token of `purpose` whose endpoint still exists with the token's version.
async fn check_token(state: &AppState, token: &str, purpose: Purpose) -> Result<Claims, ApiError> {
    let claims = keys(state)?.check(token, purpose).map_err(token_error)?;
    let current = state.store.endpoint(claims.endpoint).await?;
    match current {
        Some(endpoint) if endpoint.token_version == claims.ver => Ok(claims),
        _ => Err(ApiError::InvalidToken(
            "the token was revoked for this endpoint".into(),
        )),
    }
}

fn room_json(r: &room::Model) -> Value {
    json!({"key": r.key, "balance": r.balance, "created_at": r.created_at, "updated_at": r.updated_at})
}

fn adjustment_json(a: &room_adjustment::Model) -> Value {
    json!({"id": a.id, "room": a.room_key, "amount": a.amount, "reason": a.reason, "created_at": a.created_at})
}

fn endpoint_json(e: &endpoint::Model) -> Value {
    json!({"id": e.id, "name": e.name, "token_version": e.token_version,
           "created_at": e.created_at, "updated_at": e.updated_at})
}

fn appliance_json(a: &appliance::Model) -> Value {
    json!({"name": a.name, "price_per_unit": a.price_per_unit,
           "created_at": a.created_at, "updated_at": a.updated_at})
}

fn run_json(r: &run::Model) -> Value {
    json!({"id": r.id, "room": r.room_key, "endpoint": r.endpoint_id, "appliance": r.appliance_name,
           "state": r.state, "initial_units": r.initial_units, "initial_price": r.initial_price,
           "final_units": r.final_units, "final_price": r.final_price, "refund": r.refund,
           "started_at": r.started_at, "finished_at": r.finished_at})
}

fn valid_payment_json(p: &payment_valid::Model) -> Value {
    json!({"valid": true, "id": p.id, "transaction_id": p.transaction_id, "room": p.room_key,
           "amount": p.amount, "currency": p.currency, "reference": p.reference, "created_at": p.created_at})
}

fn invalid_payment_json(p: &payment_invalid::Model) -> Value {
    json!({"valid": false, "id": p.id, "transaction_id": p.transaction_id, "amount": p.amount,
           "currency": p.currency, "reference": p.reference, "reason": p.reason, "created_at": p.created_at})
}

fn publish_run(state: &AppState, r: &run::Model) {
    state
        .session_deps
        .events
        .publish("run", None, Some(EVENT_KIND), run_json(r));
}

/// A price in currency units as the firmware sends it (`20`, `20.5`), in cents: the old contract's "× 100",
/// done on the decimal text so no float rounds it.
fn price_cents(field: &str, raw: &RawValue) -> Result<i64, ApiError> {
    let cents = cents_from_json(raw).map_err(|err| invalid(field, err.to_string()))?;
    if !(0..=MAX_CENTS).contains(&cents) {
        return Err(invalid(
            field,
            format!("{field} must be between 0 and {}", format_cents(MAX_CENTS)),
        ));
    }
    Ok(cents)
}

/// A JSON object body read from its text, for bodies with [`RawValue`] fields (which [`JsonObject`] cannot
/// fill from a parsed `Value`). Arrays are refused, as [`JsonObject`] refuses them: serde would read a struct
/// from an array of its fields.
fn object_from_text<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, ApiError> {
    if !raw.get().trim_start().starts_with('{') {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    serde_json::from_str(raw.get()).map_err(|err| {
        ApiError::BadRequest(format!(
            "request body is not valid JSON: {}",
            actix_web::error::JsonPayloadError::Deserialize(err)
        ))
    })
}

fn check_units(units: i64) -> Result<i64, ApiError> {
    if !(0..=MAX_UNITS).contains(&units) {
        return Err(invalid(
            "units",
            format!("units must be between 0 and {MAX_UNITS}"),
        ));
    }
    Ok(units)
}

// ---- endpoint API ---------------------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"room_num": 12345, "endpoint_id": 1}))]
pub struct ChallengeBody {
    /// The room key.
    room_num: i64,
    endpoint_id: i32,
}

/// `POST /api/auth/challenge/ {"room_num":12345,"endpoint_id":1}` → `{"token": <challenge JWT>}`.
#[utoipa::path(
    post,
    operation_id = "billing_challenge",
    path = "/api/auth/challenge",
    tag = "billing-endpoints",
    request_body = ChallengeBody,
    responses(
        (status = 200, description = "A challenge token (valid BILLING_CHALLENGE_TTL)", body = crate::api::openapi::BillingToken),
        (status = 400, description = "Malformed JSON body, or an invalid field (`field` names it)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown room or endpoint", body = crate::api::openapi::ErrorBody),
        (status = 405, description = "Method not allowed (POST only)", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "Billing is not configured (no BILLING_JWT_SECRET)", body = crate::api::openapi::ErrorBody),
    ),
    security(()),
)]
#[tracing::instrument(skip_all, fields(room = body.room_num, endpoint = body.endpoint_id))]
pub async fn challenge(
    state: web::Data<AppState>,
    body: JsonObject<ChallengeBody>,
) -> Result<HttpResponse, ApiError> {
    let keys = keys(&state)?;
    let room = state
        .store
        .room(body.room_num)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("room {} is unknown", body.room_num)))?;
    let endpoint = state
        .store
        .endpoint(body.endpoint_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("endpoint {} is unknown", body.endpoint_id)))?;
    let token = keys
        .issue(
            Purpose::Challenge,
            room.key,
            endpoint.id,
            endpoint.token_version,
            None,
            state.billing.challenge_ttl,
        )
        .map_err(token_error)?;
    Ok(HttpResponse::Ok().json(json!({ "token": token })))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct VerifyBody {
    /// The challenge token.
    token: String,
    /// The six digits as a number (`123456`, leading zeros lost) or a string (`"012345"`).
    #[schema(schema_with = crate::api::openapi::auth_code_schema)]
    auth_code: Value,
}

fn parse_auth_code(value: &Value) -> Option<u32> {
    let code = match value {
        Value::Number(n) => n.as_u64()?,
        Value::String(s)
            if !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()?
        }
        _ => return None,
    };
    u32::try_from(code).ok().filter(|c| *c < 1_000_000)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `POST /api/auth/verify/ {"token":…,"auth_code":123456}` → `{"token": <access JWT>, "balance": cents,
/// "appliances": [{"name","value"}]}` when the code is the room's current TOTP (±1 step) and was not used.
#[utoipa::path(
    post,
    operation_id = "billing_verify",
    path = "/api/auth/verify",
    tag = "billing-endpoints",
    request_body = VerifyBody,
    responses(
        (status = 200, description = "An access token, the room's balance and the appliances' prices", body = crate::api::openapi::Verified),
        (status = 400, description = "Malformed JSON body, or an invalid field (`field` names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Invalid, expired or revoked challenge token; wrong, replayed or throttled code (`invalid_token`)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "The room is gone", body = crate::api::openapi::ErrorBody),
        (status = 405, description = "Method not allowed (POST only)", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "Billing is not configured (no BILLING_JWT_SECRET)", body = crate::api::openapi::ErrorBody),
    ),
    security(()),
)]
#[tracing::instrument(skip_all)]
pub async fn verify(
    state: web::Data<AppState>,
    body: JsonObject<VerifyBody>,
) -> Result<HttpResponse, ApiError> {
    let claims = check_token(&state, &body.token, Purpose::Challenge).await?;
    let wrong_code = || ApiError::InvalidToken("wrong or expired code".into());
    let code = parse_auth_code(&body.auth_code).ok_or_else(wrong_code)?;
    let secret = state
        .store
        .room_totp(claims.room)
        .await?
        .ok_or_else(wrong_code)?;
    let key = totp::decode_secret(&secret.secret).ok_or_else(|| {
        ApiError::Internal(format!("room {} has a malformed TOTP secret", claims.room))
    })?;
    let now = unix_now();
    let window = i64::try_from(totp::step_of(now) / FAILURE_WINDOW_STEPS).unwrap_or(i64::MAX);
    if !state
        .store
        .claim_totp_attempt(claims.room, window, MAX_CODE_FAILURES)
        .await?
    {
        tracing::warn!(
            room = claims.room,
            "room login throttled after too many wrong codes"
        );
        return Err(ApiError::InvalidToken(
            "too many wrong codes for this room; try again in a few minutes".into(),
        ));
    }
    let Some(step) = totp::matching_step(&key, code, now) else {
        tracing::info!(
            room = claims.room,
            endpoint = claims.endpoint,
            "wrong TOTP code"
        );
        return Err(wrong_code());
    };
    state
        .store
        .release_totp_attempt(claims.room, window)
        .await?;
    let step = i64::try_from(step).map_err(|_| wrong_code())?;
    if !state.store.accept_totp_step(claims.room, step).await? {
        tracing::info!(
            room = claims.room,
            endpoint = claims.endpoint,
            "replayed TOTP code"
        );
        return Err(ApiError::InvalidToken("this code was used already".into()));
    }
    let room = state
        .store
        .room(claims.room)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("room {} is unknown", claims.room)))?;
    let appliances: Vec<Value> = state
        .store
        .list_appliances()
        .await?
        .iter()
        .map(|a| json!({"name": a.name, "value": a.price_per_unit}))
        .collect();
    let token = keys(&state)?
        .issue(
            Purpose::Access,
            claims.room,
            claims.endpoint,
            claims.ver,
            None,
            state.billing.access_ttl,
        )
        .map_err(token_error)?;
    tracing::info!(
        room = claims.room,
        endpoint = claims.endpoint,
        "room code accepted"
    );
    Ok(HttpResponse::Ok().json(json!({
        "token": token,
        "balance": room.balance,
        "appliances": appliances,
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"token": "<access token>", "appliance_name": "washer", "units": 300, "price": 20}))]
pub struct StartBody {
    /// The access token.
    token: String,
    appliance_name: String,
    #[schema(minimum = 0, maximum = 1_000_000)]
    units: i64,
    /// Currency units (a number or a decimal string, at most two decimals); the old contract multiplied by 100.
    #[schema(schema_with = crate::api::openapi::price_schema)]
    price: Box<RawValue>,
}

/// `POST /api/appliance/start/ {"token":<access>,"appliance_name":"washer","units":300,"price":20}` → 201
/// `{"newbalance": cents, "token": <start JWT>}`. 409 occupied, 402 balance too low.
#[utoipa::path(
    post,
    operation_id = "billing_start",
    path = "/api/appliance/start",
    tag = "billing-endpoints",
    request_body = StartBody,
    responses(
        (status = 201, description = "Started: the new balance and the run's start token", body = crate::api::openapi::Started),
        (status = 400, description = "Malformed JSON body, an invalid field, or an unknown appliance (`field` names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Invalid, expired or revoked access token (`invalid_token`)", body = crate::api::openapi::ErrorBody),
        (status = 402, description = "The room's balance does not cover the price", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "The room is gone", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "That appliance on that endpoint is running", body = crate::api::openapi::ErrorBody),
        (status = 405, description = "Method not allowed (POST only)", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "Billing is not configured (no BILLING_JWT_SECRET)", body = crate::api::openapi::ErrorBody),
    ),
    security(()),
)]
#[tracing::instrument(skip_all, fields(appliance = tracing::field::Empty))]
pub async fn start(
    state: web::Data<AppState>,
    body: web::Json<Box<RawValue>>,
) -> Result<HttpResponse, ApiError> {
    let body: StartBody = object_from_text(&body)?;
    tracing::Span::current().record("appliance", body.appliance_name.as_str());
    let claims = check_token(&state, &body.token, Purpose::Access).await?;
    let units = check_units(body.units)?;
    let cost = price_cents("price", &body.price)?;
    let name = body.appliance_name.trim();
    if state.store.appliance(name).await?.is_none() {
        return Err(invalid(
            "appliance_name",
            format!("appliance `{name}` is unknown"),
        ));
    }
    let outcome = state
        .store
        .start_run(claims.room, claims.endpoint, name, units, cost)
        .await?;
    match outcome {
        StartOutcome::Started(run, balance) => {
            let token = keys(&state)?
                .issue(
                    Purpose::Start,
                    claims.room,
                    claims.endpoint,
                    claims.ver,
                    Some(run.id),
                    state.billing.run_ttl,
                )
                .map_err(token_error)?;
            tracing::info!(
                run = run.id,
                room = run.room_key,
                endpoint = run.endpoint_id,
                cost,
                "run started"
            );
            publish_run(&state, &run);
            Ok(HttpResponse::Created().json(json!({"newbalance": balance, "token": token})))
        }
        StartOutcome::Occupied => Err(ApiError::Conflict(format!(
            "{name} on endpoint {} is in use",
            claims.endpoint
        ))),
        StartOutcome::InsufficientFunds(balance) => Err(ApiError::PaymentRequired(format!(
            "the balance of room {} ({}) does not cover {}",
            claims.room,
            format_cents(balance),
            format_cents(cost)
        ))),
        StartOutcome::UnknownRoom => Err(ApiError::NotFound(format!(
            "room {} is unknown",
            claims.room
        ))),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct FinishBody {
    /// The run's start token.
    token: String,
    #[schema(minimum = 0, maximum = 1_000_000)]
    units: i64,
    /// The final price in currency units (a number or a decimal string, at most two decimals).
    #[schema(schema_with = crate::api::openapi::price_schema)]
    price: Box<RawValue>,
    #[serde(default)]
    aborted: bool,
}

/// `POST /api/appliance/finish/ {"token":<start>,"units":250,"price":15,"aborted":false}` → `{"status":
/// "finished"|"aborted"}`; refunds the reservation minus the final price. 409 when finished already.
#[utoipa::path(
    post,
    operation_id = "billing_finish",
    path = "/api/appliance/finish",
    tag = "billing-endpoints",
    request_body = FinishBody,
    responses(
        (status = 200, description = "Ended; the reservation minus the final price was refunded", body = crate::api::openapi::RunEnd),
        (status = 400, description = "Malformed JSON body, or an invalid field (`field` names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Invalid, expired or revoked start token (`invalid_token`)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown run", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The run ended already", body = crate::api::openapi::ErrorBody),
        (status = 405, description = "Method not allowed (POST only)", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "Billing is not configured (no BILLING_JWT_SECRET)", body = crate::api::openapi::ErrorBody),
    ),
    security(()),
)]
#[tracing::instrument(skip_all)]
pub async fn finish(
    state: web::Data<AppState>,
    body: web::Json<Box<RawValue>>,
) -> Result<HttpResponse, ApiError> {
    let body: FinishBody = object_from_text(&body)?;
    let claims = check_token(&state, &body.token, Purpose::Start).await?;
    let run_id = claims
        .run
        .ok_or_else(|| ApiError::InvalidToken("the token names no run".into()))?;
    let units = check_units(body.units)?;
    let final_price = price_cents("price", &body.price)?;
    match state
        .store
        .finish_run(run_id, units, final_price, body.aborted)
        .await?
    {
        FinishOutcome::Finished(run) => {
            tracing::info!(run = run.id, room = run.room_key, refund = ?run.refund, state = %run.state, "run ended");
            publish_run(&state, &run);
            Ok(HttpResponse::Ok().json(json!({ "status": run.state })))
        }
        FinishOutcome::NotRunning(run) => Err(ApiError::Conflict(format!(
            "run {} is {} already",
            run.id, run.state
        ))),
        FinishOutcome::NotFound => Err(ApiError::NotFound(format!("run {run_id} is unknown"))),
    }
}

// ---- rooms ----------------------------------------------------------------------------------------------

fn unknown_room(key: i64) -> ApiError {
    ApiError::NotFound(format!("room {key} is unknown"))
}

fn check_balance(balance: i64) -> Result<i64, ApiError> {
    if !(0..=MAX_CENTS).contains(&balance) {
        return Err(invalid(
            "balance",
            format!("balance must be 0-{MAX_CENTS} cents"),
        ));
    }
    Ok(balance)
}

fn check_reason(reason: Option<&str>, default: &str) -> Result<String, ApiError> {
    let reason = reason.map(str::trim).unwrap_or(default);
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(invalid(
            "reason",
            format!("reason must be 1-{MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(reason.to_owned())
}

/// `PATCH /api/rooms/{key}` (`POST` reads `key` and `balance`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomBody {
    /// The room's own key (it cannot change).
    key: Option<i64>,
    /// The new balance in cents.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    balance: Option<i64>,
    /// Why, recorded with the adjustment (default "balance set by an admin").
    #[schema(min_length = 1, max_length = 200)]
    reason: Option<String>,
}

/// `GET /api/rooms`
#[utoipa::path(
    get,
    operation_id = "rooms_list",
    path = "/api/rooms",
    tag = "billing",
    responses(
        (status = 200, description = "Every room", body = crate::api::openapi::RoomList),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_rooms(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items: Vec<Value> = state
        .store
        .list_rooms()
        .await?
        .iter()
        .map(room_json)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `POST /api/rooms {"key":12345,"balance":0}`: 201, or 409 when the key exists.
#[utoipa::path(
    post,
    operation_id = "rooms_create",
    path = "/api/rooms",
    tag = "billing",
    request_body = crate::api::openapi::RoomCreate,
    responses(
        (status = 201, description = "Created", body = crate::api::openapi::Room),
        (status = 400, description = "Malformed JSON body, or an invalid field (`field` names it)", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The key exists", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_room(
    state: web::Data<AppState>,
    body: JsonObject<RoomBody>,
) -> Result<HttpResponse, ApiError> {
    let key = body
        .key
        .filter(|k| *k > 0)
        .ok_or_else(|| invalid("key", "`key` must be a positive room number"))?;
    // The shared body type documents `reason` for PATCH; here it would be silently dropped, so refuse it.
    if body.reason.is_some() {
        return Err(invalid(
            "reason",
            "`reason` applies to PATCH only: a new room has no adjustment to explain",
        ));
    }
    let balance = check_balance(body.balance.unwrap_or(0))?;
    let row = state
        .store
        .create_room(key, balance)
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("room {key} exists")))?;
    tracing::info!(room = key, balance, "room created");
    Ok(HttpResponse::Created().json(room_json(&row)))
}

/// `GET /api/rooms/{key}`
#[utoipa::path(
    get,
    operation_id = "rooms_get",
    path = "/api/rooms/{key}",
    tag = "billing",
    params(
        ("key" = i64, Path, description = "Room key (the room number)"),
    ),
    responses(
        (status = 200, description = "The room", body = crate::api::openapi::Room),
        (status = 400, description = "The key is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown room", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_room(
    state: web::Data<AppState>,
    key: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let key = key.into_inner();
    let row = state
        .store
        .room(key)
        .await?
        .ok_or_else(|| unknown_room(key))?;
    Ok(HttpResponse::Ok().json(room_json(&row)))
}

/// `PATCH /api/rooms/{key} {"balance":…,"reason":…}`: sets the balance; the difference is recorded as an
/// adjustment.
#[utoipa::path(
    patch,
    operation_id = "rooms_patch",
    path = "/api/rooms/{key}",
    tag = "billing",
    params(
        ("key" = i64, Path, description = "Room key (the room number)"),
    ),
    request_body = RoomBody,
    responses(
        (status = 200, description = "The room, changed", body = crate::api::openapi::Room),
        (status = 400, description = "Malformed body or key, or an invalid field (`field`)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown room", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn patch_room(
    state: web::Data<AppState>,
    key: web::Path<i64>,
    body: JsonObject<RoomBody>,
) -> Result<HttpResponse, ApiError> {
    let key = key.into_inner();
    if body.key.is_some_and(|k| k != key) {
        return Err(invalid("key", "a room's key cannot change"));
    }
    // Checked even without `balance` (which alone uses it), so a bad reason is never silently accepted.
    let reason = check_reason(body.reason.as_deref(), "balance set by an admin")?;
    let row = match body.balance {
        Some(balance) => {
            let balance = check_balance(balance)?;
            let row = state
                .store
                .set_room_balance(key, balance, &reason)
                .await?
                .ok_or_else(|| unknown_room(key))?;
            tracing::info!(room = key, balance, "room balance set");
            row
        }
        None => state
            .store
            .room(key)
            .await?
            .ok_or_else(|| unknown_room(key))?,
    };
    Ok(HttpResponse::Ok().json(room_json(&row)))
}

/// `DELETE /api/rooms/{key}`: 204; its runs, adjustments and payments stay as history.
#[utoipa::path(
    delete,
    operation_id = "rooms_delete",
    path = "/api/rooms/{key}",
    tag = "billing",
    params(
        ("key" = i64, Path, description = "Room key (the room number)"),
    ),
    responses(
        (status = 204, description = "Deleted; its runs, adjustments and payments stay as history"),
        (status = 400, description = "The key is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown room", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_room(
    state: web::Data<AppState>,
    key: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let key = key.into_inner();
    if state.store.delete_room(key).await? {
        tracing::info!(room = key, "room deleted");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(unknown_room(key))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"amount": -500, "reason": "refund by hand"}))]
pub struct AdjustmentBody {
    /// Signed cents, not zero.
    #[schema(minimum = -1_000_000_000, maximum = 1_000_000_000)]
    amount: i64,
    #[schema(min_length = 1, max_length = 200)]
    reason: String,
}

/// `POST /api/rooms/{key}/adjustments {"amount":<signed cents>,"reason":…}` → 201 `{"room", "adjustment"}`;
/// 409 when the balance would go negative.
#[utoipa::path(
    post,
    operation_id = "rooms_adjust",
    path = "/api/rooms/{key}/adjustments",
    tag = "billing",
    params(
        ("key" = i64, Path, description = "Room key (the room number)"),
    ),
    request_body = AdjustmentBody,
    responses(
        (status = 201, description = "The room and the recorded adjustment", body = crate::api::openapi::Adjusted),
        (status = 400, description = "Malformed body or key, or an invalid field (`field`)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown room", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The balance would go below zero", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_adjustment(
    state: web::Data<AppState>,
    key: web::Path<i64>,
    body: JsonObject<AdjustmentBody>,
) -> Result<HttpResponse, ApiError> {
    let key = key.into_inner();
    if body.amount == 0 || body.amount.abs() > MAX_CENTS {
        return Err(invalid(
            "amount",
            format!("amount must be non-zero cents within ±{MAX_CENTS}"),
        ));
    }
    let reason = check_reason(Some(&body.reason), "")?;
    match state.store.adjust_room(key, body.amount, &reason).await? {
        AdjustOutcome::Done(row, adjustment) => {
            tracing::info!(room = key, amount = body.amount, "room balance adjusted");
            Ok(HttpResponse::Created().json(json!({
                "room": room_json(&row),
                "adjustment": adjustment_json(&adjustment),
            })))
        }
        AdjustOutcome::NotFound => Err(unknown_room(key)),
        AdjustOutcome::WouldGoNegative(row) => Err(ApiError::Conflict(format!(
            "room {key} holds {}; the balance cannot go below zero",
            format_cents(row.balance)
        ))),
    }
}

/// `GET /api/rooms/{key}/adjustments`: newest first.
#[utoipa::path(
    get,
    operation_id = "rooms_adjustments",
    path = "/api/rooms/{key}/adjustments",
    tag = "billing",
    params(
        ("key" = i64, Path, description = "Room key (the room number)"),
    ),
    responses(
        (status = 200, description = "The room's adjustments, newest first", body = crate::api::openapi::AdjustmentList),
        (status = 400, description = "The key is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown room", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_adjustments(
    state: web::Data<AppState>,
    key: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let key = key.into_inner();
    state
        .store
        .room(key)
        .await?
        .ok_or_else(|| unknown_room(key))?;
    let items: Vec<Value> = state
        .store
        .room_adjustments(key)
        .await?
        .iter()
        .map(adjustment_json)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `POST /api/rooms/{key}/totp` → `{"secret": base32, "uri": "otpauth://…"}`: a new secret, shown this once.
#[utoipa::path(
    post,
    operation_id = "rooms_rotate_totp",
    path = "/api/rooms/{key}/totp",
    tag = "billing",
    params(
        ("key" = i64, Path, description = "Room key (the room number)"),
    ),
    responses(
        (status = 200, description = "The new secret, shown this once", body = crate::api::openapi::TotpSecret),
        (status = 400, description = "The key is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown room", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn rotate_totp(
    state: web::Data<AppState>,
    key: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let key = key.into_inner();
    let secret = totp::generate_secret();
    if !state.store.rotate_room_totp(key, &secret).await? {
        return Err(unknown_room(key));
    }
    tracing::info!(room = key, "room TOTP secret rotated");
    Ok(HttpResponse::Ok().json(json!({
        "secret": secret,
        "uri": totp::otpauth_uri(TOTP_ISSUER, key, &secret),
    })))
}

// ---- endpoints ------------------------------------------------------------------------------------------

fn unknown_endpoint(id: i32) -> ApiError {
    ApiError::NotFound(format!("endpoint {id} is unknown"))
}

fn check_name(field: &str, name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            field,
            format!("{field} must be 1-{MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(name.to_owned())
}

/// `PATCH /api/endpoints/{id}` (`POST` reads `id` and `name`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointBody {
    /// The endpoint's own id (it cannot change).
    id: Option<i32>,
    #[schema(min_length = 1, max_length = 64)]
    name: Option<String>,
    /// PATCH only: `true` invalidates every token the endpoint holds.
    #[serde(default)]
    bump_token_version: bool,
}

/// `GET /api/endpoints`
#[utoipa::path(
    get,
    operation_id = "endpoints_list",
    path = "/api/endpoints",
    tag = "billing",
    responses(
        (status = 200, description = "Every endpoint", body = crate::api::openapi::EndpointList),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_endpoints(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items: Vec<Value> = state
        .store
        .list_endpoints()
        .await?
        .iter()
        .map(endpoint_json)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `POST /api/endpoints {"id":1,"name":…}`: 201, or 409 when the id exists.
#[utoipa::path(
    post,
    operation_id = "endpoints_create",
    path = "/api/endpoints",
    tag = "billing",
    request_body = crate::api::openapi::EndpointCreate,
    responses(
        (status = 201, description = "Created", body = crate::api::openapi::Endpoint),
        (status = 400, description = "Malformed JSON body, or an invalid field (`field` names it)", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The id exists", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_endpoint(
    state: web::Data<AppState>,
    body: JsonObject<EndpointBody>,
) -> Result<HttpResponse, ApiError> {
    let id = body
        .id
        .filter(|id| *id > 0)
        .ok_or_else(|| invalid("id", "`id` must be a positive integer"))?;
    let name = check_name(
        "name",
        body.name
            .as_deref()
            .ok_or_else(|| invalid("name", "`name` is required"))?,
    )?;
    if body.bump_token_version {
        return Err(invalid(
            "bump_token_version",
            "`bump_token_version` applies to PATCH only: a new endpoint holds no tokens",
        ));
    }
    let row = state
        .store
        .create_endpoint(id, &name)
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("endpoint {id} exists")))?;
    tracing::info!(endpoint = id, "endpoint created");
    Ok(HttpResponse::Created().json(endpoint_json(&row)))
}

/// `GET /api/endpoints/{id}`
#[utoipa::path(
    get,
    operation_id = "endpoints_get",
    path = "/api/endpoints/{id}",
    tag = "billing",
    params(
        ("id" = i32, Path, description = "Endpoint id"),
    ),
    responses(
        (status = 200, description = "The endpoint", body = crate::api::openapi::Endpoint),
        (status = 400, description = "The id is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown endpoint", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_endpoint(
    state: web::Data<AppState>,
    id: web::Path<i32>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let row = state
        .store
        .endpoint(id)
        .await?
        .ok_or_else(|| unknown_endpoint(id))?;
    Ok(HttpResponse::Ok().json(endpoint_json(&row)))
}

/// `PATCH /api/endpoints/{id} {"name":…, "bump_token_version":true}`
#[utoipa::path(
    patch,
    operation_id = "endpoints_patch",
    path = "/api/endpoints/{id}",
    tag = "billing",
    params(
        ("id" = i32, Path, description = "Endpoint id"),
    ),
    request_body = EndpointBody,
    responses(
        (status = 200, description = "The endpoint, changed", body = crate::api::openapi::Endpoint),
        (status = 400, description = "Malformed body or id, or an invalid field (`field`)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown endpoint", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn patch_endpoint(
    state: web::Data<AppState>,
    id: web::Path<i32>,
    body: JsonObject<EndpointBody>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    if body.id.is_some_and(|i| i != id) {
        return Err(invalid("id", "an endpoint's id cannot change"));
    }
    let name = body
        .name
        .as_deref()
        .map(|n| check_name("name", n))
        .transpose()?;
    let row = state
        .store
        .patch_endpoint(id, name, body.bump_token_version)
        .await?
        .ok_or_else(|| unknown_endpoint(id))?;
    if body.bump_token_version {
        tracing::info!(
            endpoint = id,
            version = row.token_version,
            "endpoint tokens revoked"
        );
    }
    Ok(HttpResponse::Ok().json(endpoint_json(&row)))
}

/// `DELETE /api/endpoints/{id}`: 204; its tokens stop working.
#[utoipa::path(
    delete,
    operation_id = "endpoints_delete",
    path = "/api/endpoints/{id}",
    tag = "billing",
    params(
        ("id" = i32, Path, description = "Endpoint id"),
    ),
    responses(
        (status = 204, description = "Deleted; its tokens stop working"),
        (status = 400, description = "The id is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown endpoint", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_endpoint(
    state: web::Data<AppState>,
    id: web::Path<i32>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    if state.store.delete_endpoint(id).await? {
        tracing::info!(endpoint = id, "endpoint deleted");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(unknown_endpoint(id))
    }
}

// ---- appliances -----------------------------------------------------------------------------------------

fn unknown_appliance(name: &str) -> ApiError {
    ApiError::NotFound(format!("appliance `{name}` is unknown"))
}

fn check_price_per_unit(price: i64) -> Result<i64, ApiError> {
    if !(0..=MAX_CENTS).contains(&price) {
        return Err(invalid(
            "price_per_unit",
            format!("price_per_unit must be 0-{MAX_CENTS} cents"),
        ));
    }
    Ok(price)
}

/// `PATCH /api/appliances/{name}` (`POST` reads both fields).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplianceBody {
    /// The appliance's own name (it cannot change).
    #[schema(min_length = 1, max_length = 64)]
    name: Option<String>,
    /// Cents.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    price_per_unit: Option<i64>,
}

/// `GET /api/appliances`
#[utoipa::path(
    get,
    operation_id = "appliances_list",
    path = "/api/appliances",
    tag = "billing",
    responses(
        (status = 200, description = "Every appliance", body = crate::api::openapi::ApplianceList),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_appliances(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items: Vec<Value> = state
        .store
        .list_appliances()
        .await?
        .iter()
        .map(appliance_json)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `POST /api/appliances {"name":"washer","price_per_unit":25}`: 201, or 409 when the name exists.
#[utoipa::path(
    post,
    operation_id = "appliances_create",
    path = "/api/appliances",
    tag = "billing",
    request_body = crate::api::openapi::ApplianceCreate,
    responses(
        (status = 201, description = "Created", body = crate::api::openapi::Appliance),
        (status = 400, description = "Malformed JSON body, or an invalid field (`field` names it)", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The name exists", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_appliance(
    state: web::Data<AppState>,
    body: JsonObject<ApplianceBody>,
) -> Result<HttpResponse, ApiError> {
    let name = check_name(
        "name",
        body.name
            .as_deref()
            .ok_or_else(|| invalid("name", "`name` is required"))?,
    )?;
    let price = check_price_per_unit(
        body.price_per_unit
            .ok_or_else(|| invalid("price_per_unit", "`price_per_unit` is required"))?,
    )?;
    let row = state
        .store
        .create_appliance(&name, price)
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("appliance `{name}` exists")))?;
    Ok(HttpResponse::Created().json(appliance_json(&row)))
}

/// `GET /api/appliances/{name}`
#[utoipa::path(
    get,
    operation_id = "appliances_get",
    path = "/api/appliances/{name}",
    tag = "billing",
    params(
        ("name" = String, Path, description = "Appliance name"),
    ),
    responses(
        (status = 200, description = "The appliance", body = crate::api::openapi::Appliance),
        (status = 404, description = "Unknown appliance", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_appliance(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = state
        .store
        .appliance(&name)
        .await?
        .ok_or_else(|| unknown_appliance(&name))?;
    Ok(HttpResponse::Ok().json(appliance_json(&row)))
}

/// `PATCH /api/appliances/{name} {"price_per_unit":30}`
#[utoipa::path(
    patch,
    operation_id = "appliances_patch",
    path = "/api/appliances/{name}",
    tag = "billing",
    params(
        ("name" = String, Path, description = "Appliance name"),
    ),
    request_body = ApplianceBody,
    responses(
        (status = 200, description = "The appliance, changed", body = crate::api::openapi::Appliance),
        (status = 400, description = "Malformed body, or an invalid field (`field`)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown appliance", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn patch_appliance(
    state: web::Data<AppState>,
    name: web::Path<String>,
    body: JsonObject<ApplianceBody>,
) -> Result<HttpResponse, ApiError> {
    if body
        .name
        .as_deref()
        .is_some_and(|n| n.trim() != name.as_str())
    {
        return Err(invalid("name", "an appliance's name cannot change"));
    }
    let price = body.price_per_unit.map(check_price_per_unit).transpose()?;
    let row = state
        .store
        .patch_appliance(&name, price)
        .await?
        .ok_or_else(|| unknown_appliance(&name))?;
    Ok(HttpResponse::Ok().json(appliance_json(&row)))
}

/// `DELETE /api/appliances/{name}`: 204; 409 while a run uses it.
#[utoipa::path(
    delete,
    operation_id = "appliances_delete",
    path = "/api/appliances/{name}",
    tag = "billing",
    params(
        ("name" = String, Path, description = "Appliance name"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Unknown appliance", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "A run uses the appliance", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_appliance(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    match state.store.delete_appliance(&name).await? {
        ApplianceDelete::Deleted => Ok(HttpResponse::NoContent().finish()),
        ApplianceDelete::NotFound => Err(unknown_appliance(&name)),
        ApplianceDelete::Busy => Err(ApiError::Conflict(format!(
            "appliance `{name}` is running somewhere; finish the run first"
        ))),
    }
}

// ---- runs and payments ----------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    room: Option<i64>,
    state: Option<String>,
}

/// `GET /api/runs?room=&state=running|finished|aborted`: newest first.
#[utoipa::path(
    get,
    operation_id = "runs_list",
    path = "/api/runs",
    tag = "billing",
    params(
        ("room" = Option<i64>, Query, description = "Only this room's runs"),
        ("state" = Option<crate::api::openapi::RunState>, Query, description = "Only runs in this state"),
    ),
    responses(
        (status = 200, description = "Runs, newest first", body = crate::api::openapi::RunList),
        (status = 400, description = "Invalid query string or `state`", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_runs(
    state: web::Data<AppState>,
    query: web::Query<RunsQuery>,
) -> Result<HttpResponse, ApiError> {
    if let Some(s) = query.state.as_deref() {
        if ![RUNNING, FINISHED, ABORTED].contains(&s) {
            return Err(invalid(
                "state",
                "state must be running, finished or aborted",
            ));
        }
    }
    let items: Vec<Value> = state
        .store
        .list_runs(query.room, query.state.as_deref())
        .await?
        .iter()
        .map(run_json)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortBody {
    /// Cents the run is charged after all (default 0: a full refund).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    final_price: i64,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000)]
    final_units: i64,
}

/// `POST /api/runs/{id}/abort {"final_price"?: cents, "final_units"?}`: ends a run whose endpoint cannot (its
/// start token expired or was revoked, the device died), with the same refund rule as a finish; frees the
/// appliance. 409 when it is not running.
#[utoipa::path(
    post,
    operation_id = "runs_abort",
    path = "/api/runs/{id}/abort",
    tag = "billing",
    params(
        ("id" = i32, Path, description = "Run id"),
    ),
    request_body = AbortBody,
    responses(
        (status = 200, description = "The run, aborted", body = crate::api::openapi::Run),
        (status = 400, description = "Malformed body or id, or an invalid field (`field`)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown run", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The run is not running", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn abort_run(
    state: web::Data<AppState>,
    id: web::Path<i32>,
    body: JsonObject<AbortBody>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    if !(0..=MAX_CENTS).contains(&body.final_price) {
        return Err(invalid(
            "final_price",
            format!("final_price must be 0-{MAX_CENTS} cents"),
        ));
    }
    let units = check_units(body.final_units)?;
    match state
        .store
        .finish_run(id, units, body.final_price, true)
        .await?
    {
        FinishOutcome::Finished(run) => {
            tracing::info!(run = run.id, room = run.room_key, refund = ?run.refund, "run aborted by an admin");
            publish_run(&state, &run);
            Ok(HttpResponse::Ok().json(run_json(&run)))
        }
        FinishOutcome::NotRunning(run) => Err(ApiError::Conflict(format!(
            "run {} is {} already",
            run.id, run.state
        ))),
        FinishOutcome::NotFound => Err(ApiError::NotFound(format!("run {id} is unknown"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsQuery {
    valid: Option<bool>,
}

/// `GET /api/payments?valid=true|false`: newest first; both kinds (valid ones first) without `valid`.
#[utoipa::path(
    get,
    operation_id = "payments_list",
    path = "/api/payments",
    tag = "billing",
    params(
        ("valid" = Option<bool>, Query, description = "Only credited (`true`) or only rejected (`false`) transfers"),
    ),
    responses(
        (status = 200, description = "Payments, newest first (valid ones first when both kinds are listed)", body = crate::api::openapi::PaymentList),
        (status = 400, description = "Invalid query string", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_payments(
    state: web::Data<AppState>,
    query: web::Query<PaymentsQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut items: Vec<Value> = Vec::new();
    if query.valid != Some(false) {
        items.extend(
            state
                .store
                .valid_payments()
                .await?
                .iter()
                .map(valid_payment_json),
        );
    }
    if query.valid != Some(true) {
        items.extend(
            state
                .store
                .invalid_payments()
                .await?
                .iter()
                .map(invalid_payment_json),
        );
    }
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `POST /api/payments/import` with the bank's transaction JSON → `{"imported","duplicates","invalid"}`.
#[utoipa::path(
    post,
    operation_id = "payments_import",
    path = "/api/payments/import",
    tag = "billing",
    request_body(content = Vec<crate::api::openapi::BankTransaction>, content_type = "application/json", description = "The bank's transaction JSON"),
    responses(
        (status = 200, description = "What the import did", body = crate::api::openapi::ImportSummary),
        (status = 400, description = "Not a JSON array of transactions, or a transaction without a usable `id`", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn import_payments(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let summary = payments::import(
        &state.store,
        Some(&state.session_deps.events),
        &body,
        &state.billing.currency,
    )
    .await
    .map_err(|err| match err {
        ImportError::Malformed(message) => ApiError::BadRequest(message),
        ImportError::Store(err) => err.into(),
        ImportError::Fetch(message) => ApiError::Internal(message),
    })?;
    Ok(HttpResponse::Ok().json(summary))
}

#[cfg(test)]
mod tests {
    use super::parse_auth_code;
    use serde_json::json;

    #[test]
    fn auth_codes_are_six_digits_as_numbers_or_strings() {
        assert_eq!(parse_auth_code(&json!(123456)), Some(123_456));
        assert_eq!(parse_auth_code(&json!(12345)), Some(12_345));
        assert_eq!(parse_auth_code(&json!("012345")), Some(12_345));
        for bad in [
            json!(1_000_000),
            json!(-1),
            json!(1.5),
            json!("1234567"),
            json!("12a456"),
            json!(""),
            json!(null),
        ] {
            assert_eq!(parse_auth_code(&bad), None, "{bad}");
        }
    }
}
