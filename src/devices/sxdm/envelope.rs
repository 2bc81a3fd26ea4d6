//! The HTTP-like envelope that Shenxing panels and SxDeviceManager exchange inside WebSocket text frames.
//!
//! Both directions use the same two shapes (protocol notes §2.2, from the vendor's `Constant.java` as copied
//! into the Python port):
//!
//! ```text
//! <id>&<METHOD> <path> HTTP/1.1\r\nHost: localhost\r\nContent-Length: <n>\r\nContent-Type: application/json\r\n\r\n<json>
//! <id>&HTTP/1.1 <status> <reason>\r\n\r\n<json>
//! ```
//!
//! The parser follows the vendor's `SXProtocolParser.parse` but is lenient where real traffic may differ
//! (bare `\n` line endings, `& ` after the id, lowercase methods, a missing `HTTP/1.1`, malformed header
//! lines, multi-line bodies). The renderers are exact: they produce byte for byte what the notes show, so a
//! strict peer parses them.
//!
//! Parsing borrows from the frame and allocates only the parts it returns, so the work is bounded by the frame
//! size; header lines are additionally capped at [`MAX_HEADER_LINES`].

use serde_json::Value;

/// Header lines accepted before the frame is rejected; real frames carry three. Bounds the work a hostile
/// peer can cause with a frame made of nothing but short lines.
pub const MAX_HEADER_LINES: usize = 100;

/// Longest piece of offending input copied into an error, so logging an error never copies a whole frame.
const ERROR_EXCERPT_CHARS: usize = 64;

/// One parsed frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    Request(Request),
    Response(Response),
}

impl Envelope {
    /// The request id, which a response echoes.
    pub fn id(&self) -> &str {
        match self {
            Envelope::Request(request) => &request.id,
            Envelope::Response(response) => &response.id,
        }
    }
}

/// `<id>&<METHOD> <path> HTTP/1.1` with headers and a body.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: String,
    /// Upper-case ASCII letters (normalised on parse).
    pub method: String,
    /// Starts with `/`; includes the `?query` if there is one.
    pub path: String,
    /// In frame order; names and values trimmed, names as sent (not case-normalised).
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Request {
    /// The path without its query string, for routing.
    pub fn route(&self) -> &str {
        path_without_query(&self.path)
    }

    /// The first header with this name, compared ASCII case-insensitively as in HTTP.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `<id>&HTTP/1.1 <status> <reason>` with a body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: String,
    /// 100..=599.
    pub status: u16,
    /// The rest of the status line, words joined by one space; empty when the peer sent none.
    pub reason: String,
    pub body: Body,
}

/// A frame body, trimmed.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Empty,
    /// A body starting with `{` or `[`.
    Json(Value),
    /// A body that is not JSON (the vendor parser only treats `{…}`/`[…]` as JSON, so `null`, numbers and
    /// quoted strings land here too).
    Text(String),
}

impl Body {
    /// The body as a JSON value: `Empty` → `null`, `Text` → a JSON string.
    pub fn to_value(&self) -> Value {
        match self {
            Body::Empty => Value::Null,
            Body::Json(value) => value.clone(),
            Body::Text(text) => Value::String(text.clone()),
        }
    }

    /// The JSON value, if the body is JSON.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Body::Json(value) => Some(value),
            Body::Empty | Body::Text(_) => None,
        }
    }
}

/// Why a frame could not be parsed. Offending input is quoted, cut to a short excerpt.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    #[error("empty frame")]
    EmptyFrame,
    #[error("no `&` request id at the start of the frame")]
    MissingRequestId,
    #[error("the request id before `&` is empty")]
    EmptyRequestId,
    #[error("bad request line: {0}")]
    BadRequestLine(String),
    #[error("bad method {0:?}: expected ASCII letters")]
    BadMethod(String),
    #[error("request line has no path")]
    MissingPath,
    #[error("path {0:?} does not start with `/`")]
    BadPath(String),
    #[error("status line has no status code")]
    MissingStatus,
    #[error("bad status code {0:?}: expected a number in 100..=599")]
    BadStatus(String),
    #[error("more than {MAX_HEADER_LINES} header lines")]
    TooManyHeaders,
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
}

