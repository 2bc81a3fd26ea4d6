//! The HTTP listener: actix-web for every request, with WebSocket upgrades handed to the lean device transport
//! ([`crate::devices::wire`]) once the app has accepted them.
//!
//! actix-http lets a server take over the connection of a request that asks for an upgrade. This listener
//! does that for every upgrade: it still runs the request through the same actix-web app (routing,
//! middleware, request ids, limits, the handlers' checks such as OCPP credentials), with an [`UpgradeSlot`]
//! in the request's extensions. A WebSocket handler that accepts fills the slot (see
//! [`transport`](crate::devices::transport)) and answers 101; the listener then writes the answer itself and
//! gives the bare TCP socket to the frame reader and writer, dropping actix-http's per-connection buffers.
//! Any other answer (a refusal, or an upgrade request to a plain route) is written as is and the connection
//! is closed.
//!
//! `DEVICE_TRANSPORT=actix-ws` serves upgrades inside actix-http instead (actix-ws), as before.

use std::cell::RefCell;
use std::fmt;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::body::MessageBody;
use actix_http::{h1, HttpMessage, HttpService, Request, Response, StatusCode};
use actix_rt::net::TcpStream;
use actix_server::Server;
use actix_service::{
    fn_factory, fn_service, map_config, IntoServiceFactory, Service, ServiceFactory,
    ServiceFactoryExt,
};
use actix_web::dev::AppConfig;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use crate::devices::transport::OutFrame;
use crate::devices::wire::{self, FrameReader};
use crate::limits::SocketPermit;

/// Connections the kernel may queue before they are accepted. `std::net::TcpListener::bind` asks for 128: in a
/// reconnect storm of thousands of devices the rest of the SYNs were dropped and retried after 1 s, then 3 s
/// (the kernel caps this at `net.core.somaxconn`, 4096 on current kernels).
const LISTEN_BACKLOG: i32 = 4096;

/// Binds `addr` (`host:port`) for a listener, with a backlog fit for reconnect storms.
///
/// # Errors
/// When the address does not resolve or cannot be bound.
pub fn bind(addr: &str) -> std::io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let mut last_err = None;
    for candidate in addr.to_socket_addrs()? {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(candidate),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // As actix-web's own bind does: a restarted node can take its port back while old connections of
        // the previous process linger in TIME_WAIT (it does not let two listeners share a port).
        socket.set_reuse_address(true)?;
        match socket
            .bind(&candidate.into())
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(()) => return Ok(socket.into()),
            Err(err) => last_err = Some(err),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// Put in the extensions of an upgrade request; an accepting WebSocket handler leaves its [`Plumbing`] here.
#[derive(Clone, Default)]
pub struct UpgradeSlot(Rc<RefCell<Option<Plumbing>>>);

impl UpgradeSlot {
    pub fn fill(&self, plumbing: Plumbing) {
        *self.0.borrow_mut() = Some(plumbing);
    }

    fn take(&self) -> Option<Plumbing> {
        self.0.borrow_mut().take()
    }
}

/// What an accepted socket needs once the 101 is written: where its frame reader goes, its outbox, its place
/// in the limits, its message size limit.
pub struct Plumbing {
    pub reader: oneshot::Sender<FrameReader>,
    pub outbox: mpsc::Receiver<Box<OutFrame>>,
    pub permit: Option<SocketPermit>,
    pub max_message_bytes: usize,
}

/// How a listener is run.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    pub name: &'static str,
    /// Time allowed for a request head (slowloris bound).
    pub request_timeout: Duration,
    /// Worker threads; `None` is one per core.
    pub workers: Option<usize>,
    /// WebSocket upgrades go to the lean transport (`DEVICE_TRANSPORT=lean`, the default).
    pub lean_sockets: bool,
}

