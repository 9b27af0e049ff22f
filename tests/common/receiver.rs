//! A webhook receiver on loopback for the tests, and the signature check a receiver makes.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Got {
    pub headers: axum::http::HeaderMap,
    pub body: String,
    pub json: Value,
    pub at: Instant,
    /// What the receiver answered.
    pub ok: bool,
}

/// A webhook receiver on loopback: records every request, and answers 500 while `failing`,
/// or for the notifications about the `poisoned` user. A request waits while the test holds
/// `gate` for writing.
#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<Mutex<Vec<Got>>>,
    pub failing: Arc<AtomicBool>,
    pub poisoned: Arc<Mutex<Option<String>>>,
    pub gate: Arc<tokio::sync::RwLock<()>>,
}

impl Receiver {
    pub async fn start() -> (Receiver, SocketAddr) {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> (Receiver, SocketAddr) {
        let r = Receiver::default();
        let app = r.app();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, addr)
    }

    pub fn app(&self) -> axum::Router {
        let state = self.clone();
        axum::Router::new()
            .route(
            "/hook",
            axum::routing::post(|axum::extract::State(r): axum::extract::State<Receiver>, headers: axum::http::HeaderMap, body: String| async move {
                let _open = r.gate.read().await;
                let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let poisoned = r.poisoned.lock().unwrap().clone();
                let ok = !r.failing.load(Ordering::SeqCst) && (poisoned.is_none() || json["user_id"].as_str() != poisoned.as_deref());
                r.got.lock().unwrap().push(Got { headers, body, json, at: Instant::now(), ok });
                if ok { axum::http::StatusCode::NO_CONTENT } else { axum::http::StatusCode::INTERNAL_SERVER_ERROR }
            }),
            )
            .with_state(state)
    }

    pub fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The requests answered 2xx.
    pub fn delivered(&self) -> Vec<Got> {
        self.got().into_iter().filter(|g| g.ok).collect()
    }

    /// Waits (at most 30 s) until `done` holds for what was received.
    pub async fn wait(&self, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            let got = self.got();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "receiver: {what} did not happen; got {:?}", got.iter().map(|g| &g.json).collect::<Vec<_>>());
        }
    }
}

/// Checks the `accolade-signature` header the way a receiver would: HMAC-SHA256 keyed with the
/// endpoint's secret over `"<t>.<body>"`, and `t` within five minutes of now.
pub fn verify(secret: &str, g: &Got) -> bool {
    let header = g.headers.get("accolade-signature").and_then(|h| h.to_str().ok()).unwrap_or_default();
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1 = Some(x.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if (chrono::Utc::now().timestamp() - t).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", g.body).as_bytes());
    let want: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    want == v1
}

