//! A minimal keep-alive HTTP/1.1 client for the REST calls: one connection per caller (hyper's connection API),
//! so C callers hold exactly C connections and nothing is pooled or shared between them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where REST calls go: `http://host:port[/prefix]`.
#[derive(Debug)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    /// `host:port`, sent as the `Host` header.
    pub authority: String,
    /// Path prefix without a trailing slash (usually empty).
    pub base: String,
    auth: HeaderValue,
}

impl HttpTarget {
    pub async fn parse(url: &str, token: &str) -> Result<HttpTarget, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}`: only http:// URLs are supported"))?;
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(with_port.as_str())
            .await
            .map_err(|e| format!("cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("no address for {authority}"))?;
        let auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the API token is not a valid header value".to_owned())?;
        Ok(HttpTarget {
            addr,
            authority: authority.to_owned(),
            base: base.to_owned(),
            auth,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.base)
    }
}

/// A request that got no HTTP answer.
#[derive(Debug)]
pub enum HttpError {
    Connect(String),
    Io(String),
    Timeout,
}

impl HttpError {
    /// The key it is counted under.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Connect(_) => "http_connect",
            HttpError::Io(_) => "http_io",
            HttpError::Timeout => "http_timeout",
        }
    }

    pub fn message(&self) -> String {
        match self {
            HttpError::Connect(m) | HttpError::Io(m) => m.clone(),
            HttpError::Timeout => "no answer in time".into(),
        }
    }
}

pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// One keep-alive connection, re-opened when it breaks.
pub struct HttpConn {
    target: Arc<HttpTarget>,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

impl HttpConn {
    pub fn new(target: Arc<HttpTarget>, timeout: Duration) -> HttpConn {
        HttpConn {
            target,
            sender: None,
            timeout,
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<Response, HttpError> {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<Response, HttpError> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// One request with the connection's time-out (connect included). A time-out drops the connection, so a
    /// late answer can never be taken for the next request's.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response, HttpError> {
        let limit = self.timeout;
        match tokio::time::timeout(limit, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => {
                self.sender = None;
                Err(HttpError::Timeout)
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| HttpError::Connect(format!("{}: {e}", self.target.addr)))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            // Ends when the server or we close the connection; errors show up on the request side.
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response, HttpError> {
        // A kept-alive connection may have been closed by the server just now; a request that provably was
        // not sent (hyper hands it back) is retried once on a fresh connection. Anything else counts.
        let mut retried = false;
        loop {
            let mut sender = match self.sender.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.connect().await?,
            };
            if sender.ready().await.is_err() {
                if retried {
                    return Err(HttpError::Io("connection closed before sending".into()));
                }
                retried = true;
                continue;
            }
            let request = self.build(method.clone(), path, body.clone())?;
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| HttpError::Io(format!("reading the body: {e}")))?
                        .to_bytes();
                    self.sender = Some(sender);
                    return Ok(Response { status, body });
                }
                Err(mut err) => {
                    if err.take_message().is_some() && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(HttpError::Io(err.error().to_string()));
                }
            }
        }
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.target.base))
            .header(HOST, self.target.authority.as_str())
            .header(AUTHORIZATION, self.target.auth.clone());
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| HttpError::Io(format!("bad request: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_urls() {
        let t = HttpTarget::parse("http://127.0.0.1:7788/", "x")
            .await
            .expect("parse");
        assert_eq!(
            (t.authority.as_str(), t.base.as_str()),
            ("127.0.0.1:7788", "")
        );
        assert_eq!(t.addr.port(), 7788);
        let t = HttpTarget::parse("http://localhost:1/gw/", "x")
            .await
            .expect("parse");
        assert_eq!(t.base, "/gw");
        assert_eq!(t.url(), "http://localhost:1/gw");
        assert!(HttpTarget::parse("https://x:1", "x").await.is_err());
    }
}