impl EnvelopeError {
    /// A stable snake_case code, for logs and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::EmptyFrame => "empty_frame",
            EnvelopeError::MissingRequestId => "missing_request_id",
            EnvelopeError::EmptyRequestId => "empty_request_id",
            EnvelopeError::BadRequestLine(_) => "bad_request_line",
            EnvelopeError::BadMethod(_) => "bad_method",
            EnvelopeError::MissingPath => "missing_path",
            EnvelopeError::BadPath(_) => "bad_path",
            EnvelopeError::MissingStatus => "missing_status",
            EnvelopeError::BadStatus(_) => "bad_status",
            EnvelopeError::TooManyHeaders => "too_many_headers",
            EnvelopeError::InvalidJson(_) => "invalid_json",
        }
    }
}

/// Parses one WebSocket text frame.
///
/// # Errors
/// [`EnvelopeError`] when the frame is blank, has no usable `<id>&` prefix, a start line that is neither a
/// request line nor a status line, more than [`MAX_HEADER_LINES`] header lines, or a body that starts with
/// `{`/`[` but is not valid JSON.
pub fn parse(frame: &str) -> Result<Envelope, EnvelopeError> {
    // Leading blank lines carry nothing; skipping them is cheaper than explaining them.
    let frame = frame.trim_start();
    if frame.is_empty() {
        return Err(EnvelopeError::EmptyFrame);
    }
    let (start_line, mut rest) = next_line(frame);
    let start = parse_start_line(start_line)?;

    let mut headers = Vec::new();
    let mut header_lines = 0usize;
    let mut body_text = "";
    while let Some(remaining) = rest {
        let (line, next) = next_line(remaining);
        if line.trim().is_empty() {
            // Everything after the separator is the body. The vendor takes the last line only, which is the
            // same for the single-line bodies it sends; taking all of it also accepts pretty-printed JSON.
            body_text = next.unwrap_or("");
            break;
        }
        header_lines += 1;
        if header_lines > MAX_HEADER_LINES {
            return Err(EnvelopeError::TooManyHeaders);
        }
        // A malformed header line tells us nothing we need; the vendor parser never reads headers at all.
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && !name.contains(char::is_whitespace) {
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
        }
        rest = next;
    }
    let body = parse_body(body_text)?;

    Ok(match start {
        StartLine::Request { id, method, path } => Envelope::Request(Request {
            id: id.to_owned(),
            method,
            path: path.to_owned(),
            headers,
            body,
        }),
        StartLine::Response { id, status, reason } => Envelope::Response(Response {
            id: id.to_owned(),
            status,
            reason,
            body,
        }),
    })
}

/// The request id of a frame, read leniently from its first line: the text before the first `&`, if that is
/// non-empty and has no whitespace. Works on frames that [`parse`] rejects, so an error answer can still
/// echo the id.
pub fn peek_id(frame: &str) -> Option<&str> {
    let (start_line, _) = next_line(frame.trim_start());
    let (id, _) = start_line.split_once('&')?;
    (!id.is_empty() && !id.contains(char::is_whitespace)).then_some(id)
}

/// Renders a request exactly as SxDeviceManager does (notes §2.2). `None` and `Some(null)` give an empty
/// body with `Content-Length: 0`.
///
/// The caller keeps `id` free of `&` and whitespace and `path` free of whitespace; neither can be escaped.
pub fn render_request(id: &str, method: &str, path: &str, body: Option<&Value>) -> String {
    let body = render_body(body);
    format!(
        "{id}&{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}",
        body.len()
    )
}

/// Renders a response exactly as SxDeviceManager does (notes §2.2), with the standard reason phrase. A `null`
/// body renders as no body.
pub fn render_response(id: &str, status: u16, body: &Value) -> String {
    let body = render_body(Some(body));
    format!(
        "{id}&HTTP/1.1 {status} {}\r\n\r\n{body}",
        reason_phrase(status)
    )
}

