//! The `mqtt-lb` command: `run` (the default), `check`, `version`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "mqtt-lb", version, about = "MQTT-aware, TLS-terminating load balancer for MQTT broker clusters")]
// Options before a command would be the implied `run`'s: refused rather than silently ignored by `check`.
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command: the options of `run`.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Configuration file to run.
    #[arg(short, long, default_value = "config.yaml")]
    config: PathBuf,
    /// Log format: text or json. The level comes from RUST_LOG (default: info; libraries: errors only).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Args)]
struct CheckArgs {
    /// Configuration file to validate.
    #[arg(short, long, default_value = "config.yaml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer (the default).
    Run(RunArgs),
    /// Validate the configuration and exit: 0 if it is valid, 1 with the file, key and problem if not.
    Check(CheckArgs),
    /// Print the version.
    Version,
}

/// mimalloc rather than glibc's malloc: a connection's task is an aligned allocation often freed by another worker
/// than the one that made it, which glibc does slowly (see Cargo.toml).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(cli.run)) {
        Command::Version => {
            println!("mqtt-lb {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check(CheckArgs { config }) => match mqtt_lb::config::load(&config) {
            Ok(c) => {
                if let Some(warning) = c.admin.as_ref().and_then(|a| a.exposure_warning()) {
                    eprintln!("WARNING: {warning}");
                }
                println!(
                    "{}: configuration is valid ({} listeners, {} backends, {} servers)",
                    c.source.display(),
                    c.listeners.len(),
                    c.backends.len(),
                    c.backends.iter().map(|b| b.servers.len()).sum::<usize>()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(RunArgs { config, log_format }) => {
            mqtt_lb::logging::init(log_format == "json");
            run(config)
        }
    }
}

/// Every client holds two sockets (its own and its broker's), and sockets are files. Many environments start
/// processes with a soft open-file limit far below the hard one (1024 in most shells and in containerd 2.x
/// containers, whose hard limit is 524,288), which would cap a balancer at about 500 clients: raise the soft limit
/// to the hard one, as HAProxy does, and say so when even that is short of `max_connections` (0: unlimited).
/// The admin sockets' connections (`admin.max_connections` each) come on top, so that clients at their limit leave
/// the files the admin endpoint and the health probes need.
fn raise_open_file_limit(max_connections: usize, admin_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let needed = u64::try_from(max_connections)
                .unwrap_or(u64::MAX)
                .saturating_mul(2)
                .saturating_add(u64::try_from(admin_connections).unwrap_or(u64::MAX))
                .saturating_add(64);
            if max_connections > 0 && limit < needed {
                warn!(
                    limit,
                    needed,
                    "the open-file limit is below 2 x limits.max_connections + the admin connections + 64: raise \
                     LimitNOFILE"
                );
            } else {
                info!(limit, "open-file limit");
            }
        }
        Err(e) => warn!(error = %e, "cannot raise the open-file limit"),
    }
}

fn run(path: PathBuf) -> ExitCode {
    if path == std::path::Path::new("-") {
        eprintln!("error: --config -: `run` needs a file, which a reload reads again; standard input is for `check`");
        return ExitCode::FAILURE;
    }
    let config = match mqtt_lb::config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin_connections = config.admin.as_ref().map_or(0, |a| {
        let sockets = if a.control_bind.is_some() { 2 } else { 1 };
        sockets * a.max_connections
    });
    raise_open_file_limit(config.limits.max_connections, admin_connections);
    if let Some(warning) = config.admin.as_ref().and_then(|a| a.exposure_warning()) {
        warn!("{warning}");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // Named for `top -H` and `ps -L`.
    builder.thread_name("mqtt-lb-worker");
    if let Some(n) = config.workers {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let server = match mqtt_lb::server::Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                error!("{e}");
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(mqtt_lb::shutdown::handle_signals(server.lifecycle()));
        let reload = server.reload_handle();
        // Registered before anything is spawned, so that a SIGHUP from now on reloads instead of ending the process.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        tokio::spawn(async move {
            let Ok(mut hangups) = hangups else {
                error!("cannot listen for SIGHUP: reload with POST /reload on the admin endpoint");
                return;
            };
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the configuration");
                // The outcome is logged and counted by the server.
                let _ = reload.reload().await;
            }
        });
        match server.run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                ExitCode::FAILURE
            }
        }
    });
    // Not a plain drop, which waits for every blocking thread: one may still be stuck reading a file for a reload
    // that timed out, and it must not keep a stopped process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
