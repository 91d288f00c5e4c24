//! `run(config, shutdown)`: start-up, serving and the drain order, written once here. The worker
//! pool's decisions (forks, replacements, elasticity, zygote restarts) are [`crate::pool`]; this
//! module carries them out on the zygote and the broker.
//!
//! Start: run dir → metrics → broker (binds sockets) → zygote (imports the app) → fork workers.
//! Serve: broker events and zygote messages → the pool → its actions (fork, standby, retire,
//!        restart the zygote after a delay); SIGHUP reloads the pool's sizes and limits.
//! Stop:  stop accepting → answer queued tasks → wait for running ones (grace period) → stop the
//!        zygote and its workers → stop the broker → remove the run dir.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use neutrino_protocol::{
    decode_meta, ExitCode, Fork, Forked, MessageType, ProtocolError, WorkerExited, ZygoteCatalog, ZygoteReady,
};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tracing::{debug, error, info, warn};

use crate::broker::{self, BrokerConfig, BrokerHandle, Command, Event};
use crate::catalog::CatalogBytes;
use crate::config::Config;
use crate::metrics::{self, Link, Metrics};
use crate::pool::{exit_status, Action, Pool};
use crate::rundir::RunDir;
use crate::scheduler::Policy;
use crate::zygote::{kill_group, ControlMessage, StartError, Zygote};

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
        start = Zygote::start(&config, &run_dir) => start,
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

    send_task_options(&broker, ready);
    let pool = Pool::new(config.clone(), metrics.clone(), started);
    let mut supervisor = Supervisor { config: &config, run_dir: &run_dir, zygote, broker, metrics, pool };
    let outcome = supervisor.serve(&mut shutdown, hangup, events).await;
    let Supervisor { zygote, broker, .. } = supervisor;
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

/// The running pod: the pool's state and the zygote and broker that its actions act on.
struct Supervisor<'a> {
    config: &'a Config,
    run_dir: &'a RunDir,
    zygote: Zygote,
    broker: BrokerHandle,
    metrics: Metrics,
    pool: Pool,
}