/// The standard reason phrase (as the `http` crate spells them), `"Unknown"` for unregistered codes.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Entity",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "Unknown",
    }
}

/// The path without its `?query`.
pub fn path_without_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(route, _)| route)
}

enum StartLine<'a> {
    Request {
        id: &'a str,
        method: String,
        path: &'a str,
    },
    Response {
        id: &'a str,
        status: u16,
        reason: String,
    },
}

fn parse_start_line(line: &str) -> Result<StartLine<'_>, EnvelopeError> {
    // The vendor splits the first whitespace token on `&` after turning "& " into "&"; splitting the line on
    // its first `&` and refusing an id with whitespace is the same rule, and also tolerates several spaces.
    let (id, rest) = line
        .trim()
        .split_once('&')
        .ok_or(EnvelopeError::MissingRequestId)?;
    if id.is_empty() {
        return Err(EnvelopeError::EmptyRequestId);
    }
    if id.contains(char::is_whitespace) {
        // The `&` found belongs to something later (a query string), so the frame has no id.
        return Err(EnvelopeError::MissingRequestId);
    }
    let mut tokens = rest.split_whitespace();
    let first = tokens
        .next()
        .ok_or_else(|| EnvelopeError::BadRequestLine("nothing after the request id".to_owned()))?;

    if starts_with_ignore_ascii_case(first, "HTTP") {
        let status_token = tokens.next().ok_or(EnvelopeError::MissingStatus)?;
        let status = status_token
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| status_token.parse::<u16>().ok())
            .flatten()
            .filter(|status| (100..=599).contains(status))
            .ok_or_else(|| EnvelopeError::BadStatus(excerpt(status_token)))?;
        let reason = tokens.collect::<Vec<_>>().join(" ");
        return Ok(StartLine::Response { id, status, reason });
    }

    if !first.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(EnvelopeError::BadMethod(excerpt(first)));
    }
    let method = first.to_ascii_uppercase();
    let path = tokens.next().ok_or(EnvelopeError::MissingPath)?;
    if !path.starts_with('/') {
        return Err(EnvelopeError::BadPath(excerpt(path)));
    }
    match (tokens.next(), tokens.next()) {
        (None, _) => {}
        (Some(version), None) if starts_with_ignore_ascii_case(version, "HTTP/1.") => {}
        (Some(version), None) => {
            return Err(EnvelopeError::BadRequestLine(format!(
                "unexpected {:?} after the path",
                excerpt(version)
            )))
        }
        (Some(_), Some(_)) => {
            return Err(EnvelopeError::BadRequestLine(
                "too many words (a path with a space?)".to_owned(),
            ))
        }
    }
    Ok(StartLine::Request { id, method, path })
}

fn parse_body(text: &str) -> Result<Body, EnvelopeError> {
    let text = text.trim();
    if text.is_empty() {
        Ok(Body::Empty)
    } else if text.starts_with('{') || text.starts_with('[') {
        serde_json::from_str(text)
            .map(Body::Json)
            .map_err(|e| EnvelopeError::InvalidJson(e.to_string()))
    } else {
        Ok(Body::Text(text.to_owned()))
    }
}

fn render_body(body: Option<&Value>) -> String {
    match body {
        None | Some(Value::Null) => String::new(),
        // serde_json's compact form never contains a raw newline (strings escape them), which keeps the
        // body on one line as the vendor parser requires.
        Some(value) => value.to_string(),
    }
}

/// Splits off the first line, accepting `\r\n` or bare `\n`; the remainder is `None` after the last line.
fn next_line(text: &str) -> (&str, Option<&str>) {
    match text.split_once('\n') {
        Some((line, rest)) => (line.strip_suffix('\r').unwrap_or(line), Some(rest)),
        None => (text.strip_suffix('\r').unwrap_or(text), None),
    }
}

