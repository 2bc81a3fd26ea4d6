//! The OpenAPI 3.1 document (`GET /api/openapi.json`, no token), generated from the code: every handler
//! carries a `#[utoipa::path]` annotation and [`ApiDoc`] collects them. The schemas below describe bodies that
//! handlers build with `json!` or validate by hand from a `serde_json::Value`; they exist only for the document
//! and are never constructed.
//!
//! `tests/api/openapi.rs` fails when a route of [`super::configure`] is missing here (or a documented path is
//! not routed); CI runs schemathesis against a live node with this document (README, "OpenAPI").

use std::collections::HashMap;
use std::sync::LazyLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub use schemas::*;

/// The collected document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gatehouse",
        description = "Device gateway for TM20 terminals, OCPP 1.6J charge points and Shenxing panels. \
            Every `/api/` call needs `Authorization: Bearer <GATEHOUSE_API_TOKEN>`; errors answer \
            `{\"error\":<code>,\"message\":…,\"field\"?}`. Paths also work with a trailing slash. The appliance \
            endpoints' calls (`billing-endpoints`) carry JWTs of their own instead."
    ),
    paths(
        super::dashboard,
        super::health::healthz,
        super::health::readyz,
        super::metrics_with_token,
        serve,
        super::websocket::tm20,
        tm20_chat,
        super::events::subscribe,
        super::websocket::ocpp,
        ocpp_ws,
        super::echo::echo,
        super::panels::websocket,
        panels_ws,
        super::panels::status_list,
        super::panels::status_one,
        manager_status_list,
        manager_status_one,
        super::accounts::rfid_login,
        super::terminals::list,
        super::terminals::detail,
        super::terminals::patch,
        super::terminals::put,
        super::commands::send,
        super::terminals::users,
        super::terminals::logs,
        super::commands::list,
        super::commands::get,
        super::commands::cancel,
        super::terminals::connected,
        super::nodes::list,
        super::events::publish,
        super::chargers::list,
        super::chargers::detail,
        super::chargers::patch,
        super::chargers::put,
        super::chargers::action,
        super::chargers::messages,
        super::chargers::transactions_of,
        super::chargers::transactions,
        super::chargers::transaction,
        super::id_tags::list,
        super::id_tags::create,
        super::id_tags::lookup,
        super::id_tags::get,
        super::id_tags::patch,
        super::id_tags::delete,
        super::accounts::list,
        super::accounts::create,
        super::accounts::get,
        super::accounts::patch,
        super::accounts::delete,
        super::subscriptions::list_products,
        super::subscriptions::create_product,
        super::subscriptions::get_product,
        super::subscriptions::patch_product,
        super::subscriptions::delete_product,
        super::subscriptions::subscribe,
        super::panels::list,
        super::panels::detail,
        super::panels::put,
        super::panels::request,
        super::subscriptions::list,
        super::subscriptions::get,
        super::subscriptions::cancel,
        super::billing::challenge,
        super::billing::verify,
        super::billing::start,
        super::billing::finish,
        super::billing::list_rooms,
        super::billing::create_room,
        super::billing::get_room,
        super::billing::patch_room,
        super::billing::delete_room,
        super::billing::list_adjustments,
        super::billing::create_adjustment,
        super::billing::rotate_totp,
        super::billing::list_endpoints,
        super::billing::create_endpoint,
        super::billing::get_endpoint,
        super::billing::patch_endpoint,
        super::billing::delete_endpoint,
        super::billing::list_appliances,
        super::billing::create_appliance,
        super::billing::get_appliance,
        super::billing::patch_appliance,
        super::billing::delete_appliance,
        super::billing::list_runs,
        super::billing::abort_run,
        super::billing::list_payments,
        super::billing::import_payments,
    ),
    // Query parameter types: utoipa collects the schemas of bodies by itself, not those of parameters.
    components(schemas(Deliver, Scope, Direction, CommandState, SubscriptionState, RunState)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "operations", description = "Dashboard, probes, metrics and this document"),
        (name = "websocket", description = "WebSocket endpoints for devices and subscribers (GET + upgrade)"),
        (name = "terminals", description = "TM20 terminals and their commands"),
        (name = "commands", description = "The command audit trail and the offline queue"),
        (name = "chargers", description = "OCPP 1.6J charge points and transactions"),
        (name = "id-tags", description = "RFID / id tags"),
        (name = "accounts", description = "Accounts and RFID login"),
        (name = "subscriptions", description = "Products and subscriptions"),
        (name = "panels", description = "Shenxing panels (admin API)"),
        (name = "sxdm-manager", description = "SxDeviceManager-compatible status endpoints (`sxdmToken`)"),
        (name = "events", description = "Live events"),
        (name = "cluster", description = "Nodes and connected devices"),
        (name = "billing", description = "Rooms, endpoints, appliances, runs and payments (admin API; amounts in cents)"),
        (name = "billing-endpoints", description = "The appliance endpoints' calls: no admin token, JWTs of their own \
            in the body (signed with BILLING_JWT_SECRET; 503 without it)"),
    )
)]
pub struct ApiDoc;

