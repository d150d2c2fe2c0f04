//! `signal-node` binary: parse flags, init tracing and metrics, bind, run; the first
//! SIGTERM/SIGINT drains, a second exits at once.

use clap::Parser;
use signal_node::cli::Args;
use signal_node::{telemetry, Listeners};

/// mimalloc: per-thread free lists with no per-object header (glibc's malloc was about a fifth
/// of the relay's CPU, and its 16 B chunk headers a part of an idle connection's memory).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return std::process::ExitCode::SUCCESS;
            }
            // One line naming the flag.
            let text = e.to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let json = args.log_json;
    let listen = args.listen;
    let grpc_listen = args.grpc_listen;
    let mut config = args.into_config()?;
    telemetry::init_tracing(json);
    config.metrics = Some(telemetry::metrics_handle());
    let http = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {listen}: {e}"))?;
    let grpc = tokio::net::TcpListener::bind(grpc_listen)
        .await
        .map_err(|e| anyhow::anyhow!("--grpc-listen {grpc_listen}: {e}"))?;
    let shutdown = async {
        first_signal().await;
        tokio::spawn(async {
            first_signal().await;
            eprintln!("second signal: exiting at once");
            std::process::exit(130);
        });
    };
    signal_node::run(config, Listeners { http, grpc }, shutdown).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn first_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, fall back to Ctrl-C only.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