fn starts_with_ignore_ascii_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn excerpt(text: &str) -> String {
    match text.char_indices().nth(ERROR_EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(frame: &str) -> Request {
        match parse(frame) {
            Ok(Envelope::Request(request)) => request,
            other => panic!("expected a request from {frame:?}, got {other:?}"),
        }
    }

    fn response(frame: &str) -> Response {
        match parse(frame) {
            Ok(Envelope::Response(response)) => response,
            other => panic!("expected a response from {frame:?}, got {other:?}"),
        }
    }

    fn error(frame: &str) -> EnvelopeError {
        match parse(frame) {
            Err(e) => e,
            Ok(envelope) => panic!("expected an error from {frame:?}, got {envelope:?}"),
        }
    }

    #[test]
    fn status_query_example_from_the_notes_parses() {
        let r = request("1718000000123&GET /api/devices/status HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Type: application/json\r\n\r\n");
        assert_eq!(r.id, "1718000000123");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/devices/status");
        assert_eq!(r.body, Body::Empty);
    }

    #[test]
    fn auth_random_request_parses() {
        let r = request("42&POST /api/auth/random HTTP/1.1\r\nHost: localhost\r\nContent-Length: 35\r\nContent-Type: application/json\r\n\r\n{\"serial_no\":\"M014200892105001731\"}");
        assert_eq!(r.id, "42");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/auth/random");
        assert_eq!(
            r.body,
            Body::Json(json!({"serial_no": "M014200892105001731"}))
        );
    }

    #[test]
    fn auth_login_request_parses() {
        let r = request("43&POST /api/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Length: 80\r\nContent-Type: application/json\r\n\r\n{\"serial_no\":\"M014200892105001731\",\"random\":\"583920\",\"password\":\"secret\"}");
        assert_eq!(r.id, "43");
        assert_eq!(r.path, "/api/auth/login");
        assert_eq!(
            r.body,
            Body::Json(
                json!({"serial_no": "M014200892105001731", "random": "583920", "password": "secret"})
            )
        );
    }

    #[test]
    fn ok_response_with_body_parses() {
        let r = response(
            "1718000000123&HTTP/1.1 200 OK\r\n\r\n{\"serial_no\":\"M014\",\"model_spec\":\"X\"}",
        );
        assert_eq!(r.id, "1718000000123");
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(
            r.body,
            Body::Json(json!({"serial_no": "M014", "model_spec": "X"}))
        );
    }

    #[test]
    fn random_response_parses() {
        let r = response("42&HTTP/1.1 200 OK\r\n\r\n{\"random\":\"583920\"}");
        assert_eq!(r.body, Body::Json(json!({"random": "583920"})));
    }

    #[test]
    fn response_without_body_is_empty() {
        assert_eq!(
            response("7&HTTP/1.1 204 No Content\r\n\r\n").body,
            Body::Empty
        );
        assert_eq!(response("7&HTTP/1.1 200 OK\r\n").body, Body::Empty);
        assert_eq!(response("7&HTTP/1.1 200 OK").body, Body::Empty);
    }

    #[test]
    fn reason_of_several_words_is_kept_whole() {
        let r = response("9&HTTP/1.1 404 Not Found\r\n\r\n{\"status\":404}");
        assert_eq!(r.status, 404);
        assert_eq!(r.reason, "Not Found");
        assert_eq!(
            response("9&HTTP/1.1  500   Internal  Server Error\r\n\r\n").reason,
            "Internal Server Error"
        );
    }

    #[test]
    fn missing_reason_is_empty() {
        let r = response("9&HTTP/1.1 200\r\n\r\n{}");
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "");
        assert_eq!(r.body, Body::Json(json!({})));
    }

    #[test]
    fn space_after_ampersand_is_accepted() {
        let r = request("42& GET /api/devices/status HTTP/1.1\r\n\r\n");
        assert_eq!((r.id.as_str(), r.method.as_str()), ("42", "GET"));
        let r = response("42& HTTP/1.1 200 OK\r\n\r\n{}");
        assert_eq!((r.id.as_str(), r.status), ("42", 200));
        assert_eq!(request("42&   PUT /x\r\n\r\n").method, "PUT");
    }

    #[test]
    fn lowercase_method_is_normalised() {
        assert_eq!(
            request("1&get /api/devices/status HTTP/1.1\r\n\r\n").method,
            "GET"
        );
        assert_eq!(
            request("1&Delete /api/persons/item/3\r\n\r\n").method,
            "DELETE"
        );
    }

    #[test]
    fn bare_newlines_are_accepted() {
        let r = request("5&PUT /api/devices/profile HTTP/1.1\nHost: localhost\nContent-Length: 18\n\n{\"voice_volume\":3}\n");
        assert_eq!(r.method, "PUT");
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.body, Body::Json(json!({"voice_volume": 3})));
        let r = response("5&HTTP/1.1 200 OK\n\n{\"status\":200}");
        assert_eq!(r.body, Body::Json(json!({"status": 200})));
    }

    #[test]
    fn http_version_is_optional_and_lenient() {
        assert_eq!(request("1&GET /a").path, "/a");
        assert_eq!(request("1&GET /a HTTP/1.0\r\n\r\n").path, "/a");
        assert!(matches!(
            error("1&GET /a HTTP/2\r\n\r\n"),
            EnvelopeError::BadRequestLine(_)
        ));
        assert!(matches!(
            error("1&GET /a b HTTP/1.1\r\n\r\n"),
            EnvelopeError::BadRequestLine(_)
        ));
    }

    #[test]
    fn query_string_stays_in_the_path() {
        let r = request("1&GET /api/auth/login/challenge?username=admin&x=1 HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "/api/auth/login/challenge?username=admin&x=1");
        assert_eq!(r.route(), "/api/auth/login/challenge");
    }

    #[test]
    fn headers_are_captured_and_malformed_ones_ignored() {
        let r = request("1&GET /a HTTP/1.1\r\nHost: localhost\r\nnot a header\r\nsxdmSn:  M014 \r\n: empty\r\nContent-Type: application/json\r\n\r\n");
        assert_eq!(
            r.headers,
            vec![
                ("Host".to_owned(), "localhost".to_owned()),
                ("sxdmSn".to_owned(), "M014".to_owned()),
                ("Content-Type".to_owned(), "application/json".to_owned()),
            ]
        );
        assert_eq!(r.header("SXDMSN"), Some("M014"));
        assert_eq!(r.header("Cookie"), None);
    }

    #[test]
    fn no_separator_means_empty_body() {
        let r = request("1&GET /a HTTP/1.1\r\nHost: localhost");
        assert_eq!(r.body, Body::Empty);
        assert_eq!(r.headers.len(), 1);
    }

    #[test]
    fn blank_frames_are_rejected() {
        assert_eq!(error(""), EnvelopeError::EmptyFrame);
        assert_eq!(error(" \r\n\r\n"), EnvelopeError::EmptyFrame);
    }

    #[test]
    fn frame_without_ampersand_has_no_id() {
        assert_eq!(
            error("GET /api/devices/status HTTP/1.1\r\n\r\n"),
            EnvelopeError::MissingRequestId
        );
        assert_eq!(
            error("HTTP/1.1 200 OK\r\n\r\n{}"),
            EnvelopeError::MissingRequestId
        );
        // The `&` in the query string is not an id separator.
        assert_eq!(
            error("GET /a?b=1&c=2 HTTP/1.1\r\n\r\n"),
            EnvelopeError::MissingRequestId
        );
    }

    #[test]
    fn empty_id_is_rejected() {
        assert_eq!(
            error("&GET /a HTTP/1.1\r\n\r\n"),
            EnvelopeError::EmptyRequestId
        );
        assert_eq!(
            error("&HTTP/1.1 200 OK\r\n\r\n"),
            EnvelopeError::EmptyRequestId
        );
    }

    #[test]
    fn nothing_after_the_id_is_a_bad_request_line() {
        assert!(matches!(
            error("42&\r\n\r\n"),
            EnvelopeError::BadRequestLine(_)
        ));
        assert!(matches!(error("42& "), EnvelopeError::BadRequestLine(_)));
    }

    #[test]
    fn bad_status_codes_are_rejected() {
        for bad in ["abc", "99", "600", "-200", "+200", "2000", "70000"] {
            assert_eq!(
                error(&format!("1&HTTP/1.1 {bad} X\r\n\r\n")),
                EnvelopeError::BadStatus(bad.to_owned()),
                "{bad}"
            );
        }
        assert_eq!(error("1&HTTP/1.1\r\n\r\n"), EnvelopeError::MissingStatus);
        assert_eq!(response("1&HTTP/1.1 100 Continue").status, 100);
        assert_eq!(response("1&HTTP/1.1 599 X").status, 599);
    }

    #[test]
    fn request_without_path_is_rejected() {
        assert_eq!(error("1&GET\r\n\r\n"), EnvelopeError::MissingPath);
    }

    #[test]
    fn path_without_leading_slash_is_rejected() {
        assert_eq!(
            error("1&GET api/devices/status HTTP/1.1\r\n\r\n"),
            EnvelopeError::BadPath("api/devices/status".to_owned())
        );
    }

    #[test]
    fn method_with_non_letters_is_rejected() {
        assert_eq!(
            error("1&G3T /a\r\n\r\n"),
            EnvelopeError::BadMethod("G3T".to_owned())
        );
    }

    #[test]
    fn invalid_json_body_is_rejected() {
        assert!(matches!(
            error("1&HTTP/1.1 200 OK\r\n\r\n{\"a\":"),
            EnvelopeError::InvalidJson(_)
        ));
        assert!(matches!(
            error("1&POST /a\r\n\r\n[1,2"),
            EnvelopeError::InvalidJson(_)
        ));
        assert_eq!(error("1&POST /a\r\n\r\n{").code(), "invalid_json");
    }

    #[test]
    fn non_json_body_is_text() {
        assert_eq!(
            response("1&HTTP/1.1 500 Internal Server Error\r\n\r\n  oops, failed \r\n").body,
            Body::Text("oops, failed".to_owned())
        );
        assert_eq!(
            response("1&HTTP/1.1 200 OK\r\n\r\nnull").body,
            Body::Text("null".to_owned())
        );
    }

    #[test]
    fn escaped_crlf_inside_a_json_string_survives() {
        let body = json!({"text": "line one\r\nline two"});
        let frame = render_response("3", 200, &body);
        assert!(frame.ends_with(r#"{"text":"line one\r\nline two"}"#));
        assert_eq!(response(&frame).body, Body::Json(body));
    }

    #[test]
    fn unicode_body_counts_utf8_bytes() {
        let body = json!({"status": 403, "msg": "设备离线"});
        let frame = render_request("1", "POST", "/a", Some(&body));
        let expected_len = r#"{"msg":"设备离线","status":403}"#.len();
        assert_eq!(expected_len, 35, "four CJK characters are 12 UTF-8 bytes");
        assert_eq!(r#"{"msg":"设备离线","status":403}"#.chars().count(), 27);
        assert!(frame.contains(&format!("Content-Length: {expected_len}\r\n")));
        assert_eq!(request(&frame).body, Body::Json(body.clone()));
        assert_eq!(
            response(&render_response("1", 403, &body)).body,
            Body::Json(body)
        );
    }

    #[test]
    fn too_many_header_lines_are_rejected() {
        let at_limit = format!("1&GET /a\r\n{}\r\n", "X: y\r\n".repeat(MAX_HEADER_LINES));
        assert_eq!(request(&at_limit).headers.len(), MAX_HEADER_LINES);
        let over = format!(
            "1&GET /a\r\n{}\r\n",
            "junk\r\n".repeat(MAX_HEADER_LINES + 1)
        );
        assert_eq!(error(&over), EnvelopeError::TooManyHeaders);
    }

    #[test]
    fn long_offending_input_is_cut_in_errors() {
        let path = "x".repeat(10_000);
        match error(&format!("1&GET {path}")) {
            EnvelopeError::BadPath(quoted) => {
                assert!(quoted.chars().count() <= ERROR_EXCERPT_CHARS + 1)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn render_request_matches_the_notes_byte_for_byte() {
        assert_eq!(
            render_request("1718000000123", "GET", "/api/devices/status", None),
            "1718000000123&GET /api/devices/status HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Type: application/json\r\n\r\n"
        );
        assert_eq!(
            render_request("42", "POST", "/api/auth/random", Some(&json!({"serial_no": "M014200892105001731"}))),
            "42&POST /api/auth/random HTTP/1.1\r\nHost: localhost\r\nContent-Length: 35\r\nContent-Type: application/json\r\n\r\n{\"serial_no\":\"M014200892105001731\"}"
        );
    }

    #[test]
    fn render_response_matches_the_notes_byte_for_byte() {
        assert_eq!(
            render_response("42", 200, &json!({"random": "583920"})),
            "42&HTTP/1.1 200 OK\r\n\r\n{\"random\":\"583920\"}"
        );
        assert_eq!(
            render_response("7", 404, &Value::Null),
            "7&HTTP/1.1 404 Not Found\r\n\r\n"
        );
        assert_eq!(
            render_response("7", 299, &json!({})),
            "7&HTTP/1.1 299 Unknown\r\n\r\n{}"
        );
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(403), "Forbidden");
        assert_eq!(reason_phrase(408), "Request Timeout");
        assert_eq!(reason_phrase(0), "Unknown");
        assert_eq!(reason_phrase(999), "Unknown");
    }

    #[test]
    fn peek_id_reads_ids_from_frames_parse_rejects() {
        assert_eq!(peek_id("77&GET api/no-slash\r\n\r\n"), Some("77"));
        assert_eq!(peek_id("77&HTTP/1.1 abc\r\n"), Some("77"));
        assert_eq!(peek_id("&GET /a"), None);
        assert_eq!(peek_id("GET /a?b=1&c=2"), None);
        assert_eq!(peek_id(""), None);
    }

    fn sample_bodies() -> Vec<Option<Value>> {
        vec![
            None,
            Some(json!({})),
            Some(json!([])),
            Some(json!({"serial_no": "M014200892105001731"})),
            Some(
                json!({"a": {"b": [1, 2, {"c": null, "d": [true, false]}], "e": "x&y z\r\n"}, "f": -1.5}),
            ),
            Some(
                json!([{"id": 1001, "face_list": [{"idx": 0, "data": "aGVsbG8="}]}, "设备离线", 3]),
            ),
        ]
    }

    #[test]
    fn requests_round_trip() {
        let ids = ["1", "1718000000123", "panel-a.7"];
        let methods = ["GET", "POST", "PUT", "DELETE"];
        let paths = [
            "/",
            "/api/devices/status",
            "/api/persons/item/1001",
            "/api/devices/customtips?type=blacklist&x=1",
        ];
        for (i, body) in sample_bodies().into_iter().enumerate() {
            let (id, method, path) = (
                ids[i % ids.len()],
                methods[i % methods.len()],
                paths[i % paths.len()],
            );
            let r = request(&render_request(id, method, path, body.as_ref()));
            assert_eq!(
                (r.id.as_str(), r.method.as_str(), r.path.as_str()),
                (id, method, path)
            );
            assert_eq!(r.body, body.map_or(Body::Empty, Body::Json));
            assert_eq!(r.header("Content-Type"), Some("application/json"));
        }
    }

    #[test]
    fn responses_round_trip() {
        let statuses = [200, 400, 404, 408, 500, 599];
        for (i, body) in sample_bodies().into_iter().enumerate() {
            let status = statuses[i % statuses.len()];
            let id = format!("{}", 1_718_000_000_000u64 + i as u64);
            let body_value = body.clone().unwrap_or(Value::Null);
            let r = response(&render_response(&id, status, &body_value));
            assert_eq!((r.id.as_str(), r.status), (id.as_str(), status));
            assert_eq!(r.reason, reason_phrase(status));
            assert_eq!(r.body, body.map_or(Body::Empty, Body::Json));
        }
    }

    #[test]
    fn body_to_value() {
        assert_eq!(Body::Empty.to_value(), Value::Null);
        assert_eq!(Body::Text("hi".to_owned()).to_value(), json!("hi"));
        assert_eq!(Body::Json(json!({"a": 1})).to_value(), json!({"a": 1}));
    }
}