/// Adds the security schemes the operations name.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin token, GATEHOUSE_API_TOKEN"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "rfid_login_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "RFID_LOGIN_TOKEN, a kiosk's token: accepted by POST /api/accounts/rfid-login only",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token_query",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The admin token as `?token=` (browsers' WebSocket API cannot set headers)",
            ))),
        );
        components.add_security_scheme(
            "sxdm_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "sxdmToken",
                "SXDM_AUTH_TOKEN; needed only when it is configured",
            ))),
        );
    }
}

/// Every documented path template, split in segments, with its methods. The completeness test keeps the
/// document equal to the route table, so this is also what is routed.
static ROUTED: LazyLock<Vec<(Vec<String>, Vec<&'static str>)>> = LazyLock::new(|| {
    ApiDoc::openapi()
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let methods = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
            ];
            (
                segments(path).map(str::to_owned).collect(),
                methods
                    .iter()
                    .filter(|(_, on)| *on)
                    .map(|(m, _)| *m)
                    .collect(),
            )
        })
        .collect()
});

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

/// The methods of `path` for an `Allow` header, as the document describes them: those of the concrete template
/// equal to it when there is one (see [`concrete_methods`]), else those of every template it matches. Empty
/// when none matches.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    if let Some(methods) = concrete_methods(path) {
        return methods;
    }
    let wanted: Vec<&str> = segments(path).collect();
    let mut allowed: Vec<&'static str> = Vec::new();
    for (template, methods) in ROUTED.iter() {
        let matches = template.len() == wanted.len()
            && template
                .iter()
                .zip(&wanted)
                .all(|(t, w)| is_param(t) || t.as_str() == *w);
        if matches {
            for method in methods {
                if !allowed.contains(method) {
                    allowed.push(method);
                }
            }
        }
    }
    allowed
}

/// The methods of the concrete (parameter-free) template equal to `path`, if there is one. OpenAPI matches
/// concrete paths before templated ones: `GET /api/subscriptions/subscribe` is a wrong method on
/// `/api/subscriptions/subscribe`, not a subscription id.
pub fn concrete_methods(path: &str) -> Option<Vec<&'static str>> {
    CONCRETE.get(&segment_key(path)).cloned()
}

/// The concrete templates of [`ROUTED`] by [`segment_key`]: every REST call asks (see
/// `api::concrete_paths_first`), so it is one hash look-up rather than a scan of the route table. The first
/// template of a path wins, as a scan in order would have it.
static CONCRETE: LazyLock<HashMap<String, Vec<&'static str>>> = LazyLock::new(|| {
    let mut concrete = HashMap::new();
    for (template, methods) in ROUTED.iter() {
        if !template.iter().any(|t| is_param(t)) {
            concrete
                .entry(template.join("/"))
                .or_insert_with(|| methods.clone());
        }
    }
    concrete
});

/// A path's non-empty segments joined by `/`, so `/api//x/` and `/api/x` are the same key.
fn segment_key(path: &str) -> String {
    segments(path).collect::<Vec<_>>().join("/")
}

/// Rendered once: the document does not change while the process runs.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|err| format!("{{\"error\":\"internal_error\",\"message\":\"{err}\"}}"))
});

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    operation_id = "serve",
    path = "/api/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}

// The second paths of routes served by one handler: utoipa documents one path per function, so these stubs
// carry the other path's annotation. They are never routed.

/// A TM20 terminal connects (the vendor's path).
#[utoipa::path(get, operation_id = "tm20_chat", path = "/pub/chat", tag = "websocket",
    responses((status = 101, description = "Switching Protocols: the socket of a TM20 terminal")))]
#[allow(dead_code)]
fn tm20_chat() {}

