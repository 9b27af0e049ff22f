//! The `accolade` binary: parse the configuration, then run the server until SIGINT or SIGTERM
//! (or run a one-off subcommand).

use accolade::config::{Command, Config};
use accolade::server;

// sled allocates and frees a node copy on every write; glibc's allocator spent a fifth of the
// persister's time on that (perf), mimalloc much less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).init();
    let config = Config::load()?;
    match config.command.clone() {
        Some(Command::Token { user, tenant, ttl }) => {
            let keys = accolade::auth::Keys::new(&config.tenant_secrets()?);
            let token = keys.mint(&tenant, &user, accolade::auth::now_secs(), ttl).ok_or_else(|| anyhow::anyhow!("unknown tenant `{tenant}`"))?;
            println!("{token}");
            Ok(())
        }
        None | Some(Command::Serve) => {
            let listener = tokio::net::TcpListener::bind(config.bind).await.map_err(|e| anyhow::anyhow!("binding {}: {e}", config.bind))?;
            let shared = server::build(config).await?;
            let addr = listener.local_addr()?;
            tracing::info!(%addr, demo = shared.demo, "accolade listening{}", if shared.demo { format!("; open http://{addr}/") } else { String::new() });
            server::run(listener, shared, shutdown_signal()).await
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
