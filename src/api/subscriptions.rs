//! `/api/subscriptions`: products (subscription plans) and the subscriptions accounts buy. A subscription's
//! state is evaluated when read: `expired` once `ends_at` has passed.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use entity::{product, subscription};
use serde::Deserialize;
use serde_json::{json, Value};

use super::accounts::validate_name;
use super::extract::JsonObject;
use super::terminals::parse_flag;
use super::AppState;
use crate::error::ApiError;
use crate::store::accounts::{
    subscription_state, CancelOutcome, NewProduct, ProductDelete, ProductPatch, SubscribeOutcome,
    SubscriptionState,
};

const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Ten years: a longer "period" is a typo, not a plan.
const MAX_PERIOD_DAYS: i32 = 3660;

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidParams {
        field: field.into(),
        message: message.into(),
    }
}

fn product_json(p: &product::Model) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "description": p.description,
        "price_cents": p.price_cents,
        "period_days": p.period_days,
        "is_active": p.is_active,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    })
}

fn subscription_json(
    s: &subscription::Model,
    product_name: Option<&str>,
    now: DateTime<Utc>,
) -> Value {
    json!({
        "id": s.id,
        "account_id": s.account_id,
        "product_id": s.product_id,
        "product_name": product_name,
        "price_cents": s.price_cents,
        "starts_at": s.starts_at,
        "ends_at": s.ends_at,
        "state": subscription_state(s, now).as_str(),
        "cancelled_at": s.cancelled_at,
        "created_at": s.created_at,
    })
}

/// Subscriptions as JSON, each with its product's name.
pub(super) async fn subscriptions_json(
    state: &AppState,
    rows: &[subscription::Model],
    now: DateTime<Utc>,
) -> Result<Vec<Value>, ApiError> {
    let ids: Vec<i32> = rows.iter().map(|s| s.product_id).collect();
    let names = state.store.product_names(&ids).await?;
    Ok(rows
        .iter()
        .map(|s| subscription_json(s, names.get(&s.product_id).map(String::as_str), now))
        .collect())
}

async fn one_subscription_json(
    state: &AppState,
    row: &subscription::Model,
) -> Result<Value, ApiError> {
    let mut items = subscriptions_json(state, std::slice::from_ref(row), Utc::now()).await?;
    Ok(items.pop().unwrap_or(Value::Null))
}

// ---- products ---------------------------------------------------------------------------------------

/// Distinguishes `"description": null` (clear it) from an absent field (keep it).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    #[schema(min_length = 1)]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
    #[schema(minimum = 0)]
    price_cents: Option<i64>,
    #[schema(minimum = 1, maximum = 3660)]
    period_days: Option<i32>,
    is_active: Option<bool>,
}

/// Checks the fields that are present.
fn product_patch(body: ProductBody) -> Result<ProductPatch, ApiError> {
    let name = body
        .name
        .as_deref()
        .map(|n| validate_name("name", n))
        .transpose()?;
    let description = match body.description {
        Some(Some(text)) => {
            let text = text.trim().to_owned();
            if text.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(invalid(
                    "description",
                    format!("description must be at most {MAX_DESCRIPTION_CHARS} characters"),
                ));
            }
            Some(Some(text).filter(|t| !t.is_empty()))
        }
        other => other,
    };
    if body.price_cents.is_some_and(|p| p < 0) {
        return Err(invalid(
            "price_cents",
            "price_cents must be a whole number of cents, 0 or more",
        ));
    }
    if body
        .period_days
        .is_some_and(|d| !(1..=MAX_PERIOD_DAYS).contains(&d))
    {
        return Err(invalid(
            "period_days",
            format!("period_days must be from 1 to {MAX_PERIOD_DAYS}"),
        ));
    }
    Ok(ProductPatch {
        name,
        description,
        price_cents: body.price_cents,
        period_days: body.period_days,
        is_active: body.is_active,
    })
}

fn unknown_product(id: i32) -> ApiError {
    ApiError::NotFound(format!("product {id} is unknown"))
}

#[derive(Deserialize)]
pub struct ProductsQuery {
    include_inactive: Option<String>,
}

