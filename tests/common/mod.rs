//! Test harness: a real server on 127.0.0.1:0 with a temporary data dir, and a WebSocket client
//! that speaks the protocol the way a browser would.
#![allow(dead_code)]

pub mod answers;
pub mod nats;
pub mod receiver;

use accolade::config::{Config, DEMO_SECRET, DEMO_TENANT};
use accolade::server::{self, Shared};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct TestServer {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.data_dir = dir.to_path_buf();
    c.demo = "on".into();
    c
}

impl TestServer {
    pub async fn start(dir: &Path) -> TestServer {
        Self::start_with(dir, |_| {}).await
    }

    pub async fn start_with(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = test_config(dir);
        tweak(&mut cfg);
        let listener = tokio::net::TcpListener::bind(cfg.bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = server::build(cfg).await.expect("server builds");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(server::run(listener, shared.clone(), async move {
            let _ = rx.await;
        }));
        TestServer { addr, shared, dir: dir.to_path_buf(), stop: Some(tx), handle: Some(handle) }
    }

    /// Graceful shutdown, as on SIGTERM; waits until the server has drained.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap().unwrap();
        // Stopped actors drop their handles on the server's parts (and so on the database) a
        // moment after they end; a restart in this process needs the database closed, so this
        // waits until the handle kept here is the last one.
        let store = self.shared.store.clone();
        drop(self);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while store.handles() > 1 {
            assert!(tokio::time::Instant::now() < deadline, "{} handles on the database remain after shutdown", store.handles() - 1);
            tick.tick().await;
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(&self.url(), &token(user), None).await
    }
}

pub fn token(user: &str) -> String {
    accolade::auth::mint_with_secret(DEMO_SECRET, DEMO_TENANT, user, accolade::auth::now_secs() + 3600)
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn event(id: &str, ty: &str, payload: Value) -> Value {
    json!({ "type": "event", "event_id": id, "event_type": ty, "occurred_at": now_rfc3339(), "payload": payload })
}

pub fn answer(id: &str, exercise: &str, correct: bool) -> Value {
    event(id, "problem.answered", json!({ "exercise": exercise, "correct": correct, "seconds": 3 }))
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
}

impl Client {
    /// Connects without sending hello.
    pub async fn raw(url: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        tokio_tungstenite::connect_async(url).await.expect("websocket connects").0
    }

    pub async fn connect(url: &str, token: &str, since: Option<Value>) -> Client {
        let mut ws = Self::raw(url).await;
        let mut hello = json!({ "type": "hello", "token": token });
        if let Some(s) = since {
            hello["since"] = s;
        }
        ws.send(Message::text(hello.to_string())).await.unwrap();
        let mut c = Client { ws, welcome: Value::Null };
        let w = c.next().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c.welcome = w;
        c
    }

    pub async fn send(&mut self, v: &Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, t: String) {
        self.ws.send(Message::text(t)).await.unwrap();
    }

    /// The next JSON message, or panics after 10 s.
    pub async fn next(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await.expect("a message within 10 s").expect("stream open").expect("no error");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(f) => return json!({ "type": "closed", "code": f.map(|f| u16::from(f.code)) }),
                _ => continue,
            }
        }
    }

    /// The next message that is not a progress push.
    pub async fn next_main(&mut self) -> Value {
        loop {
            let m = self.next().await;
            if m["type"] != "progress" {
                return m;
            }
        }
    }

