//! OCPP-J message framing (OCPP 1.6 JSON over WebSocket, section 4 of the OCPP-J spec).
//!
//! Every WebSocket text message is a JSON array whose first element is the MessageTypeId:
//!
//! * CALL       `[2, "<messageId>", "<Action>", {payload}]`
//! * CALLRESULT `[3, "<messageId>", {payload}]`
//! * CALLERROR  `[4, "<messageId>", "<errorCode>", "<errorDescription>", {errorDetails}]`
//!
//! This module only reads and writes that envelope. Payloads stay untyped `serde_json::Value`s
//! here: checking them against the action's schema is the job of `messages` (what a charge point
//! sends us) and `actions` (what we send a charge point), because only they know the action.

use serde_json::Value;

/// The longest messageId the OCPP-J spec allows (section 4.1.4: "maximum of 36 characters").
pub const MAX_MESSAGE_ID_CHARS: usize = 36;

const CALL: i64 = 2;
const CALL_RESULT: i64 = 3;
const CALL_ERROR: i64 = 4;

/// The error codes a CALLERROR may carry (OCPP-J 1.6 section 4.2.3).
///
/// `OccurenceConstraintViolation` is misspelled on purpose: that is how the spec and every
/// charge point spell it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorCode {
    /// The requested action is not known by the receiver.
    NotImplemented,
    /// The requested action is recognised but not supported by the receiver.
    NotSupported,
    /// An internal error occurred and the receiver was not able to process the action.
    InternalError,
    /// The payload for the action is incomplete.
    ProtocolError,
    /// A security issue occurred during processing of the action.
    SecurityError,
    /// The payload is syntactically incorrect or does not conform to the PDU structure.
    FormationViolation,
    /// The payload is syntactically correct but at least one field has an invalid value.
    PropertyConstraintViolation,
    /// The payload is syntactically correct but a field violates occurrence constraints.
    OccurenceConstraintViolation,
    /// The payload is syntactically correct but a field violates data type constraints.
    TypeConstraintViolation,
    /// Any other error not covered by the codes above.
    GenericError,
}

impl ErrorCode {
    /// Every code, in the order the spec lists them.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::NotImplemented,
        ErrorCode::NotSupported,
        ErrorCode::InternalError,
        ErrorCode::ProtocolError,
        ErrorCode::SecurityError,
        ErrorCode::FormationViolation,
        ErrorCode::PropertyConstraintViolation,
        ErrorCode::OccurenceConstraintViolation,
        ErrorCode::TypeConstraintViolation,
        ErrorCode::GenericError,
    ];

    /// The code as it is written on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::NotImplemented => "NotImplemented",
            ErrorCode::NotSupported => "NotSupported",
            ErrorCode::InternalError => "InternalError",
            ErrorCode::ProtocolError => "ProtocolError",
            ErrorCode::SecurityError => "SecurityError",
            ErrorCode::FormationViolation => "FormationViolation",
            ErrorCode::PropertyConstraintViolation => "PropertyConstraintViolation",
            ErrorCode::OccurenceConstraintViolation => "OccurenceConstraintViolation",
            ErrorCode::TypeConstraintViolation => "TypeConstraintViolation",
            ErrorCode::GenericError => "GenericError",
        }
    }

    /// The code for its exact wire spelling; `None` for anything non-standard, which
    /// [`Frame::CallError`] keeps verbatim instead.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|code| code.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One OCPP-J message, envelope checked, payload not yet interpreted.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A request. `payload` is passed through whatever its JSON type, so that the layer that knows
    /// the action can answer a non-object payload with `FormationViolation` under the right id.
    Call {
        id: String,
        action: String,
        payload: Value,
    },
    /// A successful response; it carries no action, so the caller maps `id` back to its CALL.
    CallResult { id: String, payload: Value },
    /// An error response. `code` is kept as sent because chargers in the field do send
    /// non-standard codes, and the operator should see them; use [`ErrorCode::parse`] to classify.
    CallError {
        id: String,
        code: String,
        description: String,
        details: Value,
    },
}

