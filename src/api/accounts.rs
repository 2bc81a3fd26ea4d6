//! `/api/accounts`: people who own id tags (RFID cards) and hold subscriptions, and the kiosk's card login.

use actix_web::{
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web, HttpResponse,
};
use chrono::Utc;
use entity::account;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::JsonObject;
use super::subscriptions::subscriptions_json;
use super::{bearer_token, constant_time_eq, AppState};
use crate::error::ApiError;
use crate::store::accounts::{AccountPatch, AccountWrite, NewAccount};

const MAX_NAME_CHARS: usize = 200;
/// RFC 5321's limit on a forward path.
const MAX_EMAIL_LEN: usize = 254;

pub(super) fn account_json(a: &account::Model) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "email": a.email,
        "is_active": a.is_active,
        "created_at": a.created_at,
        "updated_at": a.updated_at,
    })
}

/// The account with its id tags and its active subscriptions.
async fn account_detail(state: &AppState, a: &account::Model) -> Result<Value, ApiError> {
    let now = Utc::now();
    let tags: Vec<String> = state
        .store
        .id_tags_of_account(a.id)
        .await?
        .into_iter()
        .map(|t| t.tag)
        .collect();
    let active = state.store.active_subscriptions_of(a.id, now).await?;
    let mut body = account_json(a);
    body["id_tags"] = json!(tags);
    body["active_subscriptions"] = json!(subscriptions_json(state, &active, now).await?);
    Ok(body)
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidParams {
        field: field.into(),
        message: message.into(),
    }
}

pub(super) fn validate_name(field: &str, name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            field,
            format!("{field} must be 1-{MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(name.to_owned())
}

/// Trimmed and lower-cased, so `Ana@Example.com` and `ana@example.com` are one account.
fn normalize_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_lowercase();
    let well_formed = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    };
    if !well_formed || email.len() > MAX_EMAIL_LEN {
        return Err(invalid(
            "email",
            format!("email must look like name@example.com (at most {MAX_EMAIL_LEN} bytes)"),
        ));
    }
    Ok(email)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountBody {
    #[schema(min_length = 1)]
    name: Option<String>,
    email: Option<String>,
    is_active: Option<bool>,
}

fn email_taken(email: &str) -> ApiError {
    ApiError::Conflict(format!("another account has the email {email}"))
}

fn unknown(id: i32) -> ApiError {
    ApiError::NotFound(format!("account {id} is unknown"))
}

