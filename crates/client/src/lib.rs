//! Rust client for the GuruConnect protocol, both sides: an agent dials `/ws/agent` with
//! its credential, a viewer dials `/ws/viewer` with a viewer token. Both then exchange
//! [`Envelope`]s, one per binary WebSocket message.
//!
//! Used by the agent, the native viewer, the integration tests and the benchmarks;
//! [`files`] moves files as a viewer.

#![forbid(unsafe_code)]

pub mod files;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use guruconnect_proto::{Envelope, Payload};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The WebSocket library, for matching on [`ClientError::Transport`].
pub use tokio_tungstenite::tungstenite;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the upgrade with an HTTP status (401, 403, 404, 409…).
    #[error("server refused the connection: HTTP {status}: {body}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Response body (the error envelope).
        body: String,
    },
    /// The server closed the socket.
    #[error("connection closed by the server ({code}: {reason})")]
    Closed {
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// A message did not decode.
    #[error("malformed message from the server")]
    Malformed(#[from] prost::DecodeError),
    /// The URL or credential could not form a request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Transport failure.
    #[error("websocket error: {0}")]
    Transport(#[from] tungstenite::Error),
}

/// Result alias.
pub type ClientResult<T> = Result<T, ClientError>;

/// Converts `http://host` / `https://host` bases to `ws://` / `wss://`.
pub fn ws_base(server: &str) -> String {
    let trimmed = server.trim_end_matches('/');
    if let Some(rest) = trimmed.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = trimmed.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        trimmed.to_owned()
    }
}

fn config(max_message: usize) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_message);
    config.max_frame_size = Some(max_message);
    config
}

/// Makes ring the process's TLS provider (once) so `wss://` works whatever other crates
/// enable in rustls.
fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means another provider is already the default: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

async fn dial(request: http::Request<()>, max_message: usize) -> ClientResult<Socket> {
    install_tls_provider();
    match tokio_tungstenite::connect_async_with_config(request, Some(config(max_message)), true)
        .await
    {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err(ClientError::Rejected { status, body })
        }
        Err(e) => Err(e.into()),
    }
}

/// Dials `/ws/agent` presenting `credential` (per-agent key, support code or shared key)
/// as `Authorization: Bearer`.
pub async fn connect_agent(server: &str, credential: &str) -> ClientResult<Connection> {
    let url = format!("{}/ws/agent", ws_base(server));
    let mut request = url
        .into_client_request()
        .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
    let value = http::HeaderValue::from_str(&format!("Bearer {credential}")).map_err(|_| {
        ClientError::InvalidRequest("credential is not a valid header value".into())
    })?;
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, value);
    // Frames from the relay to the agent are small; allow the viewer cap plus headroom.
    Ok(Connection::new(
        dial(request, guruconnect_proto::MAX_AGENT_MESSAGE).await?,
    ))
}

/// Dials `/ws/viewer` for `session_id` with a viewer token.
pub async fn connect_viewer(
    server: &str,
    session_id: &str,
    token: &str,
) -> ClientResult<Connection> {
    connect_viewer_with(server, session_id, token, true).await
}

/// [`connect_viewer`]; without `video` the agent streams nothing for this viewer (remote
/// terminals only).
pub async fn connect_viewer_with(
    server: &str,
    session_id: &str,
    token: &str,
    video: bool,
) -> ClientResult<Connection> {
    let url = format!(
        "{}/ws/viewer?session_id={}&token={}{}",
        ws_base(server),
        urlencode(session_id),
        urlencode(token),
        if video { "" } else { "&video=0" }
    );
    let request = url
        .into_client_request()
        .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
    // Video frames can be large: accept up to the agent cap.
    Ok(Connection::new(
        dial(request, guruconnect_proto::MAX_AGENT_MESSAGE).await?,
    ))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One established protocol connection.
pub struct Connection {
    sink: Sender,
    stream: Receiver,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection { .. }")
    }
}

/// Sending half of a connection.
pub struct Sender {
    inner: SplitSink<Socket, Message>,
    seq: u64,
}

/// Receiving half of a connection.
pub struct Receiver {
    inner: SplitStream<Socket>,
}

impl Connection {
    fn new(socket: Socket) -> Self {
        let (sink, stream) = socket.split();
        Self {
            sink: Sender {
                inner: sink,
                seq: 0,
            },
            stream: Receiver { inner: stream },
        }
    }

    /// Sends one payload.
    pub async fn send(&mut self, payload: Payload) -> ClientResult<()> {
        self.sink.send(payload).await
    }

    /// Sends raw bytes as one binary message (tests use this for malformed input).
    pub async fn send_raw(&mut self, bytes: Bytes) -> ClientResult<()> {
        self.sink.send_raw(bytes).await
    }

    /// Receives the next envelope; `Err(Closed)` when the server closed the socket.
    pub async fn recv(&mut self) -> ClientResult<Envelope> {
        self.stream.recv().await
    }

    /// Closes the socket politely.
    pub async fn close(mut self) -> ClientResult<()> {
        self.sink.close().await
    }

    /// Splits into independently usable halves.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sink, self.stream)
    }
}

impl Sender {
    /// Sends one payload in an envelope.
    pub async fn send(&mut self, payload: Payload) -> ClientResult<()> {
        self.seq += 1;
        let envelope = Envelope {
            seq: self.seq,
            payload: Some(payload),
        };
        self.send_raw(envelope.to_bytes()).await
    }

    /// Sends one pre-encoded envelope (benchmarks reuse encoded frames).
    pub async fn send_raw(&mut self, bytes: Bytes) -> ClientResult<()> {
        self.inner.send(Message::Binary(bytes)).await?;
        Ok(())
    }

    /// Sends a close frame.
    pub async fn close(&mut self) -> ClientResult<()> {
        self.inner.close().await?;
        Ok(())
    }
}

impl Receiver {
    /// Receives the next envelope, skipping control frames.
    pub async fn recv(&mut self) -> ClientResult<Envelope> {
        Ok(Envelope::from_bytes(self.recv_raw().await?)?)
    }

    /// Receives the next binary message undecoded.
    pub async fn recv_raw(&mut self) -> ClientResult<Bytes> {
        loop {
            match self.inner.next().await {
                Some(Ok(Message::Binary(bytes))) => return Ok(bytes),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    return Err(ClientError::Closed { code, reason });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(ClientError::Closed {
                        code: 1006,
                        reason: "connection lost".into(),
                    });
                }
            }
        }
    }
}