    /// Reads until a message of `ty` arrives, returning everything read on the way.
    pub async fn until(&mut self, ty: &str) -> Vec<Value> {
        let mut out = vec![];
        loop {
            let m = self.next().await;
            let done = m["type"] == ty;
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Reads until the close frame; returns its code.
    pub async fn closed(&mut self) -> Option<u64> {
        loop {
            let m = self.next().await;
            if m["type"] == "closed" {
                return m["code"].as_u64();
            }
        }
    }

    pub fn since(&self, offset: u64) -> Value {
        json!({ "epoch": self.welcome["epoch"], "offset": offset })
    }
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A second tenant, beside the demo one, for cross-tenant tests.
pub const ACME: &str = "acme";
pub const ACME_SECRET: &str = "acme-token-secret-0123456789";
pub const ACME_KEY: &str = "acme-api-key-0123456789";
pub const DEMO_KEY: &str = accolade::config::DEMO_API_KEY;

/// Adds the `acme` tenant with its API key.
pub fn two_tenants(c: &mut Config) {
    c.tenants = vec![format!("{ACME}:{ACME_SECRET}")];
    c.api_keys = vec![format!("{ACME}:{ACME_KEY}")];
}

/// A small HTTP client for the API, with a tenant's key.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub key: Option<String>,
    pub http: reqwest::Client,
}

/// An HTTP client for the tests. reqwest is built with rustls but no crypto provider of its
/// own (the server's webhooks choose ring, see Cargo.toml), so the provider is installed first:
/// a test process that never builds a server in-process would otherwise panic here.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

impl Api {
    pub fn new(server: &TestServer, key: &str) -> Api {
        Api { base: format!("http://{}", server.addr), key: Some(key.to_string()), http: http_client() }
    }

    /// The demo tenant's API on a server binary listening on loopback `port`.
    pub fn demo_at(port: u16) -> Api {
        Api { base: format!("http://127.0.0.1:{port}"), key: Some(DEMO_KEY.into()), http: http_client() }
    }

    pub fn with_key(&self, key: Option<&str>) -> Api {
        Api { key: key.map(str::to_string), ..self.clone() }
    }

    /// Sends a request; returns the status and the body as JSON (or as a JSON string if it
    /// is not JSON).
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        // A server that never answers fails the test instead of hanging it.
        let mut r = self.http.request(method.parse().unwrap(), format!("{}{}", self.base, path)).timeout(Duration::from_secs(60));
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        let res = r.send().await.expect("request sent");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn raw(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let mut r = self.http.request(method.parse().unwrap(), format!("{}{}", self.base, path)).body(body).header("content-type", "application/json");
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        let res = r.send().await.expect("request sent");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    /// Polls `GET path` (which must answer 200) until `done` says so, for at most `secs`.
    pub async fn wait_for(&self, path: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let (st, v) = self.get(path).await;
            assert_eq!(st, 200, "{path}: {v}");
            if done(&v) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "{path} did not get there: {v}");
        }
    }

    /// Posts a batch and asserts it was taken (200).
    pub async fn ingest(&self, events: Vec<Value>) -> Value {
        let (s, v) = self.call("POST", "/v1/events", Some(&json!({ "events": events }))).await;
        assert_eq!(s, 200, "{v}");
        v
    }
}

/// An event in the HTTP ingest contract.
pub fn http_event(id: &str, user: &str, ty: &str, payload: Value) -> Value {
    json!({ "event_id": id, "user_id": user, "event_type": ty, "occurred_at": now_rfc3339(), "payload": payload })
}

pub fn http_answer(id: &str, user: &str, exercise: &str, correct: bool) -> Value {
    http_event(id, user, "problem.answered", json!({ "exercise": exercise, "correct": correct, "seconds": 3 }))
}

// ---------------------------------------------------------------------------------------------
// The real binary, for crash, signal and storage-fault tests.
// ---------------------------------------------------------------------------------------------

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills the server when dropped, so a failing assertion never leaves it running (it would
/// hold the test's output pipe open and hang the run). `lines` carries its log lines.
pub struct Server(pub Child, pub tokio::sync::mpsc::UnboundedReceiver<String>);

impl Server {
    pub fn kill9(&mut self) {
        self.0.kill().unwrap(); // SIGKILL
        self.0.wait().unwrap();
    }

    /// Waits (at most 20 s) for a log line containing `text`.
    pub async fn line(&mut self, text: &str) -> String {
        let wait = async {
            while let Some(l) = self.1.recv().await {
                if l.contains(text) {
                    return l;
                }
            }
            panic!("the server exited before logging `{text}`")
        };
        tokio::time::timeout(Duration::from_secs(20), wait).await.unwrap_or_else(|_| panic!("no log line with `{text}` within 20 s"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary and returns once it logs that it is listening (waiting on that event,
/// not polling the port). Its output keeps being drained so the pipe never fills.
pub async fn start(dir: &std::path::Path, port: u16) -> Server {
    start_with(dir, port, &[]).await
}

pub async fn start_with(dir: &std::path::Path, port: u16, extra: &[&str]) -> Server {
    start_wrapped(dir, port, extra, None).await
}

/// Starts the binary through `bash -c '<setup>; exec ...'` when `setup` is given (resource
/// limits for storage-fault tests, say).
pub async fn start_wrapped(dir: &std::path::Path, port: u16, extra: &[&str], setup: Option<&str>) -> Server {
    let bin = env!("CARGO_BIN_EXE_accolade");
    let mut cmd = match setup {
        None => Command::new(bin),
        Some(s) => {
            let mut c = Command::new("bash");
            c.args(["-c", &format!("{s}; exec \"$0\" \"$@\""), bin]);
            c
        }
    };
    let mut child = cmd
        .args(["--bind", &format!("127.0.0.1:{port}"), "--data-dir", dir.to_str().unwrap(), "--rate-per-sec", "100000", "--rate-burst", "100000"])
        .args(extra)
        // `ACCOLADE_TEST_LOG` says more when a test is run to find out why it fails.
        .env("RUST_LOG", std::env::var("ACCOLADE_TEST_LOG").unwrap_or_else(|_| "warn,accolade=info".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server binary starts");
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (ready, listening) = tokio::sync::oneshot::channel();
    let (lines, rx) = tokio::sync::mpsc::unbounded_channel();
    let err_lines = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut ready = Some(ready);
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("accolade listening")
                && let Some(r) = ready.take()
            {
                let _ = r.send(());
            }
            let _ = lines.send(line);
        }
    });
    // What the server says on stderr (why it exited, a panic) goes into the test's own output,
    // shown when the test fails, and to `lines` like the rest.
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[server {port}] {line}");
            let _ = err_lines.send(line);
        }
    });
    let mut server = Server(child, rx);
    // A bound, not a speed check: a cluster node may wait for JetStream to elect its leaders.
    let started = tokio::time::timeout(Duration::from_secs(60), listening).await;
    if !matches!(started, Ok(Ok(()))) {
        let mut said = Vec::new();
        while let Ok(Some(l)) = tokio::time::timeout(Duration::from_secs(2), server.1.recv()).await {
            said.push(l);
        }
        let status = server.0.try_wait();
        panic!("the server on port {port} did not say it listens within 60 s (exit: {status:?}); it said:\n{}", said.join("\n"));
    }
    server
}

/// A catalogue with one extra board, `sprint`: correct answers in a custom period ending at
/// `ends`, whose top two get the `sprint-winner` badge.
pub fn sprint_catalogue(ends: &str) -> String {
    format!(
        "{}\n[[badges]]\nid = \"sprint-winner\"\nname = \"Sprint Winner\"\ntier = \"gold\"\nxp = 100\nrule = {{ kind = \"awarded\" }}\n\n\
         [[leaderboards]]\nid = \"sprint\"\nmetric = \"count\"\nevent = \"problem.answered\"\nwhen = {{ correct = true }}\nperiod = \"custom\"\n\
         starts = \"2026-01-01T00:00:00Z\"\nends = \"{ends}\"\naward = {{ badge = \"sprint-winner\", top = 2 }}\n",
        accolade::core::catalogue::DEMO_CATALOGUE
    )
}