/// A charge point connects (alternative path).
#[utoipa::path(get, operation_id = "ocpp_ws", path = "/ws/ocpp/{id}", tag = "websocket",
    params(("id" = String, Path, description = "Charge point id (1-48 characters of A-Z a-z 0-9 . _ - : * # @ +)")),
    responses(
        (status = 101, description = "Switching Protocols: OCPP 1.6J (subprotocol `ocpp1.6`)"),
        (status = 400, description = "Bad id or no `ocpp1.6` subprotocol", body = ErrorBody),
        (status = 401, description = "Security profile 1/2: missing or wrong HTTP Basic password", body = ErrorBody),
        (status = 403, description = "The charge point is blocked", body = ErrorBody),
        (status = 404, description = "Unknown charge point and OCPP_AUTO_REGISTER=0", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn ocpp_ws() {}

/// A Shenxing panel connects (alternative path).
#[utoipa::path(get, operation_id = "panels_ws", path = "/ws/api/websocket", tag = "websocket",
    responses((status = 101, description = "Switching Protocols: the socket of a Shenxing panel")))]
#[allow(dead_code)]
fn panels_ws() {}

/// Every logged-in panel (the manager's other path).
#[utoipa::path(get, operation_id = "manager_status_list", path = "/openapi/manager/status", tag = "sxdm-manager",
    security(("sxdm_token" = []), ()),
    responses(
        (status = 200, description = "Every logged-in panel", body = Vec<PanelStatus>),
        (status = 401, description = "SXDM_AUTH_TOKEN is set and `sxdmToken` is missing or wrong", body = ManagerError),
    ))]
#[allow(dead_code)]
fn manager_status_list() {}

/// One panel's status (the manager's other path).
#[utoipa::path(get, operation_id = "manager_status_one", path = "/openapi/manager/status/{sn}", tag = "sxdm-manager",
    security(("sxdm_token" = []), ()),
    params(("sn" = String, Path, description = "Panel serial number")),
    responses(
        (status = 200, description = "The panel's status (`online:false` when it is not connected)", body = PanelStatus),
        (status = 401, description = "SXDM_AUTH_TOKEN is set and `sxdmToken` is missing or wrong", body = ManagerError),
    ))]
#[allow(dead_code)]
fn manager_status_one() {}

/// Schema-only types: the shapes of bodies built with `json!` or read from a `serde_json::Value`.
#[allow(dead_code)]
mod schemas {
    use std::collections::HashMap;

    use serde::{Deserialize, Serialize};
    use serde_json::Value;
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    use utoipa::ToSchema;

    /// Every error answer of the REST API (`ApiError`).
    #[derive(ToSchema)]
    pub struct ErrorBody {
        /// Stable machine-readable code (`unauthorized`, `bad_request`, `invalid_params`, `not_found`, …).
        pub error: String,
        /// A sentence for people.
        pub message: String,
        /// The input to blame, when there is one.
        pub field: Option<String>,
    }

    /// The vendor manager's error answers (`{"status":401,"msg":"请求认证失败"}`, …).
    #[derive(ToSchema)]
    pub struct ManagerError {
        pub status: i64,
        pub msg: String,
    }

    /// A probe's answer.
    #[derive(ToSchema)]
    pub struct Status {
        /// `ok` or `ready`.
        pub status: String,
    }

    /// One connected device and the node holding it.
    #[derive(ToSchema)]
    pub struct Connected {
        /// `tm20`, `ocpp1.6` or `sxdm`.
        pub protocol: String,
        pub sn: String,
        pub remote_addr: String,
        #[schema(format = DateTime)]
        pub connected_at: String,
        pub node: String,
    }

    #[derive(ToSchema)]
    pub struct ConnectedList {
        pub items: Vec<Connected>,
    }

    /// A terminal as listed.
    #[derive(ToSchema)]
    pub struct Terminal {
        pub sn: String,
        /// Node holding the terminal's socket, when online.
        pub node: Option<String>,
        pub name: Option<String>,
        pub model: Option<String>,
        pub firmware: Option<String>,
        pub is_active: bool,
        pub is_whitelisted: bool,
        pub online: bool,
        #[schema(format = DateTime)]
        pub last_seen: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct TerminalList {
        pub items: Vec<Terminal>,
    }

    /// A terminal with its device information and connection.
    #[derive(ToSchema)]
    pub struct TerminalDetail {
        pub sn: String,
        pub node: Option<String>,
        pub name: Option<String>,
        pub model: Option<String>,
        pub firmware: Option<String>,
        pub is_active: bool,
        pub is_whitelisted: bool,
        pub online: bool,
        #[schema(format = DateTime)]
        pub last_seen: Option<String>,
        /// From `reg`, merged with the last `getdevinfo`.
        pub devinfo: Option<Value>,
        #[schema(format = DateTime)]
        pub created_at: String,
        #[schema(format = DateTime)]
        pub updated_at: String,
        pub connection: Option<Connected>,
    }