impl Frame {
    /// The messageId of any kind of frame.
    pub fn id(&self) -> &str {
        match self {
            Frame::Call { id, .. } | Frame::CallResult { id, .. } | Frame::CallError { id, .. } => {
                id
            }
        }
    }
}

/// Why a frame could not be read; `id` is the messageId when it could be read (the CALLERROR
/// then uses it, else "").
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {description}")]
pub struct FrameError {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub description: String,
}

impl FrameError {
    fn new(id: Option<String>, code: ErrorCode, description: impl Into<String>) -> Self {
        FrameError {
            id,
            code,
            description: description.into(),
        }
    }

    /// The messageId a CALLERROR answering this should carry ("" when none could be read, as
    /// the spec leaves no better choice).
    pub fn reply_id(&self) -> &str {
        self.id.as_deref().unwrap_or("")
    }
}

/// Reads one OCPP-J message.
///
/// Envelope problems (broken JSON, not an array, wrong element count or element types, an
/// over-long messageId) are `FormationViolation`. A MessageTypeId that is an integer but not 2, 3
/// or 4 is `ProtocolError`: OCPP-J 1.6 section 4.1.3 says a receiver SHALL ignore such a
/// message's payload, so the distinct code lets the caller decide to drop it rather than answer.
///
/// The messageId is recovered into [`FrameError::id`] whenever element 1 is a string of at most
/// 36 characters, even if the rest of the frame is bad, so the charge point can match our
/// CALLERROR to its request. An over-long id is not echoed: the answer would itself break the
/// framing rules, and echoing unbounded peer input is not worth it.
pub fn parse_frame(text: &str) -> Result<Frame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        FrameError::new(
            None,
            ErrorCode::FormationViolation,
            format!("message is not valid JSON: {e}"),
        )
    })?;
    let Value::Array(items) = value else {
        return Err(FrameError::new(
            None,
            ErrorCode::FormationViolation,
            format!("message must be a JSON array, got {}", json_type(&value)),
        ));
    };

    let id = recover_id(&items);
    let fail =
        |code: ErrorCode, description: String| FrameError::new(id.clone(), code, description);

    let Some(first) = items.first() else {
        return Err(fail(
            ErrorCode::FormationViolation,
            "message is an empty array".into(),
        ));
    };
    let Some(type_id) = first.as_i64() else {
        // Only a JSON integer is a MessageTypeId: "2" or 2.0 are formation errors, not unknown types.
        return Err(fail(
            ErrorCode::FormationViolation,
            format!("MessageTypeId must be an integer, got {}", json_type(first)),
        ));
    };
    let expected_len = match type_id {
        CALL => 4,
        CALL_RESULT => 3,
        CALL_ERROR => 5,
        other => {
            return Err(fail(
                ErrorCode::ProtocolError,
                format!("unknown MessageTypeId {other}"),
            ))
        }
    };
    if items.len() != expected_len {
        return Err(fail(
            ErrorCode::FormationViolation,
            format!(
                "{} must have {expected_len} elements, got {}",
                type_name(type_id),
                items.len()
            ),
        ));
    }

    let Some(raw_id) = items.get(1).and_then(Value::as_str) else {
        return Err(fail(
            ErrorCode::FormationViolation,
            format!(
                "messageId must be a string, got {}",
                items.get(1).map_or("nothing", json_type)
            ),
        ));
    };
    let id_chars = raw_id.chars().count();
    if id_chars > MAX_MESSAGE_ID_CHARS {
        return Err(fail(
            ErrorCode::FormationViolation,
            format!("messageId is {id_chars} characters long, at most {MAX_MESSAGE_ID_CHARS} are allowed"),
        ));
    }
    let id = raw_id.to_owned();

    // The length check above guarantees these elements exist; falling back to null instead of
    // indexing keeps a logic slip from ever panicking on peer input.
    let mut items = items.into_iter().skip(2);
    let mut next = || items.next().unwrap_or(Value::Null);
    match type_id {
        CALL => {
            let action = string_element(next(), "Action", &id)?;
            Ok(Frame::Call {
                id,
                action,
                payload: next(),
            })
        }
        CALL_RESULT => Ok(Frame::CallResult {
            id,
            payload: next(),
        }),
        _ => {
            let code = string_element(next(), "errorCode", &id)?;
            let description = string_element(next(), "errorDescription", &id)?;
            Ok(Frame::CallError {
                id,
                code,
                description,
                details: next(),
            })
        }
    }
}

