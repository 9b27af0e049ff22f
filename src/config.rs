//! The server's one typed configuration: command-line flags, environment variables and an
//! optional TOML file, every field with a default and a doc line (which `--help` shows).

use clap::{parser::ValueSource, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The demo tenant's token secret. Only used when the demo is on, which by default it is only
/// on a loopback address.
pub const DEMO_SECRET: &str = "accolade-demo-secret";
pub const DEMO_TENANT: &str = "demo";
/// The demo tenant's API key, under the same loopback-only rule as the demo secret.
pub const DEMO_API_KEY: &str = "accolade-demo-api-key";

#[derive(Parser, Debug, Clone, Serialize, Deserialize)]
#[command(name = "accolade", version, about = "Real-time achievement server: badges, XP and levels pushed over WebSocket.")]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[arg(global = true, long, env = "ACCOLADE_BIND", default_value = "127.0.0.1:7300")]
    pub bind: SocketAddr,

    /// Directory for the sled database (created if missing).
    #[arg(global = true, long, env = "ACCOLADE_DATA_DIR", default_value = "accolade-data")]
    pub data_dir: PathBuf,

    /// Catalogue file (TOML, or JSON by extension); the embedded demo catalogue when absent.
    #[arg(global = true, long, env = "ACCOLADE_CATALOGUE")]
    pub catalogue: Option<PathBuf>,

    /// Optional TOML file with any of these settings; flags and environment variables win.
    #[arg(global = true, long, env = "ACCOLADE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Tenants as NAME:SECRET (repeat the flag, or comma-separate in the variable). The secret
    /// signs the HS256 tokens of that tenant's users. Before a subcommand, unlike every other
    /// flag: after `token`, `--tenant` names the token's tenant.
    #[arg(long = "tenant", env = "ACCOLADE_TENANTS", value_delimiter = ',')]
    pub tenants: Vec<String>,

    /// API keys as NAME:KEY (repeat, or comma-separate in the variable): the key gives full
    /// (admin) access to that tenant's HTTP API, and to nothing of any other tenant.
    #[arg(global = true, long = "api-key", env = "ACCOLADE_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<String>,

    /// Serve the demo page and `GET /demo/token` with the demo tenant: "auto" turns it on only
    /// on a loopback address, "on" anywhere (requires --allow-public-demo off loopback), "off".
    #[arg(global = true, long, env = "ACCOLADE_DEMO", default_value = "auto")]
    pub demo: String,

    /// Let the demo token endpoint run on a non-loopback address. Anyone could mint tokens.
    #[arg(global = true, long, env = "ACCOLADE_ALLOW_PUBLIC_DEMO")]
    pub allow_public_demo: bool,

    /// Seconds a client has to send a complete HTTP request head (the WebSocket handshake
    /// included) before the connection is closed: slow or stalled handshakes hold no socket.
    #[arg(global = true, long, default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds a client has to send a whole HTTP request body once its head has arrived (1 to
    /// 86,400; there is no "off"); past it the request is answered 408 and the connection
    /// closed. A full 8 MiB batch needs about 280 KB/s to make it.
    #[arg(global = true, long, default_value_t = 30)]
    pub body_timeout_secs: u64,

    /// The slowest a request body may arrive, in bytes per second, judged over each 5 s while
    /// more than 5 s of it is still owed (a smaller body, or a body's tail, has the deadline
    /// only); a slower one is answered 408 and its connection closed. 0 turns the floor off.
    #[arg(global = true, long, default_value_t = 1024)]
    pub min_body_bytes_per_sec: u64,

    /// Open connections in all (sockets and HTTP); past it new ones get 503. Keep it below the
    /// process's open-file limit.
    #[arg(global = true, long, default_value_t = 19_000)]
    pub max_connections: usize,

    /// Milliseconds the server stops accepting while `max_connections` are open, waiting for
    /// one to close, before it refuses the next with 503. Meanwhile new connections wait in the
    /// kernel's listen queue: in a reconnect storm the old sockets close a moment after the new
    /// ones arrive, and a client that could get in should not be told to go away. A server still
    /// full after the wait refuses at once until a connection closes.
    #[arg(global = true, long, default_value_t = 2_000)]
    pub accept_wait_ms: u64,

    /// Open connections from one source address; past it that address gets 503.
    #[arg(global = true, long, default_value_t = 2_000)]
    pub max_connections_per_address: usize,

    /// Largest client message accepted, in bytes; larger ones get a `too_large` error.
    #[arg(global = true, long, default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Messages a connection's outbox holds before the client counts as slow and is closed.
    /// A group commit releases the pushes of many events at once, so keep this well above
    /// `inflight_per_user` times the pushes one event can cause (about four).
    #[arg(global = true, long, default_value_t = 4096)]
    pub outbox_capacity: usize,

    /// Events per second a connection may send (token bucket refill rate).
    #[arg(global = true, long, default_value_t = 200.0)]
    pub rate_per_sec: f64,

    /// Burst size of the per-connection token bucket.
    #[arg(global = true, long, default_value_t = 400.0)]
    pub rate_burst: f64,

    /// Events of one connection in flight (received, not yet durable) before its socket stops
    /// being read.
    #[arg(global = true, long, default_value_t = 256)]
    pub inflight_per_user: usize,

    /// Socket events in flight across the whole server before sockets stop being read (each
    /// waits its turn, in order). Bounds the memory a server falling behind can fill with queued
    /// events, whatever the number of connections: without it, 19,000 connections could queue
    /// 256 each.
    #[arg(global = true, long, default_value_t = 100_000)]
    pub socket_inflight_events: u32,

    /// Connections one user may hold at once (tabs, devices).
    #[arg(global = true, long, default_value_t = 16)]
    pub connections_per_user: usize,

    /// Seconds a new connection has to send `hello`.
    #[arg(global = true, long, default_value_t = 10)]
    pub auth_timeout_secs: u64,

    /// Seconds between server pings.
    #[arg(global = true, long, default_value_t = 20)]
    pub ping_secs: u64,

    /// Seconds without any frame from the client before it is closed as idle.
    #[arg(global = true, long, default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Seconds an actor with no connection and no event waits before it persists and stops.
    #[arg(global = true, long, default_value_t = 120)]
    pub passivate_secs: u64,

    /// The most pushes a reconnecting client can catch up on; a larger gap is not recovered.
    #[arg(global = true, long, default_value_t = 300)]
    pub history_size: u64,

    /// How old (in hours) a missed push may be and still be recovered.
    #[arg(global = true, long, default_value_t = 24)]
    pub history_hours: u64,

    /// Accepted events between state snapshots (the event log is the durable truth in between).
    #[arg(global = true, long, default_value_t = 200)]
    pub snapshot_every: u64,

    /// Hours an accepted event (and so its id's deduplication) is kept; older events already
    /// in a snapshot are swept. 0 keeps them forever.
    #[arg(global = true, long, default_value_t = 30 * 24)]
    pub event_retention_hours: u64,

    /// Seconds between retention sweeps.
    #[arg(global = true, long, default_value_t = 3600)]
    pub retention_sweep_secs: u64,

    /// Milliseconds between two `progress` pushes for the same badge and user.
    #[arg(global = true, long, default_value_t = 2000)]
    pub progress_throttle_ms: u64,

    /// Milliseconds between leaderboard turns: periods that ended are closed, and watchers get
    /// `rank` and `top` pushes when theirs changed (so this is also their throttle).
    #[arg(global = true, long, default_value_t = 1000)]
    pub leaderboard_tick_ms: u64,

    /// Milliseconds between community-goal turns: goals past their end (and
    /// `--leaderboard-close-grace-ms`) are closed, and each tenant's sockets get
    /// `community_progress` for the goals that moved (so this is also its throttle).
    #[arg(global = true, long, default_value_t = 1000)]
    pub community_tick_ms: u64,

    /// Milliseconds between goal sweeps: goals past due are closed as missed, and assigners are
    /// told how their goals ended.
    #[arg(global = true, long, default_value_t = 500)]
    pub goal_tick_ms: u64,

    /// Milliseconds between expiry sweeps: a badge whose `valid_for` ran out while its user
    /// was away is taken and pushed (and notified) then, not at her next event.
    #[arg(global = true, long, default_value_t = 1000)]
    pub expiry_tick_ms: u64,

    /// Milliseconds after a period's end before it is closed, so that events which arrived
    /// before the end and are still being written are in its final standings.
    #[arg(global = true, long, default_value_t = 2000)]
    pub leaderboard_close_grace_ms: u64,

    /// Milliseconds a webhook endpoint has to answer a delivery before the attempt counts as
    /// failed.
    #[arg(global = true, long, default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,

    /// The first retry delay after a failed webhook delivery, in milliseconds; it doubles with
    /// each further failure of the endpoint (with jitter), up to `--webhook-retry-max-ms`.
    #[arg(global = true, long, default_value_t = 1000)]
    pub webhook_retry_base_ms: u64,

    /// The longest delay between two attempts to reach a webhook endpoint, in milliseconds.
    #[arg(global = true, long, default_value_t = 600_000)]
    pub webhook_retry_max_ms: u64,

    /// Attempts per webhook delivery before it is given up (logged as failed). The delay
    /// between attempts is the endpoint's backoff, so with the defaults a delivery to an
    /// endpoint that stays down is given up one to two hours after its first attempt.
    #[arg(global = true, long, default_value_t = 20)]
    pub webhook_max_attempts: u32,

    /// Failed attempts after which a webhook notification is set aside: it no longer holds up
    /// the endpoint's notifications about other users, and is retried on its own backoff
    /// (until `--webhook-max-attempts`), or at once when redriven through the API. The same
    /// user's later notifications wait behind it, so each user's notifications arrive in order.
    /// With the default backoff, three attempts hold the line about 2 to 4 seconds.
    #[arg(global = true, long, default_value_t = 3)]
    pub webhook_hold_attempts: u32,

    /// Seconds after which a webhook notification not yet delivered is given up without
    /// another attempt, so that the outbox of an endpoint that stays down holds at most this
    /// much. Default: three days.
    #[arg(global = true, long, default_value_t = 259_200)]
    pub webhook_give_up_after_secs: u64,

    /// A PEM file of extra root certificates that HTTPS webhook endpoints may chain to (a
    /// private CA), trusted besides the system's roots.
    #[arg(global = true, long)]
    pub webhook_ca_file: Option<PathBuf>,

    /// Finished deliveries kept in each webhook endpoint's log.
    #[arg(global = true, long, default_value_t = 1000)]
    pub webhook_log_keep: usize,

    /// Events accepted through `POST /v1/events` and not yet answered, across all requests.
    /// A batch that does not fit waits up to `--ingest-wait-ms`, then gets 503 `overloaded`.
    #[arg(global = true, long, default_value_t = 50_000)]
    pub ingest_inflight_events: u32,

    /// Milliseconds a batch waits for room under `--ingest-inflight-events`.
    #[arg(global = true, long, default_value_t = 5_000)]
    pub ingest_wait_ms: u64,

    /// Users a catalogue backfill re-evaluates per second at most, so it never starves live
    /// traffic.
    #[arg(global = true, long, default_value_t = 500)]
    pub backfill_users_per_sec: u64,

    /// Seconds to wait for connections and actors to drain at shutdown.
    #[arg(global = true, long, default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Seconds a disk operation (a group commit, a flush) may wait before `/healthz` answers
    /// 503: the server is up but cannot make anything durable, so it acknowledges nothing.
    #[arg(global = true, long, default_value_t = 10)]
    pub stall_unhealthy_secs: u64,

    /// Seconds a disk operation may wait before the process exits with status 75, so that a
    /// supervisor restarts it (sled can hang in a flush after a disk error; nothing
    /// acknowledged is lost by exiting). 0: never exit.
    #[arg(global = true, long, default_value_t = 60)]
    pub stall_exit_secs: u64,

    /// Seconds the server stays up after a write to the disk failed (a full disk) before the
    /// process exits with status 74, so that a supervisor restarts it from what is on disk.
    /// Meanwhile it serves nothing from storage: `/healthz` and `/readyz` answer 503, events
    /// are refused with `unavailable`. 0: exit at once.
    #[arg(global = true, long, default_value_t = 5)]
    pub write_failure_exit_secs: u64,

    /// Cluster mode (in progress, docs/cluster.md): the NATS servers to join, comma-separated
    /// `nats://host:port`. Each node serves the users of the partitions it owns, rebuilt from
    /// JetStream; events posted over HTTP reach the node that serves their user, while sockets
    /// and queries are served only by that node for now. Unset: standalone, with sled alone.
    #[arg(global = true, long, env = "ACCOLADE_CLUSTER")]
    pub cluster: Option<String>,

    /// This node's id in the cluster: letters, digits, `-` and `_`. Required with `--cluster`.
    #[arg(global = true, long, env = "ACCOLADE_NODE_ID")]
    pub node_id: Option<String>,

    /// Milliseconds a node that stopped answering keeps its partitions before the others take
    /// them over; it heartbeats every quarter of this.
    #[arg(global = true, long, default_value_t = 6_000)]
    pub cluster_lease_ms: u64,

    /// Batches a partition's changelog gathers before its owner compacts it (its records
    /// folded into a base, events past the retention left out, and what the base covers
    /// removed), so that taking a partition over reads its records once, not its history.
    /// 0 never compacts.
    #[arg(global = true, long, default_value_t = 2_000)]
    pub cluster_compact_batches: u64,

    /// How log lines are written: `text` for people, `json` (one object a line, with the
    /// request id of the request being handled) for log collectors.
    #[arg(global = true, long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Copies JetStream keeps of the cluster's streams and buckets (3 for three NATS servers).
    #[arg(global = true, long, default_value_t = 3)]
    pub cluster_replicas: usize,

    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Rebuild every stored user from the event log alone and report any difference from the
    /// stored state (run it with the server stopped; exits 1 if anything differs).
    Replay,
    /// Make the buckets and streams of a new cluster (`--cluster`, `--cluster-replicas`) and
    /// wait until each answers, then exit: run once before a new cluster's nodes start, so
    /// that none waits on JetStream electing leaders. Running it again changes nothing.
    ClusterInit,
    /// Print a token for a user of a tenant, signed with that tenant's secret.
    Token {
        /// The user id (the token's `sub`).
        user: String,
        /// The tenant; defaults to the demo tenant.
        #[arg(long, default_value = DEMO_TENANT)]
        tenant: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["accolade"])
    }
}

