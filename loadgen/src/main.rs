//! The `loadgen` binary: parse the flags, run, print the summary table.

use std::process::ExitCode;

use clap::Parser;
use loadgen::Args;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line naming the flag, not the whole usage.
            let text = e.to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad arguments");
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,loadgen=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fail_on_errors = config.fail_on_errors;
    if config.scenario == loadgen::Scenario::Presence {
        return match runtime.block_on(loadgen::run_presence(config)) {
            Ok(report) => {
                println!("{report}");
                if fail_on_errors && report.failures() > 0 {
                    eprintln!("error: {} wrong, missing or stale states or fresh sessions (--fail-on-errors)", report.failures());
                    return ExitCode::FAILURE;
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if config.scenario == loadgen::Scenario::Rooms {
        return match runtime.block_on(loadgen::rooms::run(&config)) {
            Ok(report) => {
                println!("{report}");
                if fail_on_errors && report.failed() > 0 {
                    eprintln!(
                        "error: {} room deliveries lost, reordered, duplicated or refused (--fail-on-errors)",
                        report.failed()
                    );
                    return ExitCode::FAILURE;
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(loadgen::run(config)) {
        Ok(report) => {
            println!("{report}");
            if fail_on_errors && report.failed_setups() > 0 {
                eprintln!(
                    "error: {} call setups failed (--fail-on-errors)",
                    report.failed_setups()
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
