//! OCPP 1.6J operations the central system sends to a charge point (the 19 core ones).
//!
//! Operators name an action and give its params over REST; [`parse_action`] checks the params
//! exactly against the official request schema (types, enums, `maxLength`, `multipleOf`,
//! `format`, required fields, no unknown properties), so a bad request is refused with a precise
//! field path before anything reaches a charger. [`CsAction::payload`] then writes the CALL
//! payload. [`check_response`] looks over what the charger answered, for the log.
//!
//! Params always use OCPP's camelCase field names; they are never lenient, because they come
//! from our own operators and tools, and silently "fixing" a charging limit is not a favour.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::framing::ErrorCode;
use super::messages::decode::{Cx, Decode, MaxLen, Obj, Problem};
use super::messages::{ocpp_enum, to_payload, ts, DataTransfer, DataTransferStatus, IdTagInfo};

// ---------------------------------------------------------------------------------------------
// Enumerations
// ---------------------------------------------------------------------------------------------

ocpp_enum! {
    /// ChangeAvailability.type.
    pub enum AvailabilityType {
        Inoperative = "Inoperative",
        Operative = "Operative",
    }
}

ocpp_enum! {
    /// ChargingProfile.chargingProfilePurpose.
    pub enum ChargingProfilePurpose {
        ChargePointMaxProfile = "ChargePointMaxProfile",
        TxDefaultProfile = "TxDefaultProfile",
        TxProfile = "TxProfile",
    }
}

ocpp_enum! {
    /// ChargingProfile.chargingProfileKind.
    pub enum ChargingProfileKind {
        Absolute = "Absolute",
        Recurring = "Recurring",
        Relative = "Relative",
    }
}

ocpp_enum! {
    /// ChargingProfile.recurrencyKind.
    pub enum RecurrencyKind {
        Daily = "Daily",
        Weekly = "Weekly",
    }
}

ocpp_enum! {
    /// ChargingSchedule.chargingRateUnit: amperes or watts.
    pub enum ChargingRateUnit {
        A = "A",
        W = "W",
    }
}

ocpp_enum! {
    /// Reset.type.
    pub enum ResetType {
        Hard = "Hard",
        Soft = "Soft",
    }
}

ocpp_enum! {
    /// SendLocalList.updateType.
    pub enum UpdateType {
        Differential = "Differential",
        Full = "Full",
    }
}

ocpp_enum! {
    /// TriggerMessage.requestedMessage.
    pub enum MessageTrigger {
        BootNotification = "BootNotification",
        DiagnosticsStatusNotification = "DiagnosticsStatusNotification",
        FirmwareStatusNotification = "FirmwareStatusNotification",
        Heartbeat = "Heartbeat",
        MeterValues = "MeterValues",
        StatusNotification = "StatusNotification",
    }
}

ocpp_enum! {
    /// CancelReservation.conf status.
    pub enum CancelReservationStatus {
        Accepted = "Accepted",
        Rejected = "Rejected",
    }
}

ocpp_enum! {
    /// ChangeAvailability.conf status.
    pub enum AvailabilityStatus {
        Accepted = "Accepted",
        Rejected = "Rejected",
        Scheduled = "Scheduled",
    }
}

ocpp_enum! {
    /// ChangeConfiguration.conf status.
    pub enum ConfigurationStatus {
        Accepted = "Accepted",
        Rejected = "Rejected",
        RebootRequired = "RebootRequired",
        NotSupported = "NotSupported",
    }
}

ocpp_enum! {
    /// ClearCache.conf status.
    pub enum ClearCacheStatus {
        Accepted = "Accepted",
        Rejected = "Rejected",
    }
}

ocpp_enum! {
    /// ClearChargingProfile.conf status.
    pub enum ClearChargingProfileStatus {
        Accepted = "Accepted",
        Unknown = "Unknown",
    }
}

ocpp_enum! {
    /// GetCompositeSchedule.conf status.
    pub enum GetCompositeScheduleStatus {
        Accepted = "Accepted",
        Rejected = "Rejected",
    }
}

ocpp_enum! {
    /// RemoteStartTransaction.conf and RemoteStopTransaction.conf status.
    pub enum RemoteStartStopStatus {
        Accepted = "Accepted",
        Rejected = "Rejected",
    }
}

ocpp_enum! {
    /// ReserveNow.conf status.
    pub enum ReservationStatus {
        Accepted = "Accepted",
        Faulted = "Faulted",
        Occupied = "Occupied",
        Rejected = "Rejected",
        Unavailable = "Unavailable",
    }
}

ocpp_enum! {
    /// Reset.conf status.
    pub enum ResetStatus {
        Accepted = "Accepted",
        Rejected = "Rejected",
    }
}

ocpp_enum! {
    /// SendLocalList.conf status.
    pub enum UpdateStatus {
        Accepted = "Accepted",
        Failed = "Failed",
        NotSupported = "NotSupported",
        VersionMismatch = "VersionMismatch",
    }
}

ocpp_enum! {
    /// SetChargingProfile.conf status.
    pub enum ChargingProfileStatus {
        Accepted = "Accepted",
        Rejected = "Rejected",
        NotSupported = "NotSupported",
    }
}

ocpp_enum! {
    /// TriggerMessage.conf status.
    pub enum TriggerMessageStatus {
        Accepted = "Accepted",
        Rejected = "Rejected",
        NotImplemented = "NotImplemented",
    }
}

ocpp_enum! {
    /// UnlockConnector.conf status.
    pub enum UnlockStatus {
        Unlocked = "Unlocked",
        UnlockFailed = "UnlockFailed",
        NotSupported = "NotSupported",
    }
}

// ---------------------------------------------------------------------------------------------
// Smart charging types
// ---------------------------------------------------------------------------------------------

/// A charging profile (SetChargingProfile.csChargingProfiles, RemoteStartTransaction.chargingProfile).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingProfile {
    pub charging_profile_id: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<i32>,
    pub stack_level: i32,
    pub charging_profile_purpose: ChargingProfilePurpose,
    pub charging_profile_kind: ChargingProfileKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recurrency_kind: Option<RecurrencyKind>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ts::serialize_opt"
    )]
    pub valid_from: Option<DateTime<Utc>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ts::serialize_opt"
    )]
    pub valid_to: Option<DateTime<Utc>>,
    pub charging_schedule: ChargingSchedule,
}

/// The schedule inside a [`ChargingProfile`] (also in GetCompositeSchedule.conf).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingSchedule {
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<i32>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ts::serialize_opt"
    )]
    pub start_schedule: Option<DateTime<Utc>>,
    pub charging_rate_unit: ChargingRateUnit,
    pub charging_schedule_period: Vec<ChargingSchedulePeriod>,
    /// A multiple of 0.1, in `charging_rate_unit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_charging_rate: Option<f64>,
}