    /// Stored users with their credential slots.
    #[derive(ToSchema)]
    pub struct UserList {
        /// `enrollid, name, admin, is_enabled, updated_at, credentials[]` (`backupnum, kind, has_record,
        /// updated_at`, `record` with `records=true`).
        pub items: Vec<HashMap<String, Value>>,
    }

    /// A page of attendance logs, newest first.
    #[derive(ToSchema)]
    pub struct LogPage {
        /// `id, enrollid, time, mode, inout, event, temp, verifymode, name, received_at`.
        pub items: Vec<HashMap<String, Value>>,
        /// The `before` of the next page; null on the last one.
        pub next_before: Option<String>,
    }

    /// `POST /api/accounts`: `name` and `email` are required.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"name": "Ana Lima", "email": "ana@example.com"}))]
    pub struct AccountCreate {
        #[schema(min_length = 1)]
        pub name: String,
        /// Unique, compared case-insensitively, stored lower-case.
        pub email: String,
        pub is_active: Option<bool>,
    }

    /// `POST /api/subscriptions/products`.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"name": "Monthly", "description": "Unlimited charging", "price_cents": 1990, "period_days": 30}))]
    pub struct ProductCreate {
        #[schema(min_length = 1)]
        pub name: String,
        pub description: Option<String>,
        #[schema(minimum = 0)]
        pub price_cents: i64,
        #[schema(minimum = 1, maximum = 3660)]
        pub period_days: i32,
        pub is_active: Option<bool>,
    }

    /// `POST /api/id-tags`: `tag` is required.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"tag": "04A2B3C4", "owner": "Ana"}))]
    pub struct IdTagCreate {
        #[schema(pattern = "^[!-~]{1,20}$")]
        pub tag: String,
        pub status: Option<TagStatus>,
        /// RFC 3339.
        #[schema(format = DateTime)]
        pub expires_at: Option<String>,
        #[schema(pattern = "^[!-~]{1,20}$")]
        pub parent: Option<String>,
        pub owner: Option<String>,
        /// An existing account (400 with `field` otherwise).
        pub account_id: Option<i32>,
    }

    /// `POST /api/terminals/{sn}/command`.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"command": "opendoor", "params": {"doornum": 1}}))]
    pub struct CommandRequest {
        /// A TM20 command name (`opendoor`, `getuserlist`, … see README).
        pub command: String,
        /// The command's parameters, with the protocol's own field names.
        pub params: Option<HashMap<String, Value>>,
        /// For `deliver=queued`: seconds (more than 0, at most a year) before the queued command expires.
        #[schema(exclusive_minimum = 0.0, maximum = 31622400.0)]
        pub expires_in: Option<f64>,
    }

    /// A command the device answered.
    #[derive(ToSchema)]
    pub struct CommandAnswer {
        #[schema(format = Uuid)]
        pub id: String,
        pub command: String,
        /// The terminal's own verdict.
        pub result: bool,
        pub reply: Value,
        /// Parameters the command does not use.
        pub ignored: Vec<String>,
        pub elapsed_ms: u64,
    }

    /// A command stored for later (`wait=false` or `deliver=queued`).
    #[derive(ToSchema)]
    pub struct Queued {
        #[schema(format = Uuid)]
        pub id: String,
        /// `queued`.
        pub state: String,
    }

    /// One command of the audit trail.
    #[derive(ToSchema)]
    pub struct Command {
        #[schema(format = Uuid)]
        pub id: String,
        pub device: String,
        pub device_kind: String,
        pub command: String,
        pub params: Value,
        /// `queued`, `sent`, `succeeded`, `failed`, `timed_out`, `expired` or `cancelled`.
        pub state: String,
        pub reply: Value,
        pub error: Option<String>,
        #[schema(format = DateTime)]
        pub requested_at: String,
        #[schema(format = DateTime)]
        pub sent_at: Option<String>,
        #[schema(format = DateTime)]
        pub finished_at: Option<String>,
        /// `now` or `queued`.
        pub deliver: String,
        #[schema(format = DateTime)]
        pub expires_at: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct CommandList {
        pub items: Vec<Command>,
    }

    /// A live node.
    #[derive(ToSchema)]
    pub struct Node {
        pub node: String,
        pub name: String,
        pub address: String,
        #[schema(format = DateTime)]
        pub started_at: String,
        pub devices: u64,
        #[schema(format = DateTime)]
        pub last_seen: String,
    }