/// The messageId if element 1 is a string short enough to echo back.
fn recover_id(items: &[Value]) -> Option<String> {
    items
        .get(1)
        .and_then(Value::as_str)
        .filter(|id| id.chars().count() <= MAX_MESSAGE_ID_CHARS)
        .map(str::to_owned)
}

fn string_element(value: Value, what: &str, id: &str) -> Result<String, FrameError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(FrameError::new(
            Some(id.to_owned()),
            ErrorCode::FormationViolation,
            format!("{what} must be a string, got {}", json_type(&other)),
        )),
    }
}

fn type_name(type_id: i64) -> &'static str {
    match type_id {
        CALL => "CALL",
        CALL_RESULT => "CALLRESULT",
        _ => "CALLERROR",
    }
}

/// The JSON type name used in error descriptions.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `[2, id, action, payload]` as JSON text.
pub fn call(id: &str, action: &str, payload: &Value) -> String {
    Value::Array(vec![
        Value::from(CALL),
        Value::from(id),
        Value::from(action),
        payload.clone(),
    ])
    .to_string()
}

/// `[3, id, payload]` as JSON text.
pub fn call_result(id: &str, payload: &Value) -> String {
    Value::Array(vec![
        Value::from(CALL_RESULT),
        Value::from(id),
        payload.clone(),
    ])
    .to_string()
}