/// One period of a [`ChargingSchedule`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargingSchedulePeriod {
    /// Seconds from the start of the schedule.
    pub start_period: i32,
    /// A multiple of 0.1, in the schedule's `charging_rate_unit`.
    pub limit: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number_phases: Option<i32>,
}

/// The schema's `multipleOf: 0.1`. Binary floats cannot hold most tenths exactly, so this
/// allows for rounding noise rather than testing the remainder for zero.
fn multiple_of_tenth(cx: &mut Cx, value: &f64) -> bool {
    let tenths = value * 10.0;
    if (tenths - tenths.round()).abs() <= 1e-9 * tenths.abs().max(1.0) {
        true
    } else {
        cx.fail(
            ErrorCode::PropertyConstraintViolation,
            format!("{value} is not a multiple of 0.1"),
        );
        false
    }
}

impl Decode for ChargingProfile {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let charging_profile_id = o.req("chargingProfileId");
        let transaction_id = o.opt("transactionId");
        let stack_level = o.req("stackLevel");
        let charging_profile_purpose = o.req("chargingProfilePurpose");
        let charging_profile_kind = o.req("chargingProfileKind");
        let recurrency_kind = o.opt("recurrencyKind");
        let valid_from = o.opt("validFrom");
        let valid_to = o.opt("validTo");
        let charging_schedule = o.req("chargingSchedule");
        o.finish();
        Some(ChargingProfile {
            charging_profile_id: charging_profile_id?,
            transaction_id: transaction_id?,
            stack_level: stack_level?,
            charging_profile_purpose: charging_profile_purpose?,
            charging_profile_kind: charging_profile_kind?,
            recurrency_kind: recurrency_kind?,
            valid_from: valid_from?,
            valid_to: valid_to?,
            charging_schedule: charging_schedule?,
        })
    }
}

impl Decode for ChargingSchedule {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let duration = o.opt("duration");
        let start_schedule = o.opt("startSchedule");
        let charging_rate_unit = o.req("chargingRateUnit");
        let charging_schedule_period = o.req_list("chargingSchedulePeriod", 0);
        let min_charging_rate = o.opt_with("minChargingRate", multiple_of_tenth);
        o.finish();
        Some(ChargingSchedule {
            duration: duration?,
            start_schedule: start_schedule?,
            charging_rate_unit: charging_rate_unit?,
            charging_schedule_period: charging_schedule_period?,
            min_charging_rate: min_charging_rate?,
        })
    }
}

impl Decode for ChargingSchedulePeriod {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let start_period = o.req("startPeriod");
        let limit = o.req_with("limit", multiple_of_tenth);
        let number_phases = o.opt("numberPhases");
        o.finish();
        Some(ChargingSchedulePeriod {
            start_period: start_period?,
            limit: limit?,
            number_phases: number_phases?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Requests (central system → charge point)
// ---------------------------------------------------------------------------------------------

/// CancelReservation.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelReservation {
    pub reservation_id: i32,
}

/// ChangeAvailability.req; connector 0 means the whole charge point.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeAvailability {
    pub connector_id: i32,
    #[serde(rename = "type")]
    pub kind: AvailabilityType,
}

/// ChangeConfiguration.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeConfiguration {
    pub key: String,
    pub value: String,
}

/// ClearChargingProfile.req; every field is a filter, none means "all profiles".
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClearChargingProfile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector_id: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charging_profile_purpose: Option<ChargingProfilePurpose>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_level: Option<i32>,
}

/// GetCompositeSchedule.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetCompositeSchedule {
    pub connector_id: i32,
    /// Seconds.
    pub duration: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charging_rate_unit: Option<ChargingRateUnit>,
}

/// GetConfiguration.req; no keys means all of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GetConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Vec<String>>,
}

/// GetDiagnostics.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetDiagnostics {
    /// Where the charger uploads the file (a URI, typically ftp:// or https://).
    pub location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<i32>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ts::serialize_opt"
    )]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ts::serialize_opt"
    )]
    pub stop_time: Option<DateTime<Utc>>,
}

/// RemoteStartTransaction.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteStartTransaction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector_id: Option<i32>,
    pub id_tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charging_profile: Option<ChargingProfile>,
}

/// RemoteStopTransaction.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteStopTransaction {
    pub transaction_id: i32,
}

/// ReserveNow.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReserveNow {
    pub connector_id: i32,
    #[serde(serialize_with = "ts::serialize")]
    pub expiry_date: DateTime<Utc>,
    pub id_tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id_tag: Option<String>,
    pub reservation_id: i32,
}

/// Reset.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reset {
    #[serde(rename = "type")]
    pub kind: ResetType,
}

/// One entry of SendLocalList.localAuthorizationList; no `id_tag_info` deletes the entry
/// (differential update).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationData {
    pub id_tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_tag_info: Option<IdTagInfo>,
}

/// SendLocalList.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendLocalList {
    pub list_version: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_authorization_list: Option<Vec<AuthorizationData>>,
    pub update_type: UpdateType,
}

/// SetChargingProfile.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetChargingProfile {
    pub connector_id: i32,
    pub cs_charging_profiles: ChargingProfile,
}

/// TriggerMessage.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerMessage {
    pub requested_message: MessageTrigger,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connector_id: Option<i32>,
}

/// UnlockConnector.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnlockConnector {
    pub connector_id: i32,
}

/// UpdateFirmware.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateFirmware {
    /// Where the charger downloads the firmware (a URI).
    pub location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,
    #[serde(serialize_with = "ts::serialize")]
    pub retrieve_date: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<i32>,
}

/// One entry of GetConfiguration.conf `configurationKey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub readonly: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The JSON schema `format: uri` check: an RFC 3986 scheme, a colon, and no whitespace or
/// control characters. It is no full URI grammar, but catches what operators get wrong
/// (a bare host name, a path, a pasted space).
fn uri(cx: &mut Cx, value: &String) -> bool {
    let scheme_ok = value.split_once(':').is_some_and(|(scheme, _)| {
        let mut chars = scheme.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if scheme_ok && !value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        true
    } else {
        cx.fail(
            ErrorCode::PropertyConstraintViolation,
            format!("{value:?} is not an absolute URI"),
        );
        false
    }
}

impl Decode for CancelReservation {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let reservation_id = o.req("reservationId");
        o.finish();
        Some(CancelReservation {
            reservation_id: reservation_id?,
        })
    }
}

impl Decode for ChangeAvailability {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let connector_id = o.req("connectorId");
        let kind = o.req("type");
        o.finish();
        Some(ChangeAvailability {
            connector_id: connector_id?,
            kind: kind?,
        })
    }
}

impl Decode for ChangeConfiguration {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let key = o.req_str("key", 50);
        let config_value = o.req_str("value", 500);
        o.finish();
        Some(ChangeConfiguration {
            key: key?,
            value: config_value?,
        })
    }
}