    #[derive(ToSchema)]
    pub struct NodeList {
        pub items: Vec<Node>,
    }

    /// What was published.
    #[derive(ToSchema)]
    pub struct Published {
        pub published: bool,
        /// The topic (`room:<name>` for a room).
        pub topic: Option<String>,
        #[schema(format = Uuid)]
        pub subscriber: Option<String>,
    }

    /// `POST /api/chargers/{id}/action`.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"action": "Reset", "params": {"type": "Soft"}}))]
    pub struct ActionRequest {
        /// An OCPP 1.6 action (`Reset`, `RemoteStartTransaction`, …) or an alias (`reset`, `remote_start`, …).
        pub action: String,
        /// The action's payload, with OCPP's camelCase field names; validated against the official schema.
        pub params: Option<HashMap<String, Value>>,
        /// For `deliver=queued`: seconds (more than 0, at most a year) before the queued action expires.
        #[schema(exclusive_minimum = 0.0, maximum = 31622400.0)]
        pub expires_in: Option<f64>,
    }

    /// A charge point's answer to an action.
    #[derive(ToSchema)]
    pub struct ActionAnswer {
        #[schema(format = Uuid)]
        pub id: String,
        pub action: String,
        /// `result` (a CALLRESULT) or `error` (a CALLERROR).
        pub outcome: String,
        /// The CALLRESULT payload.
        pub payload: Option<Value>,
        /// The CALLERROR: `code`, `description`, `details`.
        pub error: Option<Value>,
        pub elapsed_ms: u64,
    }

    /// Charge points: `id, vendor, model, firmware, online, node, last_seen, connectors[]`.
    #[derive(ToSchema)]
    pub struct ChargerList {
        pub items: Vec<HashMap<String, Value>>,
    }

    /// A charge point in detail: boot info, registration status, security profile, `has_password`, blocked,
    /// notes, connectors, active transactions, last meter values, configuration, connection, …
    #[derive(ToSchema)]
    pub struct ChargerDetail {
        pub id: String,
        pub online: bool,
        pub has_password: bool,
        pub blocked: bool,
        pub security_profile: i64,
        pub registration_status: String,
        pub connectors: Vec<HashMap<String, Value>>,
    }

    /// A page of the OCPP message log, newest first.
    #[derive(ToSchema)]
    pub struct MessagePage {
        /// `id, direction, type, action, message_id, payload, at`, with `response` or `request`.
        pub items: Vec<HashMap<String, Value>>,
        pub next_before: Option<String>,
    }

    /// Transactions: `id, charger, connector_id, id_tag, meter_start, started_at, meter_stop, stopped_at,
    /// energy_wh, active, …`.
    #[derive(ToSchema)]
    pub struct TransactionList {
        pub items: Vec<HashMap<String, Value>>,
    }

    /// A transaction with its meter values.
    #[derive(ToSchema)]
    pub struct Transaction {
        pub id: i64,
        pub active: bool,
        pub meter_values: Vec<HashMap<String, Value>>,
    }

    /// An id tag.
    #[derive(ToSchema)]
    pub struct IdTag {
        pub tag: String,
        /// `Accepted`, `Blocked`, `Expired` or `Invalid`.
        pub status: String,
        #[schema(format = DateTime)]
        pub expires_at: Option<String>,
        pub parent: Option<String>,
        pub owner: Option<String>,
        pub account_id: Option<i64>,
        #[schema(format = DateTime)]
        pub created_at: String,
        #[schema(format = DateTime)]
        pub updated_at: String,
    }

    #[derive(ToSchema)]
    pub struct IdTagList {
        pub items: Vec<IdTag>,
    }

    /// A subscription plan.
    #[derive(ToSchema)]
    pub struct Product {
        pub id: i64,
        pub name: String,
        pub description: Option<String>,
        pub price_cents: i64,
        pub period_days: i64,
        pub is_active: bool,
        #[schema(format = DateTime)]
        pub created_at: String,
        #[schema(format = DateTime)]
        pub updated_at: String,
    }

    #[derive(ToSchema)]
    pub struct ProductList {
        pub items: Vec<Product>,
    }

    /// A subscription; `state` is evaluated when read.
    #[derive(ToSchema)]
    pub struct Subscription {
        pub id: i64,
        pub account_id: i64,
        pub product_id: i64,
        pub product_name: Option<String>,
        pub price_cents: i64,
        #[schema(format = DateTime)]
        pub starts_at: String,
        #[schema(format = DateTime)]
        pub ends_at: String,
        /// `active`, `cancelled` or `expired`.
        pub state: String,
        #[schema(format = DateTime)]
        pub cancelled_at: Option<String>,
        #[schema(format = DateTime)]
        pub created_at: String,
    }

