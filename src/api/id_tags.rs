//! `/api/id-tags`: the RFID / id-tag table that answers Authorize and the idTagInfo of transactions.

use actix_web::{web, HttpResponse};
use entity::id_tag;
use serde::Deserialize;
use serde_json::{json, Value};

use super::chargers::parse_time;
use super::extract::JsonObject;
use super::AppState;
use crate::error::ApiError;
use crate::store::ocpp::IdTagFields;

const STATUSES: &[&str] = &["Accepted", "Blocked", "Expired", "Invalid"];
/// OCPP `IdToken` is a CiString20.
const MAX_TAG_LEN: usize = 20;

fn tag_json(t: &id_tag::Model) -> Value {
    json!({
        "tag": t.tag,
        "status": t.status,
        "expires_at": t.expires_at,
        "parent": t.parent,
        "owner": t.owner,
        "account_id": t.account_id,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = IdTagBody)]
pub struct TagBody {
    /// The tag (1-20 printable ASCII characters); required by POST, and only the path's own in PATCH.
    #[schema(pattern = "^[!-~]{1,20}$")]
    tag: Option<String>,
    #[schema(value_type = Option<crate::api::openapi::TagStatus>)]
    status: Option<String>,
    /// RFC 3339; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(format = DateTime)]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[!-~]{1,20}$")]
    parent: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    owner: Option<Option<String>>,
    /// The owning account; `null` detaches the tag.
    #[serde(default, deserialize_with = "present")]
    account_id: Option<Option<i32>>,
}

/// Distinguishes `"field": null` (clear it) from an absent field (keep it).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An account named in the body must exist (400 with `field`, as for any other invalid value).
async fn check_account(state: &AppState, body: &TagBody) -> Result<(), ApiError> {
    if let Some(Some(id)) = body.account_id {
        if state.store.account(id).await?.is_none() {
            return Err(ApiError::InvalidParams {
                field: "account_id".into(),
                message: format!("account {id} does not exist"),
            });
        }
    }
    Ok(())
}

fn validate_tag(field: &str, tag: &str) -> Result<(), ApiError> {
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || !tag.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidParams {
            field: field.into(),
            message: format!("{field} must be 1-{MAX_TAG_LEN} printable ASCII characters"),
        });
    }
    Ok(())
}

fn fields(body: &TagBody) -> Result<IdTagFields, ApiError> {
    if let Some(status) = &body.status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::InvalidParams {
                field: "status".into(),
                message: "status is Accepted, Blocked, Expired or Invalid".into(),
            });
        }
    }
    if let Some(Some(parent)) = &body.parent {
        validate_tag("parent", parent)?;
    }
    let expires_at = match &body.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(text)) => Some(Some(parse_time("expires_at", text)?)),
    };
    Ok(IdTagFields {
        status: body.status.clone(),
        expires_at,
        parent: body.parent.clone(),
        owner: body.owner.clone(),
        account_id: body.account_id,
    })
}

/// `GET /api/id-tags`
#[utoipa::path(
    get,
    operation_id = "id_tags_list",
    path = "/api/id-tags",
    tag = "id-tags",
    responses(
        (status = 200, description = "Every id tag", body = crate::api::openapi::IdTagList),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items: Vec<Value> = state
        .store
        .list_id_tags()
        .await?
        .iter()
        .map(tag_json)
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `POST /api/id-tags`: 201, or 409 when the tag exists.
#[utoipa::path(
    post,
    operation_id = "id_tags_create",
    path = "/api/id-tags",
    tag = "id-tags",
    request_body = crate::api::openapi::IdTagCreate,
    responses(
        (status = 201, description = "Created", body = crate::api::openapi::IdTag),
        (status = 400, description = "Malformed body or an invalid field (an unknown `account_id` too)", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The tag exists already", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    state: web::Data<AppState>,
    body: JsonObject<TagBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tag = body.tag.clone().ok_or_else(|| ApiError::InvalidParams {
        field: "tag".into(),
        message: "`tag` is required".into(),
    })?;
    validate_tag("tag", &tag)?;
    let fields = fields(&body)?;
    check_account(&state, &body).await?;
    match state.store.create_id_tag(&tag, fields).await? {
        Some(row) => Ok(HttpResponse::Created().json(tag_json(&row))),
        None => Err(ApiError::Conflict(format!(
            "id tag {tag} exists already; PATCH it"
        ))),
    }
}

/// `GET /api/id-tags/{tag}`
#[utoipa::path(
    get,
    operation_id = "id_tags_get",
    path = "/api/id-tags/{tag}",
    tag = "id-tags",
    params(
        ("tag" = String, Path, description = "The id tag"),
    ),
    responses(
        (status = 200, description = "The id tag", body = crate::api::openapi::IdTag),
        (status = 404, description = "Unknown id tag", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get(
    state: web::Data<AppState>,
    tag: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = state
        .store
        .id_tag(&tag)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("id tag {tag} is unknown")))?;
    Ok(HttpResponse::Ok().json(tag_json(&row)))
}

/// `PATCH /api/id-tags/{tag}`
#[utoipa::path(
    patch,
    operation_id = "id_tags_patch",
    path = "/api/id-tags/{tag}",
    tag = "id-tags",
    params(
        ("tag" = String, Path, description = "The id tag"),
    ),
    request_body = TagBody,
    responses(
        (status = 200, description = "The id tag, changed", body = crate::api::openapi::IdTag),
        (status = 400, description = "Malformed body or an invalid field (an unknown `account_id` too)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown id tag", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn patch(
    state: web::Data<AppState>,
    tag: web::Path<String>,
    body: JsonObject<TagBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    if body.tag.as_deref().is_some_and(|t| t != tag.as_str()) {
        return Err(ApiError::InvalidParams {
            field: "tag".into(),
            message: "a tag cannot be renamed; create the new one".into(),
        });
    }
    let fields = fields(&body)?;
    check_account(&state, &body).await?;
    let row = state
        .store
        .patch_id_tag(&tag, fields)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("id tag {tag} is unknown")))?;
    Ok(HttpResponse::Ok().json(tag_json(&row)))
}

/// `DELETE /api/id-tags/{tag}`: 204.
#[utoipa::path(
    delete,
    operation_id = "id_tags_delete",
    path = "/api/id-tags/{tag}",
    tag = "id-tags",
    params(
        ("tag" = String, Path, description = "The id tag"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Unknown id tag", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    state: web::Data<AppState>,
    tag: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if state.store.delete_id_tag(&tag).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound(format!("id tag {tag} is unknown")))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = IdTagLookup)]
pub struct LookupBody {
    /// The card's UID, compared case-insensitively.
    #[schema(min_length = 1)]
    uid: String,
}

/// `POST /api/id-tags/lookup {"uid":"04A2B3C4"}`: the tag of an RFID card (case-insensitive) and its owner.
#[utoipa::path(
    post,
    operation_id = "id_tags_lookup",
    path = "/api/id-tags/lookup",
    tag = "id-tags",
    request_body = LookupBody,
    responses(
        (status = 200, description = "The tag of the card (compared case-insensitively)", body = crate::api::openapi::IdTag),
        (status = 400, description = "Malformed JSON body, or an invalid field (`field` names it)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No id tag for that card", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid bearer token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = crate::api::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn lookup(
    state: web::Data<AppState>,
    body: JsonObject<LookupBody>,
) -> Result<HttpResponse, ApiError> {
    let row = state
        .store
        .id_tag_by_uid(&body.uid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no id tag for card {}", body.uid.trim())))?;
    Ok(HttpResponse::Ok().json(tag_json(&row)))
}
