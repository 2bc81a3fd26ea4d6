//! The two WebSocket carriers (`DEVICE_TRANSPORT`): the lean one that takes the socket over from the HTTP
//! dispatcher after the 101 (default), and actix-ws. Both must carry the same protocol; the lean one must also
//! keep bytes a client pipelined behind its handshake, answer refusals as plain HTTP, and survive big frames.

use std::time::Duration;

use gatehouse::config::DeviceTransport;
use gatehouse::sim::tm20::{SimConfig, SimTerminal};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_with, RawTerminal, TestApp};

async fn app_on(transport: DeviceTransport) -> TestApp {
    spawn_app_with(|s| s.device_transport = transport).await
}

#[actix_rt::test]
async fn both_transports_carry_commands_pings_and_closes() {
    for transport in [DeviceTransport::Lean, DeviceTransport::ActixWs] {
        let app = app_on(transport).await;
        let sn = format!("TRANS{transport:?}");
        let sim = SimTerminal::connect(SimConfig::new(app.ws_url("/pub/chat"), &sn))
            .await
            .unwrap();
        app.eventually("terminal online", || app.is_online(&sn))
            .await;
        let (status, body) = app.command(&sn, "opendoor", json!({"door": 1})).await;
        assert_eq!(status, 200, "{transport:?}: {body}");
        assert_eq!(body["reply"]["ret"], "opendoor", "{transport:?}");
        assert_eq!(sim.state().door_opened, 1, "{transport:?}");

        // A frame over TM20_MAX_FRAME_BYTES closes with 1009 on either carrier.
        let mut raw = RawTerminal::register(&app.ws_url("/pub/chat"), &format!("{sn}B")).await;
        let huge = "x".repeat(app.settings.tm20_max_frame_bytes + 1);
        raw.send(&huge).await;
        let closed = raw.expect_closed().await;
        assert_eq!(closed.map(|(code, _)| code), Some(1009), "{transport:?}");
        // The terminal on the other socket is untouched.
        let (status, _) = app.command(&sn, "opendoor", json!({"door": 1})).await;
        assert_eq!(status, 200, "{transport:?}");
    }
}

/// Writes a masked client text frame.
fn client_frame(text: &str) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let len = text.len();
    let mut out = vec![0x81];
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

const HANDSHAKE: &str =
    "GET /pub/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Reads until `needle` shows up in what was read (or the peer closes), returning everything read.
async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("answer within 10 s")
            .unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    seen
}

#[actix_rt::test]
async fn a_frame_pipelined_behind_the_handshake_is_not_lost() {
    let app = app_on(DeviceTransport::Lean).await;
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let mut bytes = HANDSHAKE.as_bytes().to_vec();
    bytes.extend(client_frame(
        &json!({"cmd":"reg","sn":"PIPE0001","devinfo":{"modelname":"raw"}}).to_string(),
    ));
    // One write: the register frame arrives in the same segment as the handshake.
    stream.write_all(&bytes).await.unwrap();
    let seen = read_until(&mut stream, b"\"ret\":\"reg\"").await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    // RFC 6455 4.2.2: the accept key of the sample nonce.
    assert!(
        text.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{text}"
    );
    assert!(text.contains("\"ret\":\"reg\""), "{text}");
    app.eventually("terminal online", || app.is_online("PIPE0001"))
        .await;
}

#[actix_rt::test]
async fn a_refused_upgrade_is_a_plain_http_answer_then_close() {
    let app = app_on(DeviceTransport::Lean).await;
    // A charge point without the ocpp1.6 subprotocol: 400 with the JSON error body.
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let request = HANDSHAKE.replace("/pub/chat", "/ocpp/CP1");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes after answering")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 400 "), "{text}");
    let body: serde_json::Value = serde_json::from_str(body).expect("JSON error body");
    assert!(body["error"].is_string(), "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", text.len() - head.len() - 4)),
        "{head}"
    );

    // An upgrade request to a REST route is answered by that route, then closed.
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let request = HANDSHAKE.replace("/pub/chat", "/healthz");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes after answering")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
}

#[actix_rt::test]
async fn a_photo_sized_frame_is_read_whole_and_the_socket_keeps_working() {
    let app = spawn_app_with(|s| {
        s.device_transport = DeviceTransport::Lean;
        s.tm20_max_frame_bytes = 400_000;
    })
    .await;
    let mut raw = RawTerminal::register(&app.ws_url("/pub/chat"), "BIG00001").await;
    // A sendlog with a 150 KB photo in one record: one frame, answered like any other.
    let photo = format!("data:image/jpeg;base64,{}", "A".repeat(150_000));
    let frame = json!({"cmd":"sendlog","sn":"BIG00001","count":1,"logindex":1,
        "record":[{"enrollid":1,"time":"2026-11-22 08:00:00","mode":1,"inout":0,"event":0,"image":photo}]});
    raw.send(&frame.to_string()).await;
    let answer = raw.recv_json().await;
    assert_eq!(answer["ret"], "sendlog", "{answer}");
    assert_eq!(answer["result"], true, "{answer}");
    // Then a small frame on the same socket.
    raw.send(
        &json!({"cmd":"sendlog","sn":"BIG00001","count":1,"logindex":2,
        "record":[{"enrollid":1,"time":"2026-11-22 08:00:01","mode":1,"inout":0,"event":0}]})
        .to_string(),
    )
    .await;
    let answer = raw.recv_json().await;
    assert_eq!(answer["result"], true, "{answer}");
}
