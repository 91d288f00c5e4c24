//! `run(config, shutdown)`: start-up and the drain order, written once here. The worker pool
//! itself (forks, replacements, elasticity, zygote restarts) is [`crate::pool`].
//!
//! Start: run dir → metrics → broker (binds sockets) → zygote (imports the app) → fork workers.
//! Stop:  stop accepting → answer queued tasks → wait for running ones (grace period) → stop the
//!        zygote and its workers → stop the broker → remove the run dir.

use std::future::Future;
use std::time::Instant;

use neutrino_protocol::{ExitCode, ZygoteReady};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::unbounded_channel;
use tracing::{debug, error, info, warn};

use crate::broker::{self, BrokerConfig};
use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::pool::Pool;
use crate::rundir::RunDir;
use crate::scheduler::Policy;
use crate::zygote::{StartError, Zygote};

pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    info!("Starting orchestrator");
    let run_dir = RunDir::create(config.run_dir.as_deref())?;
    debug!(run_dir = %run_dir.path().display(), "run directory ready");

    let metrics = Metrics::new();
    let metrics_server = match config.metrics {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            info!("Serving metrics on http://{addr}/metrics");
            Some(tokio::spawn(metrics::serve(listener, metrics.clone())))
        }
        None => None,
    };

    let (events_tx, events) = unbounded_channel();
    let broker = broker::start(
        BrokerConfig {
            frontends: config.frontends.clone(),
            backend: run_dir.backend_endpoint(),
            policy: Policy {
                queue_limit: config.queue_limit,
                window: config.window,
                pipeline_max_us: config.pipeline_max_us as f64,
                limits: config.limits(),
            },
            max_message_bytes: config.max_message_bytes,
            idle_spin: std::time::Duration::from_micros(config.idle_spin_us),
            liveness: config.liveness(),
            curve: config.curve_keys().map_err(anyhow::Error::msg)?,
        },
        metrics.clone(),
        events_tx,
    )?;
    for f in &config.frontends {
        info!("Accepting tasks on {f}");
    }

    // Installed now: SIGHUP's default action would kill us while the app imports.
    let hangup = signal(SignalKind::hangup())?;
    tokio::pin!(shutdown);
    let start = tokio::select! {
        start = start_zygote(&config, &run_dir) => start,
        _ = &mut shutdown => {
            info!("Stopping during start-up");
            broker.stop(); // answers anything already queued
            return Ok(ExitCode::Ok);
        }
    };
    let (zygote, ready) = match start {
        Ok(started) => started,
        Err(StartError::AppImport(e)) => {
            error!(
                "App {} failed to import; not restarting.\n{}",
                config.app,
                e.traceback.as_deref().unwrap_or(&e.evalue)
            );
            broker.stop();
            return Ok(ExitCode::AppImport);
        }
        Err(StartError::Other(e)) => {
            broker.stop();
            return Err(e);
        }
    };

    let mut pool = Pool::new(config.clone(), &run_dir, zygote, ready, broker, metrics, started);
    let outcome = pool.serve(&mut shutdown, hangup, events).await;
    let (zygote, broker) = pool.into_parts();
    match zygote.stop().await {
        Some(0) => debug!("zygote stopped"),
        other => warn!("zygote stopped with {other:?}"),
    }
    broker.stop();
    // libzmq leaves bound ipc files behind when the context ends without an explicit unbind.
    for path in config.frontends.iter().filter_map(|f| f.strip_prefix("ipc://")) {
        let _ = std::fs::remove_file(path);
    }
    if let Some(server) = metrics_server {
        server.abort();
    }
    drop(run_dir);
    info!("Orchestrator stopped");
    outcome
}

/// Starts the zygote and waits for the app to import, within `--start-timeout`.
pub async fn start_zygote(config: &Config, run_dir: &RunDir) -> Result<(Zygote, ZygoteReady), StartError> {
    let timeout = config.start_timeout();
    match tokio::time::timeout(timeout, Zygote::start(config, run_dir)).await {
        Ok(Ok((zygote, ready))) => {
            info!(
                "Zygote ready (pid={}, {} tasks, app imported in {:.1} ms)",
                ready.pid,
                ready.tasks.len(),
                ready.import_ms
            );
            Ok((zygote, ready))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!("the zygote did not import the app within {timeout:?} (--start-timeout)").into()),
    }
}
