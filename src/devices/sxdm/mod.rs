//! Shenxing ("sxdm") panels, driven the way the vendor's SxDeviceManager drives them: the panel dials in over
//! WebSocket, logs in with a random challenge, and from then on third parties call the panel's own REST API
//! through us (`sxdmSn` header), each call carried as an HTTP-like envelope in a text frame
//! (`shared/protocols/shenxing.md`).

pub mod dispatch;
pub mod envelope;
pub mod session;

/// The `kind` of panels in events, metrics and the command audit trail.
pub const DEVICE_KIND: &str = "sxdm";
/// The protocol name in `GET /api/connected` and cluster routes.
pub const PROTOCOL: &str = "sxdm";

/// Calls that must not run twice if the panel dropped before answering (a re-delivered queued call would
/// reboot it again).
pub const UNSAFE_TO_REPEAT: &[&str] = &["GET /api/devices/reboot"];

/// A call to a panel's REST API, as forwarded over its socket.
#[derive(Debug, Clone, PartialEq)]
pub struct PanelCall {
    pub method: String,
    /// With the query string, as the caller sent it.
    pub path: String,
    pub body: Option<serde_json::Value>,
}

impl PanelCall {
    /// The name in the command audit trail: method and path without the query string (which may carry a
    /// user name and is not needed to tell calls apart).
    pub fn name(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        format!("{} {}", self.method, path)
    }

    /// Rebuilds a call stored in the audit trail (`params` of a queued call).
    pub fn from_params(params: &serde_json::Value) -> Option<PanelCall> {
        let method = params.get("method")?.as_str()?.to_owned();
        let path = params.get("path")?.as_str()?.to_owned();
        let body = params.get("body").filter(|b| !b.is_null()).cloned();
        Some(PanelCall { method, path, body })
    }
}

/// The panel's answer: its status and body.
#[derive(Debug, Clone, PartialEq)]
pub struct PanelAnswer {
    pub status: u16,
    /// `Null` when the panel sent no body.
    pub body: serde_json::Value,
}

/// Methods a third party may use (the panel's API uses the first four; the rest are passed through).
pub fn valid_method(method: &str) -> bool {
    matches!(
        method,
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS"
    )
}

/// A panel serial number as the login carries it: printable, no spaces, at most 64 bytes.
pub fn valid_sn(sn: &str) -> bool {
    !sn.is_empty() && sn.len() <= 64 && sn.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn audit_name_drops_the_query() {
        let call = PanelCall {
            method: "GET".into(),
            path: "/api/auth/login/challenge?username=admin".into(),
            body: None,
        };
        assert_eq!(call.name(), "GET /api/auth/login/challenge");
    }

    #[test]
    fn calls_round_trip_through_params() {
        let params =
            json!({"method": "PUT", "path": "/api/devices/door", "body": {"open_duration": 5}});
        let call = PanelCall::from_params(&params).expect("valid params");
        assert_eq!(call.method, "PUT");
        assert_eq!(call.body, Some(json!({"open_duration": 5})));
        assert!(PanelCall::from_params(&json!({"path": "/x"})).is_none());
    }

    #[test]
    fn serial_numbers() {
        assert!(valid_sn("M014200892105001731"));
        assert!(!valid_sn(""));
        assert!(!valid_sn("has space"));
        assert!(!valid_sn(&"x".repeat(65)));
    }
}
