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
        self.missed += o.missed;
        self.not_recovered += o.not_recovered;
    }
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

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
    let (ws, _) = tokio_tungstenite::client_async_with_config(opts.url.as_str(), MaybeTlsStream::Plain(stream), Some(config)).await?;
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
    let addr = target(&opts.url)?;
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
        let (opts, sh, sem, connected) = (opts.clone(), sh.clone(), sem.clone(), connected.clone());
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

fn token(opts: &Options, user: &str) -> String {
    accolade::auth::mint_with_secret(&opts.secret, &opts.tenant, user, accolade::auth::now_secs() + 24 * 3600)
}

/// Reconnect storm: counts its connection as away once, when it drops its socket or, failing
/// that, when the connection's task ends, so an early failure cannot hold the others back.
struct Away<'a> {
    sh: &'a Shared,
    done: bool,
}

impl Away<'_> {
    fn leave(&mut self) {
        if !self.done {
            self.done = true;
            self.sh.away.send_modify(|a| *a += 1);
        }
    }
}

impl Drop for Away<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// One connection's whole life in the scenario. Returns its tally, the time it took to resume
/// (reconnect storm) and how many distinct users it played.
async fn connection(
    i: usize,
    opts: Arc<Options>,
    addr: SocketAddr,
    sh: Arc<Shared>,
    sem: Arc<tokio::sync::Semaphore>,
    connected: Arc<tokio::sync::Barrier>,
) -> anyhow::Result<(Tally, Option<u64>, u64)> {
    let mut t = Tally::new();
    let mut away = Away { sh: &sh, done: opts.scenario != Scenario::ReconnectStorm };
    let src = opts.sources[i % opts.sources.len()];
    let user = format!("{}-u{i}", opts.run_id);
    let mut p = Player::new(user.clone(), (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let started = Instant::now();
    let ws = {
        let _permit = sem.acquire().await?;
        let slow_one = opts.scenario == Scenario::SlowConsumers && i % 100 == 99;
        match open_with(&opts, addr, src, slow_one).await {
            Ok(mut ws) => match hello(&mut ws, &token(&opts, &user), None).await {
                Ok((epoch, off, _)) => {
                    p.epoch = epoch;
                    p.offset = off;
                    t.connect.record(started.elapsed().as_micros().max(1) as u64);
                    Some(ws)
                }
                Err(e) => {
                    sh.error(&format!("hello: {}", e.to_string().chars().take(40).collect::<String>()));
                    None
                }
            },
            Err(e) => {
                sh.error(&format!("connect: {}", e.to_string().chars().take(40).collect::<String>()));
                None
            }
        }
    };
    let _ = tokio::time::timeout(CONNECT_PHASE, connected.wait()).await;
    let Some(mut ws) = ws else {
        t.flush(&sh);
        return Ok((t, None, 0));
    };
    let result = match opts.scenario {
        Scenario::Steady | Scenario::SlowConsumers => paced(i, &opts, &sh, &mut ws, &mut p, &mut t).await.map(|_| (None, 1)),
        Scenario::Spike => burst(&opts, &sh, &mut ws, &mut p, &mut t, false).await.map(|_| (None, 1)),
        Scenario::UnlockStorm => unlock_storm(i, &opts, addr, src, &sh, ws, &mut t).await.map(|u| (None, u)),
        Scenario::ReconnectStorm => reconnect_storm(&opts, addr, src, &sh, ws, &mut p, &mut t, &mut away).await.map(|r| (r, 1)),
        Scenario::Churn => churn(i, &opts, addr, src, &sh, ws, &mut t).await.map(|u| (None, u)),
    };
    t.flush(&sh);
    let (resumed, users) = result?;
    Ok((t, resumed, users))
}

/// Open loop at this connection's share of the target rate until the run stops.
async fn paced(i: usize, opts: &Options, sh: &Shared, ws: &mut Ws, p: &mut Player, t: &mut Tally) -> anyhow::Result<()> {
    let slow_one = opts.scenario == Scenario::SlowConsumers && i % 100 == 99;
    // A slow consumer with its own rate keeps it for the whole run, so that the two phases
    // carry the same load and differ only in its reading.
    let per_conn = match opts.slow_rate {
        Some(r) if slow_one && r > 0.0 => r,
        _ if opts.rate > 0.0 => opts.rate / opts.connections as f64,
        _ => 0.0,
    };
    let period = if per_conn > 0.0 { Duration::from_secs_f64(1.0 / per_conn) } else { Duration::from_micros(200) };
    // Start each connection at a different point of its period so sends spread evenly.
    let offset = period.mul_f64((i as f64 * 0.618_034) % 1.0);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        if sh.stop.load(Ordering::Acquire) {
            break;
        }
        let slow_phase = sh.slow_phase.load(Ordering::Acquire);
        if slow_one && slow_phase {
            // A consumer that stops reading and goes on sending: its pushes pile up at the
            // server, which must close it (4000) once its outbox is full, without slowing
            // anyone else down. Its sends fail once the server has closed the socket.
            if opts.slow_rate != Some(0.0) {
                ticker.tick().await;
            }
            if sh.stop.load(Ordering::Acquire) {
                break;
            }
            let (ty, payload) = p.realistic(opts.correct_rate);
            let (_, text) = p.frame(ty, &payload);
            match tokio::time::timeout(Duration::from_millis(200), ws.send(Message::text(text))).await {
                Ok(Err(_)) => {
                    sh.slow_closed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Ok(())) => t.sent += 1,
                Err(_) => {} // the socket is full; look at the stop flag and try again
            }
            continue;
        }
        tokio::select! {
            _ = ticker.tick() => {
                let (ty, payload) = p.realistic(opts.correct_rate);
                let (id, text) = p.frame(ty, &payload);
                p.sent.insert(id, Instant::now());
                ws.send(Message::text(text)).await?;
                t.sent += 1;
                t.sec_sent += 1;
                t.tick(sh);
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(txt))) => {
                    on_message(p, t, sh, &txt, (!slow_one).then_some(slow_phase));
                    t.tick(sh);
                }
                Some(Ok(Message::Close(f))) => {
                    sh.error(&format!("closed {}", f.map(|f| u16::from(f.code)).unwrap_or(0)));
                    return Ok(());
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    sh.error("connection lost");
                    return Ok(());
                }
            }
        }
    }
    // Collect the answers to what was sent, so acked == sent on a healthy server.
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.acked < t.sent && Instant::now() < deadline {
        if !drain(ws, p, t, sh, Duration::from_millis(200)).await {
            break;
        }
    }
    Ok(())
}