/// `[4, id, code, description, details]` as JSON text.
///
/// The spec requires `details` to be an object, so anything else (typically `Value::Null` from a
/// caller with nothing to add) is sent as `{}`.
pub fn call_error(id: &str, code: ErrorCode, description: &str, details: &Value) -> String {
    let details = match details {
        Value::Object(_) => details.clone(),
        _ => Value::Object(serde_json::Map::new()),
    };
    Value::Array(vec![
        Value::from(CALL_ERROR),
        Value::from(id),
        Value::from(code.as_str()),
        Value::from(description),
        details,
    ])
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_code_round_trips_and_serializes_as_its_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(
                serde_json::to_value(code).expect("serialize"),
                json!(code.as_str())
            );
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(ErrorCode::parse("OccurrenceConstraintViolation"), None);
        assert_eq!(ErrorCode::parse("notimplemented"), None);
        assert_eq!(ErrorCode::parse(""), None);
    }

    #[test]
    fn valid_frames_parse() {
        let unicode_id = format!("{}€", "é".repeat(35));
        let unicode_frame = format!(r#"[3,"{unicode_id}",{{}}]"#);
        let cases: Vec<(&str, Frame)> = vec![
            (
                r#"[2,"19223201","BootNotification",{"chargePointVendor":"VendorX","chargePointModel":"M1"}]"#,
                Frame::Call {
                    id: "19223201".into(),
                    action: "BootNotification".into(),
                    payload: json!({"chargePointVendor":"VendorX","chargePointModel":"M1"}),
                },
            ),
            (
                r#"  [ 2 , "a" , "Heartbeat" , { } ]  "#,
                Frame::Call {
                    id: "a".into(),
                    action: "Heartbeat".into(),
                    payload: json!({}),
                },
            ),
            // A non-object payload is the action layer's business (FormationViolation there).
            (
                r#"[2,"x","Heartbeat",null]"#,
                Frame::Call {
                    id: "x".into(),
                    action: "Heartbeat".into(),
                    payload: Value::Null,
                },
            ),
            (
                r#"[3,"19223201",{"status":"Accepted"}]"#,
                Frame::CallResult {
                    id: "19223201".into(),
                    payload: json!({"status":"Accepted"}),
                },
            ),
            (
                r#"[3,"r",{}]"#,
                Frame::CallResult {
                    id: "r".into(),
                    payload: json!({}),
                },
            ),
            (
                r#"[4,"162376037","NotSupported","SetDisplayMessage not implemented",{}]"#,
                Frame::CallError {
                    id: "162376037".into(),
                    code: "NotSupported".into(),
                    description: "SetDisplayMessage not implemented".into(),
                    details: json!({}),
                },
            ),
            // Non-standard codes and details are kept verbatim.
            (
                r#"[4,"e","VendorSpecificBoom","",{"line":3}]"#,
                Frame::CallError {
                    id: "e".into(),
                    code: "VendorSpecificBoom".into(),
                    description: "".into(),
                    details: json!({"line":3}),
                },
            ),
            (
                r#"[4,"e","GenericError","x",null]"#,
                Frame::CallError {
                    id: "e".into(),
                    code: "GenericError".into(),
                    description: "x".into(),
                    details: Value::Null,
                },
            ),
            // Unicode ids: the limit counts characters, not bytes (72+ bytes here).
            (
                &unicode_frame,
                Frame::CallResult {
                    id: unicode_id.clone(),
                    payload: json!({}),
                },
            ),
            (
                r#"[2,"id-ü","Authorize",{"idTag":"äöü"}]"#,
                Frame::Call {
                    id: "id-ü".into(),
                    action: "Authorize".into(),
                    payload: json!({"idTag":"äöü"}),
                },
            ),
            (
                r#"[2,"123456789012345678901234567890123456","Heartbeat",{}]"#,
                Frame::Call {
                    id: "123456789012345678901234567890123456".into(),
                    action: "Heartbeat".into(),
                    payload: json!({}),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_frame(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn malformed_frames_are_rejected_with_the_right_code_and_id() {
        use ErrorCode::{FormationViolation as FV, ProtocolError as PE};
        let long_id = "1234567890123456789012345678901234567";
        let long = format!(r#"[2,"{long_id}","Heartbeat",{{}}]"#);
        let long_unicode = format!(r#"[2,"{}","Heartbeat",{{}}]"#, "é".repeat(37));
        let cases: Vec<(&str, ErrorCode, Option<&str>)> = vec![
            ("", FV, None),
            ("not json", FV, None),
            (r#"[2,"abc","Heartbeat",{}"#, FV, None),
            ("{}", FV, None),
            (r#"{"0":2}"#, FV, None),
            ("\"[2]\"", FV, None),
            ("null", FV, None),
            ("2", FV, None),
            ("[]", FV, None),
            ("[2]", FV, None),
            (r#"[2,"id"]"#, FV, Some("id")),
            (r#"[2,"id","Heartbeat"]"#, FV, Some("id")),
            (r#"[2,"id","Heartbeat",{},{}]"#, FV, Some("id")),
            (r#"[3,"id"]"#, FV, Some("id")),
            (r#"[3,"id",{},{}]"#, FV, Some("id")),
            (r#"[4,"id","GenericError","x"]"#, FV, Some("id")),
            (r#"[4,"id","GenericError","x",{},1]"#, FV, Some("id")),
            // wrong element types
            (r#"["2","id","Heartbeat",{}]"#, FV, Some("id")),
            (r#"[2.0,"id","Heartbeat",{}]"#, FV, Some("id")),
            (r#"[-2,"id","Heartbeat",{}]"#, PE, Some("id")),
            (r#"[18446744073709551615,"id",{}]"#, FV, Some("id")),
            (r#"[null,"id","Heartbeat",{}]"#, FV, Some("id")),
            (r#"[2,17,"Heartbeat",{}]"#, FV, None),
            (r#"[2,null,"Heartbeat",{}]"#, FV, None),
            (r#"[2,"id",17,{}]"#, FV, Some("id")),
            (r#"[2,"id",null,{}]"#, FV, Some("id")),
            (r#"[4,"id",500,"x",{}]"#, FV, Some("id")),
            (r#"[4,"id","GenericError",null,{}]"#, FV, Some("id")),
            // unknown MessageTypeId
            (r#"[5,"id","Heartbeat",{}]"#, PE, Some("id")),
            (r#"[1,"id",{}]"#, PE, Some("id")),
            (r#"[0]"#, PE, None),
            // id too long: not recovered
            (&long, FV, None),
            (
                r#"[5,"1234567890123456789012345678901234567",{}]"#,
                PE,
                None,
            ),
            (&long_unicode, FV, None),
        ];
        for (text, code, id) in cases {
            let err = parse_frame(text).expect_err(text);
            assert_eq!(err.code, code, "{text}: {err}");
            assert_eq!(err.id.as_deref(), id, "{text}: {err}");
            assert!(!err.description.is_empty(), "{text}");
            assert_eq!(err.reply_id(), id.unwrap_or(""), "{text}");
        }
    }

    #[test]
    fn builders_produce_exact_json() {
        let cases: Vec<(String, &str)> = vec![
            (
                call("1", "Reset", &json!({"type":"Hard"})),
                r#"[2,"1","Reset",{"type":"Hard"}]"#,
            ),
            (
                call("2", "ClearCache", &json!({})),
                r#"[2,"2","ClearCache",{}]"#,
            ),
            (
                call_result("3", &json!({"currentTime":"2024-01-01T00:00:00.000Z"})),
                r#"[3,"3",{"currentTime":"2024-01-01T00:00:00.000Z"}]"#,
            ),
            (call_result("4", &json!({})), r#"[3,"4",{}]"#),
            (
                call_error(
                    "5",
                    ErrorCode::NotImplemented,
                    "unknown action `Foo`",
                    &Value::Null,
                ),
                r#"[4,"5","NotImplemented","unknown action `Foo`",{}]"#,
            ),
            (
                call_error("", ErrorCode::FormationViolation, "bad", &json!({})),
                r#"[4,"","FormationViolation","bad",{}]"#,
            ),
            (
                call_error(
                    "6",
                    ErrorCode::OccurenceConstraintViolation,
                    "x",
                    &json!("s"),
                ),
                r#"[4,"6","OccurenceConstraintViolation","x",{}]"#,
            ),
            (
                call_error(
                    "7",
                    ErrorCode::GenericError,
                    "quote \" and ü",
                    &json!({"a":1}),
                ),
                r#"[4,"7","GenericError","quote \" and ü",{"a":1}]"#,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn builders_round_trip_through_parse_frame() {
        let payload = json!({"idTag":"ABC"});
        assert_eq!(
            parse_frame(&call("m1", "Authorize", &payload)),
            Ok(Frame::Call {
                id: "m1".into(),
                action: "Authorize".into(),
                payload: payload.clone()
            })
        );
        assert_eq!(
            parse_frame(&call_result("m2", &payload)),
            Ok(Frame::CallResult {
                id: "m2".into(),
                payload
            })
        );
        let parsed = parse_frame(&call_error(
            "m3",
            ErrorCode::SecurityError,
            "no",
            &Value::Null,
        ))
        .expect("parses");
        assert_eq!(parsed.id(), "m3");
        assert_eq!(
            parsed,
            Frame::CallError {
                id: "m3".into(),
                code: "SecurityError".into(),
                description: "no".into(),
                details: json!({})
            }
        );
    }
}
