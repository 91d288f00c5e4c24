//! `neutrino-orchestrator`: parse flags, run until SIGTERM/SIGINT, exit with a SPEC.md §7 code.

use neutrino_orchestrator::config::ConfigError;
use neutrino_orchestrator::{logging, run, Config};
use neutrino_protocol::ExitCode;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::process::ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(ConfigError::Args(e)) => e.exit(), // --help, --version (exit 0) or a usage error (exit 2)
        Err(ConfigError::File(e)) => {
            eprintln!("error: {e}");
            return code(ExitCode::Usage);
        }
    };
    logging::init(config.log_format);
    if let Err(e) = config.validate() {
        tracing::error!("{e}");
        return code(ExitCode::Usage);
    }
    // One thread for the control plane (zygote link, pool, signals, metrics): its events come a
    // few per worker start, and a second thread only added a cross-thread wake-up to each of them
    // (the zygote's reader task handing a message to the supervisor). The hot path, the ZeroMQ
    // broker, has a thread of its own (broker/mod.rs).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return code(ExitCode::Failure);
        }
    };
    let result = runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        run(config, shutdown).await
    });
    match result {
        Ok(exit) => code(exit),
        Err(e) => {
            tracing::error!("{e:#}");
            code(ExitCode::Failure)
        }
    }
}

fn code(exit: ExitCode) -> std::process::ExitCode {
    std::process::ExitCode::from(exit as u8)
}
