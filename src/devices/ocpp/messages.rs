//! OCPP 1.6J messages a charge point sends to the central system, and our answers to them.
//!
//! Requests are decoded by hand-written readers (the private `decode` module) rather than by
//! `#[derive(Deserialize)]`, because OCPP-J needs things serde's derive cannot give us:
//!
//! * a CALLERROR code per failure kind (wrong JSON type, missing field, bad value, ...), which
//!   would otherwise have to be guessed from serde's error strings;
//! * a strict mode that follows the official JSON schemas to the letter, and a lenient mode for
//!   the quirks real chargers have (see [`parse_cp_request`]), chosen at run time;
//! * every problem of a payload at once, each with its JSON path, for the message log.
//!
//! Our answers are plain `#[derive(Serialize)]` structs: we control them, so serde is enough.
//! Every timestamp we write is RFC 3339 UTC with millisecond precision and a `Z`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use self::decode::{AnyText, Cx, Decode, Obj, Seg};
use super::framing::ErrorCode;

/// Declares a string enum of the OCPP vocabulary: wire names, strict and lenient parsing,
/// serde in both directions and [`decode::Decode`].
///
/// `Variant = "Wire" | "Alias"` lists extra spellings the official schema accepts as valid
/// (they decode in strict mode too and are written back with the main spelling).
macro_rules! ocpp_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as written on the wire.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }

            /// Exact wire spelling, as the schema's `enum` lists it.
            pub fn from_wire(s: &str) -> Option<Self> {
                match s {
                    $($wire $(| $alias)* => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Case-insensitive, surrounding whitespace ignored: what chargers in the field send.
            pub fn from_lenient(s: &str) -> Option<Self> {
                let s = s.trim();
                $(
                    if s.eq_ignore_ascii_case($wire) $(|| s.eq_ignore_ascii_case($alias))* {
                        return Some($name::$variant);
                    }
                )+
                None
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::from_wire(&s).ok_or_else(|| {
                    <D::Error as serde::de::Error>::unknown_variant(&s, &[$($wire),+])
                })
            }
        }

        impl super::messages::decode::Decode for $name {
            fn decode(
                cx: &mut super::messages::decode::Cx,
                value: &serde_json::Value,
            ) -> Option<Self> {
                super::messages::decode::wire_enum(
                    cx,
                    value,
                    Self::from_wire,
                    Self::from_lenient,
                    Self::as_str,
                    &[$($wire),+],
                )
            }
        }
    };
}
pub(crate) use ocpp_enum;

// ---------------------------------------------------------------------------------------------
// Enumerations
// ---------------------------------------------------------------------------------------------

ocpp_enum! {
    /// StatusNotification.status.
    pub enum ChargePointStatus {
        Available = "Available",
        Preparing = "Preparing",
        Charging = "Charging",
        SuspendedEVSE = "SuspendedEVSE",
        SuspendedEV = "SuspendedEV",
        Finishing = "Finishing",
        Reserved = "Reserved",
        Unavailable = "Unavailable",
        Faulted = "Faulted",
    }
}

ocpp_enum! {
    /// StatusNotification.errorCode.
    pub enum ChargePointErrorCode {
        ConnectorLockFailure = "ConnectorLockFailure",
        EVCommunicationError = "EVCommunicationError",
        GroundFailure = "GroundFailure",
        HighTemperature = "HighTemperature",
        InternalError = "InternalError",
        LocalListConflict = "LocalListConflict",
        NoError = "NoError",
        OtherError = "OtherError",
        OverCurrentFailure = "OverCurrentFailure",
        PowerMeterFailure = "PowerMeterFailure",
        PowerSwitchFailure = "PowerSwitchFailure",
        ReaderFailure = "ReaderFailure",
        ResetFailure = "ResetFailure",
        UnderVoltage = "UnderVoltage",
        OverVoltage = "OverVoltage",
        WeakSignal = "WeakSignal",
    }
}

ocpp_enum! {
    /// StopTransaction.reason.
    pub enum Reason {
        EmergencyStop = "EmergencyStop",
        EVDisconnected = "EVDisconnected",
        HardReset = "HardReset",
        Local = "Local",
        Other = "Other",
        PowerLoss = "PowerLoss",
        Reboot = "Reboot",
        Remote = "Remote",
        SoftReset = "SoftReset",
        UnlockCommand = "UnlockCommand",
        DeAuthorized = "DeAuthorized",
    }
}

ocpp_enum! {
    /// SampledValue.context (spec default when absent: `Sample.Periodic`).
    pub enum ReadingContext {
        InterruptionBegin = "Interruption.Begin",
        InterruptionEnd = "Interruption.End",
        SampleClock = "Sample.Clock",
        SamplePeriodic = "Sample.Periodic",
        TransactionBegin = "Transaction.Begin",
        TransactionEnd = "Transaction.End",
        Trigger = "Trigger",
        Other = "Other",
    }
}

ocpp_enum! {
    /// SampledValue.format (spec default when absent: `Raw`).
    pub enum ValueFormat {
        Raw = "Raw",
        SignedData = "SignedData",
    }
}

ocpp_enum! {
    /// SampledValue.measurand (spec default when absent: `Energy.Active.Import.Register`).
    pub enum Measurand {
        EnergyActiveExportRegister = "Energy.Active.Export.Register",
        EnergyActiveImportRegister = "Energy.Active.Import.Register",
        EnergyReactiveExportRegister = "Energy.Reactive.Export.Register",
        EnergyReactiveImportRegister = "Energy.Reactive.Import.Register",
        EnergyActiveExportInterval = "Energy.Active.Export.Interval",
        EnergyActiveImportInterval = "Energy.Active.Import.Interval",
        EnergyReactiveExportInterval = "Energy.Reactive.Export.Interval",
        EnergyReactiveImportInterval = "Energy.Reactive.Import.Interval",
        PowerActiveExport = "Power.Active.Export",
        PowerActiveImport = "Power.Active.Import",
        PowerOffered = "Power.Offered",
        PowerReactiveExport = "Power.Reactive.Export",
        PowerReactiveImport = "Power.Reactive.Import",
        PowerFactor = "Power.Factor",
        CurrentImport = "Current.Import",
        CurrentExport = "Current.Export",
        CurrentOffered = "Current.Offered",
        Voltage = "Voltage",
        Frequency = "Frequency",
        Temperature = "Temperature",
        SoC = "SoC",
        RPM = "RPM",
    }
}

ocpp_enum! {
    /// SampledValue.phase.
    pub enum Phase {
        L1 = "L1",
        L2 = "L2",
        L3 = "L3",
        N = "N",
        L1N = "L1-N",
        L2N = "L2-N",
        L3N = "L3-N",
        L1L2 = "L1-L2",
        L2L3 = "L2-L3",
        L3L1 = "L3-L1",
    }
}

ocpp_enum! {
    /// SampledValue.location (spec default when absent: `Outlet`).
    pub enum Location {
        Cable = "Cable",
        EV = "EV",
        Inlet = "Inlet",
        Outlet = "Outlet",
        Body = "Body",
    }
}

ocpp_enum! {
    /// SampledValue.unit (spec default when absent: `Wh`).
    ///
    /// The official schema lists both "Celcius" (the original 1.6 spelling) and "Celsius"; both
    /// read as [`UnitOfMeasure::Celsius`] in strict mode too, and we always write "Celsius".
    pub enum UnitOfMeasure {
        Wh = "Wh",
        KWh = "kWh",
        Varh = "varh",
        Kvarh = "kvarh",
        W = "W",
        KW = "kW",
        VA = "VA",
        KVA = "kVA",
        Var = "var",
        Kvar = "kvar",
        A = "A",
        V = "V",
        K = "K",
        Celsius = "Celsius" | "Celcius",
        Fahrenheit = "Fahrenheit",
        Percent = "Percent",
        /// Listed in the MeterValues schema but missing from StopTransaction's, so strict mode
        /// refuses it inside `transactionData`.
        Hertz = "Hertz",
    }
}

ocpp_enum! {
    /// DiagnosticsStatusNotification.status.
    pub enum DiagnosticsStatus {
        Idle = "Idle",
        Uploaded = "Uploaded",
        UploadFailed = "UploadFailed",
        Uploading = "Uploading",
    }
}

ocpp_enum! {
    /// FirmwareStatusNotification.status.
    pub enum FirmwareStatus {
        Downloaded = "Downloaded",
        DownloadFailed = "DownloadFailed",
        Downloading = "Downloading",
        Idle = "Idle",
        InstallationFailed = "InstallationFailed",
        Installing = "Installing",
        Installed = "Installed",
    }
}

ocpp_enum! {
    /// SignedFirmwareStatusNotification.status (the security whitepaper's `FirmwareStatusEnumType`).
    pub enum SignedFirmwareStatus {
        Downloaded = "Downloaded",
        DownloadFailed = "DownloadFailed",
        Downloading = "Downloading",
        DownloadScheduled = "DownloadScheduled",
        DownloadPaused = "DownloadPaused",
        Idle = "Idle",
        InstallationFailed = "InstallationFailed",
        Installing = "Installing",
        Installed = "Installed",
        InstallRebooting = "InstallRebooting",
        InstallScheduled = "InstallScheduled",
        InstallVerificationFailed = "InstallVerificationFailed",
        InvalidSignature = "InvalidSignature",
        SignatureVerified = "SignatureVerified",
    }
}

ocpp_enum! {
    /// LogStatusNotification.status (`UploadLogStatusEnumType`).
    pub enum UploadLogStatus {
        BadMessage = "BadMessage",
        Idle = "Idle",
        NotSupportedOperation = "NotSupportedOperation",
        PermissionDenied = "PermissionDenied",
        Uploaded = "Uploaded",
        UploadFailure = "UploadFailure",
        Uploading = "Uploading",
    }
}

ocpp_enum! {
    /// BootNotificationResponse.status.
    pub enum RegistrationStatus {
        Accepted = "Accepted",
        Pending = "Pending",
        Rejected = "Rejected",
    }
}

ocpp_enum! {
    /// IdTagInfo.status.
    pub enum AuthorizationStatus {
        Accepted = "Accepted",
        Blocked = "Blocked",
        Expired = "Expired",
        Invalid = "Invalid",
        ConcurrentTx = "ConcurrentTx",
    }
}

ocpp_enum! {
    /// DataTransferResponse.status (either direction).
    pub enum DataTransferStatus {
        Accepted = "Accepted",
        Rejected = "Rejected",
        UnknownMessageId = "UnknownMessageId",
        UnknownVendorId = "UnknownVendorId",
    }
}

ocpp_enum! {
    /// `GenericStatusEnumType` of the security whitepaper (SignCertificateResponse.status).
    pub enum GenericStatus {
        Accepted = "Accepted",
        Rejected = "Rejected",
    }
}

// ---------------------------------------------------------------------------------------------
// Requests (charge point → central system)
// ---------------------------------------------------------------------------------------------

/// Authorize.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorize {
    pub id_tag: String,
}

/// BootNotification.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootNotification {
    pub charge_point_vendor: String,
    pub charge_point_model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charge_point_serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub charge_box_serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iccid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imsi: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meter_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meter_serial_number: Option<String>,
}

/// DataTransfer.req; the same schema serves both directions, so `actions` reuses it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataTransfer {
    pub vendor_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// DiagnosticsStatusNotification.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiagnosticsStatusNotification {
    pub status: DiagnosticsStatus,
}