/// Serves `factory`'s app on `listener` (signals left to the caller, 5 s shutdown timeout).
///
/// # Errors
/// When the listener cannot be registered with the server.
pub fn serve<F, I, S, B>(
    listener: TcpListener,
    factory: F,
    options: &ListenerOptions,
) -> std::io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let addr = listener.local_addr()?;
    let mut builder = Server::build().shutdown_timeout(5).disable_signals();
    if let Some(workers) = options.workers {
        builder = builder.workers(workers);
    }
    let timeout = options.request_timeout;
    let server = if options.lean_sockets {
        builder.listen(options.name, listener, move || {
            let app = app_factory(&factory, addr);
            let upgrade_app = app_factory(&factory, addr);
            let upgrade = fn_factory(move || {
                let init = upgrade_app.new_service(());
                async move {
                    let app = Rc::new(init.await?);
                    Ok::<_, S::InitError>(fn_service(
                        move |(req, framed): (Request, Framed<TcpStream, h1::Codec>)| {
                            let app = Rc::clone(&app);
                            async move {
                                take_over(app.as_ref(), req, framed).await;
                                Ok::<(), actix_http::Error>(())
                            }
                        },
                    ))
                }
            });
            HttpService::build()
                .client_request_timeout(timeout)
                .local_addr(addr)
                // Small frames and answers are latency-bound: do not let Nagle hold them for an ACK.
                .tcp_nodelay(true)
                .upgrade(upgrade)
                .finish(app)
                .tcp()
        })?
    } else {
        builder.listen(options.name, listener, move || {
            HttpService::build()
                .client_request_timeout(timeout)
                .local_addr(addr)
                .tcp_nodelay(true)
                .finish(app_factory(&factory, addr))
                .tcp()
        })?
    };
    Ok(server.run())
}

/// The app as a service factory of actix-http requests (what `HttpServer` builds internally).
fn app_factory<F, I, S, B>(
    factory: &F,
    addr: SocketAddr,
) -> impl ServiceFactory<
    Request,
    Config = (),
    Response = S::Response,
    Error = actix_web::HttpResponse,
    InitError = S::InitError,
    Service = impl Service<Request, Response = S::Response, Error = actix_web::HttpResponse>,
>
where
    F: Fn() -> I,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::Response: Into<Response<B>> + 'static,
    B: MessageBody + 'static,
{
    let app = factory()
        .into_factory()
        .map_err(|err| err.into().error_response());
    map_config(app, move |()| {
        AppConfig::__priv_test_new(false, addr.to_string(), addr)
    })
}

/// Runs an upgrade request through the app; on a 101 with a filled slot, hands the socket to the lean
/// transport, else writes the answer and closes.
async fn take_over<A, R, B>(app: &A, req: Request, framed: Framed<TcpStream, h1::Codec>)
where
    A: Service<Request, Response = R, Error = actix_web::HttpResponse>,
    R: Into<Response<B>>,
    B: MessageBody + 'static,
{
    let slot = UpgradeSlot::default();
    req.extensions_mut().insert(slot.clone());
    let response: Response<actix_http::body::BoxBody> = match app.call(req).await {
        Ok(response) => response.into().map_into_boxed_body(),
        Err(refusal) => refusal.into(),
    };
    let parts = framed.into_parts();
    let mut io = parts.io;
    let leftover = parts.read_buf;
    drop(parts.write_buf);
    let plumbing = slot.take();
    let (head, body) = response.into_parts();
    let status = head.status();
    let upgraded = status == StatusCode::SWITCHING_PROTOCOLS && plumbing.is_some();
    let body = if upgraded {
        Default::default()
    } else {
        actix_http::body::to_bytes(body).await.unwrap_or_default()
    };
    let mut out = Vec::with_capacity(256 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in head.headers() {
        if *name == actix_http::header::CONNECTION || *name == actix_http::header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if upgraded {
        out.extend_from_slice(b"connection: upgrade\r\n\r\n");
    } else {
        let _ = write!(
            out,
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        out.extend_from_slice(&body);
    }
    if io.write_all(&out).await.is_err() {
        return;
    }
    let Some(plumbing) = plumbing.filter(|_| upgraded) else {
        let _ = io.shutdown().await;
        return;
    };
    let (rd, wr) = io.into_split();
    let reader = FrameReader::new(rd, &leftover, plumbing.max_message_bytes);
    drop(leftover);
    if plumbing.reader.send(reader).is_err() {
        // The session is already gone; dropping the outbox receiver ends the writer at once.
        return;
    }
    actix_rt::spawn(wire::write_frames(wr, plumbing.outbox, plumbing.permit));
}