impl Decode for ClearChargingProfile {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let id = o.opt("id");
        let connector_id = o.opt("connectorId");
        let charging_profile_purpose = o.opt("chargingProfilePurpose");
        let stack_level = o.opt("stackLevel");
        o.finish();
        Some(ClearChargingProfile {
            id: id?,
            connector_id: connector_id?,
            charging_profile_purpose: charging_profile_purpose?,
            stack_level: stack_level?,
        })
    }
}

impl Decode for GetCompositeSchedule {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let connector_id = o.req("connectorId");
        let duration = o.req("duration");
        let charging_rate_unit = o.opt("chargingRateUnit");
        o.finish();
        Some(GetCompositeSchedule {
            connector_id: connector_id?,
            duration: duration?,
            charging_rate_unit: charging_rate_unit?,
        })
    }
}

impl Decode for GetConfiguration {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let key = o.opt::<Vec<MaxLen<50>>>("key");
        o.finish();
        Some(GetConfiguration {
            key: key?.map(|keys| keys.into_iter().map(|k| k.0).collect()),
        })
    }
}

impl Decode for GetDiagnostics {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let location = o.req_with("location", uri);
        let retries = o.opt("retries");
        let retry_interval = o.opt("retryInterval");
        let start_time = o.opt("startTime");
        let stop_time = o.opt("stopTime");
        o.finish();
        Some(GetDiagnostics {
            location: location?,
            retries: retries?,
            retry_interval: retry_interval?,
            start_time: start_time?,
            stop_time: stop_time?,
        })
    }
}

impl Decode for RemoteStartTransaction {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let connector_id = o.opt("connectorId");
        let id_tag = o.req_str("idTag", 20);
        let charging_profile = o.opt("chargingProfile");
        o.finish();
        Some(RemoteStartTransaction {
            connector_id: connector_id?,
            id_tag: id_tag?,
            charging_profile: charging_profile?,
        })
    }
}

impl Decode for RemoteStopTransaction {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let transaction_id = o.req("transactionId");
        o.finish();
        Some(RemoteStopTransaction {
            transaction_id: transaction_id?,
        })
    }
}

impl Decode for ReserveNow {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let connector_id = o.req("connectorId");
        let expiry_date = o.req("expiryDate");
        let id_tag = o.req_str("idTag", 20);
        let parent_id_tag = o.opt_str("parentIdTag", 20);
        let reservation_id = o.req("reservationId");
        o.finish();
        Some(ReserveNow {
            connector_id: connector_id?,
            expiry_date: expiry_date?,
            id_tag: id_tag?,
            parent_id_tag: parent_id_tag?,
            reservation_id: reservation_id?,
        })
    }
}

impl Decode for Reset {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let kind = o.req("type");
        o.finish();
        Some(Reset { kind: kind? })
    }
}

impl Decode for AuthorizationData {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let id_tag = o.req_str("idTag", 20);
        let id_tag_info = o.opt("idTagInfo");
        o.finish();
        Some(AuthorizationData {
            id_tag: id_tag?,
            id_tag_info: id_tag_info?,
        })
    }
}

impl Decode for SendLocalList {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let list_version = o.req("listVersion");
        let local_authorization_list = o.opt_list("localAuthorizationList", 0);
        let update_type = o.req("updateType");
        o.finish();
        Some(SendLocalList {
            list_version: list_version?,
            local_authorization_list: local_authorization_list?,
            update_type: update_type?,
        })
    }
}

impl Decode for SetChargingProfile {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let connector_id = o.req("connectorId");
        let cs_charging_profiles = o.req("csChargingProfiles");
        o.finish();
        Some(SetChargingProfile {
            connector_id: connector_id?,
            cs_charging_profiles: cs_charging_profiles?,
        })
    }
}

impl Decode for TriggerMessage {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let requested_message = o.req("requestedMessage");
        let connector_id = o.opt("connectorId");
        o.finish();
        Some(TriggerMessage {
            requested_message: requested_message?,
            connector_id: connector_id?,
        })
    }
}

impl Decode for UnlockConnector {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let connector_id = o.req("connectorId");
        o.finish();
        Some(UnlockConnector {
            connector_id: connector_id?,
        })
    }
}

impl Decode for UpdateFirmware {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let location = o.req_with("location", uri);
        let retries = o.opt("retries");
        let retrieve_date = o.req("retrieveDate");
        let retry_interval = o.opt("retryInterval");
        o.finish();
        Some(UpdateFirmware {
            location: location?,
            retries: retries?,
            retrieve_date: retrieve_date?,
            retry_interval: retry_interval?,
        })
    }
}