impl Config {
    /// Reads flags and environment, then fills every setting left at its default from the
    /// `--config` file if one is named.
    pub fn load() -> anyhow::Result<Config> {
        match Config::load_from(std::env::args_os()) {
            // Help, version and bad flags are clap's to print (help exits 0, errors 2).
            Err(e) => match e.downcast::<clap::Error>() {
                Ok(clap_error) => clap_error.exit(),
                Err(e) => Err(e),
            },
            ok => ok,
        }
    }

    /// `load` with explicit arguments (the first is the program name).
    pub fn load_from<I, T>(args: I) -> anyhow::Result<Config>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Config::command().try_get_matches_from(args)?;
        let mut cfg = Config::from_arg_matches(&matches)?;
        if let Some(path) = cfg.config.clone() {
            let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            let file: toml::Table = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let mut merged = toml::Table::try_from(&cfg)?;
            for (k, v) in file {
                // Unknown keys first: clap panics when asked about an argument it does not have.
                // (`catalogue` is absent from `merged` when unset, being optional.)
                if !merged.contains_key(&k) && k != "catalogue" {
                    anyhow::bail!("{}: unknown setting `{k}`", path.display());
                }
                // Clap names each argument after its field, so the file's key finds it directly.
                let from_default = matches!(matches.value_source(&k), None | Some(ValueSource::DefaultValue));
                if from_default {
                    merged.insert(k, v);
                }
            }
            let command = cfg.command.take();
            cfg = merged.try_into().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            cfg.command = command;
            cfg.config = Some(path);
        }
        Ok(cfg)
    }

    /// Whether the demo page and token endpoint are served, refusing an unsafe combination.
    pub fn demo_enabled(&self) -> anyhow::Result<bool> {
        let loopback = self.bind.ip().is_loopback();
        match self.demo.as_str() {
            "off" => Ok(false),
            "auto" => Ok(loopback),
            "on" if loopback || self.allow_public_demo => Ok(true),
            "on" => anyhow::bail!(
                "refusing to serve the demo token endpoint on non-loopback address {}: anyone could mint tokens; pass --allow-public-demo to do it anyway",
                self.bind
            ),
            other => anyhow::bail!("--demo must be auto, on or off, not `{other}`"),
        }
    }

    /// The tenants and their token secrets, the demo tenant included when the demo is on.
    pub fn tenant_secrets(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for t in &self.tenants {
            let (name, secret) = t.split_once(':').ok_or_else(|| anyhow::anyhow!("--tenant `{t}` must be NAME:SECRET"))?;
            if name.is_empty() || name.contains('\0') || secret.len() < 16 {
                anyhow::bail!("--tenant `{name}`: the name must be non-empty and the secret at least 16 characters");
            }
            out.push((name.to_string(), secret.to_string()));
        }
        if self.demo_enabled()? && !out.iter().any(|(n, _)| n == DEMO_TENANT) {
            out.push((DEMO_TENANT.into(), DEMO_SECRET.into()));
        }
        Ok(out)
    }

    /// The tenants' API keys, the demo tenant's included when the demo is on.
    pub fn api_keys(&self) -> anyhow::Result<Vec<(String, String)>> {
        let tenants = self.tenant_secrets()?;
        let mut out = Vec::new();
        for k in &self.api_keys {
            let (name, key) = k.split_once(':').ok_or_else(|| anyhow::anyhow!("--api-key for `{}` must be NAME:KEY", k.split(':').next().unwrap_or_default()))?;
            if !tenants.iter().any(|(t, _)| t == name) {
                anyhow::bail!("--api-key names tenant `{name}`, which no --tenant declares");
            }
            if key.len() < 16 {
                anyhow::bail!("--api-key for `{name}`: the key must be at least 16 characters");
            }
            out.push((name.to_string(), key.to_string()));
        }
        if self.demo_enabled()? && !out.iter().any(|(n, _)| n == DEMO_TENANT) {
            out.push((DEMO_TENANT.into(), DEMO_API_KEY.into()));
        }
        Ok(out)
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout_secs)
    }
    pub fn ping(&self) -> Duration {
        Duration::from_secs(self.ping_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    pub fn passivate_after(&self) -> Duration {
        Duration::from_secs(self.passivate_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_token_endpoint_stays_on_loopback_unless_told() {
        let on = |bind: &str, demo: &str, allow: bool| {
            let mut c = Config::default();
            c.bind = bind.parse().unwrap();
            c.demo = demo.into();
            c.allow_public_demo = allow;
            c.demo_enabled()
        };
        assert!(on("127.0.0.1:7300", "auto", false).unwrap());
        assert!(!on("0.0.0.0:7300", "auto", false).unwrap(), "auto is off away from loopback");
        let e = on("0.0.0.0:7300", "on", false).unwrap_err().to_string();
        assert!(e.contains("refusing") && e.contains("--allow-public-demo"), "{e}");
        assert!(on("0.0.0.0:7300", "on", true).unwrap());
        assert!(!on("127.0.0.1:7300", "off", false).unwrap());
        assert!(on("127.0.0.1:7300", "maybe", false).is_err());
    }

    #[test]
    fn flags_are_taken_after_a_subcommand_as_before_it() {
        let before = Config::load_from(["accolade", "--data-dir", "/tmp/d", "--history-size", "7", "replay"]).unwrap();
        let after = Config::load_from(["accolade", "replay", "--data-dir", "/tmp/d", "--history-size", "7"]).unwrap();
        for c in [&before, &after] {
            assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
            assert_eq!(c.history_size, 7);
            assert!(matches!(c.command, Some(Command::Replay)));
        }
        let t = Config::load_from(["accolade", "--tenant", "acme:s3cret", "token", "ann", "--tenant", "acme", "--data-dir", "/tmp/d"]).unwrap();
        assert_eq!(t.tenants, vec!["acme:s3cret".to_string()]);
        assert_eq!(t.data_dir, PathBuf::from("/tmp/d"));
        assert!(matches!(t.command, Some(Command::Token { ref tenant, .. }) if tenant == "acme"));
        assert!(Config::load_from(["accolade", "replay", "--no-such-flag"]).is_err());
    }

    #[test]
    fn a_config_file_fills_what_flags_leave_at_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accolade.toml");
        std::fs::write(&path, "history_size = 50\nrate_per_sec = 10.0\ndata_dir = \"/tmp/from-file\"\n").unwrap();
        let c = Config::load_from(["accolade", "--config", path.to_str().unwrap(), "--rate-per-sec", "99"]).unwrap();
        assert_eq!(c.history_size, 50, "from the file");
        assert_eq!(c.rate_per_sec, 99.0, "the flag wins over the file");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/from-file"));
        std::fs::write(&path, "histroy_size = 50\n").unwrap();
        let e = Config::load_from(["accolade", "--config", path.to_str().unwrap()]).unwrap_err().to_string();
        assert!(e.contains("unknown setting `histroy_size`"), "{e}");
        let e = Config::load_from(["accolade", "--tenant", "acme:short"]).unwrap().tenant_secrets().unwrap_err().to_string();
        assert!(e.contains("at least 16 characters"), "{e}");
        // API keys: the tenant must exist, the key is long enough, and the error never shows it.
        let e = Config::load_from(["accolade", "--api-key", "ghost:0123456789abcdef0"]).unwrap().api_keys().unwrap_err().to_string();
        assert!(e.contains("no --tenant declares") && !e.contains("0123456789abcdef0"), "{e}");
        let e = Config::load_from(["accolade", "--tenant", "acme:0123456789abcdef", "--api-key", "acme:short-key"]).unwrap().api_keys().unwrap_err().to_string();
        assert!(e.contains("at least 16") && !e.contains("short-key"), "{e}");
        let keys = Config::load_from(["accolade", "--tenant", "acme:0123456789abcdef", "--api-key", "acme:0123456789abcdef0"]).unwrap().api_keys().unwrap();
        assert!(keys.contains(&("acme".into(), "0123456789abcdef0".into())) && keys.iter().any(|(t, _)| t == DEMO_TENANT));
    }
}
