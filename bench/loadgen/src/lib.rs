//! Accolade's load generator: plays realistic users against a running server over real
//! WebSockets on loopback and measures what users feel (event -> ack, -> xp push, -> unlock
//! push), throughput, errors, and the server's CPU and memory.
//!
//! Every run is bounded in time and count, and only loopback (127.0.0.0/8) is accepted as a
//! target or a source address.

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod report;
mod scenarios;

use scenarios::connection;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Connections send at a steady target rate.
    Steady,
    /// Everyone connects at once and sends a burst (the "5 pm Friday" rush).
    Spike,
    /// Fresh users sending events chosen so that most of them unlock a badge.
    UnlockStorm,
    /// Every client drops mid-stream and resumes with `since`; checks nothing was missed.
    ReconnectStorm,
    /// 1% of clients stop reading; compares the others' latency before and after.
    SlowConsumers,
    /// Many distinct users pass through briefly, then come back after passivation.
    Churn,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub url: String,
    pub secret: String,
    pub tenant: String,
    pub scenario: Scenario,
    pub connections: usize,
    /// Target events per second over all connections (open loop); 0 = as fast as possible.
    pub rate: f64,
    pub duration: Duration,
    /// Share of problem answers that are correct.
    pub correct_rate: f64,
    /// Source addresses to spread connections over (all in 127.0.0.0/8).
    pub sources: Vec<IpAddr>,
    pub server_pid: Option<u32>,
    /// Distinct users for `churn` (default 10 x connections).
    pub users: usize,
    /// Events each connection sends in `spike` and per phase of `reconnect-storm`.
    pub burst: usize,
    /// How many connections are opened at once.
    pub connect_parallelism: usize,
    /// Prefix of user ids, so runs against the same data dir do not collide.
    pub run_id: String,
    /// `slow-consumers`: events per second each of the 1% of clients that stop reading sends,
    /// in both phases. `None`: the same share of `rate` as everyone. `Some(0.0)`: its share
    /// until it stops reading, then as fast as the socket takes them, a flood, which mostly
    /// measures the generator's own work of filling kernel buffers (bench/README.md, fix 21).
    pub slow_rate: Option<f64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: "ws://127.0.0.1:7300/v1/ws".into(),
            secret: accolade::config::DEMO_SECRET.into(),
            tenant: accolade::config::DEMO_TENANT.into(),
            scenario: Scenario::Steady,
            connections: 100,
            rate: 1000.0,
            duration: Duration::from_secs(10),
            correct_rate: 0.8,
            sources: vec!["127.0.0.1".parse().unwrap()],
            server_pid: None,
            users: 0,
            burst: 20,
            connect_parallelism: 256,
            run_id: format!("lg{}", chrono::Utc::now().format("%H%M%S%3f")),
            slow_rate: None,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Second {
    pub t: u64,
    pub sent: u64,
    pub acked: u64,
    pub pushes: u64,
    pub ack_p50_us: u64,
    pub ack_p99_us: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerSample {
    pub cpu_percent_avg: f64,
    pub rss_before_kib: u64,
    pub rss_connected_kib: u64,
    pub rss_peak_kib: u64,
    /// (RSS with every connection open - RSS before) / connections.
    pub bytes_per_connection: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub connections: usize,
    pub target_rate: f64,
    pub seconds: f64,
    pub sent: u64,
    pub acked: u64,
    pub duplicates: u64,
    pub pushes: u64,
    pub unlocks: u64,
    pub events_per_sec: f64,
    pub pushes_per_sec: f64,
    pub errors: BTreeMap<String, u64>,
    /// Pushes a client never saw (gaps in offsets), over all clients.
    pub missed_pushes: u64,
    /// `community_progress` frames received, over all clients (no offset, so not in `pushes`).
    #[serde(default)]
    pub community_pushes: u64,
    /// Reconnects whose welcome said `recovered: false`.
    pub not_recovered: u64,
    pub connect: Percentiles,
    pub ack: Percentiles,
    pub xp: Percentiles,
    pub unlock: Percentiles,
    /// Reconnect storm: from the first reconnect to the last client resumed.
    pub resume_all_ms: Option<u64>,
    /// Reconnect storm: clients that reconnected and received every push up to their welcome's
    /// offset. The others failed (see `errors`); `resume_all_ms` covers only these.
    pub resumed: Option<u64>,
    /// Slow consumers: the others' ack p99 before and while 1% stop reading.
    pub baseline_ack_p99_us: Option<u64>,
    pub slow_phase_ack_p99_us: Option<u64>,
    pub slow_closed: Option<u64>,
    /// Churn: first event of a fresh user, and of a user revived after passivation.
    pub fresh_first_ack: Option<Percentiles>,
    pub revived_first_ack: Option<Percentiles>,
    pub distinct_users: u64,
    pub server: Option<ServerSample>,
    pub timeline: Vec<Second>,
}

/// The longest the connect phase may take before the run goes on without the stragglers.
const CONNECT_PHASE: Duration = Duration::from_secs(120);

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Counters and per-second histograms shared by every connection task.
struct Shared {
    start: Instant,
    secs: Vec<Mutex<(u64, u64, u64, Histogram<u64>)>>,
    errors: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
    /// The same as `stop`, for tasks that wait for it instead of checking it.
    stopped: tokio::sync::watch::Sender<bool>,
    slow_phase: AtomicBool,
    slow_closed: AtomicU64,
    /// Reconnect storm: connections that have dropped their socket (or dropped out), counted so
    /// that everyone reconnects at the same moment, once the last one has dropped.
    away: tokio::sync::watch::Sender<usize>,
    /// The run's latency histograms. Connections keep raw samples and add them here once a
    /// second: a histogram of this range is about 150 KB, and nine per connection ran the
    /// generator out of memory (24 GB) at 19,000 connections.
    totals: Mutex<Hists>,
}

struct Hists {
    connect: Histogram<u64>,
    ack: Histogram<u64>,
    xp: Histogram<u64>,
    unlock: Histogram<u64>,
    slow_ack: Histogram<u64>,
    base_ack: Histogram<u64>,
    fresh: Histogram<u64>,
    revived: Histogram<u64>,
}

/// Latency samples (µs) a connection took since its last flush.
#[derive(Default)]
struct Lat(Vec<u64>);

impl Lat {
    fn record(&mut self, us: u64) {
        self.0.push(us);
    }

    /// Adds the samples to `h` and forgets them (keeping the allocation).
    fn drain_into(&mut self, h: &mut Histogram<u64>) {
        for &us in &self.0 {
            let _ = h.record(us);
        }
        self.0.clear();
    }
}

impl Shared {
    fn new(seconds: usize) -> Shared {
        Shared {
            start: Instant::now(),
            secs: (0..seconds + 120).map(|_| Mutex::new((0, 0, 0, hist()))).collect(),
            errors: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            stopped: tokio::sync::watch::channel(false).0,
            slow_phase: AtomicBool::new(false),
            slow_closed: AtomicU64::new(0),
            away: tokio::sync::watch::channel(0).0,
            totals: Mutex::new(Hists {
                connect: hist(),
                ack: hist(),
                xp: hist(),
                unlock: hist(),
                slow_ack: hist(),
                base_ack: hist(),
                fresh: hist(),
                revived: hist(),
            }),
        }
    }

    fn finish(&self) {
        self.stop.store(true, Ordering::Release);
        self.stopped.send_replace(true);
    }

    /// Resolves once the run has been told to stop.
    async fn until_stopped(&self) {
        let _ = self.stopped.subscribe().wait_for(|s| *s).await;
    }

    /// Reconnect storm: waits until all `n` connections have dropped, for at most `bound`.
    async fn until_all_away(&self, n: usize, bound: Duration) -> bool {
        tokio::time::timeout(bound, self.away.subscribe().wait_for(|a| *a >= n)).await.is_ok()
    }

    fn error(&self, kind: &str) {
        *self.errors.lock().unwrap().entry(kind.to_string()).or_default() += 1;
    }
}

/// What one connection measured.
struct Tally {
    sent: u64,
    acked: u64,
    duplicates: u64,
    pushes: u64,
    unlocks: u64,
    community: u64,
    missed: u64,
    not_recovered: u64,
    connect: Lat,
    ack: Lat,
    xp: Lat,
    unlock: Lat,
    slow_ack: Lat,
    base_ack: Lat,
    fresh: Lat,
    revived: Lat,
    // this second's local numbers, flushed to `Shared` when the second changes
    sec: u64,
    sec_sent: u64,
    sec_acked: u64,
    sec_pushes: u64,
    sec_hist: Lat,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            sent: 0,
            acked: 0,
            duplicates: 0,
            pushes: 0,
            unlocks: 0,
            community: 0,
            missed: 0,
            not_recovered: 0,
            connect: Lat::default(),
            ack: Lat::default(),
            xp: Lat::default(),
            unlock: Lat::default(),
            slow_ack: Lat::default(),
            base_ack: Lat::default(),
            fresh: Lat::default(),
            revived: Lat::default(),
            sec: 0,
            sec_sent: 0,
            sec_acked: 0,
            sec_pushes: 0,
            sec_hist: Lat::default(),
        }
    }

    fn tick(&mut self, sh: &Shared) {
        let now = sh.start.elapsed().as_secs();
        if now != self.sec {
            self.flush(sh);
            self.sec = now;
        }
    }

    fn flush(&mut self, sh: &Shared) {
        match sh.secs.get(self.sec as usize) {
            Some(slot) => {
                let mut s = slot.lock().unwrap();
                s.0 += self.sec_sent;
                s.1 += self.sec_acked;
                s.2 += self.sec_pushes;
                self.sec_hist.drain_into(&mut s.3);
            }
            // Past the timeline (the collection tail): the second's samples are not charted.
            None => self.sec_hist.0.clear(),
        }
        self.sec_sent = 0;
        self.sec_acked = 0;
        self.sec_pushes = 0;
        let mut h = sh.totals.lock().unwrap();
        self.connect.drain_into(&mut h.connect);
        self.ack.drain_into(&mut h.ack);
        self.xp.drain_into(&mut h.xp);
        self.unlock.drain_into(&mut h.unlock);
        self.slow_ack.drain_into(&mut h.slow_ack);
        self.base_ack.drain_into(&mut h.base_ack);
        self.fresh.drain_into(&mut h.fresh);
        self.revived.drain_into(&mut h.revived);
    }

    fn merge(&mut self, o: &Tally) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.duplicates += o.duplicates;
        self.pushes += o.pushes;
        self.unlocks += o.unlocks;
        self.community += o.community;
        self.missed += o.missed;
        self.not_recovered += o.not_recovered;
    }
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The servers of `--url`: one URL, or several separated by commas (the nodes of a cluster),
/// over which the connections are spread in turn.
fn targets(urls: &str) -> anyhow::Result<Vec<SocketAddr>> {
    urls.split(',').map(|u| target(u.trim())).collect()
}