impl Decode for KeyValue {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let key = o.req_str("key", 50);
        let readonly = o.req("readonly");
        let config_value = o.opt_str("value", 500);
        o.finish();
        Some(KeyValue {
            key: key?,
            readonly: readonly?,
            value: config_value?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The action API
// ---------------------------------------------------------------------------------------------

/// A validated CALL to send to a charge point.
#[derive(Debug, Clone, PartialEq)]
pub enum CsAction {
    CancelReservation(CancelReservation),
    ChangeAvailability(ChangeAvailability),
    ChangeConfiguration(ChangeConfiguration),
    ClearCache,
    ClearChargingProfile(ClearChargingProfile),
    DataTransfer(DataTransfer),
    GetCompositeSchedule(GetCompositeSchedule),
    GetConfiguration(GetConfiguration),
    GetDiagnostics(GetDiagnostics),
    GetLocalListVersion,
    RemoteStartTransaction(RemoteStartTransaction),
    RemoteStopTransaction(RemoteStopTransaction),
    ReserveNow(ReserveNow),
    Reset(Reset),
    SendLocalList(SendLocalList),
    SetChargingProfile(SetChargingProfile),
    TriggerMessage(TriggerMessage),
    UnlockConnector(UnlockConnector),
    UpdateFirmware(UpdateFirmware),
}

/// The 19 core actions the central system sends.
pub const CS_ACTIONS: &[&str] = &[
    "CancelReservation",
    "ChangeAvailability",
    "ChangeConfiguration",
    "ClearCache",
    "ClearChargingProfile",
    "DataTransfer",
    "GetCompositeSchedule",
    "GetConfiguration",
    "GetDiagnostics",
    "GetLocalListVersion",
    "RemoteStartTransaction",
    "RemoteStopTransaction",
    "ReserveNow",
    "Reset",
    "SendLocalList",
    "SetChargingProfile",
    "TriggerMessage",
    "UnlockConnector",
    "UpdateFirmware",
];

/// Short snake-case names operators may use instead: (alias, OCPP action).
pub const ACTION_ALIASES: &[(&str, &str)] = &[
    ("reset", "Reset"),
    ("remote_start", "RemoteStartTransaction"),
    ("remote_stop", "RemoteStopTransaction"),
    ("unlock_connector", "UnlockConnector"),
    ("change_configuration", "ChangeConfiguration"),
    ("get_configuration", "GetConfiguration"),
    ("trigger_message", "TriggerMessage"),
    ("change_availability", "ChangeAvailability"),
    ("clear_cache", "ClearCache"),
    ("data_transfer", "DataTransfer"),
];

/// Why operator input could not become a [`CsAction`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ActionError {
    #[error("unknown action `{0}`")]
    UnknownAction(String),
    /// `field` is a JSON path into the params ("params" for the params value itself).
    #[error("invalid params: {field}: {message}")]
    InvalidParams { field: String, message: String },
}

/// The OCPP action `name` stands for: the exact name, else a case-insensitive match, else an
/// alias from [`ACTION_ALIASES`].
pub fn resolve_action(name: &str) -> Option<&'static str> {
    let exact = CS_ACTIONS.iter().find(|action| **action == name);
    exact
        .or_else(|| {
            CS_ACTIONS
                .iter()
                .find(|action| action.eq_ignore_ascii_case(name))
        })
        .copied()
        .or_else(|| {
            ACTION_ALIASES
                .iter()
                .find(|(alias, _)| alias.eq_ignore_ascii_case(name))
                .map(|(_, action)| *action)
        })
}

/// `name`: the OCPP action name (case-sensitive match first, then case-insensitive) or one of
/// the snake-case aliases in [`ACTION_ALIASES`]. `params` (null = {}) always use OCPP's
/// camelCase field names and are validated exactly per the request schema; the error names the
/// first offending field by JSON path (e.g.
/// `chargingProfile.chargingSchedule.chargingSchedulePeriod[0].limit`) and also lists up to four
/// further problems in its message, then counts the rest.
pub fn parse_action(name: &str, params: &Value) -> Result<CsAction, ActionError> {
    let action = resolve_action(name).ok_or_else(|| ActionError::UnknownAction(name.to_owned()))?;
    let empty = Value::Object(serde_json::Map::new());
    let params = if params.is_null() { &empty } else { params };
    let mut cx = Cx::new(true);
    let decoded = decode_action(&mut cx, action, params);
    cx.finish(decoded)
        .map(|(action, _)| action)
        .map_err(|(problems, total)| invalid_params(&problems, total))
}

/// Problems spelled out in an [`ActionError::InvalidParams`] message; the rest are only counted, as in the
/// CALLERROR descriptions of `messages`.
const SHOWN_PROBLEMS: usize = 5;

fn invalid_params(problems: &[Problem], total: usize) -> ActionError {
    let Some(first) = problems.first() else {
        return ActionError::InvalidParams {
            field: "params".into(),
            message: "could not be read".into(),
        };
    };
    let field = if first.path.is_empty() {
        "params".to_owned()
    } else {
        first.path.clone()
    };
    let mut message = first.message.clone();
    for other in problems.iter().skip(1).take(SHOWN_PROBLEMS - 1) {
        message.push_str(&format!("; also {other}"));
    }
    // Listing every problem let a params array of `{}` items grow the error body ~20x past the request
    // (found by the ocpp_action fuzz target); the first few say what is wrong just as well.
    let total = total.max(problems.len());
    if total > SHOWN_PROBLEMS {
        message.push_str(&format!("; and {} more", total - SHOWN_PROBLEMS));
    }
    ActionError::InvalidParams { field, message }
}

fn decode_action(cx: &mut Cx, action: &str, params: &Value) -> Option<CsAction> {
    Some(match action {
        "CancelReservation" => CsAction::CancelReservation(CancelReservation::decode(cx, params)?),
        "ChangeAvailability" => {
            CsAction::ChangeAvailability(ChangeAvailability::decode(cx, params)?)
        }
        "ChangeConfiguration" => {
            CsAction::ChangeConfiguration(ChangeConfiguration::decode(cx, params)?)
        }
        "ClearCache" => {
            Obj::open(cx, params)?.finish();
            CsAction::ClearCache
        }
        "ClearChargingProfile" => {
            CsAction::ClearChargingProfile(ClearChargingProfile::decode(cx, params)?)
        }
        "DataTransfer" => CsAction::DataTransfer(DataTransfer::decode(cx, params)?),
        "GetCompositeSchedule" => {
            CsAction::GetCompositeSchedule(GetCompositeSchedule::decode(cx, params)?)
        }
        "GetConfiguration" => CsAction::GetConfiguration(GetConfiguration::decode(cx, params)?),
        "GetDiagnostics" => CsAction::GetDiagnostics(GetDiagnostics::decode(cx, params)?),
        "GetLocalListVersion" => {
            Obj::open(cx, params)?.finish();
            CsAction::GetLocalListVersion
        }
        "RemoteStartTransaction" => {
            CsAction::RemoteStartTransaction(RemoteStartTransaction::decode(cx, params)?)
        }
        "RemoteStopTransaction" => {
            CsAction::RemoteStopTransaction(RemoteStopTransaction::decode(cx, params)?)
        }
        "ReserveNow" => CsAction::ReserveNow(ReserveNow::decode(cx, params)?),
        "Reset" => CsAction::Reset(Reset::decode(cx, params)?),
        "SendLocalList" => CsAction::SendLocalList(SendLocalList::decode(cx, params)?),
        "SetChargingProfile" => {
            CsAction::SetChargingProfile(SetChargingProfile::decode(cx, params)?)
        }
        "TriggerMessage" => CsAction::TriggerMessage(TriggerMessage::decode(cx, params)?),
        "UnlockConnector" => CsAction::UnlockConnector(UnlockConnector::decode(cx, params)?),
        "UpdateFirmware" => CsAction::UpdateFirmware(UpdateFirmware::decode(cx, params)?),
        _ => return None,
    })
}

impl CsAction {
    /// The OCPP action name, for the CALL frame.
    pub fn action(&self) -> &'static str {
        match self {
            CsAction::CancelReservation(_) => "CancelReservation",
            CsAction::ChangeAvailability(_) => "ChangeAvailability",
            CsAction::ChangeConfiguration(_) => "ChangeConfiguration",
            CsAction::ClearCache => "ClearCache",
            CsAction::ClearChargingProfile(_) => "ClearChargingProfile",
            CsAction::DataTransfer(_) => "DataTransfer",
            CsAction::GetCompositeSchedule(_) => "GetCompositeSchedule",
            CsAction::GetConfiguration(_) => "GetConfiguration",
            CsAction::GetDiagnostics(_) => "GetDiagnostics",
            CsAction::GetLocalListVersion => "GetLocalListVersion",
            CsAction::RemoteStartTransaction(_) => "RemoteStartTransaction",
            CsAction::RemoteStopTransaction(_) => "RemoteStopTransaction",
            CsAction::ReserveNow(_) => "ReserveNow",
            CsAction::Reset(_) => "Reset",
            CsAction::SendLocalList(_) => "SendLocalList",
            CsAction::SetChargingProfile(_) => "SetChargingProfile",
            CsAction::TriggerMessage(_) => "TriggerMessage",
            CsAction::UnlockConnector(_) => "UnlockConnector",
            CsAction::UpdateFirmware(_) => "UpdateFirmware",
        }
    }