/// FirmwareStatusNotification.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirmwareStatusNotification {
    pub status: FirmwareStatus,
}

/// MeterValues.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterValues {
    pub connector_id: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<i32>,
    pub meter_value: Vec<MeterValue>,
}

/// One timestamped set of samples (MeterValues.meterValue, StopTransaction.transactionData).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterValue {
    #[serde(serialize_with = "ts::serialize")]
    pub timestamp: DateTime<Utc>,
    pub sampled_value: Vec<SampledValue>,
}

/// One sample. Absent optional fields have spec defaults (see each enum); applying them is the
/// caller's business, so that "absent" stays distinguishable from "sent".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampledValue {
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<ReadingContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<ValueFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurand: Option<Measurand>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitOfMeasure>,
}

/// StartTransaction.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartTransaction {
    pub connector_id: i32,
    pub id_tag: String,
    pub meter_start: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<i32>,
    #[serde(serialize_with = "ts::serialize")]
    pub timestamp: DateTime<Utc>,
}

/// StatusNotification.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusNotification {
    pub connector_id: i32,
    pub error_code: ChargePointErrorCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
    pub status: ChargePointStatus,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ts::serialize_opt"
    )]
    pub timestamp: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor_error_code: Option<String>,
}

/// StopTransaction.req.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StopTransaction {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_tag: Option<String>,
    pub meter_stop: i32,
    #[serde(serialize_with = "ts::serialize")]
    pub timestamp: DateTime<Utc>,
    pub transaction_id: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_data: Option<Vec<MeterValue>>,
}

/// SecurityEventNotification.req (security whitepaper).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityEventNotification {
    /// The JSON field `type`; free text such as "FirmwareUpdated" or "TamperDetectionActivated".
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(serialize_with = "ts::serialize")]
    pub timestamp: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tech_info: Option<String>,
}

/// SignCertificate.req (security whitepaper).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignCertificate {
    /// PEM-encoded certificate signing request.
    pub csr: String,
}

/// SignedFirmwareStatusNotification.req (security whitepaper).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedFirmwareStatusNotification {
    pub status: SignedFirmwareStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<i32>,
}

/// LogStatusNotification.req (security whitepaper).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogStatusNotification {
    pub status: UploadLogStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<i32>,
}

/// A decoded CALL from a charge point.
#[derive(Debug, Clone, PartialEq)]
pub enum CpRequest {
    Authorize(Authorize),
    BootNotification(BootNotification),
    DataTransfer(DataTransfer),
    DiagnosticsStatusNotification(DiagnosticsStatusNotification),
    FirmwareStatusNotification(FirmwareStatusNotification),
    Heartbeat,
    MeterValues(MeterValues),
    StartTransaction(StartTransaction),
    StatusNotification(StatusNotification),
    StopTransaction(StopTransaction),
    SecurityEventNotification(SecurityEventNotification),
    SignCertificate(SignCertificate),
    SignedFirmwareStatusNotification(SignedFirmwareStatusNotification),
    LogStatusNotification(LogStatusNotification),
}

impl CpRequest {
    /// The OCPP action name.
    pub fn action(&self) -> &'static str {
        match self {
            CpRequest::Authorize(_) => "Authorize",
            CpRequest::BootNotification(_) => "BootNotification",
            CpRequest::DataTransfer(_) => "DataTransfer",
            CpRequest::DiagnosticsStatusNotification(_) => "DiagnosticsStatusNotification",
            CpRequest::FirmwareStatusNotification(_) => "FirmwareStatusNotification",
            CpRequest::Heartbeat => "Heartbeat",
            CpRequest::MeterValues(_) => "MeterValues",
            CpRequest::StartTransaction(_) => "StartTransaction",
            CpRequest::StatusNotification(_) => "StatusNotification",
            CpRequest::StopTransaction(_) => "StopTransaction",
            CpRequest::SecurityEventNotification(_) => "SecurityEventNotification",
            CpRequest::SignCertificate(_) => "SignCertificate",
            CpRequest::SignedFirmwareStatusNotification(_) => "SignedFirmwareStatusNotification",
            CpRequest::LogStatusNotification(_) => "LogStatusNotification",
        }
    }
}

/// The actions a charge point may send us: the 10 core ones, then the security whitepaper's 4.
pub const CP_ACTIONS: &[&str] = &[
    "Authorize",
    "BootNotification",
    "DataTransfer",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StartTransaction",
    "StatusNotification",
    "StopTransaction",
    "SecurityEventNotification",
    "SignCertificate",
    "SignedFirmwareStatusNotification",
    "LogStatusNotification",
];

/// Security whitepaper actions that only the central system sends; a charge point sending one
/// gets `NotSupported` (known, wrong direction) rather than `NotImplemented` (unknown).
const CS_SECURITY_ACTIONS: &[&str] = &[
    "CertificateSigned",
    "DeleteCertificate",
    "ExtendedTriggerMessage",
    "GetInstalledCertificateIds",
    "GetLog",
    "InstallCertificate",
    "SignedUpdateFirmware",
];

/// Decodes the payload of a CALL from a charge point.
///
/// Err carries the CALLERROR code to answer with: unknown action → NotImplemented (an action
/// only the central system sends → NotSupported); wrong JSON type → TypeConstraintViolation;
/// value out of range / unknown enum value / string too long / unparsable date-time →
/// PropertyConstraintViolation; missing required field (or too few array items) →
/// OccurenceConstraintViolation; payload not an object, or (strict only) a property the schema
/// does not define → FormationViolation. The description names the field by JSON path, e.g.
/// `meterValue[0].sampledValue[1].unit: unknown value "kW h", ...`; when several fields are
/// wrong, all are listed and the code is that of the first.
///
/// `strict = false` accepts what real chargers send: `meterValue` / `transactionData` /
/// `sampledValue` (any array) as a single object; enum values in any letter case or with stray
/// whitespace ("wh" → Wh); timestamps without fraction, without zone (read as UTC), with a
/// space for the `T` or an offset without colon; integers as numeric strings ("1") or as
/// `1.0`; numbers and booleans where a string is due; DataTransfer `data` as JSON instead of a
/// string; `null` for an absent field; too few array items; unknown properties (ignored);
/// "Hertz" in `transactionData`. With `strict = true` each of those is refused, as the official
/// schemas would. "Celcius" is no quirk: the official enum lists it, so both modes read it as
/// [`UnitOfMeasure::Celsius`].
pub fn parse_cp_request(
    action: &str,
    payload: Value,
    strict: bool,
) -> Result<CpRequest, (ErrorCode, String)> {
    parse_cp_request_with_notes(action, &payload, strict).map(|(request, _)| request)
}

/// [`parse_cp_request`], also returning what leniency had to overlook (one line per fix, with
/// its JSON path; always empty in strict mode), so the session can log odd chargers.
pub fn parse_cp_request_with_notes(
    action: &str,
    payload: &Value,
    strict: bool,
) -> Result<(CpRequest, Vec<String>), (ErrorCode, String)> {
    if !CP_ACTIONS.contains(&action) {
        let known_other_way =
            super::actions::CS_ACTIONS.contains(&action) || CS_SECURITY_ACTIONS.contains(&action);
        return Err(if known_other_way {
            (
                ErrorCode::NotSupported,
                format!("`{action}` is sent by the central system, not to it"),
            )
        } else {
            (
                ErrorCode::NotImplemented,
                format!("unknown action `{action}`"),
            )
        });
    }
    let mut cx = Cx::new(strict);
    let request = decode_request(&mut cx, action, payload);
    cx.finish(request)
        .map_err(|(problems, total)| decode::summarize(&problems, total))
}

fn decode_request(cx: &mut Cx, action: &str, payload: &Value) -> Option<CpRequest> {
    Some(match action {
        "Authorize" => CpRequest::Authorize(Authorize::decode(cx, payload)?),
        "BootNotification" => CpRequest::BootNotification(BootNotification::decode(cx, payload)?),
        "DataTransfer" => CpRequest::DataTransfer(DataTransfer::decode(cx, payload)?),
        "DiagnosticsStatusNotification" => CpRequest::DiagnosticsStatusNotification(
            DiagnosticsStatusNotification::decode(cx, payload)?,
        ),
        "FirmwareStatusNotification" => {
            CpRequest::FirmwareStatusNotification(FirmwareStatusNotification::decode(cx, payload)?)
        }
        "Heartbeat" => {
            Obj::open(cx, payload)?.finish();
            CpRequest::Heartbeat
        }
        "MeterValues" => CpRequest::MeterValues(MeterValues::decode(cx, payload)?),
        "StartTransaction" => CpRequest::StartTransaction(StartTransaction::decode(cx, payload)?),
        "StatusNotification" => {
            CpRequest::StatusNotification(StatusNotification::decode(cx, payload)?)
        }
        "StopTransaction" => CpRequest::StopTransaction(StopTransaction::decode(cx, payload)?),
        "SecurityEventNotification" => {
            CpRequest::SecurityEventNotification(SecurityEventNotification::decode(cx, payload)?)
        }
        "SignCertificate" => CpRequest::SignCertificate(SignCertificate::decode(cx, payload)?),
        "SignedFirmwareStatusNotification" => CpRequest::SignedFirmwareStatusNotification(
            SignedFirmwareStatusNotification::decode(cx, payload)?,
        ),
        "LogStatusNotification" => {
            CpRequest::LogStatusNotification(LogStatusNotification::decode(cx, payload)?)
        }
        _ => return None,
    })
}

// Each reader evaluates every field before combining them with `?`, so that one payload
// reports all of its problems, not just the first.

impl Decode for Authorize {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let id_tag = o.req_str("idTag", 20);
        o.finish();
        Some(Authorize { id_tag: id_tag? })
    }
}

impl Decode for BootNotification {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let charge_point_vendor = o.req_str("chargePointVendor", 20);
        let charge_point_model = o.req_str("chargePointModel", 20);
        let charge_point_serial_number = o.opt_str("chargePointSerialNumber", 25);
        let charge_box_serial_number = o.opt_str("chargeBoxSerialNumber", 25);
        let firmware_version = o.opt_str("firmwareVersion", 50);
        let iccid = o.opt_str("iccid", 20);
        let imsi = o.opt_str("imsi", 20);
        let meter_type = o.opt_str("meterType", 25);
        let meter_serial_number = o.opt_str("meterSerialNumber", 25);
        o.finish();
        Some(BootNotification {
            charge_point_vendor: charge_point_vendor?,
            charge_point_model: charge_point_model?,
            charge_point_serial_number: charge_point_serial_number?,
            charge_box_serial_number: charge_box_serial_number?,
            firmware_version: firmware_version?,
            iccid: iccid?,
            imsi: imsi?,
            meter_type: meter_type?,
            meter_serial_number: meter_serial_number?,
        })
    }
}

impl Decode for DataTransfer {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let vendor_id = o.req_str("vendorId", 255);
        let message_id = o.opt_str("messageId", 50);
        // Vendors routinely put a JSON object in `data`; lenient mode keeps it as JSON text.
        let data = o.opt::<AnyText>("data");
        o.finish();
        Some(DataTransfer {
            vendor_id: vendor_id?,
            message_id: message_id?,
            data: data?.map(|text| text.0),
        })
    }
}