/// The path of the first URL of `--url` (every server is asked at the same path).
fn path_of(urls: &str) -> &str {
    let first = urls.split(',').next().unwrap_or_default().trim();
    let rest = first.strip_prefix("ws://").unwrap_or(first);
    rest.find('/').map_or("/", |i| &rest[i..])
}

fn target(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| anyhow::anyhow!("--url must start with ws://"))?;
    let hostport = rest.split('/').next().unwrap_or_default().replace("localhost", "127.0.0.1");
    let addr: SocketAddr = hostport.parse().map_err(|_| anyhow::anyhow!("--url needs a numeric loopback address and port, e.g. ws://127.0.0.1:7300/v1/ws"))?;
    if !addr.ip().is_loopback() {
        anyhow::bail!("refusing to target {}: the load generator only sends to loopback (127.0.0.0/8, ::1)", addr.ip());
    }
    Ok(addr)
}

async fn open(opts: &Options, addr: SocketAddr, src: IpAddr) -> anyhow::Result<Ws> {
    open_with(opts, addr, src, false).await
}

/// `small_window`: a 4 KiB receive buffer, like a client on a poor link, so that a consumer
/// that stops reading backs up into the server quickly instead of into kernel buffers.
async fn open_with(opts: &Options, addr: SocketAddr, src: IpAddr, small_window: bool) -> anyhow::Result<Ws> {
    let sock = if src.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if small_window {
        sock.set_recv_buffer_size(4096)?;
    }
    sock.bind(SocketAddr::new(src, 0))?;
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    // A small read buffer, as the server uses: tungstenite zero-fills the whole buffer before
    // every socket read (snapview/tungstenite-rs#547), and at the default 128 KiB that memset
    // was 42% of the generator's CPU, taken from the server it shares the machine with.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4 * 1024);
    let url = format!("ws://{addr}{}", path_of(&opts.url));
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), MaybeTlsStream::Plain(stream), Some(config)).await?;
    Ok(ws)
}