    /// The CALL payload.
    pub fn payload(&self) -> Value {
        match self {
            CsAction::CancelReservation(x) => to_payload(x),
            CsAction::ChangeAvailability(x) => to_payload(x),
            CsAction::ChangeConfiguration(x) => to_payload(x),
            CsAction::ClearCache | CsAction::GetLocalListVersion => {
                Value::Object(serde_json::Map::new())
            }
            CsAction::ClearChargingProfile(x) => to_payload(x),
            CsAction::DataTransfer(x) => to_payload(x),
            CsAction::GetCompositeSchedule(x) => to_payload(x),
            CsAction::GetConfiguration(x) => to_payload(x),
            CsAction::GetDiagnostics(x) => to_payload(x),
            CsAction::RemoteStartTransaction(x) => to_payload(x),
            CsAction::RemoteStopTransaction(x) => to_payload(x),
            CsAction::ReserveNow(x) => to_payload(x),
            CsAction::Reset(x) => to_payload(x),
            CsAction::SendLocalList(x) => to_payload(x),
            CsAction::SetChargingProfile(x) => to_payload(x),
            CsAction::TriggerMessage(x) => to_payload(x),
            CsAction::UnlockConnector(x) => to_payload(x),
            CsAction::UpdateFirmware(x) => to_payload(x),
        }
    }
}