/// Sends `burst` events at once, then collects their answers.
async fn burst(opts: &Options, sh: &Shared, ws: &mut Ws, p: &mut Player, t: &mut Tally, unlocking: bool) -> anyhow::Result<()> {
    for _ in 0..opts.burst {
        let (ty, payload) = if unlocking { p.unlocking() } else { p.realistic(opts.correct_rate) };
        let (id, text) = p.frame(ty, &payload);
        p.sent.insert(id, Instant::now());
        ws.feed(Message::text(text)).await?;
        t.sent += 1;
        t.sec_sent += 1;
    }
    ws.flush().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.acked < t.sent && Instant::now() < deadline {
        if !drain(ws, p, t, sh, Duration::from_millis(500)).await {
            sh.error("connection lost");
            break;
        }
        t.tick(sh);
    }
    // Pushes follow the ack of the last event; give them a moment.
    drain(ws, p, t, sh, Duration::from_millis(100)).await;
    Ok(())
}

/// Fresh users, one after another on this connection, each sending the unlocking events.
async fn unlock_storm(i: usize, opts: &Options, addr: SocketAddr, src: IpAddr, sh: &Shared, mut ws: Ws, t: &mut Tally) -> anyhow::Result<u64> {
    let mut round = 0u64;
    let mut o = opts.clone();
    o.burst = 4;
    loop {
        let user = format!("{}-storm{i}-{round}", opts.run_id);
        if round > 0 {
            ws = open(opts, addr, src).await?;
            hello(&mut ws, &token(opts, &user), None).await?;
        } else {
            // The first connection was opened as another user; switch to a fresh one.
            ws.close(None).await.ok();
            ws = open(opts, addr, src).await?;
            hello(&mut ws, &token(opts, &user), None).await?;
        }
        let mut p = Player::new(user, round + 1);
        burst(&o, sh, &mut ws, &mut p, t, true).await?;
        ws.close(None).await.ok();
        round += 1;
        if sh.stop.load(Ordering::Acquire) {
            return Ok(round);
        }
    }
}