/// The fields of a server message the generator reads.
#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    #[serde(default)]
    event_id: Option<&'a str>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    code: Option<&'a str>,
    #[serde(default)]
    duplicate: Option<bool>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    epoch: Option<&'a str>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 10_000) as f64 / 10_000.0 < p
    }
}

/// One simulated user on one connection.
struct Player {
    user: String,
    n: u64,
    rng: Rng,
    epoch: String,
    offset: u64,
    /// event id -> when it was sent; kept after the ack until its pushes arrive.
    sent: HashMap<String, Instant>,
    /// An event whose ack latency is wanted on its own (churn: a visit's first event).
    track: Option<String>,
    tracked_us: Option<u64>,
}

impl Player {
    fn new(user: String, seed: u64) -> Player {
        Player { user, n: 0, rng: Rng(seed | 1), epoch: String::new(), offset: 0, sent: HashMap::new(), track: None, tracked_us: None }
    }

    /// A realistic mix: mostly answers in a few exercises, some video, an article now and then.
    fn realistic(&mut self, correct_rate: f64) -> (&'static str, String) {
        let r = self.rng.next() % 100;
        if self.n == 0 {
            return ("login", "{}".into());
        }
        if r < 80 {
            let ex = self.rng.next() % 6;
            let ok = self.rng.chance(correct_rate);
            ("problem.answered", format!(r#"{{"exercise":"exercise-{ex}","correct":{ok},"seconds":{}}}"#, 2 + self.rng.next() % 20))
        } else if r < 95 {
            ("video.watched", format!(r#"{{"video":"v{}","playlist":"p{}","seconds":{}}}"#, self.rng.next() % 30, self.rng.next() % 4, 30 + self.rng.next() % 600))
        } else {
            ("article.read", format!(r#"{{"article":"a{}"}}"#, self.rng.next() % 50))
        }
    }

    /// Events a fresh user unlocks badges with, one after another.
    fn unlocking(&mut self) -> (&'static str, String) {
        match self.n % 4 {
            0 => ("video.watched", r#"{"video":"v1","playlist":"storm","seconds":1200}"#.into()),
            1 => ("video.watched", r#"{"video":"v2","playlist":"storm","seconds":600}"#.into()),
            2 => ("video.watched", r#"{"video":"v3","playlist":"storm","seconds":1800}"#.into()),
            _ => ("video.watched", r#"{"video":"v4","playlist":"other","seconds":3600}"#.into()),
        }
    }

    fn frame(&mut self, ty: &str, payload: &str) -> (String, String) {
        self.n += 1;
        let id = format!("{}-{}", self.user, self.n);
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let text = format!(r#"{{"type":"event","event_id":"{id}","event_type":"{ty}","occurred_at":"{at}","payload":{payload}}}"#);
        (id, text)
    }
}

async fn hello(ws: &mut Ws, token: &str, since: Option<(&str, u64)>) -> anyhow::Result<(String, u64, bool)> {
    let text = match since {
        Some((e, o)) => format!(r#"{{"type":"hello","token":"{token}","since":{{"epoch":"{e}","offset":{o}}}}}"#),
        None => format!(r#"{{"type":"hello","token":"{token}"}}"#),
    };
    ws.send(Message::text(text)).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let m: Msg = serde_json::from_str(&t)?;
                if m.ty == "welcome" {
                    return Ok((m.epoch.unwrap_or_default().to_string(), m.offset.unwrap_or(0), m.recovered.unwrap_or(false)));
                }
                anyhow::bail!("expected welcome, got {t}");
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => anyhow::bail!("closed before welcome"),
            Err(_) => anyhow::bail!("no welcome within 30 s"),
        }
    }
}

/// Handles one server message; returns false when the connection is gone.
/// `phase` says which of the slow-consumers comparison's histograms an ack goes to: `Some(false)`
/// before the 1% stop reading, `Some(true)` after, `None` for the 1% themselves, which are not
/// among the others whose latency is compared.
fn on_message(p: &mut Player, t: &mut Tally, sh: &Shared, text: &str, phase: Option<bool>) {
    let Ok(m) = serde_json::from_str::<Msg>(text) else {
        sh.error("undecodable");
        return;
    };
    let now = Instant::now();
    if let Some(off) = m.offset {
        if p.offset != 0 && off > p.offset + 1 {
            t.missed += off - p.offset - 1;
        }
        p.offset = p.offset.max(off);
        t.pushes += 1;
        t.sec_pushes += 1;
    }
    let since = |id: Option<&str>| id.and_then(|id| p.sent.get(id)).map(|s| now.duration_since(*s).as_micros() as u64);
    match m.ty {
        "ack" => {
            if let Some(us) = since(m.event_id) {
                if m.event_id.is_some() && m.event_id == p.track.as_deref() {
                    p.tracked_us = Some(us.max(1));
                }
                t.ack.record(us.max(1));
                t.sec_hist.record(us.max(1));
                match phase {
                    Some(true) => t.slow_ack.record(us.max(1)),
                    Some(false) => t.base_ack.record(us.max(1)),
                    None => {}
                }
            }
            t.acked += 1;
            t.sec_acked += 1;
            if m.duplicate == Some(true) {
                t.duplicates += 1;
            }
        }
        "xp" => {
            if let Some(us) = since(m.event_id) {
                t.xp.record(us.max(1));
            }
        }
        "unlock" => {
            t.unlocks += 1;
            if let Some(us) = since(m.event_id) {
                t.unlock.record(us.max(1));
            }
        }
        "error" => sh.error(m.code.unwrap_or("error")),
        "community_progress" => t.community += 1,
        _ => {}
    }
    // Forget send times a while after use so the map stays small.
    if p.sent.len() > 4096 {
        p.sent.retain(|_, s| now.duration_since(*s) < Duration::from_secs(10));
    }
}

/// Reads whatever the server has sent, waiting at most `wait`.
async fn drain(ws: &mut Ws, p: &mut Player, t: &mut Tally, sh: &Shared, wait: Duration) -> bool {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(txt)))) => on_message(p, t, sh, &txt, Some(false)),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return false,
            Ok(Some(Ok(_))) => {}
            Err(_) => return true,
        }
    }
}

/// Runs a scenario and returns its report.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let addrs = targets(&opts.url)?;
    if let Some(bad) = opts.sources.iter().find(|s| !s.is_loopback()) {
        anyhow::bail!("source address {bad} is not loopback");
    }
    let sh = Arc::new(Shared::new(opts.duration.as_secs() as usize + 60));
    let sampler = opts.server_pid.map(|pid| tokio::spawn(sample_server(pid, sh.clone())));
    let rss_before = opts.server_pid.and_then(rss_kib);
    let opts = Arc::new(opts);
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.connect_parallelism.max(1)));
    let connected = Arc::new(tokio::sync::Barrier::new(opts.connections + 1));
    let mut tasks = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        let (opts, sh, sem, connected, addr) = (opts.clone(), sh.clone(), sem.clone(), connected.clone(), addrs[i % addrs.len()]);
        tasks.push(tokio::spawn(async move { connection(i, opts, addr, sh, sem, connected).await }));
    }
    // Everyone is connected (or failed to): measure memory per connection now. Bounded, so a
    // connection task that died before the barrier cannot hang the run.
    if tokio::time::timeout(CONNECT_PHASE, connected.wait()).await.is_err() {
        sh.error("connect phase timed out");
    }
    let rss_connected = opts.server_pid.and_then(rss_kib);
    let started = Instant::now();
    let phase_end = started + opts.duration;
    if opts.scenario == Scenario::SlowConsumers {
        tokio::time::sleep_until((started + opts.duration / 2).into()).await;
        sh.slow_phase.store(true, Ordering::Release);
    }
    tokio::time::sleep_until(phase_end.into()).await;
    sh.finish();
    let mut total = Tally::new();
    let mut resume_ms: Option<u64> = None;
    let mut resumed_count = 0u64;
    let mut users = 0u64;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(120), t).await {
            Ok(Ok(Ok((tally, resumed, u)))) => {
                total.merge(&tally);
                if let Some(r) = resumed {
                    resume_ms = Some(resume_ms.unwrap_or(0).max(r));
                    resumed_count += 1;
                }
                users += u;
            }
            Ok(Ok(Err(e))) => sh.error(&format!("connection: {}", e.to_string().chars().take(60).collect::<String>())),
            Ok(Err(_)) | Err(_) => sh.error("task did not finish"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let server = match (sampler, rss_before) {
        (Some(s), Some(before)) => {
            s.abort();
            let (cpu, peak) = SAMPLES.lock().unwrap().clone();
            let connected = rss_connected.unwrap_or(before);
            Some(ServerSample {
                cpu_percent_avg: if cpu.is_empty() { 0.0 } else { cpu.iter().sum::<f64>() / cpu.len() as f64 },
                rss_before_kib: before,
                rss_connected_kib: connected,
                rss_peak_kib: peak.max(connected),
                bytes_per_connection: connected.saturating_sub(before) * 1024 / opts.connections.max(1) as u64,
            })
        }
        _ => None,
    };
    let timeline = sh
        .secs
        .iter()
        .enumerate()
        .take((seconds.ceil() as usize + 2).min(sh.secs.len()))
        .map(|(i, s)| {
            let s = s.lock().unwrap();
            let p = Percentiles::of(&s.3);
            Second { t: i as u64, sent: s.0, acked: s.1, pushes: s.2, ack_p50_us: p.p50, ack_p99_us: p.p99 }
        })
        .collect();
    let slow = opts.scenario == Scenario::SlowConsumers;
    let churn = opts.scenario == Scenario::Churn;
    let h = sh.totals.lock().unwrap();
    Ok(Report {
        scenario: format!("{:?}", opts.scenario),
        connections: opts.connections,
        target_rate: opts.rate,
        seconds,
        sent: total.sent,
        acked: total.acked,
        duplicates: total.duplicates,
        pushes: total.pushes,
        unlocks: total.unlocks,
        events_per_sec: total.acked as f64 / seconds,
        pushes_per_sec: total.pushes as f64 / seconds,
        errors: sh.errors.lock().unwrap().clone(),
        missed_pushes: total.missed,
        community_pushes: total.community,
        not_recovered: total.not_recovered,
        connect: Percentiles::of(&h.connect),
        ack: Percentiles::of(&h.ack),
        xp: Percentiles::of(&h.xp),
        unlock: Percentiles::of(&h.unlock),
        resume_all_ms: resume_ms,
        resumed: (opts.scenario == Scenario::ReconnectStorm).then_some(resumed_count),
        baseline_ack_p99_us: slow.then(|| Percentiles::of(&h.base_ack).p99),
        slow_phase_ack_p99_us: slow.then(|| Percentiles::of(&h.slow_ack).p99),
        slow_closed: slow.then(|| sh.slow_closed.load(Ordering::Relaxed)),
        fresh_first_ack: churn.then(|| Percentiles::of(&h.fresh)),
        revived_first_ack: churn.then(|| Percentiles::of(&h.revived)),
        distinct_users: users,
        server,
        timeline,
    })
}

static SAMPLES: Mutex<(Vec<f64>, u64)> = Mutex::new((Vec::new(), 0));

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Samples the server's CPU (percent of one core) and RSS once a second.
async fn sample_server(pid: u32, sh: Arc<Shared>) {
    *SAMPLES.lock().unwrap() = (Vec::new(), 0);
    let hz = 100.0; // USER_HZ on Linux
    let mut last = (Instant::now(), cpu_ticks(pid).unwrap_or(0));
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    while !sh.stop.load(Ordering::Acquire) {
        every.tick().await;
        let (now, ticks) = (Instant::now(), cpu_ticks(pid).unwrap_or(0));
        let pct = (ticks - last.1) as f64 / hz / now.duration_since(last.0).as_secs_f64() * 100.0;
        last = (now, ticks);
        let rss = rss_kib(pid).unwrap_or(0);
        let mut s = SAMPLES.lock().unwrap();
        s.0.push(pct);
        s.1 = s.1.max(rss);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several comma-separated URLs are several servers, each on loopback, asked at the first
    /// URL's path; anything off loopback is refused.
    #[test]
    fn several_urls_are_several_loopback_servers() {
        let a = targets("ws://127.0.0.1:7301/v1/ws, ws://127.0.0.2:7302/v1/ws").unwrap();
        assert_eq!(a, vec!["127.0.0.1:7301".parse::<SocketAddr>().unwrap(), "127.0.0.2:7302".parse().unwrap()]);
        assert_eq!(path_of("ws://127.0.0.1:7301/v1/ws,ws://127.0.0.1:7302/v1/ws"), "/v1/ws");
        assert!(targets("ws://127.0.0.1:7301/v1/ws,ws://10.0.0.1:7302/v1/ws").is_err());
    }
}
