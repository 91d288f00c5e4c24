//! `run(config, shutdown)`: start-up, the worker pool, and the drain order, written once here.
//!
//! Start: run dir → metrics → broker (binds sockets) → zygote (imports the app) → fork workers.
//! Stop:  stop accepting → answer queued tasks → wait for running ones (grace period) → stop the
//!        zygote and its workers → stop the broker → remove the run dir.

use std::collections::HashMap;
use std::future::Future;
use std::time::Instant;

use neutrino_protocol::{decode_meta, ExitCode, Fork, Forked, MessageType, WorkerExited};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tracing::{debug, error, info, warn};

use crate::broker::{self, BrokerConfig, BrokerHandle, Command, Event};
use crate::config::Config;
use crate::metrics::{self, Metrics};
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
            },
            max_message_bytes: config.max_message_bytes,
            idle_spin: std::time::Duration::from_micros(config.idle_spin_us),
        },
        metrics.clone(),
        events_tx,
    )?;
    for f in &config.frontends {
        info!("Accepting tasks on {f}");
    }

    tokio::pin!(shutdown);
    let start = tokio::select! {
        start = tokio::time::timeout(config.start_timeout(), Zygote::start(&config, &run_dir)) => start,
        _ = &mut shutdown => {
            info!("Stopping during start-up");
            broker.stop(); // answers anything already queued
            return Ok(ExitCode::Ok);
        }
    };
    let zygote = match start {
        Ok(Ok((zygote, ready))) => {
            info!(
                "Zygote ready (pid={}, {} tasks, app imported in {:.1} ms)",
                ready.pid,
                ready.tasks.len(),
                ready.import_ms
            );
            zygote
        }
        Ok(Err(StartError::AppImport(e))) => {
            error!(
                "App {} failed to import; not restarting.\n{}",
                config.app,
                e.traceback.as_deref().unwrap_or(&e.evalue)
            );
            broker.stop();
            return Ok(ExitCode::AppImport);
        }
        Ok(Err(StartError::Other(e))) => {
            broker.stop();
            return Err(e);
        }
        Err(_) => {
            broker.stop();
            anyhow::bail!("the zygote did not import the app within {:?} (--start-timeout)", config.start_timeout());
        }
    };

    let mut pool = Pool {
        config: &config,
        zygote,
        broker,
        metrics,
        next_worker: 1,
        fork_requested: HashMap::new(),
        ready: 0,
        announced: false,
        started,
    };
    let outcome = pool.serve(shutdown, events).await;
    let Pool { zygote, broker, .. } = pool;
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

/// The worker pool as the supervisor sees it: processes, readiness, replacements.
struct Pool<'a> {
    config: &'a Config,
    zygote: Zygote,
    broker: BrokerHandle,
    metrics: Metrics,
    next_worker: u32,
    /// When each worker not yet ready was asked for, to measure fork-to-ready time.
    fork_requested: HashMap<String, Instant>,
    ready: u32,
    announced: bool,
    started: Instant,
}

enum Stage {
    Serving,
    Draining,
}

impl Pool<'_> {
    async fn serve(
        &mut self,
        shutdown: impl Future<Output = ()>,
        mut events: UnboundedReceiver<Event>,
    ) -> anyhow::Result<ExitCode> {
        self.fork(self.config.workers).await?;
        info!("Waiting for worker to connect...");

        tokio::pin!(shutdown);
        let mut stage = Stage::Serving;
        let grace = tokio::time::sleep(std::time::Duration::MAX / 4);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                _ = &mut shutdown, if matches!(stage, Stage::Serving) => {
                    info!("Draining: no new tasks; running tasks get {:?} to finish", self.config.grace_period());
                    self.broker.send(Command::Drain);
                    grace.as_mut().reset(tokio::time::Instant::now() + self.config.grace_period());
                    stage = Stage::Draining;
                }
                _ = &mut grace => {
                    warn!("grace period over with tasks still running; stopping anyway");
                    return Ok(ExitCode::Ok);
                }
                event = events.recv() => match event {
                    Some(Event::WorkerReady { worker_id, pid }) => self.on_ready(&worker_id, pid),
                    Some(Event::Drained) => return Ok(ExitCode::Ok),
                    None => anyhow::bail!("the broker thread stopped unexpectedly"),
                },
                msg = self.zygote.recv() => match msg? {
                    Some((code, meta)) => self.on_control(code, &meta, matches!(stage, Stage::Serving)).await?,
                    None => {
                        error!("the zygote (pid={}) exited unexpectedly; stopping", self.zygote.pid);
                        self.broker.send(Command::Drain);
                        return Ok(ExitCode::Failure);
                    }
                },
            }
        }
    }

    fn on_ready(&mut self, worker_id: &str, pid: u32) {
        info!("Worker {worker_id} connected (pid={pid})");
        match self.fork_requested.remove(worker_id) {
            Some(at) => {
                let took = at.elapsed();
                self.metrics.worker_start.observe(took.as_secs_f64());
                info!("Worker {worker_id} ready! ({:.1} ms from fork request)", took.as_secs_f64() * 1e3);
            }
            None => info!("Worker {worker_id} ready!"),
        }
        self.ready += 1;
        if !self.announced && self.ready >= self.config.workers {
            self.announced = true;
            let n = self.config.workers;
            info!(
                "Orchestrator ready with {n} worker{} ({:.0} ms after start)",
                if n == 1 { "" } else { "s" },
                self.started.elapsed().as_secs_f64() * 1e3
            );
        }
    }

    async fn on_control(&mut self, code: u8, meta: &[u8], serving: bool) -> anyhow::Result<()> {
        match MessageType::from_code(code) {
            Some(MessageType::Forked) => {
                let m: Forked = decode_meta(meta)?;
                debug!(worker = %m.worker_id, pid = m.pid, "forked");
            }
            Some(MessageType::WorkerExited) => {
                let m: WorkerExited = decode_meta(meta)?;
                self.metrics.worker_exits.inc();
                self.fork_requested.remove(&m.worker_id);
                self.ready = self.ready.saturating_sub(1);
                self.broker.send(Command::WorkerExited { worker_id: m.worker_id.clone() });
                let how = match (m.exit_code, m.signal) {
                    (_, Some(sig)) => format!("killed by signal {sig}"),
                    (Some(code), _) => format!("exit code {code}"),
                    _ => "unknown status".to_owned(),
                };
                if serving {
                    warn!("Worker {} (pid={}) exited ({how}); replacing it", m.worker_id, m.pid);
                    self.fork(1).await?;
                } else {
                    debug!(worker = %m.worker_id, "worker exited ({how})");
                }
            }
            _ => debug!(code, "ignoring control message"),
        }
        Ok(())
    }

    async fn fork(&mut self, count: u32) -> anyhow::Result<()> {
        let ids: Vec<String> = (0..count)
            .map(|_| {
                let id = format!("worker-{:03}", self.next_worker);
                self.next_worker += 1;
                info!("Spawning worker {id}");
                self.fork_requested.insert(id.clone(), Instant::now());
                id
            })
            .collect();
        self.zygote.send(&Fork { worker_ids: ids, heartbeat_ms: None }).await
    }
}
