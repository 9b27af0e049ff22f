//! A NATS JetStream cluster for the tests: three servers on loopback from the pinned binary
//! that `scripts/nats-server` installs, each fsyncing before it acknowledges.

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The pinned `nats-server`, installed by the project's own script if it is not yet.
pub fn nats_server() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nats-server");
    let out = Command::new(&script).stderr(Stdio::inherit()).output().expect("scripts/nats-server runs");
    assert!(out.status.success(), "scripts/nats-server failed: {}", out.status);
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Three NATS servers clustered on loopback, each killed when this is dropped.
pub struct Cluster {
    servers: Vec<Option<Child>>,
    confs: Vec<PathBuf>,
    bin: PathBuf,
    pub urls: Vec<String>,
    /// Dropped last, after the servers are killed.
    _turn: Turn,
}

/// One NATS cluster at a time in a test process. Two at once (six servers fsyncing every
/// message on one disk, beside two sets of nodes) slowed leader elections past the tests' 3 s
/// leases often enough to fail CI now and then; one at a time the cluster tests took 320 s
/// here instead of 180 s, well within the suite's budget.
pub struct Turn;

/// Whether a cluster holds the turn, and the signal that it was given back.
static BUSY: (std::sync::Mutex<bool>, std::sync::Condvar) = (std::sync::Mutex::new(false), std::sync::Condvar::new());

impl Turn {
    /// Waits until the cluster before this one is dropped.
    pub fn take() -> Turn {
        let (lock, given_back) = &BUSY;
        let mut busy = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = given_back.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (lock, given_back) = &BUSY;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = false;
        given_back.notify_one();
    }
}

/// The servers are killed when the cluster is dropped (a `Child` is not), before the turn is
/// given back: a test that left its three servers running would slow every test after it.
impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.servers.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    pub fn start(dir: &Path) -> Cluster {
        let turn = Turn::take();
        let bin = nats_server();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports.iter().map(|(_, c)| format!("nats://127.0.0.1:{c}")).collect();
        let mut servers = Vec::new();
        let mut confs = Vec::new();
        for (i, (client, cluster)) in ports.iter().enumerate() {
            let store = dir.join(format!("n{i}"));
            // `sync_interval: always`: each server fsyncs a message before it counts towards
            // the acknowledgement (2.10 and later; 2.9 refuses the setting).
            let conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client}\njetstream {{ store_dir: {store:?}, sync_interval: always }}\ncluster {{ name: accolade, listen: 127.0.0.1:{cluster}, routes: [{}] }}\n",
                routes.join(", ")
            );
            let file = dir.join(format!("n{i}.conf"));
            std::fs::write(&file, conf).unwrap();
            let child = Command::new(&bin).arg("-c").arg(&file).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("nats-server starts");
            servers.push(Some(child));
            confs.push(file);
        }
        Cluster { servers, confs, bin, urls: ports.iter().map(|(c, _)| format!("nats://127.0.0.1:{c}")).collect(), _turn: turn }
    }

    /// Starts a killed server again, on its ports and its store.
    pub fn restart(&mut self, name: &str) {
        let i: usize = name.trim_start_matches('n').parse().unwrap();
        assert!(self.servers[i].is_none(), "{name} still runs");
        let child = Command::new(&self.bin).arg("-c").arg(&self.confs[i]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("nats-server starts");
        self.servers[i] = Some(child);
    }

    /// The process ids of the servers running now.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().flatten().map(|c| c.id()).collect()
    }

    /// SIGKILL, as a machine dying would.
    pub fn kill(&mut self, name: &str) {
        let i: usize = name.trim_start_matches('n').parse().unwrap();
        let mut c = self.servers[i].take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Waits until the servers have elected JetStream's meta leader (account info is answered
    /// only by it), so that nodes started now create their streams without waiting for it.
    pub async fn ready(&self) {
        let js = async_nats::jetstream::new(self.connect().await);
        until_ok("JetStream's account info", || js.query_account()).await;
    }

    pub async fn connect(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self.urls.iter().map(|u| u.parse().unwrap()).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2)).connect(addrs.clone()).await {
                Ok(c) => return c,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "no NATS server answered: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Retries `f` until it succeeds, for at most 30 s: a cluster that is electing a leader (at
/// start, or after one died) refuses for a moment.
pub async fn until_ok<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("{what} still failing after 30 s: {e}"),
        }
    }
}