    #[derive(ToSchema)]
    pub struct SubscriptionList {
        pub items: Vec<Subscription>,
    }

    /// An account as listed.
    #[derive(ToSchema)]
    pub struct AccountItem {
        pub id: i64,
        pub name: String,
        pub email: String,
        pub is_active: bool,
        #[schema(format = DateTime)]
        pub created_at: String,
        #[schema(format = DateTime)]
        pub updated_at: String,
    }

    #[derive(ToSchema)]
    pub struct AccountList {
        pub items: Vec<AccountItem>,
    }

    /// An account with its id tags and active subscriptions.
    #[derive(ToSchema)]
    pub struct Account {
        pub id: i64,
        pub name: String,
        pub email: String,
        pub is_active: bool,
        #[schema(format = DateTime)]
        pub created_at: String,
        #[schema(format = DateTime)]
        pub updated_at: String,
        pub id_tags: Vec<String>,
        pub active_subscriptions: Vec<Subscription>,
    }

    /// The account of an RFID card and the tag that matched.
    #[derive(ToSchema)]
    pub struct RfidLogin {
        pub id: i64,
        pub name: String,
        pub email: String,
        pub is_active: bool,
        pub id_tags: Vec<String>,
        pub active_subscriptions: Vec<Subscription>,
        pub tag: String,
    }

    /// A Shenxing panel as the admin API shows it (the secret never).
    #[derive(ToSchema)]
    pub struct Panel {
        pub sn: String,
        pub name: Option<String>,
        pub is_active: bool,
        pub is_whitelisted: bool,
        pub has_secret: bool,
        pub online: bool,
        pub node: Option<String>,
        pub remote_addr: Option<String>,
        #[schema(format = DateTime)]
        pub last_login_at: Option<String>,
        #[schema(format = DateTime)]
        pub last_seen: Option<String>,
        #[schema(format = DateTime)]
        pub created_at: String,
    }

    #[derive(ToSchema)]
    pub struct PanelList {
        pub items: Vec<Panel>,
    }

    /// `POST /api/panels/{sn}/request`: one call of the panel's own API.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"method": "GET", "path": "/api/devices/status"}))]
    pub struct PanelRequest {
        /// GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS (any case).
        pub method: String,
        /// The panel API path, starting with `/`, without spaces, at most 2048 characters.
        #[schema(pattern = "^/", max_length = 2048)]
        pub path: String,
        /// The JSON body of the call.
        pub body: Option<Value>,
        /// For `deliver=queued`: seconds (more than 0, at most a year) before the queued call expires.
        #[schema(exclusive_minimum = 0.0, maximum = 31622400.0)]
        pub expires_in: Option<f64>,
    }

    /// The panel's answer.
    #[derive(ToSchema)]
    pub struct PanelAnswer {
        #[schema(format = Uuid)]
        pub id: String,
        /// The method and path.
        pub command: String,
        /// The panel's HTTP-like status.
        pub status: i64,
        pub body: Value,
        pub elapsed_ms: u64,
    }

    /// A panel's status as the manager reports it.
    #[derive(Serialize, ToSchema)]
    pub struct PanelStatus {
        pub online: bool,
        pub sn: String,
        /// Epoch milliseconds of the panel's last frame.
        #[serde(rename = "lastHeartBeatTime")]
        pub last_heart_beat_time: Option<i64>,
    }
    /// Every logged-in panel's status.
    #[derive(ToSchema)]
    #[schema(as = PanelStatusList)]
    pub struct PanelStatusList(pub Vec<PanelStatus>);

    /// The manager's time-out answers (`{"error":"Timeout"}`, `{"error":"Device offline or not authed"}`).
    #[derive(ToSchema)]
    pub struct PanelTimeout {
        pub error: String,
    }

    /// An error answer in either form: ours (`error`, `message`) or the vendor manager's (`status`, `msg`).
    #[derive(ToSchema)]
    pub struct AnyError {
        pub error: Option<String>,
        pub message: Option<String>,
        pub status: Option<i64>,
        pub msg: Option<String>,
    }

    /// `POST /api/rooms`.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"key": 12345, "balance": 5000}))]
    pub struct RoomCreate {
        /// The room number (also the bank transfers' variable symbol).
        #[schema(minimum = 1)]
        pub key: i64,
        /// Cents (default 0).
        #[schema(minimum = 0, maximum = 1_000_000_000)]
        pub balance: Option<i64>,
    }

