//! `accolade-loadgen`: the load generator's command line. Prints a table, and writes a JSON
//! report and an SVG chart when asked.

use accolade_loadgen::{report, run, Options, Scenario};
use clap::Parser;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Plays realistic users against an Accolade server over WebSockets on loopback.")]
struct Args {
    /// Server WebSocket URL (loopback only); several, comma-separated, spread the connections
    /// over them in turn (the nodes of a cluster).
    #[arg(long, default_value = "ws://127.0.0.1:7300/v1/ws")]
    url: String,
    /// The tenant's token secret; the generator signs its own tokens.
    #[arg(long, default_value = accolade::config::DEMO_SECRET)]
    secret: String,
    #[arg(long, default_value = accolade::config::DEMO_TENANT)]
    tenant: String,
    #[arg(long, value_enum, default_value = "steady")]
    scenario: Scenario,
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Target events per second over all connections; 0 = as fast as possible.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds the scenario runs (bounded: at most 3600).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 0.8)]
    correct_rate: f64,
    /// Number of 127.0.0.x source addresses to spread connections over (1 to 250).
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Server process to sample CPU and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Distinct users for churn (default 10 x connections).
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Events per connection in spike and per phase of reconnect-storm.
    #[arg(long, default_value_t = 20)]
    burst: usize,
    /// slow-consumers: events/s each of the clients that stop reading sends, in both phases
    /// (default: its share of --rate; 0: its share, then as fast as the socket takes them).
    #[arg(long)]
    slow_rate: Option<f64>,
    /// The prefix of the users' ids (`<run-id>-u<n>`); default `lg<time of day>`, so every run
    /// has users of its own. A fixed one lets a script set the users up first (teams).
    #[arg(long)]
    run_id: Option<String>,
    /// Quick mode: 50 connections, 5 s, 2,000 events/s.
    #[arg(long)]
    quick: bool,
    /// Write every figure to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write a throughput and latency chart to this SVG file.
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut o = Options {
        url: a.url,
        secret: a.secret,
        tenant: a.tenant,
        scenario: a.scenario,
        connections: a.connections,
        rate: a.rate,
        duration: Duration::from_secs(a.duration.clamp(1, 3600)),
        correct_rate: a.correct_rate,
        sources: (1..=a.sources.clamp(1, 250)).map(|i| IpAddr::from([127, 0, 0, i])).collect(),
        server_pid: a.server_pid,
        users: a.users,
        burst: a.burst,
        slow_rate: a.slow_rate,
        ..Options::default()
    };
    if let Some(id) = a.run_id {
        o.run_id = id;
    }
    if a.quick {
        o.connections = 50;
        o.duration = Duration::from_secs(5);
        o.rate = 2000.0;
    }
    let r = run(o).await?;
    print!("{}", report::table(&r));
    if let Some(p) = a.json {
        std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
    }
    if let Some(p) = a.svg {
        std::fs::write(&p, report::svg(&r))?;
    }
    Ok(())
}