impl Supervisor<'_> {
    /// Forks the pool and serves until drained (or the grace period is over), or until the
    /// zygote is lost for good.
    async fn serve(
        &mut self,
        mut shutdown: impl Future<Output = ()> + Unpin,
        mut hangup: Signal,
        mut events: UnboundedReceiver<Event>,
    ) -> anyhow::Result<ExitCode> {
        let start = self.pool.start();
        if let Some(exit) = self.apply(start, &mut shutdown).await? {
            return Ok(exit);
        }
        info!("Waiting for worker to connect...");
        // Set when draining starts: the deadline for running tasks.
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            let serving = grace.is_none();
            let owed_at = self.pool.owed_at().map(tokio::time::Instant::from_std);
            let actions = tokio::select! {
                // Broker events before the zygote's messages: a worker's `Recycled`/`Killed`
                // then usually precedes its `WorkerExited` (the pool copes with either order).
                biased;
                _ = &mut shutdown, if serving => {
                    // Not ready before the log line says so: whoever reads the log may probe at once.
                    self.metrics.set_ready(false);
                    info!("Draining: no new tasks; running tasks get {:?} to finish", self.config.grace_period());
                    self.broker.send(Command::Drain);
                    grace = Some(tokio::time::Instant::now() + self.config.grace_period());
                    Vec::new()
                }
                _ = sleep_until(grace) => {
                    warn!("grace period over with tasks still running; stopping anyway");
                    return Ok(ExitCode::Ok);
                }
                _ = sleep_until(owed_at), if serving => self.pool.fork_owed(),
                _ = hangup.recv() => self.reload(),
                event = events.recv() => match event {
                    Some(Event::WorkerReady { worker_id, pid }) => {
                        self.pool.on_ready(worker_id, pid);
                        Vec::new()
                    }
                    Some(Event::Recycled { worker_id, promoted, .. }) => self.pool.on_recycled(worker_id, promoted, serving),
                    Some(Event::Killed { worker_id, .. }) => {
                        self.pool.on_killed(worker_id);
                        Vec::new()
                    }
                    Some(Event::Load(load)) if serving => self.pool.on_load(load),
                    Some(Event::Load(_)) => Vec::new(),
                    Some(Event::Drained) => return Ok(ExitCode::Ok),
                    None => anyhow::bail!("the broker thread stopped unexpectedly"),
                },
                msg = self.zygote.recv() => match msg {
                    Ok(Some(msg)) => self.on_control(msg, serving),
                    Ok(None) | Err(_) if serving => self.pool.zygote_lost(self.zygote.pid),
                    _ => {
                        error!("the zygote exited while draining");
                        self.broker.send(Command::ZygoteLost);
                        return Ok(ExitCode::Failure);
                    }
                },
            };
            if let Some(exit) = self.apply(actions, &mut shutdown).await? {
                return Ok(exit);
            }
        }
    }

    /// Carries out the pool's actions in order. `Some(exit)` when the pod stops instead: the
    /// zygote could not be restarted, or `shutdown` came while waiting to restart it.
    async fn apply(
        &mut self,
        actions: Vec<Action>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<Option<ExitCode>> {
        let mut actions = VecDeque::from(actions);
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Fork(worker_ids) => self.fork(worker_ids).await,
                Action::Standby(worker_id) => {
                    // The broker first: it must know the standby before its `WorkerReady`.
                    self.broker.send_quiet(Command::Standby { worker_id: worker_id.clone() });
                    self.fork(vec![worker_id]).await;
                }
                Action::Retire { worker_id, reason } => self.broker.send(Command::Retire { worker_id, reason }),
                Action::RestartZygote { after } => match self.restart_zygote(after, shutdown).await? {
                    Some(exit) => return Ok(Some(exit)),
                    None => actions.extend(self.pool.zygote_started()),
                },
            }
        }
        Ok(None)
    }

    async fn fork(&mut self, worker_ids: Vec<String>) {
        let heartbeat_ms = (self.config.heartbeat_interval_ms > 0).then_some(self.config.heartbeat_interval_ms);
        if let Err(e) = self.zygote.send(&Fork { worker_ids, heartbeat_ms }).await {
            // The zygote is gone: its closed link (read side) restarts it and forks the pool.
            warn!("cannot ask the zygote to fork: {e:#}");
        }
    }

    /// The zygote died, its workers with it: sweep up its process group, wait `after` and start a
    /// new one. `Some(exit)` when the pod stops instead.
    async fn restart_zygote(
        &mut self,
        after: Duration,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<Option<ExitCode>> {
        self.broker.send(Command::ZygoteLost);
        kill_group(self.zygote.pid);
        tokio::select! {
            _ = tokio::time::sleep(after) => {}
            _ = &mut *shutdown => return Ok(Some(ExitCode::Ok)),
        }
        let (zygote, ready) = match Zygote::start(self.config, self.run_dir).await {
            Ok(started) => started,
            Err(StartError::AppImport(e)) => {
                error!(
                    "App {} failed to import on restart; stopping.\n{}",
                    self.config.app,
                    e.traceback.unwrap_or(e.evalue)
                );
                return Ok(Some(ExitCode::AppImport));
            }
            Err(StartError::Other(e)) => return Err(e),
        };
        std::mem::replace(&mut self.zygote, zygote).reap().await;
        send_task_options(&self.broker, ready);
        Ok(None)
    }

    /// SIGHUP: re-read the config file; the broker gets its recycling limits, the pool its sizes.
    fn reload(&mut self) -> Vec<Action> {
        let new = match self.config.reload() {
            Ok(c) => c,
            Err(e) => {
                error!("SIGHUP: keeping the current configuration: {e:?}");
                return Vec::new();
            }
        };
        if let Err(e) = new.validate() {
            error!("SIGHUP: keeping the current configuration: {e}");
            return Vec::new();
        }
        self.broker.send(Command::SetLimits(new.limits()));
        self.pool.reload(&new)
    }

    fn on_control(&mut self, msg: ControlMessage, serving: bool) -> Vec<Action> {
        let ControlMessage { code, meta, payload } = msg;
        // A malformed message costs only itself (logged, counted): the record framing keeps the
        // link in step, and nothing the zygote says about one worker may stop the pod.
        match MessageType::from_code(code) {
            Some(MessageType::Forked) => match decode_meta::<Forked>(&meta) {
                Ok(m) => debug!(worker = %m.worker_id, pid = m.pid, "forked"),
                Err(e) => self.malformed_control(e),
            },
            Some(MessageType::WorkerExited) => match decode_meta::<WorkerExited>(&meta) {
                Ok(m) => {
                    let how = exit_status(&m);
                    self.broker.send(Command::WorkerExited { worker_id: m.worker_id.clone(), how: how.clone() });
                    return self.pool.on_exit(&m, &how, serving);
                }
                Err(e) => self.malformed_control(e),
            },
            Some(MessageType::ZygoteCatalog) => self.on_catalog(&meta, payload),
            _ => debug!(code, "ignoring control message"),
        }
        Vec::new()
    }

    fn malformed_control(&self, e: ProtocolError) {
        warn!("ignoring a malformed control message from the zygote: {e}");
        self.metrics.malformed(Link::Control);
    }

    /// The zygote's task catalog: handed to the broker as bytes, never decoded here. A malformed
    /// one costs only `DescribeTasks` answers, so it is logged, not fatal.
    fn on_catalog(&self, meta: &[u8], payload: Option<Vec<u8>>) {
        let (m, payload) = match (decode_meta::<ZygoteCatalog>(meta), payload) {
            (Ok(m), Some(payload)) => (m, payload),
            (Err(e), _) => {
                self.metrics.malformed(Link::Control);
                return warn!("ignoring a malformed task catalog from the zygote: {e}");
            }
            (Ok(_), None) => return warn!("ignoring a task catalog without its payload record"),
        };
        info!(
            "Task catalog received from zygote {}: {} tasks, {} bytes, built in {:.1} ms",
            self.zygote.pid,
            m.tasks.len(),
            payload.len(),
            m.build_ms
        );
        self.broker.send(Command::Catalog(CatalogBytes { tasks: m.tasks, payload }));
    }
}

/// The app's per-task defaults, from `ZygoteReady`, for the broker.
fn send_task_options(broker: &BrokerHandle, ready: ZygoteReady) {
    if let Some(options) = ready.task_options {
        broker.send(Command::TaskOptions(options.into_iter().collect()));
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
