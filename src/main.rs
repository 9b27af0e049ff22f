//! The `accolade` binary: parse the configuration, then run the server until SIGINT or SIGTERM
//! (or run a one-off subcommand).

use accolade::config::{Command, Config};
use accolade::server;

// sled allocates and frees a node copy on every write; glibc's allocator spent a fifth of the
// persister's time on that (perf), mimalloc much less. It is built without transparent huge
// pages (Cargo.toml), which only made resident memory larger.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match config.log_format.as_str() {
        "text" => tracing_subscriber::fmt().with_env_filter(filter).init(),
        "json" => tracing_subscriber::fmt().json().with_current_span(true).with_span_list(false).with_env_filter(filter).init(),
        other => anyhow::bail!("log_format `{other}` is not `text` or `json`"),
    }
    match config.command.clone() {
        Some(Command::Token { user, tenant, ttl }) => {
            let keys = accolade::auth::Keys::new(&config.tenant_secrets()?);
            let token = keys.mint(&tenant, &user, accolade::auth::now_secs(), ttl).ok_or_else(|| anyhow::anyhow!("unknown tenant `{tenant}`"))?;
            println!("{token}");
            Ok(())
        }
        Some(Command::Replay) => replay(config).await,
        Some(Command::ClusterInit) => {
            let urls = config.cluster.as_deref().ok_or_else(|| anyhow::anyhow!("cluster-init needs --cluster: the NATS servers of the cluster to set up"))?;
            let client = accolade::cluster::connect(urls, std::time::Duration::from_secs(5)).await?;
            let ready = accolade::cluster::init(client, config.cluster_replicas.max(1)).await?;
            println!("cluster ready: {}", ready.join(" "));
            Ok(())
        }
        None | Some(Command::Serve) => {
            let listener = tokio::net::TcpListener::bind(config.bind).await.map_err(|e| anyhow::anyhow!("binding {}: {e}", config.bind))?;
            let shared = server::build(config).await?;
            // The binary, not the library, may end its process: a server built inside a test
            // only reports a stall on /healthz.
            let c = &shared.config;
            let limits = accolade::watchdog::Limits::from_secs(c.stall_unhealthy_secs, c.stall_exit_secs, Some(c.write_failure_exit_secs));
            accolade::watchdog::exit_when_due(shared.store.stats.disk.clone(), limits)?;
            tokio::spawn(reload_on_sighup(shared.clone()));
            let addr = listener.local_addr()?;
            tracing::info!(%addr, demo = shared.demo, "accolade listening{}", if shared.demo { format!("; open http://{addr}/") } else { String::new() });
            let store = shared.store.clone();
            let ran = server::run(listener, shared, shutdown_signal()).await;
            // A server stopped (SIGTERM) after a write failed exits as the watchdog would have,
            // so that a supervisor restarts it the same way.
            if let Some(why) = store.failure() {
                tracing::error!(status = accolade::watchdog::EXIT_WRITE_FAILED, error = why, "stopped after a write to the disk failed; restart the server once the disk has room (nothing acknowledged is lost)");
                std::process::exit(accolade::watchdog::EXIT_WRITE_FAILED);
            }
            ran
        }
    }
}

/// `accolade replay`: the log must rebuild exactly the stored state.
async fn replay(mut config: Config) -> anyhow::Result<()> {
    // The check reads this node's data dir only; joining the cluster would take partitions
    // from the running nodes.
    config.cluster = None;
    let shared = server::build(config).await?;
    let s = shared.clone();
    let report = tokio::task::spawn_blocking(move || accolade::replay::check_all(&s.store, &s.catalogues)).await??;
    println!("replayed {} users ({} events); {} skipped (log swept by retention); {} differences", report.users, report.events, report.skipped, report.differences.len());
    for d in &report.differences {
        println!("  {}/{}: {}", d.tenant, d.user, d.what);
    }
    if report.differences.is_empty() {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

/// SIGHUP re-reads the catalogue file through the same validation and versioning as the API;
/// an invalid file is logged and changes nothing.
async fn reload_on_sighup(shared: std::sync::Arc<server::Shared>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        match shared.catalogues.reload_file(accolade::clock::now_ms()).await {
            Ok(changed) if changed.is_empty() => tracing::info!("catalogue reload: nothing changed"),
            Ok(changed) => {
                for (tenant, cand) in changed {
                    tracing::info!(%tenant, version = cand.catalogue.version, "catalogue reloaded from the file");
                    // New or changed badges are backfilled, silently, as an API change would be.
                    if !cand.changed_badges.is_empty() || !cand.new_stats.is_empty() {
                        match shared.backfills.start(&tenant, &cand, false).await {
                            Ok(job) => tracing::info!(%tenant, job = job.id, "backfill started"),
                            Err(e) => tracing::error!(%tenant, error = %e, "backfill could not start"),
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "catalogue reload refused; the catalogue in force is unchanged"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: closing connections, persisting users");
}