impl Decode for DiagnosticsStatusNotification {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let status = o.req("status");
        o.finish();
        Some(DiagnosticsStatusNotification { status: status? })
    }
}

impl Decode for FirmwareStatusNotification {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let status = o.req("status");
        o.finish();
        Some(FirmwareStatusNotification { status: status? })
    }
}

impl Decode for MeterValues {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let connector_id = o.req("connectorId");
        let transaction_id = o.opt("transactionId");
        let meter_value = o.req_list("meterValue", 1);
        o.finish();
        Some(MeterValues {
            connector_id: connector_id?,
            transaction_id: transaction_id?,
            meter_value: meter_value?,
        })
    }
}

impl MeterValue {
    /// Reads one meter value; `min_samples` is the schema's `minItems` for `sampledValue`
    /// (1 in MeterValues, none in StopTransaction).
    fn read(cx: &mut Cx, value: &Value, min_samples: usize) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let timestamp = o.req("timestamp");
        let sampled_value = o.req_list("sampledValue", min_samples);
        o.finish();
        Some(MeterValue {
            timestamp: timestamp?,
            sampled_value: sampled_value?,
        })
    }
}

impl Decode for MeterValue {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        MeterValue::read(cx, value, 1)
    }
}

/// One entry of StopTransaction.transactionData. Its official schema differs from MeterValues'
/// in two ways: `sampledValue` has no `minItems`, and the unit enum lacks "Hertz". Strict mode
/// promises schema conformance, so it refuses Hertz here; lenient mode notes it.
struct TransactionDataItem(MeterValue);

impl Decode for TransactionDataItem {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let meter_value = MeterValue::read(cx, value, 0)?;
        let mut conforms = true;
        for (j, sample) in meter_value.sampled_value.iter().enumerate() {
            if sample.unit != Some(UnitOfMeasure::Hertz) {
                continue;
            }
            let path = [Seg::Key("sampledValue"), Seg::Index(j), Seg::Key("unit")];
            cx.at_path(&path, |cx| {
                if cx.strict() {
                    cx.fail(
                        ErrorCode::PropertyConstraintViolation,
                        "\"Hertz\" is not in StopTransaction's unit enum",
                    );
                    conforms = false;
                } else {
                    cx.note("accepted \"Hertz\", which StopTransaction's schema lacks");
                }
            });
        }
        conforms.then_some(TransactionDataItem(meter_value))
    }
}

impl Decode for SampledValue {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let sampled = o.req::<String>("value");
        let context = o.opt("context");
        let format = o.opt("format");
        let measurand = o.opt("measurand");
        let phase = o.opt("phase");
        let location = o.opt("location");
        let unit = o.opt("unit");
        o.finish();
        Some(SampledValue {
            value: sampled?,
            context: context?,
            format: format?,
            measurand: measurand?,
            phase: phase?,
            location: location?,
            unit: unit?,
        })
    }
}

impl Decode for StartTransaction {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let connector_id = o.req("connectorId");
        let id_tag = o.req_str("idTag", 20);
        let meter_start = o.req("meterStart");
        let reservation_id = o.opt("reservationId");
        let timestamp = o.req("timestamp");
        o.finish();
        Some(StartTransaction {
            connector_id: connector_id?,
            id_tag: id_tag?,
            meter_start: meter_start?,
            reservation_id: reservation_id?,
            timestamp: timestamp?,
        })
    }
}

impl Decode for StatusNotification {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let connector_id = o.req("connectorId");
        let error_code = o.req("errorCode");
        let info = o.opt_str("info", 50);
        let status = o.req("status");
        let timestamp = o.opt("timestamp");
        let vendor_id = o.opt_str("vendorId", 255);
        let vendor_error_code = o.opt_str("vendorErrorCode", 50);
        o.finish();
        Some(StatusNotification {
            connector_id: connector_id?,
            error_code: error_code?,
            info: info?,
            status: status?,
            timestamp: timestamp?,
            vendor_id: vendor_id?,
            vendor_error_code: vendor_error_code?,
        })
    }
}

impl Decode for StopTransaction {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let id_tag = o.opt_str("idTag", 20);
        let meter_stop = o.req("meterStop");
        let timestamp = o.req("timestamp");
        let transaction_id = o.req("transactionId");
        let reason = o.opt("reason");
        let transaction_data = o.opt_list::<TransactionDataItem>("transactionData", 0);
        o.finish();
        Some(StopTransaction {
            id_tag: id_tag?,
            meter_stop: meter_stop?,
            timestamp: timestamp?,
            transaction_id: transaction_id?,
            reason: reason?,
            transaction_data: transaction_data?
                .map(|items| items.into_iter().map(|item| item.0).collect()),
        })
    }
}

impl Decode for SecurityEventNotification {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let kind = o.req_str("type", 50);
        let timestamp = o.req("timestamp");
        let tech_info = o.opt_str("techInfo", 255);
        o.finish();
        Some(SecurityEventNotification {
            kind: kind?,
            timestamp: timestamp?,
            tech_info: tech_info?,
        })
    }
}

impl Decode for SignCertificate {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let csr = o.req_str("csr", 5500);
        o.finish();
        Some(SignCertificate { csr: csr? })
    }
}

impl Decode for SignedFirmwareStatusNotification {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let status = o.req("status");
        let request_id = o.opt("requestId");
        o.finish();
        Some(SignedFirmwareStatusNotification {
            status: status?,
            request_id: request_id?,
        })
    }
}

impl Decode for LogStatusNotification {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let status = o.req("status");
        let request_id = o.opt("requestId");
        o.finish();
        Some(LogStatusNotification {
            status: status?,
            request_id: request_id?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Responses (central system → charge point)
// ---------------------------------------------------------------------------------------------

/// Serializes one of our message structs into a CALL / CALLRESULT payload.
pub fn to_payload<T: Serialize>(message: &T) -> Value {
    // Our message types are plain structs with string keys and infallible field serializers,
    // for which serde_json cannot fail; the empty object only keeps this total without a panic.
    serde_json::to_value(message).unwrap_or_else(|_| Value::Object(serde_json::Map::new()))
}

/// Adds `payload()` to response types.
macro_rules! payload_method {
    ($($name:ident),+ $(,)?) => {
        $(
            impl $name {
                /// This response as a CALLRESULT payload.
                pub fn payload(&self) -> Value {
                    to_payload(self)
                }
            }
        )+
    };
}

/// IdTagInfo, part of Authorize, StartTransaction and StopTransaction responses (and of
/// SendLocalList's entries). `parent_id_tag` must be at most 20 characters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdTagInfo {
    pub status: AuthorizationStatus,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ts::serialize_opt"
    )]
    pub expiry_date: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id_tag: Option<String>,
}

impl IdTagInfo {
    /// Just a status, no expiry, no parent.
    pub fn new(status: AuthorizationStatus) -> Self {
        IdTagInfo {
            status,
            expiry_date: None,
            parent_id_tag: None,
        }
    }
}

impl Decode for IdTagInfo {
    fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
        let mut o = Obj::open(cx, value)?;
        let status = o.req("status");
        let expiry_date = o.opt("expiryDate");
        let parent_id_tag = o.opt_str("parentIdTag", 20);
        o.finish();
        Some(IdTagInfo {
            status: status?,
            expiry_date: expiry_date?,
            parent_id_tag: parent_id_tag?,
        })
    }
}

/// Authorize.conf.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeResponse {
    pub id_tag_info: IdTagInfo,
}

/// BootNotification.conf. `interval` is the heartbeat interval in seconds when Accepted, the
/// retry delay otherwise.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootNotificationResponse {
    pub status: RegistrationStatus,
    #[serde(serialize_with = "ts::serialize")]
    pub current_time: DateTime<Utc>,
    pub interval: i32,
}

impl BootNotificationResponse {
    /// With `current_time` = now.
    pub fn now(status: RegistrationStatus, interval: i32) -> Self {
        BootNotificationResponse {
            status,
            current_time: Utc::now(),
            interval,
        }
    }
}

/// DataTransfer.conf (either direction).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataTransferResponse {
    pub status: DataTransferStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// Heartbeat.conf.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    #[serde(serialize_with = "ts::serialize")]
    pub current_time: DateTime<Utc>,
}

impl HeartbeatResponse {
    /// With `current_time` = now.
    pub fn now() -> Self {
        HeartbeatResponse {
            current_time: Utc::now(),
        }
    }
}

/// StartTransaction.conf.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartTransactionResponse {
    pub transaction_id: i32,
    pub id_tag_info: IdTagInfo,
}

/// StopTransaction.conf.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StopTransactionResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_tag_info: Option<IdTagInfo>,
}

/// SignCertificate.conf.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignCertificateResponse {
    pub status: GenericStatus,
}

/// The `{}` answer of the notifications. A braced struct, because serde writes a unit struct
/// as `null`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EmptyResponse {}

pub type DiagnosticsStatusNotificationResponse = EmptyResponse;
pub type FirmwareStatusNotificationResponse = EmptyResponse;
pub type MeterValuesResponse = EmptyResponse;
pub type StatusNotificationResponse = EmptyResponse;
pub type SecurityEventNotificationResponse = EmptyResponse;
pub type SignedFirmwareStatusNotificationResponse = EmptyResponse;
pub type LogStatusNotificationResponse = EmptyResponse;

payload_method!(
    IdTagInfo,
    AuthorizeResponse,
    BootNotificationResponse,
    DataTransferResponse,
    HeartbeatResponse,
    StartTransactionResponse,
    StopTransactionResponse,
    SignCertificateResponse,
    EmptyResponse,
);

/// Timestamp serialization shared by every message we write.
pub(crate) mod ts {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    /// RFC 3339, UTC, milliseconds, `Z`: the form every charger firmware parses.
    pub(crate) fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub(crate) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub(crate) fn serialize_opt<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => serialize(t, s),
            None => s.serialize_none(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The payload reader
// ---------------------------------------------------------------------------------------------

/// Reads JSON payloads into typed messages, recording every problem with its OCPP-J error code
/// and JSON path, and (lenient mode) every quirk it overlooked.
///
/// Shared with `actions`, which reads operator params (always strict) and charge point responses.
pub(crate) mod decode {
    use chrono::{DateTime, NaiveDateTime, Utc};
    use serde_json::{Map, Value};

    use super::super::framing::{json_type, ErrorCode};

    /// One thing wrong with a payload.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Problem {
        pub code: ErrorCode,
        /// JSON path such as `meterValue[0].sampledValue[1].unit`; empty for the payload itself.
        pub path: String,
        pub message: String,
    }

    impl std::fmt::Display for Problem {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if self.path.is_empty() {
                write!(f, "payload: {}", self.message)
            } else {
                write!(f, "{}: {}", self.path, self.message)
            }
        }
    }