/// Checks a charge point's CALLRESULT payload for `action` against the response schema and
/// returns every problem as "path: message" (empty when it conforms). Never fails: odd chargers
/// are logged, not refused. `action` is resolved like in [`parse_action`].
pub fn check_response(action: &str, payload: &Value) -> Vec<String> {
    let Some(resolved) = resolve_action(action) else {
        return vec![format!("unknown action `{action}`")];
    };
    let mut cx = Cx::new(true);
    if let Some(mut o) = Obj::open(&mut cx, payload) {
        // Only the problems matter here, so the decoded values are dropped.
        match resolved {
            "CancelReservation" => {
                let _ = o.req::<CancelReservationStatus>("status");
            }
            "ChangeAvailability" => {
                let _ = o.req::<AvailabilityStatus>("status");
            }
            "ChangeConfiguration" => {
                let _ = o.req::<ConfigurationStatus>("status");
            }
            "ClearCache" => {
                let _ = o.req::<ClearCacheStatus>("status");
            }
            "ClearChargingProfile" => {
                let _ = o.req::<ClearChargingProfileStatus>("status");
            }
            "DataTransfer" => {
                let _ = o.req::<DataTransferStatus>("status");
                let _ = o.opt::<String>("data");
            }
            "GetCompositeSchedule" => {
                let _ = o.req::<GetCompositeScheduleStatus>("status");
                let _ = o.opt::<i32>("connectorId");
                let _ = o.opt::<DateTime<Utc>>("scheduleStart");
                let _ = o.opt::<ChargingSchedule>("chargingSchedule");
            }
            "GetConfiguration" => {
                let _ = o.opt_list::<KeyValue>("configurationKey", 0);
                let _ = o.opt::<Vec<MaxLen<50>>>("unknownKey");
            }
            "GetDiagnostics" => {
                let _ = o.opt_str("fileName", 255);
            }
            "GetLocalListVersion" => {
                let _ = o.req::<i32>("listVersion");
            }
            "RemoteStartTransaction" | "RemoteStopTransaction" => {
                let _ = o.req::<RemoteStartStopStatus>("status");
            }
            "ReserveNow" => {
                let _ = o.req::<ReservationStatus>("status");
            }
            "Reset" => {
                let _ = o.req::<ResetStatus>("status");
            }
            "SendLocalList" => {
                let _ = o.req::<UpdateStatus>("status");
            }
            "SetChargingProfile" => {
                let _ = o.req::<ChargingProfileStatus>("status");
            }
            "TriggerMessage" => {
                let _ = o.req::<TriggerMessageStatus>("status");
            }
            "UnlockConnector" => {
                let _ = o.req::<UnlockStatus>("status");
            }
            // UpdateFirmware.conf is `{}`: anything in it is unknown.
            _ => {}
        }
        o.finish();
    }
    cx.problems().iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::super::messages::schema_check::{assert_valid, violations};
    use super::super::messages::AuthorizationStatus;
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    fn profile_json() -> Value {
        json!({
            "chargingProfileId": 12,
            "transactionId": 1843,
            "stackLevel": 1,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "validFrom": "2024-05-14T09:00:00.000Z",
            "validTo": "2024-05-14T18:00:00.000Z",
            "chargingSchedule": {
                "duration": 7200,
                "startSchedule": "2024-05-14T09:00:00.000Z",
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": 16.0, "numberPhases": 3},
                    {"startPeriod": 1800, "limit": 10.5},
                    {"startPeriod": 3600, "limit": 6.1, "numberPhases": 1}
                ],
                "minChargingRate": 6.0
            }
        })
    }

    /// A realistic params object for each of the 19 actions.
    fn realistic() -> Vec<(&'static str, Value)> {
        vec![
            ("CancelReservation", json!({"reservationId": 77})),
            (
                "ChangeAvailability",
                json!({"connectorId": 0, "type": "Inoperative"}),
            ),
            (
                "ChangeConfiguration",
                json!({"key": "HeartbeatInterval", "value": "300"}),
            ),
            ("ClearCache", json!({})),
            (
                "ClearChargingProfile",
                json!({"id": 12, "connectorId": 1, "chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 0}),
            ),
            (
                "DataTransfer",
                json!({"vendorId": "com.alfen", "messageId": "SetDisplay", "data": "Welcome"}),
            ),
            (
                "GetCompositeSchedule",
                json!({"connectorId": 1, "duration": 86400, "chargingRateUnit": "W"}),
            ),
            (
                "GetConfiguration",
                json!({"key": ["HeartbeatInterval", "MeterValueSampleInterval", "AuthorizeRemoteTxRequests"]}),
            ),
            (
                "GetDiagnostics",
                json!({
                    "location": "ftp://diag:secret@diag.example.com/uploads/",
                    "retries": 3,
                    "retryInterval": 60,
                    "startTime": "2024-05-13T00:00:00.000Z",
                    "stopTime": "2024-05-14T00:00:00.000Z"
                }),
            ),
            ("GetLocalListVersion", json!({})),
            (
                "RemoteStartTransaction",
                json!({"connectorId": 1, "idTag": "04A2B9C2E15A80", "chargingProfile": {
                    "chargingProfileId": 13,
                    "stackLevel": 0,
                    "chargingProfilePurpose": "TxProfile",
                    "chargingProfileKind": "Relative",
                    "chargingSchedule": {
                        "chargingRateUnit": "W",
                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.0}]
                    }
                }}),
            ),
            ("RemoteStopTransaction", json!({"transactionId": 1843})),
            (
                "ReserveNow",
                json!({
                    "connectorId": 2,
                    "expiryDate": "2024-05-14T10:30:00.000Z",
                    "idTag": "04A2B9C2E15A80",
                    "parentIdTag": "FLEET-7",
                    "reservationId": 77
                }),
            ),
            ("Reset", json!({"type": "Soft"})),
            (
                "SendLocalList",
                json!({
                    "listVersion": 5,
                    "updateType": "Differential",
                    "localAuthorizationList": [
                        {"idTag": "04A2B9C2E15A80", "idTagInfo": {"status": "Accepted", "expiryDate": "2025-01-01T00:00:00.000Z", "parentIdTag": "FLEET-7"}},
                        {"idTag": "DEADBEEF", "idTagInfo": {"status": "Blocked"}},
                        {"idTag": "OLDCARD"}
                    ]
                }),
            ),
            (
                "SetChargingProfile",
                json!({"connectorId": 1, "csChargingProfiles": profile_json()}),
            ),
            (
                "TriggerMessage",
                json!({"requestedMessage": "StatusNotification", "connectorId": 1}),
            ),
            ("UnlockConnector", json!({"connectorId": 1})),
            (
                "UpdateFirmware",
                json!({
                    "location": "https://fw.example.com/alfen/6.2.0.bin",
                    "retries": 2,
                    "retrieveDate": "2024-05-15T02:00:00.000Z",
                    "retryInterval": 300
                }),
            ),
        ]
    }

    #[test]
    fn the_action_list_matches_the_schemas() {
        assert_eq!(CS_ACTIONS.len(), 19);
        let mut sorted = CS_ACTIONS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, CS_ACTIONS, "sorted and unique");
        for (alias, action) in ACTION_ALIASES {
            assert!(CS_ACTIONS.contains(action), "{alias} → {action}");
        }
    }

    #[test]
    fn realistic_params_parse_and_their_payload_matches_the_schema() {
        let cases = realistic();
        assert_eq!(cases.len(), CS_ACTIONS.len());
        for (name, params) in cases {
            assert_valid(name, &params);
            let action = parse_action(name, &params).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(action.action(), name);
            let payload = action.payload();
            assert_valid(name, &payload);
            // Nothing is lost or renamed on the way through (timestamps are already in our form).
            assert_eq!(payload, params, "{name}");
            assert_eq!(parse_action(name, &payload), Ok(action), "{name}");
        }
    }

    #[test]
    fn parsed_params_carry_the_values() {
        let Ok(CsAction::SetChargingProfile(set)) = parse_action(
            "SetChargingProfile",
            &json!({"connectorId": 1, "csChargingProfiles": profile_json()}),
        ) else {
            panic!("parses")
        };
        let profile = &set.cs_charging_profiles;
        assert_eq!(
            profile.charging_profile_purpose,
            ChargingProfilePurpose::TxProfile
        );
        assert_eq!(profile.charging_profile_kind, ChargingProfileKind::Absolute);
        assert_eq!(profile.valid_to, Some(t("2024-05-14T18:00:00Z")));
        let schedule = &profile.charging_schedule;
        assert_eq!(schedule.charging_rate_unit, ChargingRateUnit::A);
        assert_eq!(schedule.charging_schedule_period.len(), 3);
        assert_eq!(schedule.charging_schedule_period[2].limit, 6.1);
        assert_eq!(schedule.charging_schedule_period[1].number_phases, None);
        assert_eq!(schedule.min_charging_rate, Some(6.0));

        let Ok(CsAction::SendLocalList(list)) = parse_action("SendLocalList", &realistic()[14].1)
        else {
            panic!("parses")
        };
        let entries = list.local_authorization_list.expect("list");
        assert_eq!(
            entries[1].id_tag_info.as_ref().map(|i| i.status),
            Some(AuthorizationStatus::Blocked)
        );
        assert_eq!(entries[2].id_tag_info, None);
    }

    #[test]
    fn params_dates_are_written_in_our_form() {
        let action = parse_action(
            "ReserveNow",
            &json!({"connectorId": 1, "expiryDate": "2024-05-14T12:30:00.123456+02:00", "idTag": "A", "reservationId": 1}),
        )
        .expect("parses");
        assert_eq!(
            action.payload()["expiryDate"],
            json!("2024-05-14T10:30:00.123Z")
        );
        assert_valid("ReserveNow", &action.payload());
    }

    #[test]
    fn names_and_aliases_resolve() {
        let cases = [
            ("Reset", "Reset"),
            ("reset", "Reset"),
            ("RESET", "Reset"),
            ("remoteStartTransaction", "RemoteStartTransaction"),
            ("remote_start", "RemoteStartTransaction"),
            ("remote_stop", "RemoteStopTransaction"),
            ("unlock_connector", "UnlockConnector"),
            ("change_configuration", "ChangeConfiguration"),
            ("get_configuration", "GetConfiguration"),
            ("trigger_message", "TriggerMessage"),
            ("change_availability", "ChangeAvailability"),
            ("clear_cache", "ClearCache"),
            ("data_transfer", "DataTransfer"),
            ("getlocallistversion", "GetLocalListVersion"),
        ];
        for (name, action) in cases {
            assert_eq!(resolve_action(name), Some(action), "{name}");
        }
        for (alias, action) in ACTION_ALIASES {
            assert_eq!(resolve_action(alias), Some(*action));
        }
        assert_eq!(
            parse_action("clear_cache", &Value::Null).map(|a| a.action()),
            Ok("ClearCache")
        );
        assert_eq!(
            parse_action("remote_stop", &json!({"transactionId": 5})),
            Ok(CsAction::RemoteStopTransaction(RemoteStopTransaction {
                transaction_id: 5
            }))
        );
        assert_eq!(
            parse_action("reset", &json!({"type": "Hard"})).map(|a| a.payload()),
            Ok(json!({"type": "Hard"}))
        );
    }

    #[test]
    fn unknown_actions() {
        for name in [
            "Foo",
            "",
            "remote-start",
            "BootNotification",
            "CertificateSigned",
            "Reset ",
        ] {
            assert_eq!(
                parse_action(name, &json!({})),
                Err(ActionError::UnknownAction(name.to_owned())),
                "{name}"
            );
        }
        assert_eq!(
            ActionError::UnknownAction("Foo".into()).to_string(),
            "unknown action `Foo`"
        );
    }

    #[test]
    fn invalid_params_name_the_field() {
        let rst_profile = |period: Value| {
            json!({"idTag": "A", "chargingProfile": {
                "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [period]}
            }})
        };
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            // unknown param
            (
                "Reset",
                json!({"type": "Hard", "delay": 5}),
                "delay",
                "unknown property",
            ),
            (
                "ClearCache",
                json!({"force": true}),
                "force",
                "unknown property",
            ),
            (
                "GetLocalListVersion",
                json!({"x": 1}),
                "x",
                "unknown property",
            ),
            (
                "RemoteStartTransaction",
                rst_profile(json!({"startPeriod": 0, "limit": 16.0, "maxCurrent": 32})),
                "chargingProfile.chargingSchedule.chargingSchedulePeriod[0].maxCurrent",
                "unknown property",
            ),
            (
                "SendLocalList",
                json!({"listVersion": 1, "updateType": "Full", "localAuthorizationList": [{"idTag": "A"}, {"idTag": "B", "idTagInfo": {"status": "Accepted", "note": "x"}}]}),
                "localAuthorizationList[1].idTagInfo.note",
                "unknown property",
            ),
            // wrong type
            (
                "UnlockConnector",
                json!({"connectorId": "1"}),
                "connectorId",
                "expected integer",
            ),
            (
                "RemoteStartTransaction",
                rst_profile(json!({"startPeriod": 0, "limit": "16"})),
                "chargingProfile.chargingSchedule.chargingSchedulePeriod[0].limit",
                "expected number",
            ),
            (
                "RemoteStartTransaction",
                rst_profile(json!({"startPeriod": 0.5, "limit": 16})),
                "chargingProfile.chargingSchedule.chargingSchedulePeriod[0].startPeriod",
                "expected integer",
            ),
            (
                "GetConfiguration",
                json!({"key": "HeartbeatInterval"}),
                "key",
                "expected array",
            ),
            (
                "GetConfiguration",
                json!({"key": ["A", 7]}),
                "key[1]",
                "expected string",
            ),
            (
                "ChangeConfiguration",
                json!({"key": "HeartbeatInterval", "value": 300}),
                "value",
                "expected string",
            ),
            (
                "RemoteStopTransaction",
                json!({"transactionId": null}),
                "transactionId",
                "expected integer",
            ),
            (
                "SetChargingProfile",
                json!({"connectorId": 1, "csChargingProfiles": []}),
                "csChargingProfiles",
                "expected object",
            ),
            ("Reset", json!("Hard"), "params", "must be a JSON object"),
            ("Reset", json!(["Hard"]), "params", "must be a JSON object"),
            // bad enum
            (
                "Reset",
                json!({"type": "hard"}),
                "type",
                "unknown value \"hard\"",
            ),
            (
                "ChangeAvailability",
                json!({"connectorId": 1, "type": "Available"}),
                "type",
                "unknown value",
            ),
            (
                "TriggerMessage",
                json!({"requestedMessage": "StartTransaction"}),
                "requestedMessage",
                "unknown value",
            ),
            (
                "SetChargingProfile",
                json!({"connectorId": 1, "csChargingProfiles": {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Absolute", "chargingSchedule": {"chargingRateUnit": "kW", "chargingSchedulePeriod": []}}}),
                "csChargingProfiles.chargingSchedule.chargingRateUnit",
                "unknown value \"kW\"",
            ),
            (
                "SendLocalList",
                json!({"listVersion": 1, "updateType": "Full", "localAuthorizationList": [{"idTag": "A", "idTagInfo": {"status": "Allowed"}}]}),
                "localAuthorizationList[0].idTagInfo.status",
                "unknown value",
            ),
            // missing required field
            ("Reset", json!({}), "type", "required property is missing"),
            ("Reset", Value::Null, "type", "required property is missing"),
            (
                "RemoteStartTransaction",
                json!({"connectorId": 1}),
                "idTag",
                "required property is missing",
            ),
            (
                "SetChargingProfile",
                json!({"connectorId": 1, "csChargingProfiles": {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Absolute", "chargingSchedule": {"chargingSchedulePeriod": []}}}),
                "csChargingProfiles.chargingSchedule.chargingRateUnit",
                "required property is missing",
            ),
            (
                "RemoteStartTransaction",
                rst_profile(json!({"startPeriod": 0})),
                "chargingProfile.chargingSchedule.chargingSchedulePeriod[0].limit",
                "required property is missing",
            ),
            (
                "ReserveNow",
                json!({"connectorId": 1, "idTag": "A", "reservationId": 1}),
                "expiryDate",
                "required property is missing",
            ),
            (
                "UpdateFirmware",
                json!({"location": "https://fw.example.com/x.bin"}),
                "retrieveDate",
                "required property is missing",
            ),
            // value constraints
            (
                "RemoteStartTransaction",
                rst_profile(json!({"startPeriod": 0, "limit": 16.05})),
                "chargingProfile.chargingSchedule.chargingSchedulePeriod[0].limit",
                "not a multiple of 0.1",
            ),
            (
                "RemoteStartTransaction",
                json!({"idTag": "123456789012345678901"}),
                "idTag",
                "at most 20",
            ),
            (
                "ChangeConfiguration",
                json!({"key": "k".repeat(51), "value": "1"}),
                "key",
                "at most 50",
            ),
            (
                "GetConfiguration",
                json!({"key": ["ok", "k".repeat(51)]}),
                "key[1]",
                "at most 50",
            ),
            (
                "ReserveNow",
                json!({"connectorId": 1, "expiryDate": "2024-05-14 10:30", "idTag": "A", "reservationId": 1}),
                "expiryDate",
                "not an RFC 3339 date-time",
            ),
            (
                "GetDiagnostics",
                json!({"location": "diag.example.com/uploads"}),
                "location",
                "not an absolute URI",
            ),
            (
                "UpdateFirmware",
                json!({"location": "https://fw.example.com/a b.bin", "retrieveDate": "2024-05-15T02:00:00Z"}),
                "location",
                "not an absolute URI",
            ),
        ];
        for (name, params, field, message) in cases {
            let as_sent = if params.is_null() {
                json!({})
            } else {
                params.clone()
            };
            assert!(
                !violations(name, &as_sent).is_empty(),
                "the schema accepts {name} {params}"
            );
            match parse_action(name, &params) {
                Err(ActionError::InvalidParams {
                    field: got_field,
                    message: got_message,
                }) => {
                    assert_eq!(got_field, field, "{name} {params}: {got_message}");
                    assert!(
                        got_message.contains(message),
                        "{name} {params}: {got_message:?} lacks {message:?}"
                    );
                }
                other => panic!("{name} {params}: {other:?}"),
            }
        }
    }

    /// The schemas set no bounds, but OCPP integers are 32-bit.
    #[test]
    fn integers_beyond_32_bits_are_refused() {
        let err = parse_action("UnlockConnector", &json!({"connectorId": 4294967296_i64}));
        let Err(ActionError::InvalidParams { field, message }) = err else {
            panic!("{err:?}")
        };
        assert_eq!(field, "connectorId");
        assert!(message.contains("out of range"), "{message}");
    }

    #[test]
    fn invalid_params_list_every_problem() {
        let err = parse_action(
            "ReserveNow",
            &json!({"connectorId": "1", "idTag": 5, "x": 1}),
        )
        .expect_err("invalid");
        let ActionError::InvalidParams { field, message } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(field, "connectorId");
        for fragment in [
            "expiryDate: required",
            "idTag: expected string",
            "reservationId: required",
            "x: unknown property",
        ] {
            assert!(message.contains(fragment), "{message}");
        }
        assert!(err
            .to_string()
            .starts_with("invalid params: connectorId: expected integer"));
    }

    #[test]
    fn invalid_params_list_a_few_problems_and_count_the_rest() {
        // 300 empty entries, 1 problem each: the message must not grow with the list.
        let list: Vec<Value> = (0..300).map(|_| json!({})).collect();
        let err = parse_action(
            "SendLocalList",
            &json!({"listVersion": 1, "updateType": "Full", "localAuthorizationList": list}),
        )
        .expect_err("invalid");
        let ActionError::InvalidParams { field, message } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(field, "localAuthorizationList[0].idTag");
        assert_eq!(message.matches("; also ").count(), 4, "{message}");
        assert!(message.ends_with("; and 295 more"), "{message}");
        assert!(message.len() < 1000, "{message}");
    }

    /// A realistic answer for each action.
    fn realistic_responses() -> Vec<(&'static str, Value)> {
        vec![
            ("CancelReservation", json!({"status": "Accepted"})),
            ("ChangeAvailability", json!({"status": "Scheduled"})),
            ("ChangeConfiguration", json!({"status": "RebootRequired"})),
            ("ClearCache", json!({"status": "Accepted"})),
            ("ClearChargingProfile", json!({"status": "Unknown"})),
            (
                "DataTransfer",
                json!({"status": "Accepted", "data": "{\"shown\":true}"}),
            ),
            (
                "GetCompositeSchedule",
                json!({"status": "Accepted", "connectorId": 1, "scheduleStart": "2024-05-14T09:00:00Z",
                       "chargingSchedule": {"duration": 86400, "chargingRateUnit": "W",
                           "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.0, "numberPhases": 3}]}}),
            ),
            (
                "GetConfiguration",
                json!({"configurationKey": [
                    {"key": "HeartbeatInterval", "readonly": false, "value": "300"},
                    {"key": "NumberOfConnectors", "readonly": true, "value": "2"},
                    {"key": "AuthorizationKey", "readonly": false}
                ], "unknownKey": ["FooBar"]}),
            ),
            (
                "GetDiagnostics",
                json!({"fileName": "diag-20240514.tar.gz"}),
            ),
            ("GetLocalListVersion", json!({"listVersion": 5})),
            ("RemoteStartTransaction", json!({"status": "Accepted"})),
            ("RemoteStopTransaction", json!({"status": "Rejected"})),
            ("ReserveNow", json!({"status": "Occupied"})),
            ("Reset", json!({"status": "Accepted"})),
            ("SendLocalList", json!({"status": "VersionMismatch"})),
            ("SetChargingProfile", json!({"status": "NotSupported"})),
            ("TriggerMessage", json!({"status": "NotImplemented"})),
            ("UnlockConnector", json!({"status": "Unlocked"})),
            ("UpdateFirmware", json!({})),
        ]
    }

    #[test]
    fn conforming_responses_have_no_problems() {
        let cases = realistic_responses();
        assert_eq!(cases.len(), CS_ACTIONS.len());
        for (action, payload) in cases {
            assert_valid(&format!("{action}Response"), &payload);
            assert_eq!(
                check_response(action, &payload),
                Vec::<String>::new(),
                "{action}"
            );
        }
        assert!(check_response("get_configuration", &json!({})).is_empty());
    }

    #[test]
    fn odd_responses_are_described() {
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("Reset", json!({}), vec!["status: required property is missing"]),
            ("Reset", json!({"status": "OK"}), vec!["status: unknown value \"OK\""]),
            ("Reset", json!(null), vec!["payload: must be a JSON object"]),
            ("Reset", json!({"status": "Accepted", "delay": 3}), vec!["delay: unknown property"]),
            ("UpdateFirmware", json!({"status": "Accepted"}), vec!["status: unknown property"]),
            ("GetLocalListVersion", json!({"listVersion": "5"}), vec!["listVersion: expected integer"]),
            (
                "GetConfiguration",
                json!({"configurationKey": [{"key": "A", "readonly": "no"}, {"value": "1"}], "unknownKey": "B"}),
                vec![
                    "configurationKey[0].readonly: expected boolean",
                    "configurationKey[1].key: required property is missing",
                    "configurationKey[1].readonly: required property is missing",
                    "unknownKey: expected array",
                ],
            ),
            (
                "GetCompositeSchedule",
                json!({"status": "Accepted", "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6.05}]}}),
                vec!["chargingSchedule.chargingSchedulePeriod[0].limit: 6.05 is not a multiple of 0.1"],
            ),
            ("DataTransfer", json!({"status": "Accepted", "data": {"a": 1}}), vec!["data: expected string"]),
            ("NoSuchAction", json!({}), vec!["unknown action `NoSuchAction`"]),
        ];
        for (action, payload, expected) in cases {
            let problems = check_response(action, &payload);
            assert_eq!(
                problems.len(),
                expected.len(),
                "{action} {payload}: {problems:#?}"
            );
            for (problem, fragment) in problems.iter().zip(&expected) {
                assert!(problem.starts_with(fragment), "{problem:?} vs {fragment:?}");
            }
            if action != "NoSuchAction" {
                assert!(
                    !violations(&format!("{action}Response"), &payload).is_empty(),
                    "the schema accepts {action} {payload}"
                );
            }
        }
    }

    #[test]
    fn enums_round_trip() {
        fn check<E: PartialEq + std::fmt::Debug>(
            all: &[E],
            as_str: fn(&E) -> &'static str,
            from: fn(&str) -> Option<E>,
        ) {
            for value in all {
                assert_eq!(from(as_str(value)).as_ref(), Some(value));
            }
        }
        check(
            AvailabilityType::ALL,
            AvailabilityType::as_str,
            AvailabilityType::from_wire,
        );
        check(
            ChargingProfilePurpose::ALL,
            ChargingProfilePurpose::as_str,
            ChargingProfilePurpose::from_wire,
        );
        check(
            ChargingProfileKind::ALL,
            ChargingProfileKind::as_str,
            ChargingProfileKind::from_wire,
        );
        check(
            RecurrencyKind::ALL,
            RecurrencyKind::as_str,
            RecurrencyKind::from_wire,
        );
        check(
            ChargingRateUnit::ALL,
            ChargingRateUnit::as_str,
            ChargingRateUnit::from_wire,
        );
        check(ResetType::ALL, ResetType::as_str, ResetType::from_wire);
        check(UpdateType::ALL, UpdateType::as_str, UpdateType::from_wire);
        check(
            MessageTrigger::ALL,
            MessageTrigger::as_str,
            MessageTrigger::from_wire,
        );
        check(
            UnlockStatus::ALL,
            UnlockStatus::as_str,
            UnlockStatus::from_wire,
        );
        check(
            ReservationStatus::ALL,
            ReservationStatus::as_str,
            ReservationStatus::from_wire,
        );
    }
}