    /// A room and its prepaid balance.
    #[derive(ToSchema)]
    pub struct Room {
        pub key: i64,
        /// Cents.
        pub balance: i64,
        #[schema(format = DateTime)]
        pub created_at: String,
        #[schema(format = DateTime)]
        pub updated_at: String,
    }

    #[derive(ToSchema)]
    pub struct RoomList {
        pub items: Vec<Room>,
    }

    /// A manual change of a room's balance.
    #[derive(ToSchema)]
    pub struct Adjustment {
        pub id: i64,
        pub room: i64,
        /// Signed cents.
        pub amount: i64,
        pub reason: String,
        #[schema(format = DateTime)]
        pub created_at: String,
    }

    #[derive(ToSchema)]
    pub struct AdjustmentList {
        pub items: Vec<Adjustment>,
    }

    /// The room after an adjustment, and the adjustment.
    #[derive(ToSchema)]
    pub struct Adjusted {
        pub room: Room,
        pub adjustment: Adjustment,
    }

    /// A room's new TOTP secret (RFC 6238, SHA-1, 6 digits, 30 s).
    #[derive(ToSchema)]
    pub struct TotpSecret {
        /// Base32.
        pub secret: String,
        /// `otpauth://totp/…`, for an authenticator app.
        pub uri: String,
    }

    /// `POST /api/endpoints`.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"id": 1, "name": "Basement"}))]
    pub struct EndpointCreate {
        #[schema(minimum = 1)]
        pub id: i32,
        #[schema(min_length = 1, max_length = 64)]
        pub name: String,
    }

    /// An endpoint device; bumping `token_version` revokes every token it holds.
    #[derive(ToSchema)]
    pub struct Endpoint {
        pub id: i64,
        pub name: String,
        pub token_version: i64,
        #[schema(format = DateTime)]
        pub created_at: String,
        #[schema(format = DateTime)]
        pub updated_at: String,
    }

    #[derive(ToSchema)]
    pub struct EndpointList {
        pub items: Vec<Endpoint>,
    }

    /// `POST /api/appliances`.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"name": "washer", "price_per_unit": 25}))]
    pub struct ApplianceCreate {
        #[schema(min_length = 1, max_length = 64)]
        pub name: String,
        /// Cents.
        #[schema(minimum = 0, maximum = 1_000_000_000)]
        pub price_per_unit: i64,
    }

    /// An appliance and its price.
    #[derive(ToSchema)]
    pub struct Appliance {
        pub name: String,
        /// Cents.
        pub price_per_unit: i64,
        #[schema(format = DateTime)]
        pub created_at: String,
        #[schema(format = DateTime)]
        pub updated_at: String,
    }

    #[derive(ToSchema)]
    pub struct ApplianceList {
        pub items: Vec<Appliance>,
    }

    /// One run of an appliance; prices and refund in cents.
    #[derive(ToSchema)]
    pub struct Run {
        pub id: i64,
        pub room: i64,
        pub endpoint: i64,
        pub appliance: String,
        pub state: RunState,
        pub initial_units: i64,
        /// The reservation.
        pub initial_price: i64,
        pub final_units: Option<i64>,
        pub final_price: Option<i64>,
        pub refund: Option<i64>,
        #[schema(format = DateTime)]
        pub started_at: String,
        #[schema(format = DateTime)]
        pub finished_at: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct RunList {
        pub items: Vec<Run>,
    }

    /// A run's state.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum RunState {
        Running,
        Finished,
        Aborted,
    }

    /// An imported bank transfer: credited (`valid: true`, with `room`) or rejected (`valid: false`, with
    /// `reason`: `unknown_room`, `foreign_currency`, `invalid_amount`, `non_positive_amount`,
    /// `invalid_reference`).
    #[derive(ToSchema)]
    pub struct Payment {
        pub valid: bool,
        pub id: i64,
        pub transaction_id: String,
        pub room: Option<i64>,
        /// Cents; null when it could not be read.
        pub amount: Option<i64>,
        pub currency: String,
        /// The variable symbol.
        pub reference: String,
        pub reason: Option<String>,
        #[schema(format = DateTime)]
        pub created_at: String,
    }

    #[derive(ToSchema)]
    pub struct PaymentList {
        pub items: Vec<Payment>,
    }