    /// The CALLERROR for a list of problems: the first one's code, and all of them described
    /// (capped, since the description goes on the wire).
    /// `total` counts the problems found, kept or not (see [`KEPT_PROBLEMS`]).
    pub(crate) fn summarize(problems: &[Problem], total: usize) -> (ErrorCode, String) {
        const SHOWN: usize = 5;
        let code = problems
            .first()
            .map_or(ErrorCode::InternalError, |p| p.code);
        let mut description = problems
            .iter()
            .take(SHOWN)
            .map(Problem::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let total = total.max(problems.len());
        if total > SHOWN {
            description.push_str(&format!("; and {} more", total - SHOWN));
        }
        (code, description)
    }

    /// One step of a JSON path.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Seg {
        Key(&'static str),
        Index(usize),
    }

    /// The state of one decoding run.
    #[derive(Debug)]
    pub(crate) struct Cx {
        strict: bool,
        path: Vec<Seg>,
        /// The first [`KEPT_PROBLEMS`] problems.
        problems: Vec<Problem>,
        /// Problems found after the first [`KEPT_PROBLEMS`]: counted, not kept.
        more_problems: usize,
        /// The first [`KEPT_NOTES`] leniency notes.
        notes: Vec<String>,
        /// Notes beyond the first [`KEPT_NOTES`]: counted, not kept.
        more_notes: usize,
    }

    /// Problems kept with their path and message per decoding run. Keeping every one let a payload
    /// of `[{},{},…]` items cost ~150x its size in problem strings (found by the allocation
    /// property of the ocpp_message and ocpp_action fuzz targets); errors show only 5 anyway.
    pub(crate) const KEPT_PROBLEMS: usize = 16;

    /// Leniency notes kept per decoding run, for the same reason: a payload of many quirky items would
    /// otherwise cost a note string per item (the log line names the first ones and the count of the rest).
    pub(crate) const KEPT_NOTES: usize = 16;

    impl Cx {
        pub(crate) fn new(strict: bool) -> Self {
            Cx {
                strict,
                path: Vec::new(),
                problems: Vec::new(),
                more_problems: 0,
                notes: Vec::new(),
                more_notes: 0,
            }
        }

        /// Keeps `problem` while fewer than [`KEPT_PROBLEMS`] are kept, else counts it.
        fn push_problem(&mut self, problem: impl FnOnce(&Cx) -> Problem) {
            if self.problems.len() < KEPT_PROBLEMS {
                let problem = problem(self);
                self.problems.push(problem);
            } else {
                self.more_problems += 1;
            }
        }

        pub(crate) fn strict(&self) -> bool {
            self.strict
        }

        pub(crate) fn path(&self) -> String {
            let mut out = String::new();
            for seg in &self.path {
                match seg {
                    Seg::Key(key) => {
                        if !out.is_empty() {
                            out.push('.');
                        }
                        out.push_str(key);
                    }
                    Seg::Index(i) => out.push_str(&format!("[{i}]")),
                }
            }
            out
        }

        fn child_path(&self, key: &str) -> String {
            let base = self.path();
            if base.is_empty() {
                key.to_owned()
            } else {
                format!("{base}.{key}")
            }
        }

        /// Records a problem at the current path.
        pub(crate) fn fail(&mut self, code: ErrorCode, message: impl Into<String>) {
            self.push_problem(|cx| Problem {
                code,
                path: cx.path(),
                message: message.into(),
            });
        }

        /// Records a quirk that lenient mode accepted, at the current path.
        pub(crate) fn note(&mut self, message: impl std::fmt::Display) {
            if self.notes.len() >= KEPT_NOTES {
                self.more_notes += 1;
                return;
            }
            let path = self.path();
            let path = if path.is_empty() { "payload" } else { &path };
            self.notes.push(format!("{path}: {message}"));
        }

        /// Runs `f` one path step deeper.
        pub(crate) fn at<T>(&mut self, seg: Seg, f: impl FnOnce(&mut Cx) -> T) -> T {
            self.path.push(seg);
            let out = f(self);
            self.path.pop();
            out
        }

        /// Runs `f` several path steps deeper.
        pub(crate) fn at_path<T>(&mut self, segs: &[Seg], f: impl FnOnce(&mut Cx) -> T) -> T {
            let depth = self.path.len();
            self.path.extend_from_slice(segs);
            let out = f(self);
            self.path.truncate(depth);
            out
        }

        /// The decoded value and the notes, or the kept problems and how many were found.
        pub(crate) fn finish<T>(
            self,
            value: Option<T>,
        ) -> Result<(T, Vec<String>), (Vec<Problem>, usize)> {
            match value {
                Some(value) if self.problems.is_empty() => {
                    let mut notes = self.notes;
                    if self.more_notes > 0 {
                        notes.push(format!(
                            "payload: {} more quirks like these",
                            self.more_notes
                        ));
                    }
                    Ok((value, notes))
                }
                // A reader that gives up must have said why; if one ever does not, still fail
                // loudly rather than hand out a half-read message.
                None if self.problems.is_empty() => Err((
                    vec![Problem {
                        code: ErrorCode::InternalError,
                        path: String::new(),
                        message: "payload could not be read".into(),
                    }],
                    1,
                )),
                _ => {
                    let total = self.problems.len() + self.more_problems;
                    Err((self.problems, total))
                }
            }
        }

        /// Every problem so far.
        pub(crate) fn problems(&self) -> &[Problem] {
            &self.problems
        }
    }

    /// A JSON value rendered briefly for an error message.
    fn show(value: &Value) -> String {
        const MAX: usize = 40;
        let text = value.to_string();
        if text.chars().count() <= MAX {
            text
        } else {
            let cut: String = text.chars().take(MAX).collect();
            format!("{cut}…")
        }
    }

    fn wrong_type(cx: &mut Cx, expected: &str, got: &Value) {
        cx.fail(
            ErrorCode::TypeConstraintViolation,
            format!("expected {expected}, got {} {}", json_type(got), show(got)),
        );
    }

    /// A type that can be read from a JSON value.
    pub(crate) trait Decode: Sized {
        /// Reads `value`, which sits at `cx`'s current path; on failure records why and
        /// returns `None`.
        fn decode(cx: &mut Cx, value: &Value) -> Option<Self>;
    }

    impl Decode for i32 {
        fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
            let wide = match value {
                Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => i,
                    // Larger than i64::MAX: certainly out of range, not a type error.
                    (None, _) if n.is_u64() => i64::MAX,
                    // JSON schema draft 4 says an integer has no fraction part, so 1.0 is only
                    // tolerated leniently.
                    (None, Some(f)) if !cx.strict && f.fract() == 0.0 && f.is_finite() => {
                        cx.note(format_args!("read {n} as an integer"));
                        f as i64
                    }
                    _ => {
                        wrong_type(cx, "integer", value);
                        return None;
                    }
                },
                Value::String(s) if !cx.strict => match s.trim().parse::<i64>() {
                    Ok(i) => {
                        cx.note(format_args!("read string {s:?} as an integer"));
                        i
                    }
                    Err(_) => {
                        wrong_type(cx, "integer", value);
                        return None;
                    }
                },
                _ => {
                    wrong_type(cx, "integer", value);
                    return None;
                }
            };
            match i32::try_from(wide) {
                Ok(i) => Some(i),
                Err(_) => {
                    cx.fail(
                        ErrorCode::PropertyConstraintViolation,
                        format!("{} is out of range for a 32-bit integer", show(value)),
                    );
                    None
                }
            }
        }
    }

    impl Decode for f64 {
        fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
            match value {
                Value::Number(n) => n.as_f64().or_else(|| {
                    wrong_type(cx, "number", value);
                    None
                }),
                Value::String(s) if !cx.strict => match s.trim().parse::<f64>() {
                    Ok(f) if f.is_finite() => {
                        cx.note(format_args!("read string {s:?} as a number"));
                        Some(f)
                    }
                    _ => {
                        wrong_type(cx, "number", value);
                        None
                    }
                },
                _ => {
                    wrong_type(cx, "number", value);
                    None
                }
            }
        }
    }

    impl Decode for bool {
        fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
            match value {
                Value::Bool(b) => Some(*b),
                Value::String(s) if !cx.strict && s.trim().eq_ignore_ascii_case("true") => {
                    cx.note("read string as a boolean");
                    Some(true)
                }
                Value::String(s) if !cx.strict && s.trim().eq_ignore_ascii_case("false") => {
                    cx.note("read string as a boolean");
                    Some(false)
                }
                _ => {
                    wrong_type(cx, "boolean", value);
                    None
                }
            }
        }
    }

    impl Decode for String {
        fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
            match value {
                Value::String(s) => Some(s.clone()),
                // e.g. a meter reading sent as 1234 instead of "1234".
                Value::Number(_) | Value::Bool(_) if !cx.strict => {
                    cx.note(format_args!("read {value} as a string"));
                    Some(value.to_string())
                }
                _ => {
                    wrong_type(cx, "string", value);
                    None
                }
            }
        }
    }

    /// A string field whose content vendors sometimes send as raw JSON (DataTransfer `data`);
    /// lenient mode keeps any non-string value as its JSON text.
    pub(crate) struct AnyText(pub String);

    impl Decode for AnyText {
        fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
            match value {
                Value::String(s) => Some(AnyText(s.clone())),
                _ if !cx.strict => {
                    cx.note(format_args!("kept {} value as JSON text", json_type(value)));
                    Some(AnyText(value.to_string()))
                }
                _ => {
                    wrong_type(cx, "string", value);
                    None
                }
            }
        }
    }

    /// A string of at most `N` characters (for list items; fields use [`Obj::req_str`]).
    pub(crate) struct MaxLen<const N: usize>(pub String);

    impl<const N: usize> Decode for MaxLen<N> {
        fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
            let s = String::decode(cx, value)?;
            max_len(cx, &s, N).then_some(MaxLen(s))
        }
    }

    /// Checks a JSON schema `maxLength`, which counts characters, not bytes.
    pub(crate) fn max_len(cx: &mut Cx, s: &str, max: usize) -> bool {
        let len = s.chars().count();
        if len > max {
            cx.fail(
                ErrorCode::PropertyConstraintViolation,
                format!("is {len} characters long, at most {max} allowed"),
            );
            false
        } else {
            true
        }
    }

    impl Decode for DateTime<Utc> {
        fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
            let Value::String(s) = value else {
                wrong_type(cx, "date-time string", value);
                return None;
            };
            match parse_timestamp(s, cx.strict) {
                Some((t, exact)) => {
                    if !exact {
                        cx.note(format_args!("read {s:?} as {}", super::ts::format(&t)));
                    }
                    Some(t)
                }
                None => {
                    cx.fail(
                        ErrorCode::PropertyConstraintViolation,
                        format!("{s:?} is not an RFC 3339 date-time"),
                    );
                    None
                }
            }
        }
    }

    /// Parses an RFC 3339 date-time (fraction optional, zone required, `T` separator), and in
    /// lenient mode also: surrounding whitespace, a space separator, offsets without colon,
    /// and no zone at all, which is read as UTC (what such chargers mean in practice, since
    /// OCPP says all times are UTC). The flag is false when leniency was needed.
    pub(crate) fn parse_timestamp(s: &str, strict: bool) -> Option<(DateTime<Utc>, bool)> {
        let has_t = matches!(s.as_bytes().get(10), Some(b'T' | b't'));
        if has_t {
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some((t.with_timezone(&Utc), true));
            }
        }
        if strict {
            return None;
        }
        let mut text = s.trim().to_owned();
        if text.get(10..11) == Some(" ") {
            text.replace_range(10..11, "T");
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(&text) {
            return Some((t.with_timezone(&Utc), false));
        }
        if let Ok(t) = DateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f%z") {
            return Some((t.with_timezone(&Utc), false));
        }
        let naive = text.strip_suffix(['Z', 'z']).unwrap_or(&text);
        ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(naive, format).ok())
            .map(|t| (t.and_utc(), false))
    }

    impl<T: Decode> Decode for Vec<T> {
        fn decode(cx: &mut Cx, value: &Value) -> Option<Self> {
            match value {
                Value::Array(items) => {
                    let mut out = Vec::with_capacity(items.len());
                    let mut complete = true;
                    for (i, item) in items.iter().enumerate() {
                        match cx.at(Seg::Index(i), |cx| T::decode(cx, item)) {
                            Some(decoded) => out.push(decoded),
                            None => complete = false,
                        }
                    }
                    complete.then_some(out)
                }
                // e.g. `"meterValue": {...}` instead of `[{...}]`.
                Value::Null => {
                    wrong_type(cx, "array", value);
                    None
                }
                single if !cx.strict => {
                    cx.note("read a single value as a one-element array");
                    T::decode(cx, single).map(|decoded| vec![decoded])
                }
                _ => {
                    wrong_type(cx, "array", value);
                    None
                }
            }
        }
    }

    /// Reads a string enum; used by `ocpp_enum!`.
    pub(crate) fn wire_enum<E>(
        cx: &mut Cx,
        value: &Value,
        exact: fn(&str) -> Option<E>,
        lenient: fn(&str) -> Option<E>,
        name: fn(&E) -> &'static str,
        allowed: &[&str],
    ) -> Option<E> {
        let Value::String(s) = value else {
            wrong_type(cx, "string", value);
            return None;
        };
        if let Some(found) = exact(s) {
            return Some(found);
        }
        if !cx.strict {
            if let Some(found) = lenient(s) {
                cx.note(format_args!("read {s:?} as {:?}", name(&found)));
                return Some(found);
            }
        }
        cx.fail(
            ErrorCode::PropertyConstraintViolation,
            format!(
                "unknown value {s:?}, expected one of {}",
                allowed.join(", ")
            ),
        );
        None
    }

    /// Reads the properties of one JSON object.
    ///
    /// Optional readers return `Option<Option<T>>`: the outer `None` means "present but
    /// unusable" (a problem was recorded), `Some(None)` means absent.
    pub(crate) struct Obj<'c, 'v> {
        cx: &'c mut Cx,
        map: &'v Map<String, Value>,
        known: Vec<&'static str>,
    }

    impl<'c, 'v> Obj<'c, 'v> {
        /// Starts reading `value` as an object. The payload itself not being an object is a
        /// FormationViolation (the PDU is not an OCPP PDU at all); a nested one is a type error.
        pub(crate) fn open(cx: &'c mut Cx, value: &'v Value) -> Option<Self> {
            match value {
                Value::Object(map) => Some(Obj {
                    cx,
                    map,
                    known: Vec::new(),
                }),
                _ if cx.path.is_empty() => {
                    cx.fail(
                        ErrorCode::FormationViolation,
                        format!("must be a JSON object, got {}", json_type(value)),
                    );
                    None
                }
                _ => {
                    wrong_type(cx, "object", value);
                    None
                }
            }
        }

        /// The value of `key` if present; lenient mode treats `null` as absent.
        fn field(&mut self, key: &'static str) -> Option<&'v Value> {
            self.known.push(key);
            match self.map.get(key) {
                Some(Value::Null) if !self.cx.strict => {
                    self.cx
                        .at(Seg::Key(key), |cx| cx.note("treated null as absent"));
                    None
                }
                found => found,
            }
        }

        fn read<T: Decode>(
            &mut self,
            key: &'static str,
            required: bool,
            check: impl FnOnce(&mut Cx, &T) -> bool,
        ) -> Option<Option<T>> {
            let Some(value) = self.field(key) else {
                if required {
                    self.cx.at(Seg::Key(key), |cx| {
                        cx.fail(
                            ErrorCode::OccurenceConstraintViolation,
                            "required property is missing",
                        )
                    });
                    return None;
                }
                return Some(None);
            };
            self.cx.at(Seg::Key(key), |cx| {
                let decoded = T::decode(cx, value)?;
                check(cx, &decoded).then_some(Some(decoded))
            })
        }

        /// A required property.
        pub(crate) fn req<T: Decode>(&mut self, key: &'static str) -> Option<T> {
            self.read(key, true, |_, _: &T| true).flatten()
        }

        /// An optional property.
        pub(crate) fn opt<T: Decode>(&mut self, key: &'static str) -> Option<Option<T>> {
            self.read(key, false, |_, _: &T| true)
        }

        /// A required property with an extra check (run at the property's path).
        pub(crate) fn req_with<T: Decode>(
            &mut self,
            key: &'static str,
            check: impl FnOnce(&mut Cx, &T) -> bool,
        ) -> Option<T> {
            self.read(key, true, check).flatten()
        }

        /// An optional property with an extra check (run at the property's path).
        pub(crate) fn opt_with<T: Decode>(
            &mut self,
            key: &'static str,
            check: impl FnOnce(&mut Cx, &T) -> bool,
        ) -> Option<Option<T>> {
            self.read(key, false, check)
        }

        /// A required string with a `maxLength`.
        pub(crate) fn req_str(&mut self, key: &'static str, max: usize) -> Option<String> {
            self.req_with(key, |cx, s: &String| max_len(cx, s, max))
        }

        /// An optional string with a `maxLength`.
        pub(crate) fn opt_str(&mut self, key: &'static str, max: usize) -> Option<Option<String>> {
            self.opt_with(key, |cx, s: &String| max_len(cx, s, max))
        }

        /// A required array with a `minItems` (0 for none).
        pub(crate) fn req_list<T: Decode>(
            &mut self,
            key: &'static str,
            min_items: usize,
        ) -> Option<Vec<T>> {
            self.req_with(key, |cx, list: &Vec<T>| min_len(cx, list.len(), min_items))
        }

        /// An optional array with a `minItems` (0 for none).
        pub(crate) fn opt_list<T: Decode>(
            &mut self,
            key: &'static str,
            min_items: usize,
        ) -> Option<Option<Vec<T>>> {
            self.opt_with(key, |cx, list: &Vec<T>| min_len(cx, list.len(), min_items))
        }

        /// Ends the object: every property not read is unknown. All OCPP 1.6 schemas say
        /// `additionalProperties: false`, so strict mode refuses them (FormationViolation: the
        /// payload does not follow the PDU structure); lenient mode ignores them.
        pub(crate) fn finish(self) {
            let map = self.map;
            let mut unknown: Vec<&String> = map
                .keys()
                .filter(|key| !self.known.contains(&key.as_str()))
                .collect();
            unknown.sort();
            for key in unknown {
                let path = self.cx.child_path(key);
                if self.cx.strict {
                    self.cx.push_problem(|_| Problem {
                        code: ErrorCode::FormationViolation,
                        path,
                        message: "unknown property (the schema allows no additional properties)"
                            .into(),
                    });
                } else {
                    self.cx
                        .notes
                        .push(format!("{path}: ignored unknown property"));
                }
            }
        }
    }

    /// Checks a JSON schema `minItems`; lenient mode lets short lists through.
    fn min_len(cx: &mut Cx, len: usize, min: usize) -> bool {
        if len >= min {
            return true;
        }
        if cx.strict {
            cx.fail(
                ErrorCode::OccurenceConstraintViolation,
                format!("has {len} items, at least {min} required"),
            );
            false
        } else {
            cx.note(format_args!("accepted {len} items, the schema wants {min}"));
            true
        }
    }
}

