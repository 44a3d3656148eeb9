//! The bench's peers: the admin API, a protocol agent and protocol viewers, frame
//! encoding and the process-wide microsecond clock the latency figures use.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use guruconnect_client::{Connection, Receiver, Sender};
use guruconnect_proto::{self as proto, Codec, Envelope, Payload};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Microseconds since the first call in this process (a monotonic clock shared by the
/// bench's agent and viewers, so receive − send is the added latency).
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// One encoded `VideoFrame` envelope.
pub fn video_frame(data: &Bytes, sequence: u64, capture_us: u64, keyframe: bool) -> Bytes {
    Envelope {
        seq: sequence,
        payload: Some(Payload::VideoFrame(proto::VideoFrame {
            codec: Codec::RawZstd as i32,
            display_id: 0,
            width: 1920,
            height: 1080,
            rects: Vec::new(),
            data: data.clone(),
            keyframe,
            sequence,
            capture_timestamp_us: capture_us,
            ..Default::default()
        })),
    }
    .to_bytes()
}

/// A payload of `len` bytes that does not compress to nothing.
pub fn payload(len: usize) -> Bytes {
    let mut state: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A signed-in admin.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// `POST /api/auth/login` as `admin`.
    pub async fn login(base: &str, password: &str) -> Result<Self> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        let body = post(
            &http,
            &format!("{base}/api/auth/login"),
            None,
            &json!({ "username": "admin", "password": password }),
        )
        .await
        .context("admin login failed")?;
        Ok(Self {
            http,
            base: base.to_owned(),
            token: str_field(&body, "token")?,
        })
    }

    /// Issues a per-agent key for a new machine id (`POST /api/machines/{id}/keys`).
    pub async fn agent_key(&self) -> Result<String> {
        let agent_id = uuid::Uuid::new_v4();
        let body = post(
            &self.http,
            &format!("{}/api/machines/{agent_id}/keys", self.base),
            Some(&self.token),
            &json!({ "label": "relay-bench", "hostname": "relay-bench" }),
        )
        .await
        .context("issuing an agent key failed")?;
        str_field(&body, "agent_key")
    }

    /// `PUT` of a JSON body to `path` as the admin.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        let response = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        json_of(response).await
    }

    /// `POST` without a body to `path` as the admin; the answer's body is not read.
    pub async fn post_empty(&self, path: &str) -> Result<()> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("POST {path}: HTTP {}", response.status());
        }
        Ok(())
    }

    /// `GET` of `path` as the admin.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        json_of(response).await
    }

    /// Mints a viewer token (`POST /api/sessions/{id}/viewer-token`).
    pub async fn viewer_token(&self, session_id: &str) -> Result<String> {
        let body = post(
            &self.http,
            &format!("{}/api/sessions/{session_id}/viewer-token", self.base),
            Some(&self.token),
            &json!({}),
        )
        .await
        .context("minting a viewer token failed")?;
        str_field(&body, "token")
    }
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    body: &Value,
) -> Result<Value> {
    let mut request = http.post(url).json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    json_of(request.send().await?).await
}

async fn json_of(response: reqwest::Response) -> Result<Value> {
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("HTTP {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

fn str_field(body: &Value, name: &str) -> Result<String> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("response has no `{name}`"))
}

/// Connects an agent, sends its hello and waits for `SessionInfo`; returns the connection
/// and the session id.
pub async fn hello(
    base: &str,
    credential: &str,
    machine_uid: &str,
) -> Result<(Connection, String)> {
    let mut conn = guruconnect_client::connect_agent(base, credential).await?;
    conn.send(Payload::AgentHello(proto::AgentHello {
        protocol_version: guruconnect_proto::PROTOCOL_VERSION,
        agent_id: String::new(),
        machine_uid: machine_uid.to_owned(),
        hostname: "relay-bench".to_owned(),
        os: "linux".to_owned(),
        os_version: String::new(),
        agent_version: "bench".to_owned(),
        codecs: vec![Codec::RawZstd as i32],
        displays: Vec::new(),
        capabilities: Vec::new(),
    }))
    .await?;
    let session_id = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(Payload::SessionInfo(info)) = conn.recv().await?.payload {
                return Ok::<_, anyhow::Error>(info.session_id);
            }
        }
    })
    .await
    .context("no SessionInfo within 30 s")??;
    Ok((conn, session_id))
}

/// A streaming agent: its sending half, and a task that reads what the relay sends it.
pub struct Agent {
    /// Sending half.
    pub tx: Sender,
    /// Session id from `SessionInfo`.
    pub session_id: String,
    /// Set when the relay asks for a refresh (a viewer dropped frames or joined).
    pub refresh: Arc<AtomicBool>,
    streaming: watch::Receiver<bool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Connects with a fresh per-agent key.
    pub async fn connect(api: &Api, base: &str) -> Result<Self> {
        let key = api.agent_key().await?;
        let (conn, session_id) = hello(base, &key, &uuid::Uuid::new_v4().to_string()).await?;
        let (tx, rx) = conn.split();
        let refresh = Arc::new(AtomicBool::new(false));
        let (stream_tx, streaming) = watch::channel(false);
        let reader = tokio::spawn(read_agent(rx, stream_tx, refresh.clone()));
        Ok(Self {
            tx,
            session_id,
            refresh,
            streaming,
            reader,
        })
    }

    /// Waits for `StartStream` (sent by the relay once a viewer watches).
    pub async fn wait_streaming(&mut self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(10), self.streaming.wait_for(|s| *s))
            .await
            .context("no StartStream within 10 s")??;
        Ok(())
    }

    /// Closes the agent's socket.
    pub async fn close(mut self) {
        let _ = self.tx.close().await;
        self.reader.abort();
    }
}

async fn read_agent(mut rx: Receiver, streaming: watch::Sender<bool>, refresh: Arc<AtomicBool>) {
    while let Ok(envelope) = rx.recv().await {
        match envelope.payload {
            Some(Payload::StartStream(_)) => {
                let _ = streaming.send(true);
            }
            Some(Payload::StopStream(_)) => {
                let _ = streaming.send(false);
            }
            Some(Payload::RefreshRequest(_)) => refresh.store(true, Ordering::Relaxed),
            _ => {}
        }
    }
}

/// A joined viewer: both halves (the sender is kept so the socket stays whole).
pub struct Viewer {
    /// Sending half, kept so the socket stays whole (the scenarios only read).
    _tx: Sender,
    /// Receiving half.
    pub rx: Receiver,
}

impl Viewer {
    /// Mints a token, connects and waits for the relay's `SessionState`, which proves the
    /// viewer is in the session.
    pub async fn join(api: &Api, base: &str, session_id: &str) -> Result<Self> {
        let token = api.viewer_token(session_id).await?;
        let mut conn = guruconnect_client::connect_viewer(base, session_id, &token).await?;
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(Payload::SessionState(_)) = conn.recv().await?.payload {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        })
        .await
        .context("no SessionState within 10 s")??;
        let (tx, rx) = conn.split();
        Ok(Self { _tx: tx, rx })
    }
}

/// The video frame in a received message, if it is one.
pub fn as_video(bytes: Bytes) -> Option<proto::VideoFrame> {
    match Envelope::from_bytes(bytes).ok()?.payload {
        Some(Payload::VideoFrame(frame)) => Some(frame),
        _ => None,
    }
}