    /// One transaction of the bank's JSON. Other fields are ignored.
    #[derive(Deserialize, ToSchema)]
    #[schema(example = json!({"id": "10001", "amount": "50.00", "currency": "CZK", "vs": "12345"}))]
    pub struct BankTransaction {
        /// The bank's transaction id (a string of 1-128 characters, or an integer); imported once.
        #[schema(schema_with = transaction_id_schema)]
        pub id: Value,
        /// Currency units, a string or a number; anything else is recorded as invalid (`invalid_amount`).
        pub amount: Value,
        pub currency: Option<String>,
        /// The variable symbol: the room key (a string or a number; anything else is `invalid_reference`).
        pub vs: Option<Value>,
    }

    /// What an import did.
    #[derive(ToSchema)]
    pub struct ImportSummary {
        /// Credited to a room.
        pub imported: u64,
        /// Seen before, or twice in this file.
        pub duplicates: u64,
        /// Recorded as invalid, crediting nothing.
        pub invalid: u64,
    }

    /// A token of the appliance endpoints' API (a JWT).
    #[derive(ToSchema)]
    pub struct BillingToken {
        pub token: String,
    }

    /// An appliance's name and price per unit (cents).
    #[derive(ToSchema)]
    pub struct AppliancePrice {
        pub name: String,
        pub value: i64,
    }

    /// A room code accepted: the access token, the balance (cents) and the appliances.
    #[derive(ToSchema)]
    pub struct Verified {
        pub token: String,
        pub balance: i64,
        pub appliances: Vec<AppliancePrice>,
    }

    /// A run started: the room's new balance (cents) and the run's start token.
    #[derive(ToSchema)]
    pub struct Started {
        pub newbalance: i64,
        pub token: String,
    }

    /// How a run ended.
    #[derive(ToSchema)]
    pub struct RunEnd {
        pub status: RunState,
    }

    /// The room code: six digits as a number or a string.
    pub fn auth_code_schema() -> Schema {
        Schema::OneOf(
            OneOfBuilder::new()
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0))
                        .maximum(Some(999_999)),
                )
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some("^[0-9]{1,6}$")),
                )
                .build(),
        )
    }

    /// A price in currency units: a number or a decimal string.
    pub fn price_schema() -> Schema {
        Schema::OneOf(
            OneOfBuilder::new()
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Number)
                        .minimum(Some(0))
                        .maximum(Some(10_000_000)),
                )
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(r"^\s*\+?[0-9]+(\.[0-9]+)?\s*$")),
                )
                .build(),
        )
    }

    /// A bank transaction id: a non-empty string or an integer.
    pub fn transaction_id_schema() -> Schema {
        Schema::OneOf(
            OneOfBuilder::new()
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(128)),
                )
                .item(ObjectBuilder::new().schema_type(Type::Integer))
                .build(),
        )
    }

    /// `deliver`: when the device is offline, refuse (`now`, the default: 409) or keep the call (`queued`).
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Deliver {
        Now,
        Queued,
    }

    /// `scope` of `GET /api/connected`.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Scope {
        Local,
        Cluster,
    }

    /// `direction` of the OCPP message log.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Direction {
        In,
        Out,
    }

    /// A command's state.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum CommandState {
        Queued,
        Sent,
        Succeeded,
        Failed,
        TimedOut,
        Expired,
        Cancelled,
    }

    /// A charge point's registration status (the BootNotification answer).
    #[derive(Serialize, Deserialize, ToSchema)]
    pub enum RegistrationStatus {
        Accepted,
        Pending,
        Rejected,
    }

    /// An id tag's status.
    #[derive(Serialize, Deserialize, ToSchema)]
    pub enum TagStatus {
        Accepted,
        Blocked,
        Expired,
        Invalid,
    }

    /// A subscription's state.
    #[derive(Serialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum SubscriptionState {
        Active,
        Cancelled,
        Expired,
    }
}

#[cfg(test)]
mod tests {
    use super::{allowed_methods, concrete_methods};

    #[test]
    fn concrete_paths_are_found_however_slashes_are_written() {
        assert_eq!(
            concrete_methods("/api/subscriptions/subscribe"),
            Some(vec!["POST"])
        );
        assert_eq!(
            concrete_methods("//api/subscriptions//subscribe/"),
            Some(vec!["POST"])
        );
        // A value of a template's parameter is not a concrete path.
        assert_eq!(concrete_methods("/api/subscriptions/42"), None);
        assert_eq!(concrete_methods("/api/terminals/SN1/command"), None);
        assert_eq!(allowed_methods("/api/terminals/SN1/command"), vec!["POST"]);
    }
}