/// Schema validation for tests: the official OCPP 1.6 JSON schemas judge what we produce.
#[cfg(test)]
pub(crate) mod schema_check {
    use serde_json::Value;
    use std::path::PathBuf;

    /// The schema file for `name` (e.g. "BootNotificationResponse"): the project's copy first,
    /// then the shared one.
    fn schema_path(name: &str) -> PathBuf {
        let candidates = [
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/schemas/ocpp16")
                .join(format!("{name}.json")),
            PathBuf::from("/work/shared/protocols/ocpp16-schemas").join(format!("{name}.json")),
        ];
        candidates
            .iter()
            .find(|path| path.is_file())
            .cloned()
            .unwrap_or_else(|| panic!("no schema file for {name}; looked at {candidates:?}"))
    }

    /// Every way `instance` violates the schema `name`; empty when it conforms.
    pub(crate) fn violations(name: &str, instance: &Value) -> Vec<String> {
        let path = schema_path(name);
        let text = std::fs::read_to_string(&path).expect("read schema");
        let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
        // The core schemas are draft-04, the security whitepaper's draft-06; pick per file.
        let draft = match schema.get("$schema").and_then(Value::as_str) {
            Some(s) if s.contains("draft-06") => jsonschema::Draft::Draft6,
            _ => jsonschema::Draft::Draft4,
        };
        let validator = jsonschema::options()
            .with_draft(draft)
            .should_validate_formats(true)
            .build(&schema)
            .expect("schema compiles");
        validator
            .iter_errors(instance)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    /// Panics with the violations unless `instance` conforms to `name`.
    pub(crate) fn assert_valid(name: &str, instance: &Value) {
        let problems = violations(name, instance);
        assert!(
            problems.is_empty(),
            "{name} rejects {instance}: {problems:#?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::schema_check::{assert_valid, violations};
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test timestamp")
            .with_timezone(&Utc)
    }

    /// A realistic payload for each of the 14 actions.
    fn realistic() -> Vec<(&'static str, Value)> {
        vec![
            ("Authorize", json!({"idTag": "04A2B9C2E15A80"})),
            (
                "BootNotification",
                json!({
                    "chargePointVendor": "Alfen BV",
                    "chargePointModel": "NG920-60513",
                    "chargePointSerialNumber": "ACE0123456",
                    "chargeBoxSerialNumber": "ACE0123456",
                    "firmwareVersion": "6.1.0-4203",
                    "iccid": "89314404000123456789",
                    "imsi": "204043721234567",
                    "meterType": "Eastron SDM630",
                    "meterSerialNumber": "0019283746"
                }),
            ),
            (
                "DataTransfer",
                json!({"vendorId": "com.alfen", "messageId": "SessionInfo", "data": "{\"soc\":45}"}),
            ),
            (
                "DiagnosticsStatusNotification",
                json!({"status": "Uploaded"}),
            ),
            (
                "FirmwareStatusNotification",
                json!({"status": "Installing"}),
            ),
            ("Heartbeat", json!({})),
            (
                "MeterValues",
                json!({
                    "connectorId": 1,
                    "transactionId": 1843,
                    "meterValue": [{
                        "timestamp": "2024-05-14T09:15:00.000Z",
                        "sampledValue": [
                            {"value": "12845.5", "context": "Sample.Periodic", "format": "Raw",
                             "measurand": "Energy.Active.Import.Register", "location": "Outlet", "unit": "Wh"},
                            {"value": "7.36", "context": "Sample.Periodic",
                             "measurand": "Power.Active.Import", "unit": "kW"},
                            {"value": "16.02", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                            {"value": "231.4", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
                            {"value": "34", "measurand": "Temperature", "location": "Body", "unit": "Celsius"},
                            {"value": "50.01", "measurand": "Frequency", "unit": "Hertz"},
                            {"value": "62", "measurand": "SoC", "location": "EV", "unit": "Percent"}
                        ]
                    }]
                }),
            ),
            (
                "StartTransaction",
                json!({
                    "connectorId": 2,
                    "idTag": "04A2B9C2E15A80",
                    "meterStart": 1204500,
                    "reservationId": 7,
                    "timestamp": "2024-05-14T08:59:58Z"
                }),
            ),
            (
                "StatusNotification",
                json!({
                    "connectorId": 1,
                    "errorCode": "NoError",
                    "info": "cable plugged",
                    "status": "Preparing",
                    "timestamp": "2024-05-14T08:59:30.123+02:00",
                    "vendorId": "com.alfen",
                    "vendorErrorCode": "0"
                }),
            ),
            (
                "StopTransaction",
                json!({
                    "idTag": "04A2B9C2E15A80",
                    "meterStop": 1216345,
                    "timestamp": "2024-05-14T10:02:11Z",
                    "transactionId": 1843,
                    "reason": "EVDisconnected",
                    "transactionData": [
                        {"timestamp": "2024-05-14T08:59:58Z",
                         "sampledValue": [{"value": "1204500", "context": "Transaction.Begin", "unit": "Wh"}]},
                        {"timestamp": "2024-05-14T10:02:11Z",
                         "sampledValue": [{"value": "1216345", "context": "Transaction.End", "unit": "Wh"}]}
                    ]
                }),
            ),
            (
                "SecurityEventNotification",
                json!({"type": "FirmwareUpdated", "timestamp": "2024-05-14T10:00:00Z", "techInfo": "6.1.0-4203"}),
            ),
            (
                "SignCertificate",
                json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIBVTCB/wIBADBaMQswCQYDVQQGEwJOTDEO\n-----END CERTIFICATE REQUEST-----\n"}),
            ),
            (
                "SignedFirmwareStatusNotification",
                json!({"status": "SignatureVerified", "requestId": 42}),
            ),
            (
                "LogStatusNotification",
                json!({"status": "Uploading", "requestId": 43}),
            ),
        ]
    }

    #[test]
    fn realistic_payloads_match_the_schemas_and_parse_in_both_modes() {
        let payloads = realistic();
        assert_eq!(payloads.len(), CP_ACTIONS.len());
        for (action, payload) in payloads {
            assert_valid(action, &payload);
            for strict in [true, false] {
                let (request, notes) = parse_cp_request_with_notes(action, &payload, strict)
                    .unwrap_or_else(|e| panic!("{action} strict={strict}: {e:?}"));
                assert_eq!(request.action(), action);
                assert!(notes.is_empty(), "{action}: {notes:?}");
            }
        }
    }

    #[test]
    fn parsed_fields_carry_the_values() {
        let payloads: std::collections::HashMap<_, _> = realistic().into_iter().collect();
        let parse = |action: &str| {
            parse_cp_request(action, payloads[action].clone(), true).expect("parses")
        };
        let CpRequest::MeterValues(mv) = parse("MeterValues") else {
            panic!("wrong variant")
        };
        assert_eq!(mv.connector_id, 1);
        assert_eq!(mv.transaction_id, Some(1843));
        assert_eq!(mv.meter_value[0].timestamp, t("2024-05-14T09:15:00Z"));
        let first = &mv.meter_value[0].sampled_value[0];
        assert_eq!(first.value, "12845.5");
        assert_eq!(first.context, Some(ReadingContext::SamplePeriodic));
        assert_eq!(first.format, Some(ValueFormat::Raw));
        assert_eq!(first.measurand, Some(Measurand::EnergyActiveImportRegister));
        assert_eq!(first.location, Some(Location::Outlet));
        assert_eq!(first.unit, Some(UnitOfMeasure::Wh));
        assert_eq!(mv.meter_value[0].sampled_value[3].phase, Some(Phase::L1N));
        assert_eq!(mv.meter_value[0].sampled_value[2].context, None);

        let CpRequest::StatusNotification(sn) = parse("StatusNotification") else {
            panic!("wrong variant")
        };
        assert_eq!(sn.status, ChargePointStatus::Preparing);
        assert_eq!(sn.error_code, ChargePointErrorCode::NoError);
        // The offset is folded into UTC.
        assert_eq!(sn.timestamp, Some(t("2024-05-14T06:59:30.123Z")));

        let CpRequest::StopTransaction(st) = parse("StopTransaction") else {
            panic!("wrong variant")
        };
        assert_eq!(st.reason, Some(Reason::EVDisconnected));
        assert_eq!(st.transaction_data.as_ref().map(Vec::len), Some(2));

        let CpRequest::SecurityEventNotification(se) = parse("SecurityEventNotification") else {
            panic!("wrong variant")
        };
        assert_eq!(se.kind, "FirmwareUpdated");
        // Serializing a parsed request writes the same field names back.
        assert_eq!(to_payload(&se)["type"], json!("FirmwareUpdated"));
    }

    #[test]
    fn minimal_payloads_parse_strictly() {
        let cases = [
            ("Authorize", json!({"idTag": ""})),
            (
                "BootNotification",
                json!({"chargePointVendor": "V", "chargePointModel": "M"}),
            ),
            ("DataTransfer", json!({"vendorId": "v"})),
            (
                "MeterValues",
                json!({"connectorId": 0, "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [{"value": "1"}]}]}),
            ),
            (
                "StatusNotification",
                json!({"connectorId": 0, "errorCode": "NoError", "status": "Available"}),
            ),
            (
                "StopTransaction",
                json!({"meterStop": 0, "timestamp": "2024-01-01T00:00:00Z", "transactionId": 1}),
            ),
            (
                "StopTransaction",
                json!({"meterStop": 0, "timestamp": "2024-01-01T00:00:00Z", "transactionId": 1, "transactionData": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": []}]}),
            ),
            (
                "SecurityEventNotification",
                json!({"type": "StartupOfTheDevice", "timestamp": "2024-01-01T00:00:00Z"}),
            ),
            (
                "SignedFirmwareStatusNotification",
                json!({"status": "Idle"}),
            ),
            ("LogStatusNotification", json!({"status": "Idle"})),
            // Both spellings are in the official enum.
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [{"value": "21", "unit": "Celcius"}]}]}),
            ),
            // Fractions of any length, lowercase t/z, and offsets are RFC 3339.
            (
                "StartTransaction",
                json!({"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": "2024-01-01t00:00:00.123456z"}),
            ),
            (
                "StartTransaction",
                json!({"connectorId": 1, "idTag": "A", "meterStart": -5, "timestamp": "2024-01-01T00:00:00-05:30"}),
            ),
        ];
        for (action, payload) in cases {
            assert_valid(action, &payload);
            parse_cp_request(action, payload.clone(), true)
                .unwrap_or_else(|e| panic!("{action} {payload}: {e:?}"));
        }
        let celcius = json!({"connectorId": 1, "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [{"value": "21", "unit": "Celcius"}]}]});
        let Ok(CpRequest::MeterValues(mv)) = parse_cp_request("MeterValues", celcius, true) else {
            panic!("Celcius parses")
        };
        assert_eq!(
            mv.meter_value[0].sampled_value[0].unit,
            Some(UnitOfMeasure::Celsius)
        );
    }

    /// Each quirk real chargers have: accepted leniently (with a note), refused strictly with
    /// the code the schema violation calls for, and indeed refused by the official schema.
    #[test]
    fn lenient_quirks_parse_leniently_and_fail_strictly() {
        use ErrorCode::{
            FormationViolation as FV, OccurenceConstraintViolation as OCV,
            PropertyConstraintViolation as PCV, TypeConstraintViolation as TCV,
        };
        let sv = json!({"value": "1", "unit": "Wh"});
        let mv =
            |sampled: Value| json!({"timestamp": "2024-01-01T00:00:00Z", "sampledValue": sampled});
        let start =
            |ts: &str| json!({"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": ts});
        let cases: Vec<(&str, Value, ErrorCode, &str)> = vec![
            // single object instead of an array
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": mv(json!([sv]))}),
                TCV,
                "meterValue",
            ),
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": [mv(sv.clone())]}),
                TCV,
                "meterValue[0].sampledValue",
            ),
            (
                "StopTransaction",
                json!({"meterStop": 5, "timestamp": "2024-01-01T00:00:00Z", "transactionId": 1, "transactionData": mv(json!([sv]))}),
                TCV,
                "transactionData",
            ),
            // enum spelling and case
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": [mv(json!([{"value": "20", "unit": "celcius"}]))]}),
                PCV,
                "meterValue[0].sampledValue[0].unit",
            ),
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": [mv(json!([{"value": "20", "unit": "wh"}]))]}),
                PCV,
                "meterValue[0].sampledValue[0].unit",
            ),
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": [mv(json!([{"value": "20", "measurand": "energy.active.import.register"}]))]}),
                PCV,
                "meterValue[0].sampledValue[0].measurand",
            ),
            (
                "StatusNotification",
                json!({"connectorId": 1, "errorCode": "NoError", "status": "available "}),
                PCV,
                "status",
            ),
            // timestamps
            (
                "StartTransaction",
                start("2024-01-01T10:00:00"),
                PCV,
                "timestamp",
            ),
            (
                "StartTransaction",
                start("2024-01-01T10:00:00.5"),
                PCV,
                "timestamp",
            ),
            (
                "StartTransaction",
                start("2024-01-01 10:00:00Z"),
                PCV,
                "timestamp",
            ),
            (
                "StartTransaction",
                start("2024-01-01T10:00:00+0100"),
                PCV,
                "timestamp",
            ),
            (
                "StartTransaction",
                start("2024-01-01T10:00"),
                PCV,
                "timestamp",
            ),
            // numbers as strings / floats
            (
                "StatusNotification",
                json!({"connectorId": "1", "errorCode": "NoError", "status": "Available"}),
                TCV,
                "connectorId",
            ),
            (
                "StartTransaction",
                json!({"connectorId": 1, "idTag": "A", "meterStart": " 1200 ", "timestamp": "2024-01-01T00:00:00Z"}),
                TCV,
                "meterStart",
            ),
            (
                "StartTransaction",
                json!({"connectorId": 1.0, "idTag": "A", "meterStart": 0, "timestamp": "2024-01-01T00:00:00Z"}),
                TCV,
                "connectorId",
            ),
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": [mv(json!([{"value": 1234}]))]}),
                TCV,
                "meterValue[0].sampledValue[0].value",
            ),
            (
                "DataTransfer",
                json!({"vendorId": "v", "data": {"soc": 45}}),
                TCV,
                "data",
            ),
            // null for an absent optional field
            (
                "MeterValues",
                json!({"connectorId": 1, "transactionId": null, "meterValue": [mv(json!([sv]))]}),
                TCV,
                "transactionId",
            ),
            // too few items
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": []}),
                OCV,
                "meterValue",
            ),
            // unknown extra properties
            ("Heartbeat", json!({"uptime": 5}), FV, "uptime"),
            (
                "Authorize",
                json!({"idTag": "A", "connectorId": 1}),
                FV,
                "connectorId",
            ),
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": [mv(json!([{"value": "1", "signedMeterValue": "x"}]))]}),
                FV,
                "meterValue[0].sampledValue[0].signedMeterValue",
            ),
            // "Hertz" is only in the MeterValues schema, not in StopTransaction's
            (
                "StopTransaction",
                json!({"meterStop": 5, "timestamp": "2024-01-01T00:00:00Z", "transactionId": 1, "transactionData": [mv(json!([{"value": "50", "unit": "Hertz"}]))]}),
                PCV,
                "transactionData[0].sampledValue[0].unit",
            ),
        ];
        for (action, payload, code, field) in cases {
            assert!(
                !violations(action, &payload).is_empty(),
                "the schema accepts {payload}, so it is no quirk"
            );
            let (_, notes) = parse_cp_request_with_notes(action, &payload, false)
                .unwrap_or_else(|e| panic!("lenient {action} {payload}: {e:?}"));
            assert!(!notes.is_empty(), "no note for {payload}");
            let (got, description) = parse_cp_request(action, payload.clone(), true)
                .expect_err(&format!("strict {payload}"));
            assert_eq!(got, code, "{payload}: {description}");
            assert!(
                description.starts_with(&format!("{field}: ")),
                "{payload}: {description:?} should name {field}"
            );
        }
    }

    #[test]
    fn lenient_notes_are_capped() {
        // 200 sampled values, each with a quirky unit: one note per value would grow with the payload.
        let values: Vec<_> = (0..200)
            .map(|_| json!({"value": "1", "unit": "KWH"}))
            .collect();
        let payload = json!({"connectorId": 1, "meterValue": [{"timestamp": "2024-05-14T09:15:00Z", "sampledValue": values}]});
        let (_, notes) =
            parse_cp_request_with_notes("MeterValues", &payload, false).expect("lenient parse");
        assert_eq!(notes.len(), super::decode::KEPT_NOTES + 1, "{notes:#?}");
        assert_eq!(
            notes.last().map(String::as_str),
            Some(
                format!(
                    "payload: {} more quirks like these",
                    200 - super::decode::KEPT_NOTES
                )
                .as_str()
            )
        );
    }

    #[test]
    fn lenient_mode_normalizes_values() {
        let payload = json!({
            "connectorId": "2",
            "transactionId": 7.0,
            "meterValue": {
                "timestamp": "2024-05-14 09:15:00.250",
                "sampledValue": {"value": 12.5, "unit": "KWH", "measurand": " Energy.Active.Import.Register", "phase": "l1-n"}
            },
            "vendorExtension": true
        });
        let (request, notes) =
            parse_cp_request_with_notes("MeterValues", &payload, false).expect("lenient parse");
        let CpRequest::MeterValues(mv) = request else {
            panic!("wrong variant")
        };
        assert_eq!(mv.connector_id, 2);
        assert_eq!(mv.transaction_id, Some(7));
        assert_eq!(mv.meter_value.len(), 1);
        assert_eq!(
            mv.meter_value[0].timestamp,
            Utc.with_ymd_and_hms(2024, 5, 14, 9, 15, 0)
                .single()
                .expect("valid")
                + chrono::Duration::milliseconds(250)
        );
        let sample = &mv.meter_value[0].sampled_value[0];
        assert_eq!(sample.value, "12.5");
        assert_eq!(sample.unit, Some(UnitOfMeasure::KWh));
        assert_eq!(
            sample.measurand,
            Some(Measurand::EnergyActiveImportRegister)
        );
        assert_eq!(sample.phase, Some(Phase::L1N));
        for fragment in [
            "connectorId: read string \"2\" as an integer",
            "transactionId: read 7.0 as an integer",
            "meterValue: read a single value",
            "meterValue.timestamp: read",
            "meterValue.sampledValue: read a single value",
            "meterValue.sampledValue.value: read 12.5 as a string",
            "meterValue.sampledValue.unit: read \"KWH\" as \"kWh\"",
            "vendorExtension: ignored unknown property",
        ] {
            assert!(
                notes.iter().any(|n| n.starts_with(fragment)),
                "missing note {fragment:?} in {notes:#?}"
            );
        }

        let (request, _) = parse_cp_request_with_notes(
            "DataTransfer",
            &json!({"vendorId": "v", "data": {"soc": 45}}),
            false,
        )
        .expect("lenient parse");
        assert_eq!(
            request,
            CpRequest::DataTransfer(DataTransfer {
                vendor_id: "v".into(),
                message_id: None,
                data: Some(r#"{"soc":45}"#.into()),
            })
        );
    }

    #[test]
    fn lenient_timestamps() {
        let cases = [
            ("2024-05-14T09:15:00Z", "2024-05-14T09:15:00Z", true),
            ("2024-05-14T09:15:00.123Z", "2024-05-14T09:15:00.123Z", true),
            (
                "2024-05-14T09:15:00.123456789Z",
                "2024-05-14T09:15:00.123456789Z",
                true,
            ),
            ("2024-05-14T11:15:00+02:00", "2024-05-14T09:15:00Z", true),
            ("2024-05-14T09:15:00", "2024-05-14T09:15:00Z", false),
            ("2024-05-14T09:15:00.5", "2024-05-14T09:15:00.5Z", false),
            (" 2024-05-14T09:15:00Z ", "2024-05-14T09:15:00Z", false),
            ("2024-05-14 09:15:00", "2024-05-14T09:15:00Z", false),
            ("2024-05-14 09:15:00Z", "2024-05-14T09:15:00Z", false),
            ("2024-05-14 09:15:00+02:00", "2024-05-14T07:15:00Z", false),
            ("2024-05-14T11:15:00+0200", "2024-05-14T09:15:00Z", false),
            ("2024-05-14T09:15", "2024-05-14T09:15:00Z", false),
        ];
        for (input, want, exact) in cases {
            assert_eq!(
                decode::parse_timestamp(input, false),
                Some((t(want), exact)),
                "{input}"
            );
            assert_eq!(
                decode::parse_timestamp(input, true).is_some(),
                exact,
                "strict {input}"
            );
        }
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-05-14",
            "1715677200",
            "2024-05-14T25:00:00Z",
        ] {
            assert_eq!(decode::parse_timestamp(bad, false), None, "{bad}");
        }
    }

    #[test]
    fn invalid_payloads_give_the_right_code_and_field_in_both_modes() {
        use ErrorCode::{
            FormationViolation as FV, OccurenceConstraintViolation as OCV,
            PropertyConstraintViolation as PCV, TypeConstraintViolation as TCV,
        };
        let cases: Vec<(&str, Value, ErrorCode, &str)> = vec![
            // wrong JSON type
            ("Authorize", json!({"idTag": ["A"]}), TCV, "idTag"),
            ("Authorize", json!({"idTag": {"id": "A"}}), TCV, "idTag"),
            (
                "StatusNotification",
                json!({"connectorId": "one", "errorCode": "NoError", "status": "Available"}),
                TCV,
                "connectorId",
            ),
            (
                "StatusNotification",
                json!({"connectorId": 1.5, "errorCode": "NoError", "status": "Available"}),
                TCV,
                "connectorId",
            ),
            (
                "StatusNotification",
                json!({"connectorId": 1, "errorCode": 0, "status": "Available"}),
                TCV,
                "errorCode",
            ),
            (
                "StartTransaction",
                json!({"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": 1715677200}),
                TCV,
                "timestamp",
            ),
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": "none"}),
                TCV,
                "meterValue",
            ),
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [17]}]}),
                TCV,
                "meterValue[0].sampledValue[0]",
            ),
            (
                "BootNotification",
                json!({"chargePointVendor": "V", "chargePointModel": "M", "imsi": ["x"]}),
                TCV,
                "imsi",
            ),
            // missing required field
            ("Authorize", json!({}), OCV, "idTag"),
            (
                "BootNotification",
                json!({"chargePointVendor": "V"}),
                OCV,
                "chargePointModel",
            ),
            (
                "StartTransaction",
                json!({"connectorId": 1, "idTag": "A", "meterStart": 0}),
                OCV,
                "timestamp",
            ),
            (
                "StopTransaction",
                json!({"meterStop": 0, "timestamp": "2024-01-01T00:00:00Z"}),
                OCV,
                "transactionId",
            ),
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": [{"sampledValue": [{"value": "1"}]}]}),
                OCV,
                "meterValue[0].timestamp",
            ),
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [{"unit": "Wh"}]}]}),
                OCV,
                "meterValue[0].sampledValue[0].value",
            ),
            (
                "SecurityEventNotification",
                json!({"timestamp": "2024-01-01T00:00:00Z"}),
                OCV,
                "type",
            ),
            ("SignCertificate", json!({}), OCV, "csr"),
            (
                "LogStatusNotification",
                json!({"requestId": 1}),
                OCV,
                "status",
            ),
            // bad enum value
            (
                "StatusNotification",
                json!({"connectorId": 1, "errorCode": "NoError", "status": "Occupied"}),
                PCV,
                "status",
            ),
            (
                "StopTransaction",
                json!({"meterStop": 0, "timestamp": "2024-01-01T00:00:00Z", "transactionId": 1, "reason": "Timeout"}),
                PCV,
                "reason",
            ),
            (
                "DiagnosticsStatusNotification",
                json!({"status": "Done"}),
                PCV,
                "status",
            ),
            (
                "FirmwareStatusNotification",
                json!({"status": "DownloadScheduled"}),
                PCV,
                "status",
            ),
            (
                "SignedFirmwareStatusNotification",
                json!({"status": "Exploded"}),
                PCV,
                "status",
            ),
            (
                "MeterValues",
                json!({"connectorId": 1, "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": [{"value": "1", "phase": "L4"}]}]}),
                PCV,
                "meterValue[0].sampledValue[0].phase",
            ),
            // out of range, too long, bad date
            (
                "Authorize",
                json!({"idTag": "123456789012345678901"}),
                PCV,
                "idTag",
            ),
            (
                "StatusNotification",
                json!({"connectorId": 1, "errorCode": "OtherError", "status": "Faulted", "info": "x".repeat(51)}),
                PCV,
                "info",
            ),
            (
                "StartTransaction",
                json!({"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": "last tuesday"}),
                PCV,
                "timestamp",
            ),
            // payload not an object
            ("Heartbeat", json!(null), FV, "payload"),
            ("Authorize", json!(["A"]), FV, "payload"),
            ("BootNotification", json!("V"), FV, "payload"),
        ];
        for (action, payload, code, field) in cases {
            assert!(
                !violations(action, &payload).is_empty(),
                "the schema accepts {payload}"
            );
            for strict in [true, false] {
                let (got, description) = parse_cp_request(action, payload.clone(), strict)
                    .expect_err(&format!("{action} strict={strict} {payload}"));
                assert_eq!(got, code, "strict={strict} {payload}: {description}");
                assert!(
                    description.starts_with(&format!("{field}: ")),
                    "strict={strict} {payload}: {description:?} should name {field}"
                );
            }
        }
    }

    /// The schemas set no bounds, but OCPP integers are 32-bit (and so are our columns).
    #[test]
    fn integers_beyond_32_bits_are_out_of_range() {
        let cases = [
            (
                "StatusNotification",
                json!({"connectorId": 2147483648_i64, "errorCode": "NoError", "status": "Available"}),
                "connectorId",
            ),
            (
                "StatusNotification",
                json!({"connectorId": -2147483649_i64, "errorCode": "NoError", "status": "Available"}),
                "connectorId",
            ),
            (
                "StopTransaction",
                json!({"meterStop": 0, "timestamp": "2024-01-01T00:00:00Z", "transactionId": 18446744073709551615_u64}),
                "transactionId",
            ),
            (
                "StartTransaction",
                json!({"connectorId": 1, "idTag": "A", "meterStart": "99999999999", "timestamp": "2024-01-01T00:00:00Z"}),
                "meterStart",
            ),
        ];
        for (action, payload, field) in cases {
            // The string form is only tolerated leniently; the range applies in both modes.
            for strict in [false, true] {
                let (code, description) = parse_cp_request(action, payload.clone(), strict)
                    .expect_err(&format!("{payload}"));
                if strict && payload[field].is_string() {
                    assert_eq!(code, ErrorCode::TypeConstraintViolation);
                    continue;
                }
                assert_eq!(
                    code,
                    ErrorCode::PropertyConstraintViolation,
                    "{description}"
                );
                assert!(
                    description.starts_with(&format!("{field}: ")),
                    "{description}"
                );
                assert!(description.contains("out of range"), "{description}");
            }
        }
        let max = json!({"connectorId": 2147483647, "errorCode": "NoError", "status": "Available"});
        assert!(parse_cp_request("StatusNotification", max, true).is_ok());
    }

    #[test]
    fn a_payload_full_of_problems_keeps_a_few_and_counts_the_rest() {
        // Found by the ocpp_message fuzz target's allocation bound (fuzz/regressions/ocpp_message/).
        let items: Vec<Value> = (0..500).map(|_| json!({})).collect();
        let payload = json!({"connectorId": 1, "meterValue": items});
        for strict in [true, false] {
            let (code, description) =
                parse_cp_request("MeterValues", payload.clone(), strict).expect_err("invalid");
            assert_eq!(
                code,
                ErrorCode::OccurenceConstraintViolation,
                "{description}"
            );
            assert!(description.starts_with("meterValue[0]."), "{description}");
            // Two problems per item (timestamp, sampledValue); 5 are shown, all are counted.
            assert!(description.ends_with("; and 995 more"), "{description}");
        }
    }

    #[test]
    fn every_problem_is_reported_and_the_first_sets_the_code() {
        let payload = json!({"connectorId": "x", "status": "Bogus", "info": 5, "extra": 1});
        let (code, description) =
            parse_cp_request("StatusNotification", payload, true).expect_err("invalid");
        assert_eq!(code, ErrorCode::TypeConstraintViolation);
        for fragment in [
            "connectorId: expected integer, got string \"x\"",
            "errorCode: required property is missing",
            "info: expected string, got integer 5",
            "status: unknown value \"Bogus\"",
            "extra: unknown property",
        ] {
            assert!(description.contains(fragment), "{description}");
        }
    }

    #[test]
    fn unknown_or_misdirected_actions() {
        for action in [
            "Foo",
            "heartbeat",
            "",
            "BootNotificationRequest",
            "Héartbeat",
        ] {
            let (code, description) = parse_cp_request(action, json!({}), false).expect_err(action);
            assert_eq!(code, ErrorCode::NotImplemented, "{action}");
            assert!(description.contains(action), "{description}");
        }
        for action in ["RemoteStartTransaction", "Reset", "CertificateSigned"] {
            let (code, _) = parse_cp_request(action, json!({}), true).expect_err(action);
            assert_eq!(code, ErrorCode::NotSupported, "{action}");
        }
    }

    #[test]
    fn enums_round_trip() {
        fn check<E>(all: &[E], as_str: fn(&E) -> &'static str, from: fn(&str) -> Option<E>)
        where
            E: PartialEq + std::fmt::Debug + Serialize + for<'de> serde::Deserialize<'de>,
        {
            for value in all {
                let wire = as_str(value);
                assert_eq!(from(wire).as_ref(), Some(value));
                let json = serde_json::to_value(value).expect("serialize");
                assert_eq!(json, json!(wire));
                assert_eq!(
                    &serde_json::from_value::<E>(json).expect("deserialize"),
                    value
                );
            }
            assert!(serde_json::from_value::<E>(json!("NotAValue")).is_err());
        }
        check(
            ChargePointStatus::ALL,
            ChargePointStatus::as_str,
            ChargePointStatus::from_wire,
        );
        check(
            ChargePointErrorCode::ALL,
            ChargePointErrorCode::as_str,
            ChargePointErrorCode::from_wire,
        );
        check(Reason::ALL, Reason::as_str, Reason::from_wire);
        check(
            ReadingContext::ALL,
            ReadingContext::as_str,
            ReadingContext::from_wire,
        );
        check(
            ValueFormat::ALL,
            ValueFormat::as_str,
            ValueFormat::from_wire,
        );
        check(Measurand::ALL, Measurand::as_str, Measurand::from_wire);
        check(Phase::ALL, Phase::as_str, Phase::from_wire);
        check(Location::ALL, Location::as_str, Location::from_wire);
        check(
            UnitOfMeasure::ALL,
            UnitOfMeasure::as_str,
            UnitOfMeasure::from_wire,
        );
        check(
            DiagnosticsStatus::ALL,
            DiagnosticsStatus::as_str,
            DiagnosticsStatus::from_wire,
        );
        check(
            FirmwareStatus::ALL,
            FirmwareStatus::as_str,
            FirmwareStatus::from_wire,
        );
        check(
            SignedFirmwareStatus::ALL,
            SignedFirmwareStatus::as_str,
            SignedFirmwareStatus::from_wire,
        );
        check(
            UploadLogStatus::ALL,
            UploadLogStatus::as_str,
            UploadLogStatus::from_wire,
        );
        check(
            RegistrationStatus::ALL,
            RegistrationStatus::as_str,
            RegistrationStatus::from_wire,
        );
        check(
            AuthorizationStatus::ALL,
            AuthorizationStatus::as_str,
            AuthorizationStatus::from_wire,
        );
        check(
            DataTransferStatus::ALL,
            DataTransferStatus::as_str,
            DataTransferStatus::from_wire,
        );
        check(
            GenericStatus::ALL,
            GenericStatus::as_str,
            GenericStatus::from_wire,
        );
        assert_eq!(Measurand::ALL.len(), 22);
        assert_eq!(
            UnitOfMeasure::from_wire("Celcius"),
            Some(UnitOfMeasure::Celsius)
        );
        assert_eq!(UnitOfMeasure::from_wire("wh"), None);
        assert_eq!(UnitOfMeasure::from_lenient(" wh "), Some(UnitOfMeasure::Wh));
        assert_eq!(
            UnitOfMeasure::from_lenient("CELCIUS"),
            Some(UnitOfMeasure::Celsius)
        );
        assert_eq!(UnitOfMeasure::Celsius.to_string(), "Celsius");
    }

    #[test]
    fn response_builders_match_the_schemas() {
        let now = t("2024-05-14T09:15:00.123456Z");
        let full_info = IdTagInfo {
            status: AuthorizationStatus::Accepted,
            expiry_date: Some(t("2024-06-01T00:00:00Z")),
            parent_id_tag: Some("FLEET-7".into()),
        };
        let cases: Vec<(&str, Value)> = vec![
            (
                "AuthorizeResponse",
                AuthorizeResponse {
                    id_tag_info: full_info.clone(),
                }
                .payload(),
            ),
            (
                "AuthorizeResponse",
                AuthorizeResponse {
                    id_tag_info: IdTagInfo::new(AuthorizationStatus::Invalid),
                }
                .payload(),
            ),
            (
                "BootNotificationResponse",
                BootNotificationResponse {
                    status: RegistrationStatus::Accepted,
                    current_time: now,
                    interval: 300,
                }
                .payload(),
            ),
            (
                "BootNotificationResponse",
                BootNotificationResponse::now(RegistrationStatus::Pending, 60).payload(),
            ),
            (
                "DataTransferResponse",
                DataTransferResponse {
                    status: DataTransferStatus::Accepted,
                    data: Some("{\"ok\":true}".into()),
                }
                .payload(),
            ),
            (
                "DataTransferResponse",
                DataTransferResponse {
                    status: DataTransferStatus::UnknownVendorId,
                    data: None,
                }
                .payload(),
            ),
            (
                "HeartbeatResponse",
                HeartbeatResponse { current_time: now }.payload(),
            ),
            ("HeartbeatResponse", HeartbeatResponse::now().payload()),
            (
                "StartTransactionResponse",
                StartTransactionResponse {
                    transaction_id: 1843,
                    id_tag_info: full_info.clone(),
                }
                .payload(),
            ),
            (
                "StartTransactionResponse",
                StartTransactionResponse {
                    transaction_id: 0,
                    id_tag_info: IdTagInfo::new(AuthorizationStatus::ConcurrentTx),
                }
                .payload(),
            ),
            (
                "StopTransactionResponse",
                StopTransactionResponse {
                    id_tag_info: Some(full_info),
                }
                .payload(),
            ),
            (
                "StopTransactionResponse",
                StopTransactionResponse { id_tag_info: None }.payload(),
            ),
            (
                "SignCertificateResponse",
                SignCertificateResponse {
                    status: GenericStatus::Accepted,
                }
                .payload(),
            ),
            (
                "SignCertificateResponse",
                SignCertificateResponse {
                    status: GenericStatus::Rejected,
                }
                .payload(),
            ),
            (
                "DiagnosticsStatusNotificationResponse",
                DiagnosticsStatusNotificationResponse::default().payload(),
            ),
            (
                "FirmwareStatusNotificationResponse",
                FirmwareStatusNotificationResponse::default().payload(),
            ),
            (
                "MeterValuesResponse",
                MeterValuesResponse::default().payload(),
            ),
            (
                "StatusNotificationResponse",
                StatusNotificationResponse::default().payload(),
            ),
            (
                "SecurityEventNotificationResponse",
                SecurityEventNotificationResponse::default().payload(),
            ),
            (
                "SignedFirmwareStatusNotificationResponse",
                SignedFirmwareStatusNotificationResponse::default().payload(),
            ),
            (
                "LogStatusNotificationResponse",
                LogStatusNotificationResponse::default().payload(),
            ),
        ];
        for (schema, payload) in cases {
            assert_valid(schema, &payload);
        }
        // The checker is not vacuous.
        assert!(!violations("HeartbeatResponse", &json!({})).is_empty());
        assert!(!violations("MeterValuesResponse", &json!({"x": 1})).is_empty());
        assert!(!violations("SignCertificateResponse", &json!({"status": "Maybe"})).is_empty());
    }

    #[test]
    fn responses_serialize_exactly() {
        let now = t("2024-05-14T09:15:00.123456Z");
        assert_eq!(
            BootNotificationResponse {
                status: RegistrationStatus::Accepted,
                current_time: now,
                interval: 300
            }
            .payload(),
            json!({"currentTime": "2024-05-14T09:15:00.123Z", "interval": 300, "status": "Accepted"})
        );
        assert_eq!(
            HeartbeatResponse {
                current_time: t("2024-05-14T11:15:00+02:00")
            }
            .payload(),
            json!({"currentTime": "2024-05-14T09:15:00.000Z"})
        );
        assert_eq!(
            StartTransactionResponse {
                transaction_id: 5,
                id_tag_info: IdTagInfo {
                    status: AuthorizationStatus::Blocked,
                    expiry_date: Some(now),
                    parent_id_tag: None
                }
            }
            .payload(),
            json!({"transactionId": 5, "idTagInfo": {"status": "Blocked", "expiryDate": "2024-05-14T09:15:00.123Z"}})
        );
        assert_eq!(
            StopTransactionResponse { id_tag_info: None }.payload(),
            json!({})
        );
        assert_eq!(EmptyResponse::default().payload(), json!({}));
    }
}
