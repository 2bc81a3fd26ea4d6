//! The lean device transport: RFC 6455 frames on a socket taken over from the HTTP/1 dispatcher after the
//! upgrade (see [`crate::edge`]).
//!
//! Why not actix-ws: its upgraded connection stays inside actix-http's dispatcher, which keeps two 8 KiB
//! buffers for the life of the connection and grows them to fit the largest frame ever received, never
//! shrinking them (~16 KiB per idle socket, ~150 KiB after one photo frame). Here an idle socket owns no read
//! buffer at all: the reader waits for readiness, reads into a stack buffer, keeps only the bytes of an
//! unfinished frame, and reads a large payload into a buffer of exactly its size that leaves with the message.
//! Frame headers are parsed and formatted by tungstenite; what is written here is the message assembly
//! (fragments, control frames, UTF-8) and the limits.
//!
//! The session actors do not know which transport carries them: both produce [`WsEvent`]s and drain an
//! [`Outbox`](super::transport::Outbox).

use std::io::Cursor;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use super::transport::{OutFrame, WsEvent, WsFailure};
use crate::limits::SocketPermit;

/// Bytes read per readiness wake-up into a stack buffer; only an unfinished frame's bytes are kept.
const READ_CHUNK: usize = 2048;

/// A device that does not take a frame within this long is gone (its TCP window stayed shut).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads frames from one socket and assembles them into [`WsEvent`]s.
pub struct FrameReader {
    rd: OwnedReadHalf,
    /// Bytes read but not yet consumed: at most a frame header and the start of its payload.
    pending: Vec<u8>,
    assembler: Assembler,
    /// The stream ended (EOF, error or close): every later call returns `None`.
    done: bool,
}

enum Read {
    Frame(FrameHeader, Vec<u8>),
    Eof,
    Failed(WsFailure),
}

impl FrameReader {
    pub fn new(rd: OwnedReadHalf, leftover: &[u8], max_message_bytes: usize) -> FrameReader {
        FrameReader {
            rd,
            pending: leftover.to_vec(),
            assembler: Assembler::new(max_message_bytes),
            done: false,
        }
    }

    /// The next event, or `None` once the peer is gone or the stream failed (the failure is yielded first).
    pub async fn next_event(&mut self) -> Option<WsEvent> {
        while !self.done {
            let (header, payload) = match self.read_frame().await {
                Read::Frame(header, payload) => (header, payload),
                Read::Eof => {
                    self.done = true;
                    return None;
                }
                Read::Failed(failure) => return Some(self.fail(failure)),
            };
            match self.assembler.assemble(header, payload) {
                Ok(Some(event)) => {
                    if matches!(event, WsEvent::Close(_)) {
                        self.done = true;
                    }
                    return Some(event);
                }
                Ok(None) => {}
                Err(failure) => return Some(self.fail(failure)),
            }
        }
        None
    }

    fn fail(&mut self, failure: WsFailure) -> WsEvent {
        self.done = true;
        self.pending = Vec::new();
        self.assembler.fragments = None;
        WsEvent::Error(failure)
    }

    /// Reads one whole frame, unmasked.
    async fn read_frame(&mut self) -> Read {
        loop {
            match front_frame(&self.pending, self.assembler.max_message_bytes) {
                Err(failure) => return Read::Failed(failure),
                Ok(Front::Whole { header, start, end }) => {
                    let mut payload = self.pending[start..end].to_vec();
                    self.pending.drain(..end);
                    // An idle socket keeps no read buffer (heaptrack: the last frame's capacity, ~420 bytes
                    // per registered terminal, stayed otherwise); the next read allocates what it needs.
                    if self.pending.is_empty() {
                        self.pending = Vec::new();
                    }
                    unmask(&mut payload, header.mask.unwrap_or_default());
                    return Read::Frame(header, payload);
                }
                Ok(Front::Partial { header, start, len }) => {
                    // Read the rest of a large payload into a buffer of its own size; the reader keeps nothing
                    // while it streams in.
                    let have = self.pending.len() - start;
                    let mut payload = Vec::with_capacity(len);
                    payload.extend_from_slice(&self.pending[start..]);
                    self.pending = Vec::new();
                    payload.resize(len, 0);
                    if tokio::io::AsyncReadExt::read_exact(&mut self.rd, &mut payload[have..])
                        .await
                        .is_err()
                    {
                        return Read::Eof;
                    }
                    unmask(&mut payload, header.mask.unwrap_or_default());
                    return Read::Frame(header, payload);
                }
                Ok(Front::Need) => {}
            }
            match self.read_more().await {
                Ok(0) | Err(_) => return Read::Eof,
                Ok(_) => {}
            }
        }
    }