/// `GET /api/subscriptions/products[?include_inactive=true]`: the products on sale (all with the flag).
#[utoipa::path(
    get,
    operation_id = "subscriptions_list_products",
    path = "/api/subscriptions/products",
    tag = "subscriptions",
    params(
        ("include_inactive" = Option<bool>, Query, description = "true: inactive products too"),
    ),
    responses(
        (status = 200, description = "The products", body = crate::api::openapi::ProductList),
        (status = 400, description = "Invalid `include_inactive`", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_products(
    state: web::Data<AppState>,
    query: web::Query<ProductsQuery>,
) -> Result<HttpResponse, ApiError> {
    let all = parse_flag("include_inactive", query.include_inactive.as_deref(), false)?;
    let items: Vec<Value> = state
        .store
        .list_products(all)
        .await?
        .iter()
        .map(product_json)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `POST /api/subscriptions/products`: 201.
#[utoipa::path(
    post,
    operation_id = "subscriptions_create_product",
    path = "/api/subscriptions/products",
    tag = "subscriptions",
    request_body = crate::api::openapi::ProductCreate,
    responses(
        (status = 201, description = "Created", body = crate::api::openapi::Product),
        (status = 400, description = "Malformed body or an invalid field (`field`)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create_product(
    state: web::Data<AppState>,
    body: JsonObject<ProductBody>,
) -> Result<HttpResponse, ApiError> {
    let patch = product_patch(body.into_inner())?;
    let new = NewProduct {
        name: patch
            .name
            .ok_or_else(|| invalid("name", "`name` is required"))?,
        description: patch.description.flatten(),
        price_cents: patch
            .price_cents
            .ok_or_else(|| invalid("price_cents", "`price_cents` is required"))?,
        period_days: patch
            .period_days
            .ok_or_else(|| invalid("period_days", "`period_days` is required"))?,
        is_active: patch.is_active.unwrap_or(true),
    };
    let row = state.store.create_product(new).await?;
    Ok(HttpResponse::Created().json(product_json(&row)))
}

/// `GET /api/subscriptions/products/{id}` (inactive ones too).
#[utoipa::path(
    get,
    operation_id = "subscriptions_get_product",
    path = "/api/subscriptions/products/{id}",
    tag = "subscriptions",
    params(
        ("id" = i32, Path, description = "Product id"),
    ),
    responses(
        (status = 200, description = "The product", body = crate::api::openapi::Product),
        (status = 400, description = "The id is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown product", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get_product(
    state: web::Data<AppState>,
    id: web::Path<i32>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let row = state
        .store
        .product(id)
        .await?
        .ok_or_else(|| unknown_product(id))?;
    Ok(HttpResponse::Ok().json(product_json(&row)))
}

/// `PATCH /api/subscriptions/products/{id}`: subscriptions sold before keep their price and end.
#[utoipa::path(
    patch,
    operation_id = "subscriptions_patch_product",
    path = "/api/subscriptions/products/{id}",
    tag = "subscriptions",
    params(
        ("id" = i32, Path, description = "Product id"),
    ),
    request_body = ProductBody,
    responses(
        (status = 200, description = "The product, changed", body = crate::api::openapi::Product),
        (status = 400, description = "Malformed body or id, or an invalid field (`field`)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown product", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn patch_product(
    state: web::Data<AppState>,
    id: web::Path<i32>,
    body: JsonObject<ProductBody>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let patch = product_patch(body.into_inner())?;
    let row = state
        .store
        .patch_product(id, patch)
        .await?
        .ok_or_else(|| unknown_product(id))?;
    Ok(HttpResponse::Ok().json(product_json(&row)))
}

/// `DELETE /api/subscriptions/products/{id}`: 204; 409 once it was sold (deactivate it instead).
#[utoipa::path(
    delete,
    operation_id = "subscriptions_delete_product",
    path = "/api/subscriptions/products/{id}",
    tag = "subscriptions",
    params(
        ("id" = i32, Path, description = "Product id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown product", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The product was sold; deactivate it instead", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_product(
    state: web::Data<AppState>,
    id: web::Path<i32>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    match state.store.delete_product(id).await? {
        ProductDelete::Deleted => Ok(HttpResponse::NoContent().finish()),
        ProductDelete::NotFound => Err(unknown_product(id)),
        ProductDelete::Sold => Err(ApiError::Conflict(format!(
            "product {id} was sold; PATCH it with \"is_active\": false instead"
        ))),
    }
}

// ---- subscriptions ----------------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"account_id": 1, "product_id": 1}))]
pub struct SubscribeBody {
    #[schema(required = true, nullable = false)]
    account_id: Option<i32>,
    #[schema(required = true, nullable = false)]
    product_id: Option<i32>,
}

/// `POST /api/subscriptions/subscribe {"account_id":…,"product_id":…}`: 201 with the subscription, which
/// starts now and lasts the product's period. 404 unknown account or product; 400 inactive account or
/// product; 409 when that account holds an active subscription of that product already.
#[utoipa::path(
    post,
    operation_id = "subscriptions_subscribe",
    path = "/api/subscriptions/subscribe",
    tag = "subscriptions",
    request_body = SubscribeBody,
    responses(
        (status = 201, description = "Subscribed", body = crate::api::openapi::Subscription),
        (status = 400, description = "Malformed body, or an inactive account or product (`field`)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown account or product", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The account holds an active subscription of that product already", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn subscribe(
    state: web::Data<AppState>,
    body: JsonObject<SubscribeBody>,
) -> Result<HttpResponse, ApiError> {
    let account_id = body
        .account_id
        .ok_or_else(|| invalid("account_id", "`account_id` is required"))?;
    let product_id = body
        .product_id
        .ok_or_else(|| invalid("product_id", "`product_id` is required"))?;
    match state
        .store
        .subscribe(account_id, product_id, Utc::now())
        .await?
    {
        SubscribeOutcome::Created(row) => {
            tracing::info!(
                account = account_id,
                product = product_id,
                subscription = row.id,
                "subscribed"
            );
            Ok(HttpResponse::Created().json(one_subscription_json(&state, &row).await?))
        }
        SubscribeOutcome::UnknownAccount => Err(ApiError::NotFound(format!(
            "account {account_id} is unknown"
        ))),
        SubscribeOutcome::UnknownProduct => Err(unknown_product(product_id)),
        SubscribeOutcome::InactiveAccount => Err(invalid(
            "account_id",
            format!("account {account_id} is inactive"),
        )),
        SubscribeOutcome::InactiveProduct => Err(invalid(
            "product_id",
            format!("product {product_id} is not on sale (inactive)"),
        )),
        SubscribeOutcome::AlreadyActive(current) => Err(ApiError::Conflict(format!(
            "account {account_id} holds an active subscription {} of product {product_id} until {}",
            current.id,
            current
                .ends_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))),
    }
}

#[derive(Deserialize)]
pub struct SubscriptionsQuery {
    account_id: Option<String>,
    state: Option<String>,
}

/// `GET /api/subscriptions[?account_id=…][&state=active|cancelled|expired]`: newest first.
#[utoipa::path(
    get,
    operation_id = "subscriptions_list",
    path = "/api/subscriptions",
    tag = "subscriptions",
    params(
        ("account_id" = Option<i32>, Query, description = "Only this account's subscriptions"),
        ("state" = Option<crate::api::openapi::SubscriptionState>, Query, description = "Only subscriptions in this state"),
    ),
    responses(
        (status = 200, description = "Subscriptions, newest first", body = crate::api::openapi::SubscriptionList),
        (status = 400, description = "Invalid `account_id` or `state`", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown account", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<SubscriptionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let account_id = query
        .account_id
        .as_deref()
        .map(|text| {
            text.trim()
                .parse::<i32>()
                .map_err(|_| invalid("account_id", "account_id must be an account id"))
        })
        .transpose()?;
    let wanted = query
        .state
        .as_deref()
        .map(|text| {
            SubscriptionState::parse(text.trim())
                .ok_or_else(|| invalid("state", "state is active, cancelled or expired"))
        })
        .transpose()?;
    if let Some(id) = account_id {
        if state.store.account(id).await?.is_none() {
            return Err(ApiError::NotFound(format!("account {id} is unknown")));
        }
    }
    let now = Utc::now();
    let rows: Vec<subscription::Model> = state
        .store
        .list_subscriptions(account_id)
        .await?
        .into_iter()
        .filter(|s| wanted.is_none_or(|w| subscription_state(s, now) == w))
        .collect();
    let items = subscriptions_json(&state, &rows, now).await?;
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

fn unknown_subscription(id: i32) -> ApiError {
    ApiError::NotFound(format!("subscription {id} is unknown"))
}

/// `GET /api/subscriptions/{id}`
#[utoipa::path(
    get,
    operation_id = "subscriptions_get",
    path = "/api/subscriptions/{id}",
    tag = "subscriptions",
    params(
        ("id" = i32, Path, description = "Subscription id"),
    ),
    responses(
        (status = 200, description = "The subscription", body = crate::api::openapi::Subscription),
        (status = 400, description = "The id is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown subscription", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get(state: web::Data<AppState>, id: web::Path<i32>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let row = state
        .store
        .subscription(id)
        .await?
        .ok_or_else(|| unknown_subscription(id))?;
    Ok(HttpResponse::Ok().json(one_subscription_json(&state, &row).await?))
}

/// `POST /api/subscriptions/{id}/cancel`: ends an active subscription at once (200); 409 when it is cancelled
/// or expired already.
#[utoipa::path(
    post,
    operation_id = "subscriptions_cancel",
    path = "/api/subscriptions/{id}/cancel",
    tag = "subscriptions",
    params(
        ("id" = i32, Path, description = "Subscription id"),
    ),
    responses(
        (status = 200, description = "Cancelled", body = crate::api::openapi::Subscription),
        (status = 400, description = "The id is not an integer", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown subscription", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "Cancelled or expired already", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn cancel(
    state: web::Data<AppState>,
    id: web::Path<i32>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    match state.store.cancel_subscription(id, Utc::now()).await? {
        CancelOutcome::Cancelled(row) => {
            tracing::info!(subscription = id, "subscription cancelled");
            Ok(HttpResponse::Ok().json(one_subscription_json(&state, &row).await?))
        }
        CancelOutcome::NotFound => Err(unknown_subscription(id)),
        CancelOutcome::NotActive(_, current) => Err(ApiError::Conflict(format!(
            "subscription {id} is {} already",
            current.as_str()
        ))),
    }
}