/// `GET /api/accounts`
#[utoipa::path(
    get,
    operation_id = "accounts_list",
    path = "/api/accounts",
    tag = "accounts",
    responses(
        (status = 200, description = "Every account", body = crate::api::openapi::AccountList),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items: Vec<Value> = state
        .store
        .list_accounts()
        .await?
        .iter()
        .map(account_json)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `POST /api/accounts`: 201, or 409 when the email is taken.
#[utoipa::path(
    post,
    operation_id = "accounts_create",
    path = "/api/accounts",
    tag = "accounts",
    request_body = crate::api::openapi::AccountCreate,
    responses(
        (status = 201, description = "Created", body = crate::api::openapi::Account),
        (status = 400, description = "Malformed body, or a missing or malformed name or email (`field`)", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The email is taken", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    state: web::Data<AppState>,
    body: JsonObject<AccountBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let name = validate_name(
        "name",
        body.name
            .as_deref()
            .ok_or_else(|| invalid("name", "`name` is required"))?,
    )?;
    let email = normalize_email(
        body.email
            .as_deref()
            .ok_or_else(|| invalid("email", "`email` is required"))?,
    )?;
    let new = NewAccount {
        name,
        email: email.clone(),
        is_active: body.is_active.unwrap_or(true),
    };
    let row = state
        .store
        .create_account(new)
        .await?
        .ok_or_else(|| email_taken(&email))?;
    tracing::info!(account = row.id, "account created");
    Ok(HttpResponse::Created().json(account_detail(&state, &row).await?))
}

/// `GET /api/accounts/{id}`: with `id_tags` and `active_subscriptions`.
#[utoipa::path(
    get,
    operation_id = "accounts_get",
    path = "/api/accounts/{id}",
    tag = "accounts",
    params(
        ("id" = i32, Path, description = "Account id"),
    ),
    responses(
        (status = 200, description = "The account", body = crate::api::openapi::Account),
        (status = 400, description = "The id is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown account", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get(state: web::Data<AppState>, id: web::Path<i32>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let row = state.store.account(id).await?.ok_or_else(|| unknown(id))?;
    Ok(HttpResponse::Ok().json(account_detail(&state, &row).await?))
}

/// `PATCH /api/accounts/{id}`: any of `name`, `email`, `is_active`.
#[utoipa::path(
    patch,
    operation_id = "accounts_patch",
    path = "/api/accounts/{id}",
    tag = "accounts",
    params(
        ("id" = i32, Path, description = "Account id"),
    ),
    request_body = AccountBody,
    responses(
        (status = 200, description = "The account, changed", body = crate::api::openapi::Account),
        (status = 400, description = "Malformed body or id, or an invalid field (`field`)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown account", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The email is taken", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn patch(
    state: web::Data<AppState>,
    id: web::Path<i32>,
    body: JsonObject<AccountBody>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let body = body.into_inner();
    let patch = AccountPatch {
        name: body
            .name
            .as_deref()
            .map(|n| validate_name("name", n))
            .transpose()?,
        email: body.email.as_deref().map(normalize_email).transpose()?,
        is_active: body.is_active,
    };
    let email = patch.email.clone().unwrap_or_default();
    match state.store.patch_account(id, patch).await? {
        AccountWrite::Done(row) => Ok(HttpResponse::Ok().json(account_detail(&state, &row).await?)),
        AccountWrite::NotFound => Err(unknown(id)),
        AccountWrite::EmailTaken => Err(email_taken(&email)),
    }
}

/// `DELETE /api/accounts/{id}`: 204; its subscriptions go with it, its id tags stay without an account.
#[utoipa::path(
    delete,
    operation_id = "accounts_delete",
    path = "/api/accounts/{id}",
    tag = "accounts",
    params(
        ("id" = i32, Path, description = "Account id"),
    ),
    responses(
        (status = 204, description = "Deleted, with its subscriptions"),
        (status = 400, description = "The id is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown account", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    state: web::Data<AppState>,
    id: web::Path<i32>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    if state.store.delete_account(id).await? {
        tracing::info!(account = id, "account deleted");
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(unknown(id))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RfidLoginBody {
    /// The card's UID, compared case-insensitively.
    #[schema(min_length = 1)]
    uid: String,
}

/// `POST /api/accounts/rfid-login {"uid":"04A2B3C4"}`: the account of an RFID card, with its active
/// subscriptions. 404 unknown card (or a card of no account); 403 card not `Accepted`, card expired, or
/// account inactive.
#[utoipa::path(
    post,
    operation_id = "accounts_rfid_login",
    path = "/api/accounts/rfid-login",
    tag = "accounts",
    request_body = RfidLoginBody,
    responses(
        (status = 200, description = "The card's account and the matched tag", body = crate::api::openapi::RfidLogin),
        (status = 400, description = "Malformed JSON body, or an invalid field (`field` names it)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Neither the admin token nor RFID_LOGIN_TOKEN", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "Card not Accepted, past its expiry, or account inactive", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown card, or a card of no account", body = crate::api::openapi::ErrorBody),
        (status = 405, description = "Method not allowed", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = []), ("rfid_login_token" = [])),
)]
pub async fn rfid_login(
    state: web::Data<AppState>,
    body: JsonObject<RfidLoginBody>,
) -> Result<HttpResponse, ApiError> {
    let uid = body.uid.trim();
    if uid.is_empty() {
        return Err(invalid("uid", "uid must not be empty"));
    }
    let tag = state
        .store
        .id_tag_by_uid(uid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no id tag for card {uid}")))?;
    let account = match tag.account_id {
        Some(id) => state.store.account(id).await?,
        None => None,
    }
    .ok_or_else(|| ApiError::NotFound(format!("card {uid} belongs to no account")))?;
    if tag.status != "Accepted" {
        tracing::info!(tag = %tag.tag, status = %tag.status, "rfid login refused");
        return Err(ApiError::Forbidden(format!("card {uid} is {}", tag.status)));
    }
    if let Some(at) = tag.expires_at.filter(|at| *at < Utc::now()) {
        tracing::info!(tag = %tag.tag, "rfid login refused: card expired");
        return Err(ApiError::Forbidden(format!(
            "card {uid} expired at {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    if !account.is_active {
        tracing::info!(tag = %tag.tag, account = account.id, "rfid login refused: account inactive");
        return Err(ApiError::Forbidden(format!(
            "account {} is inactive",
            account.id
        )));
    }
    tracing::info!(tag = %tag.tag, account = account.id, "rfid login");
    let mut body = account_detail(&state, &account).await?;
    body["tag"] = json!(tag.tag);
    Ok(HttpResponse::Ok().json(body))
}

/// Guards the rfid-login route, which lives outside the `/api` scope: the admin token or `RFID_LOGIN_TOKEN`
/// (a kiosk holds only the latter, which opens nothing else).
pub async fn require_login_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("application state missing".into()))?;
    let kiosk = state
        .settings
        .rfid_login_token
        .as_deref()
        .filter(|t| !t.trim().is_empty());
    let allowed = bearer_token(req.headers()).is_some_and(|presented| {
        // Both comparisons always run, so timing does not tell which token was nearly right.
        let admin = constant_time_eq(presented.as_bytes(), state.api_token.as_bytes());
        let kiosk = kiosk.is_some_and(|k| constant_time_eq(presented.as_bytes(), k.as_bytes()));
        admin | kiosk
    });
    if allowed {
        next.call(req)
            .await
            .map(ServiceResponse::map_into_left_body)
    } else {
        Ok(super::refuse(req, ApiError::Unauthorized))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalize_email("  Ana@Example.COM ").ok().as_deref(),
            Some("ana@example.com")
        );
        for bad in [
            "",
            "ana",
            "@example.com",
            "ana@",
            "a@b@c",
            "a na@example.com",
            &format!("{}@example.com", "a".repeat(250)),
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(validate_name("name", " Ana ").ok().as_deref(), Some("Ana"));
        assert!(validate_name("name", "   ").is_err());
        assert!(validate_name("name", &"x".repeat(201)).is_err());
        assert!(validate_name("name", &"é".repeat(200)).is_ok());
    }
}