    /// Waits for the socket, then reads what is there into a stack buffer and keeps it in `pending`.
    async fn read_more(&mut self) -> std::io::Result<usize> {
        loop {
            self.rd.readable().await?;
            let mut chunk = [0u8; READ_CHUNK];
            match self.rd.try_read(&mut chunk) {
                Ok(n) => {
                    self.pending.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
    }
}

/// Message assembly from frames: fragments, control frames, UTF-8, the size limit. Independent of I/O, so
/// [`decode`] (and the `ws_frames` fuzz target) run exactly the rules a socket gets.
struct Assembler {
    /// A fragmented message in progress: binary or text, and its bytes so far.
    fragments: Option<(bool, Vec<u8>)>,
    max_message_bytes: usize,
}

impl Assembler {
    fn new(max_message_bytes: usize) -> Assembler {
        Assembler {
            fragments: None,
            max_message_bytes,
        }
    }

    /// Turns one frame into an event, or keeps it as part of a fragmented message.
    fn assemble(
        &mut self,
        header: FrameHeader,
        payload: Vec<u8>,
    ) -> Result<Option<WsEvent>, WsFailure> {
        match header.opcode {
            OpCode::Control(control) => {
                // RFC 6455 5.5: control frames are never fragmented and carry at most 125 bytes.
                if !header.is_final || payload.len() > 125 {
                    return Err(WsFailure::Protocol);
                }
                match control {
                    Control::Ping => Ok(Some(WsEvent::Ping(payload))),
                    Control::Pong => Ok(Some(WsEvent::Pong)),
                    Control::Close => close_reason(&payload).map(|r| Some(WsEvent::Close(r))),
                    Control::Reserved(_) => Err(WsFailure::Protocol),
                }
            }
            OpCode::Data(Data::Text | Data::Binary) if self.fragments.is_some() => {
                Err(WsFailure::Protocol)
            }
            OpCode::Data(Data::Text) if header.is_final => text(payload).map(Some),
            OpCode::Data(Data::Binary) if header.is_final => {
                Ok(Some(WsEvent::Binary(payload.into())))
            }
            OpCode::Data(kind @ (Data::Text | Data::Binary)) => {
                self.fragments = Some((kind == Data::Binary, payload));
                Ok(None)
            }
            OpCode::Data(Data::Continue) => {
                let Some((binary, mut message)) = self.fragments.take() else {
                    return Err(WsFailure::Protocol);
                };
                if message.len() + payload.len() > self.max_message_bytes {
                    return Err(WsFailure::TooLarge);
                }
                message.extend_from_slice(&payload);
                if !header.is_final {
                    self.fragments = Some((binary, message));
                    return Ok(None);
                }
                if binary {
                    Ok(Some(WsEvent::Binary(message.into())))
                } else {
                    text(message).map(Some)
                }
            }
            OpCode::Data(Data::Reserved(_)) => Err(WsFailure::Protocol),
        }
    }
}

/// What the front of the read buffer holds.
enum Front {
    /// Not even a whole header yet.
    Need,
    /// A whole frame: its payload is `pending[start..end]` (still masked).
    Whole {
        header: FrameHeader,
        start: usize,
        end: usize,
    },
    /// A header whose payload of `len` bytes starts at `start` and is not all here yet.
    Partial {
        header: FrameHeader,
        start: usize,
        len: usize,
    },
}

/// Parses the frame header at the front of `pending` and checks what a server must refuse before reading
/// a payload: unmasked client frames, extension bits nobody negotiated (RFC 6455 5.1, 5.2), a length over
/// the limit.
fn front_frame(pending: &[u8], max_message_bytes: usize) -> Result<Front, WsFailure> {
    let mut cursor = Cursor::new(pending);
    let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(|_| WsFailure::Protocol)?
    else {
        return Ok(Front::Need);
    };
    if header.mask.is_none() || header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(WsFailure::Protocol);
    }
    let len = match usize::try_from(len) {
        Ok(len) if len <= max_message_bytes => len,
        _ => return Err(WsFailure::TooLarge),
    };
    let start = usize::try_from(cursor.position()).map_err(|_| WsFailure::Protocol)?;
    if pending.len() - start >= len {
        Ok(Front::Whole {
            header,
            start,
            end: start + len,
        })
    } else {
        Ok(Front::Partial { header, start, len })
    }
}

/// The events a socket would yield for `bytes` received at once, up to the first failure or close (and
/// without the end of stream: a trailing partial frame is simply left). For the fuzz target.
#[doc(hidden)]
pub fn decode(bytes: &[u8], max_message_bytes: usize) -> Vec<WsEvent> {
    let mut assembler = Assembler::new(max_message_bytes);
    let mut rest = bytes;
    let mut events = Vec::new();
    loop {
        match front_frame(rest, max_message_bytes) {
            Err(failure) => {
                events.push(WsEvent::Error(failure));
                return events;
            }
            Ok(Front::Need | Front::Partial { .. }) => return events,
            Ok(Front::Whole { header, start, end }) => {
                let mut payload = rest[start..end].to_vec();
                rest = &rest[end..];
                unmask(&mut payload, header.mask.unwrap_or_default());
                match assembler.assemble(header, payload) {
                    Ok(Some(event)) => {
                        let closed = matches!(event, WsEvent::Close(_));
                        events.push(event);
                        if closed {
                            return events;
                        }
                    }
                    Ok(None) => {}
                    Err(failure) => {
                        events.push(WsEvent::Error(failure));
                        return events;
                    }
                }
            }
        }
    }
}

/// A masked client frame (what a device sends), for tests and the fuzz target's round trip.
#[doc(hidden)]
pub fn client_frame(opcode: OpCode, is_final: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let header = FrameHeader {
        is_final,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: Some(mask),
    };
    let mut out = Vec::with_capacity(payload.len() + 14);
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut out);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
    out
}

fn text(bytes: Vec<u8>) -> Result<WsEvent, WsFailure> {
    String::from_utf8(bytes)
        .map(WsEvent::Text)
        .map_err(|_| WsFailure::Protocol)
}

/// A close frame's reason text (RFC 6455 5.5.1: empty, or a 2-byte code then UTF-8).
fn close_reason(payload: &[u8]) -> Result<Option<String>, WsFailure> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsFailure::Protocol),
        [_, _, reason @ ..] => std::str::from_utf8(reason)
            .map(|r| (!r.is_empty()).then(|| r.to_owned()))
            .map_err(|_| WsFailure::Protocol),
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Appends one unmasked server frame to `out`.
fn encode(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Encodes `frame`; true when it closes the socket.
fn encode_frame(out: &mut Vec<u8>, frame: OutFrame) -> bool {
    match frame {
        OutFrame::Text(text) => encode(out, OpCode::Data(Data::Text), text.as_bytes()),
        OutFrame::Binary(bytes) => encode(out, OpCode::Data(Data::Binary), &bytes),
        OutFrame::Ping => encode(out, OpCode::Control(Control::Ping), b""),
        OutFrame::Pong(bytes) => {
            let bytes = &bytes[..bytes.len().min(125)];
            encode(out, OpCode::Control(Control::Pong), bytes);
        }
        OutFrame::Close(code, description) => {
            let mut payload = u16::from(code).to_be_bytes().to_vec();
            // A close payload is a control frame: 125 bytes at most, cut on a character boundary.
            let mut end = description.len().min(123);
            while !description.is_char_boundary(end) {
                end -= 1;
            }
            payload.extend_from_slice(&description.as_bytes()[..end]);
            encode(out, OpCode::Control(Control::Close), &payload);
            return true;
        }
    }
    false
}

/// Writes the outbox's frames in order until a close frame, the end of the session, or a dead peer. Frames
/// already waiting go out in one write. The socket's place in the limits is given back when this ends.
pub async fn write_frames(
    mut wr: OwnedWriteHalf,
    mut outbox: mpsc::Receiver<Box<OutFrame>>,
    permit: Option<SocketPermit>,
) {
    let _permit = permit;
    loop {
        let Some(frame) = outbox.recv().await else {
            let mut buf = Vec::new();
            // The session actor is gone without an explicit close: close politely.
            encode_frame(
                &mut buf,
                OutFrame::Close(actix_ws::CloseCode::Normal, String::new()),
            );
            let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&buf)).await;
            let _ = wr.shutdown().await;
            return;
        };
        // A buffer per wake-up, not per socket: an idle socket keeps no write buffer.
        let mut buf = Vec::new();
        let mut closing = encode_frame(&mut buf, *frame);
        while !closing && buf.len() < 64 * 1024 {
            match outbox.try_recv() {
                Ok(frame) => closing = encode_frame(&mut buf, *frame),
                Err(_) => break,
            }
        }
        match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&buf)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        if closing {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: OpCode, is_final: bool, payload: &[u8]) -> Vec<u8> {
        client_frame(opcode, is_final, payload, [1, 2, 3, 4])
    }

    async fn reader_for(bytes: Vec<u8>, max: usize) -> (FrameReader, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(&bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let (rd, _wr) = server.into_split();
        (FrameReader::new(rd, &[], max), client)
    }

    /// What the socket reader yields for `bytes`, checked against the I/O-free [`decode`] of the same bytes.
    async fn events(bytes: Vec<u8>, max: usize) -> Vec<String> {
        let decoded: Vec<String> = decode(&bytes, max)
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        let (mut reader, _client) = reader_for(bytes, max).await;
        let mut out = Vec::new();
        while let Some(event) = reader.next_event().await {
            out.push(format!("{event:?}"));
        }
        assert_eq!(out, decoded, "socket reader and decode() disagree");
        out
    }

    #[actix_rt::test]
    async fn text_binary_fragments_and_control_frames() {
        let mut bytes = masked(OpCode::Data(Data::Text), true, "héllo".as_bytes());
        bytes.extend(masked(OpCode::Control(Control::Ping), true, b"p"));
        bytes.extend(masked(OpCode::Data(Data::Text), false, b"ab"));
        // A control frame may come between fragments.
        bytes.extend(masked(OpCode::Control(Control::Pong), true, b""));
        bytes.extend(masked(OpCode::Data(Data::Continue), false, b"cd"));
        bytes.extend(masked(OpCode::Data(Data::Continue), true, b"ef"));
        bytes.extend(masked(OpCode::Data(Data::Binary), true, &[0, 255]));
        bytes.extend(masked(
            OpCode::Control(Control::Close),
            true,
            b"\x03\xe8bye",
        ));
        bytes.extend(masked(OpCode::Data(Data::Text), true, b"after close"));
        assert_eq!(
            events(bytes, 1024).await,
            vec![
                "Text(\"héllo\")",
                "Ping([112])",
                "Pong",
                "Text(\"abcdef\")",
                "Binary(b\"\\0\\xff\")",
                "Close(Some(\"bye\"))",
            ]
        );
    }

    #[actix_rt::test]
    async fn a_large_payload_arrives_whole() {
        let big = "x".repeat(150_000);
        let bytes = masked(OpCode::Data(Data::Text), true, big.as_bytes());
        let got = events(bytes, 200_000).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), big.len() + "Text(\"\")".len());
    }

    #[actix_rt::test]
    async fn violations_end_the_stream_with_the_failure() {
        let unmasked = {
            let mut out = Vec::new();
            encode(&mut out, OpCode::Data(Data::Text), b"hi");
            out
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (unmasked, "Error(Protocol)"),
            (
                masked(OpCode::Data(Data::Text), true, &[0xff, 0xfe]),
                "Error(Protocol)",
            ),
            (
                masked(OpCode::Data(Data::Continue), true, b"x"),
                "Error(Protocol)",
            ),
            (
                masked(OpCode::Control(Control::Ping), false, b"x"),
                "Error(Protocol)",
            ),
            (
                masked(OpCode::Data(Data::Text), true, &[b'a'; 2000]),
                "Error(TooLarge)",
            ),
            (
                [
                    masked(OpCode::Data(Data::Text), false, &[b'a'; 600]),
                    masked(OpCode::Data(Data::Continue), true, &[b'a'; 600]),
                ]
                .concat(),
                "Error(TooLarge)",
            ),
            (
                masked(OpCode::Data(Data::Reserved(3)), true, b"x"),
                "Error(Protocol)",
            ),
        ];
        for (bytes, want) in cases {
            let mut with_more = bytes.clone();
            with_more.extend(masked(OpCode::Data(Data::Text), true, b"never read"));
            assert_eq!(
                events(with_more, 1024).await,
                vec![want.to_owned()],
                "{bytes:?}"
            );
        }
    }

    #[actix_rt::test]
    async fn written_frames_are_unmasked_and_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_rd, wr) = server.into_split();
        let (tx, rx) = mpsc::channel(8);
        tx.send(Box::new(OutFrame::Text("one".into())))
            .await
            .unwrap();
        tx.send(Box::new(OutFrame::Close(
            actix_ws::CloseCode::Policy,
            "é".repeat(100),
        )))
        .await
        .unwrap();
        write_frames(wr, rx, None).await;
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got)
            .await
            .unwrap();
        assert_eq!(&got[..5], &[0x81, 3, b'o', b'n', b'e']);
        assert_eq!(got[5], 0x88);
        let len = usize::from(got[6]);
        assert!(len <= 125, "control frame of {len} bytes");
        assert_eq!(&got[7..9], &1008u16.to_be_bytes());
        assert!(
            std::str::from_utf8(&got[9..]).is_ok(),
            "cut on a char boundary"
        );
        assert_eq!(got.len(), 7 + len);
    }
}