/// Sends a burst and drops the connection without reading its pushes; then everyone
/// reconnects with `since` at once and must receive every push it missed. Returns the time it
/// took to resume, or `None` when the replay stopped short.
#[allow(clippy::too_many_arguments)]
async fn reconnect_storm(opts: &Options, addr: SocketAddr, src: IpAddr, sh: &Shared, mut ws: Ws, p: &mut Player, t: &mut Tally, away: &mut Away<'_>) -> anyhow::Result<Option<u64>> {
    burst(opts, sh, &mut ws, p, t, false).await?;
    // The second burst is sent and the socket dropped at once: its pushes are missed.
    for _ in 0..opts.burst {
        let (ty, payload) = p.realistic(opts.correct_rate);
        let (_, text) = p.frame(ty, &payload);
        ws.feed(Message::text(text)).await?;
        t.sent += 1;
    }
    ws.flush().await?;
    drop(ws);
    away.leave();
    // Wait for everyone to drop, then reconnect together: that is the storm. The server may
    // still be working through the bursts sent just before the drops; a client has resumed
    // when it holds every push up to its welcome, so that work counts in the resume time.
    if !sh.until_all_away(opts.connections, CONNECT_PHASE).await {
        sh.error("storm: not every client dropped in time");
    }
    let started = Instant::now();
    let mut ws = open(opts, addr, src).await?;
    let (_, welcome_offset, recovered) = hello(&mut ws, &token(opts, &p.user), Some((&p.epoch.clone(), p.offset))).await?;
    if !recovered {
        t.not_recovered += 1;
    }
    // Everything up to the welcome's offset is replayed right behind the welcome.
    while p.offset < welcome_offset {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(txt)))) => on_message(p, t, sh, &txt, Some(false)),
            Ok(Some(Ok(_))) => {}
            _ => {
                sh.error("replay incomplete");
                return Ok(None);
            }
        }
    }
    let resumed = started.elapsed().as_millis() as u64;
    // Events of the dropped burst that were still in flight push live now; read them too.
    drain(&mut ws, p, t, sh, Duration::from_millis(300)).await;
    Ok(Some(resumed))
}

/// Many users pass through: each visit connects as a user, sends a few events, leaves. The
/// second pass revisits the same users after the server passivated them.
async fn churn(i: usize, opts: &Options, addr: SocketAddr, src: IpAddr, sh: &Shared, first: Ws, t: &mut Tally) -> anyhow::Result<u64> {
    drop(first);
    let users_total = if opts.users > 0 { opts.users } else { opts.connections * 10 };
    let mine: Vec<usize> = (i..users_total).step_by(opts.connections).collect();
    let mut visited = 0u64;
    let half = opts.duration / 2;
    let start = Instant::now();
    for pass in 0..2 {
        if pass == 1 {
            // Leave time for passivation before coming back (or until the run stops).
            tokio::select! {
                _ = tokio::time::sleep_until((start + half).into()) => {}
                _ = sh.until_stopped() => {}
            }
        }
        let mut revisited = 0;
        for &u in &mine {
            // The second pass always brings back at least one user, however late it starts.
            if sh.stop.load(Ordering::Acquire) && pass == 1 && revisited > 0 {
                break;
            }
            revisited += pass;
            let user = format!("{}-churn{u}", opts.run_id);
            let mut ws = open(opts, addr, src).await?;
            hello(&mut ws, &token(opts, &user), None).await?;
            let mut p = Player::new(user, u as u64 + 7 + pass * 1000);
            p.n = pass * 100; // distinct event ids on the second pass
            let mut o = opts.clone();
            o.burst = 3;
            p.track = Some(format!("{}-{}", p.user, p.n + 1));
            burst(&o, sh, &mut ws, &mut p, t, false).await?;
            // The first ack of the visit is the one that paid for loading (or creating) the user.
            if let Some(us) = p.tracked_us {
                if pass == 0 { t.fresh.record(us) } else { t.revived.record(us) }
            }
            ws.close(None).await.ok();
            if pass == 0 {
                visited += 1;
            }
        }
    }
    Ok(visited)
}
