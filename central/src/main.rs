//! The `central` binary: flags -> config, tracing, listeners, [`central::run`] (or the dev
//! cluster), signals (first SIGTERM/SIGINT: graceful stop; second: exit at once).

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use central::cli::Args;
use central::dev::{DevCluster, DevOptions};
use central::{Config, Listeners};
use clap::error::ErrorKind;

/// mimalloc, as in `signal-node` (the dev cluster runs its nodes in this process).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            // One line naming the flag (clap adds usage hints on further lines).
            let text = e.to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("central: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("central: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("central: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(config));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("central: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    signal_node::telemetry::init_tracing(config.log_json);
    config.metrics = Some(signal_node::telemetry::metrics_handle());
    let shutdown = shutdown_signal().context("cannot install signal handlers")?;
    if config.dev {
        return serve_dev(config, shutdown).await;
    }
    let listeners = Listeners::bind(config.http_listen, config.grpc_listen).await?;
    central::run(config, listeners, shutdown).await?;
    Ok(())
}

async fn serve_dev(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ice = config.ice.clone();
    let opts = DevOptions {
        nodes: config.dev_nodes,
        node_drain: config.dev_drain,
        metrics: config.metrics.clone(),
        central: config,
        ..DevOptions::default()
    };
    let cluster = DevCluster::start(opts).await?;
    let base = cluster.central_url();
    println!("central dev cluster ready");
    println!("  demo:   {base}/");
    println!("  login:  {base}/v1/endpoint?user=alice");
    println!("  nodes:  {base}/v1/nodes");
    println!("  grpc:   {}", cluster.central_grpc_url());
    for (id, url) in cluster.node_ids().iter().zip(cluster.node_ws_urls()) {
        println!("  {id}: {url}");
    }
    for url in &ice.stun_urls {
        println!("  stun:   {url}");
    }
    for url in ice.turn.iter().flat_map(|t| &t.urls) {
        println!("  turn:   {url}");
    }
    println!("Press Ctrl-C to stop.");
    shutdown.await;
    cluster.shutdown().await?;
    Ok(())
}

/// Resolves at the first SIGTERM or SIGINT; a second one exits the process at once.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "stopping gracefully (send it again to exit at once)"
        );
        let _ = tx.send(());
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = name, "second signal: exiting at once");
        std::process::exit(130);
    });
    Ok(async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    })
}
