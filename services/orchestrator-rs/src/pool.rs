//! The worker pool as the supervisor keeps it: which workers exist, forking replacements before
//! retired workers leave, backing off workers that crash at start, growing and shrinking an
//! elastic pool, restarting a dead zygote, and SIGHUP reloads.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use neutrino_protocol::{
    decode_meta, ExitCode, Fork, Forked, MessageType, ProtocolError, WorkerExited, ZygoteCatalog, ZygoteReady,
};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, error, info, warn};

use crate::broker::{BrokerHandle, Command, Event, Load};
use crate::catalog::CatalogBytes;
use crate::config::Config;
use crate::metrics::{Metrics, MALFORMED_CONTROL};
use crate::rundir::RunDir;
use crate::scheduler::recycle_reason;
use crate::supervisor::start_zygote;
use crate::zygote::{kill_group, ControlMessage, StartError, Zygote};

/// A worker that exits before it was ready could not start: its replacement is backed off,
/// starting here and doubling per consecutive failure, so a broken worker cannot fork-loop.
const CRASH_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Same for restarting a zygote that died.
const ZYGOTE_BACKOFF_FIRST: Duration = Duration::from_millis(500);

pub struct Pool<'a> {
    config: Config,
    run_dir: &'a RunDir,
    zygote: Zygote,
    broker: BrokerHandle,
    metrics: Metrics,
    started: Instant,
    next_worker: u32,
    /// Workers we asked for and that are not ready yet, with when we asked.
    forking: HashMap<String, Instant>,
    /// Ready workers taking tasks.
    live: HashSet<String>,
    /// The spare worker kept ready while recycling is on (forking or ready), which takes a
    /// recycled worker's place at once, so recycling never leaves the pool short.
    standby: Option<String>,
    /// Workers the broker killed (timeout, cancel, silence): replaced, but not a crash.
    killed: HashSet<String>,
    /// Workers we retired (recycled, pool shrinking): their exit is expected, not replaced.
    retired: HashSet<String>,
    /// How many workers the pool wants now (between --min-workers and --max-workers).
    target: u32,
    /// Consecutive workers that crashed at start, and replacements owed after a backoff.
    early_exits: u32,
    owed: u32,
    owed_at: Option<Instant>,
    zygote_restarts: u32,
    announced: bool,
}

enum Stage {
    Serving,
    Draining,
}

impl<'a> Pool<'a> {
    pub fn new(
        config: Config,
        run_dir: &'a RunDir,
        zygote: Zygote,
        ready: ZygoteReady,
        broker: BrokerHandle,
        metrics: Metrics,
        started: Instant,
    ) -> Self {
        let target = config.workers;
        let pool = Pool {
            config,
            run_dir,
            zygote,
            broker,
            metrics,
            started,
            next_worker: 1,
            forking: HashMap::new(),
            live: HashSet::new(),
            standby: None,
            killed: HashSet::new(),
            retired: HashSet::new(),
            target,
            early_exits: 0,
            owed: 0,
            owed_at: None,
            zygote_restarts: 0,
            announced: false,
        };
        pool.send_task_options(ready);
        pool
    }

    pub fn into_parts(self) -> (Zygote, BrokerHandle) {
        (self.zygote, self.broker)
    }

    fn send_task_options(&self, ready: ZygoteReady) {
        if let Some(options) = ready.task_options {
            self.broker.send(Command::TaskOptions(options.into_iter().collect()));
        }
    }

    /// Workers being forked to take tasks (not the standby).
    fn regular_forking(&self) -> u32 {
        let standby_forking = self.standby.as_ref().is_some_and(|id| self.forking.contains_key(id));
        self.forking.len() as u32 - u32::from(standby_forking)
    }

    /// Workers that take tasks or are on their way (not retiring ones, not the standby).
    fn capacity(&self) -> u32 {
        self.live.len() as u32 + self.regular_forking() + self.owed
    }

    pub async fn serve(
        &mut self,
        mut shutdown: impl Future<Output = ()> + Unpin,
        mut hangup: Signal,
        mut events: UnboundedReceiver<Event>,
    ) -> anyhow::Result<ExitCode> {
        self.fork(self.target).await?;
        self.ensure_standby().await?;
        info!("Waiting for worker to connect...");
        let mut stage = Stage::Serving;
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            let serving = matches!(stage, Stage::Serving);
            let owed_at = self.owed_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                // Broker events before the zygote's messages: a worker's `Recycled`/`Killed`
                // then usually precedes its `WorkerExited` (on_exit copes with either order).
                biased;
                _ = &mut shutdown, if serving => {
                    // Not ready before the log line says so: whoever reads the log may probe at once.
                    self.metrics.set_ready(false);
                    info!("Draining: no new tasks; running tasks get {:?} to finish", self.config.grace_period());
                    self.broker.send(Command::Drain);
                    grace = Some(tokio::time::Instant::now() + self.config.grace_period());
                    stage = Stage::Draining;
                }
                _ = sleep_until(grace) => {
                    warn!("grace period over with tasks still running; stopping anyway");
                    return Ok(ExitCode::Ok);
                }
                _ = sleep_until(owed_at), if serving => {
                    let n = std::mem::take(&mut self.owed);
                    self.owed_at = None;
                    self.fork(n).await?;
                }
                _ = hangup.recv() => self.reload().await?,
                event = events.recv() => match event {
                    Some(Event::WorkerReady { worker_id, pid }) => self.on_ready(worker_id, pid),
                    Some(Event::Recycled { worker_id, promoted, .. }) => self.on_recycled(worker_id, promoted, serving).await?,
                    Some(Event::Killed { worker_id, .. }) => {
                        self.killed.insert(worker_id);
                    }
                    Some(Event::Load(load)) if serving => self.on_load(load).await?,
                    Some(Event::Load(_)) => {}
                    Some(Event::Drained) => return Ok(ExitCode::Ok),
                    None => anyhow::bail!("the broker thread stopped unexpectedly"),
                },
                msg = self.zygote.recv() => match msg {
                    Ok(Some(msg)) => self.on_control(msg, serving).await?,
                    Ok(None) | Err(_) if serving => {
                        if let Some(exit) = self.restart_zygote(&mut shutdown).await? {
                            return Ok(exit);
                        }
                    }
                    _ => {
                        error!("the zygote exited while draining");
                        self.broker.send(Command::ZygoteLost);
                        return Ok(ExitCode::Failure);
                    }
                },
            }
        }
    }

    fn on_ready(&mut self, worker_id: String, pid: u32) {
        let standby = self.standby.as_deref() == Some(worker_id.as_str());
        if !standby && !self.forking.contains_key(&worker_id) {
            // Its exit was handled first (the broker read this ready message while draining
            // the socket for that exit): nothing to count.
            return debug!(worker = %worker_id, "ready message from a worker already gone");
        }
        info!("Worker {worker_id} connected (pid={pid})");
        // A worker started: whatever kept failing (workers, the zygote) works again.
        self.early_exits = 0;
        self.zygote_restarts = 0;
        match self.forking.remove(&worker_id) {
            Some(at) => {
                let took = at.elapsed();
                self.metrics.worker_start.observe(took.as_secs_f64());
                info!("Worker {worker_id} ready! ({:.1} ms from fork request)", took.as_secs_f64() * 1e3);
            }
            None => info!("Worker {worker_id} ready!"),
        }
        if standby {
            return info!("Worker {worker_id} is the standby");
        }
        self.live.insert(worker_id);
        if !self.announced && self.live.len() as u32 >= self.target {
            self.announced = true;
            self.metrics.set_ready(true);
            let n = self.live.len();
            info!(
                "Orchestrator ready with {n} worker{} ({:.0} ms after start)",
                if n == 1 { "" } else { "s" },
                self.started.elapsed().as_secs_f64() * 1e3
            );
        }
    }

    /// A worker was recycled (it finishes what it holds, then exits 0). The standby took its
    /// place if one was ready; fork the next standby, or a replacement if none was.
    ///
    /// The broker may have taken our standby for a regular worker: when its `WorkerReady` and
    /// the `Standby` command that names it are read in the same poll, the ready is handled
    /// first (a broker thread kept off the CPU for the few ms a fork takes, on a busy machine).
    /// That worker then already takes tasks: a recycle with no standby promoted while ours is
    /// ready lets it fill the place rather than forking one more (which grew the pool past
    /// `--workers`, one worker per occurrence, measured in a long no-op burst), and its own
    /// recycling leaves nothing to replace.
    async fn on_recycled(&mut self, worker_id: String, promoted: Option<String>, serving: bool) -> anyhow::Result<()> {
        self.live.remove(&worker_id);
        let was_standby = self.standby.as_deref() == Some(worker_id.as_str());
        if was_standby {
            self.standby = None;
        }
        self.retired.insert(worker_id);
        if !serving {
            return Ok(());
        }
        match promoted {
            Some(spare) => {
                self.standby = None;
                self.live.insert(spare);
            }
            None if was_standby => {} // never counted as taking tasks here: nothing to replace
            None => match self.ready_standby() {
                Some(spare) => {
                    debug!(worker = %spare, "the broker took the standby for a regular worker");
                    self.standby = None;
                    self.live.insert(spare);
                }
                None => self.fork(1).await?,
            },
        }
        self.ensure_standby().await
    }

    /// The standby, once its `WorkerReady` arrived.
    fn ready_standby(&self) -> Option<String> {
        self.standby.clone().filter(|id| !self.forking.contains_key(id))
    }

    fn wants_standby(&self) -> bool {
        let limits = self.config.limits();
        limits.max_tasks > 0 || limits.max_rss_kb > 0 || limits.max_lifetime.is_some()
    }

    /// Forks a standby if recycling is on and there is none.
    async fn ensure_standby(&mut self) -> anyhow::Result<()> {
        if self.standby.is_some() || !self.wants_standby() {
            return Ok(());
        }
        let id = self.worker_id();
        info!("Spawning worker {id} (standby)");
        self.broker.send(Command::Standby { worker_id: id.clone() });
        self.forking.insert(id.clone(), Instant::now());
        self.standby = Some(id.clone());
        self.send_fork(vec![id]).await
    }

    /// Elastic pool: grow while tasks wait and no worker is idle; shrink a long-idle worker.
    async fn on_load(&mut self, load: Load) -> anyhow::Result<()> {
        let (min, max) = (self.config.min_workers(), self.config.max_workers());
        if load.queue_depth > 0 && load.idle == 0 && self.regular_forking() == 0 && self.capacity() < max {
            self.target = (self.target + 1).min(max);
            info!("Growing the pool to {} workers ({} tasks waiting)", self.target, load.queue_depth);
            self.fork(1).await?;
        } else if let Some((worker_id, idle_for)) = load.longest_idle {
            if idle_for >= self.config.worker_idle_timeout() && self.target > min && self.live.len() as u32 > min {
                self.target -= 1;
                info!("Shrinking the pool to {} workers ({worker_id} idle for {idle_for:.0?})", self.target);
                self.live.remove(&worker_id);
                self.retired.insert(worker_id.clone());
                self.broker.send(Command::Retire { worker_id, reason: recycle_reason::IDLE });
            }
        }
        Ok(())
    }

    async fn on_control(&mut self, msg: ControlMessage, serving: bool) -> anyhow::Result<()> {
        let ControlMessage { code, meta, payload } = msg;
        // A malformed message costs only itself (logged, counted): the record framing keeps the
        // link in step, and nothing the zygote says about one worker may stop the pod.
        match MessageType::from_code(code) {
            Some(MessageType::Forked) => match decode_meta::<Forked>(&meta) {
                Ok(m) => debug!(worker = %m.worker_id, pid = m.pid, "forked"),
                Err(e) => self.malformed_control(e),
            },
            Some(MessageType::WorkerExited) => match decode_meta::<WorkerExited>(&meta) {
                Ok(m) => self.on_exit(m, serving).await?,
                Err(e) => self.malformed_control(e),
            },
            Some(MessageType::ZygoteCatalog) => self.on_catalog(&meta, payload),
            _ => debug!(code, "ignoring control message"),
        }
        Ok(())
    }

    fn malformed_control(&self, e: ProtocolError) {
        warn!("ignoring a malformed control message from the zygote: {e}");
        self.metrics.malformed(MALFORMED_CONTROL);
    }

    /// The zygote's task catalog: handed to the broker as bytes, never decoded here. A malformed
    /// one costs only `DescribeTasks` answers, so it is logged, not fatal.
    fn on_catalog(&mut self, meta: &[u8], payload: Option<Vec<u8>>) {
        let (m, payload) = match (decode_meta::<ZygoteCatalog>(meta), payload) {
            (Ok(m), Some(payload)) => (m, payload),
            (Err(e), _) => {
                self.metrics.malformed(MALFORMED_CONTROL);
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

    /// A worker process is gone (SPEC.md §4.4, `WorkerExited`). Its exit code is reported, never
    /// acted on (§7): whether it could not start is what `error` says, or, without one, whether
    /// its `WorkerReady` had arrived. Nothing a worker does stops the pod.
    async fn on_exit(&mut self, m: WorkerExited, serving: bool) -> anyhow::Result<()> {
        self.metrics.worker_exits.inc();
        let how = match (m.exit_code, m.signal) {
            (_, Some(sig)) => format!("killed by signal {sig}"),
            (Some(code), _) => format!("exit code {code}"),
            _ => "unknown status".to_owned(),
        };
        self.broker.send(Command::WorkerExited { worker_id: m.worker_id.clone(), how: how.clone() });
        let was_standby = self.standby.as_deref() == Some(m.worker_id.as_str());
        // A standby is never in `live`: it was ready once its `WorkerReady` took it out of `forking`.
        let standby_was_ready = was_standby && !self.forking.contains_key(&m.worker_id);
        self.forking.remove(&m.worker_id);
        let was_ready = self.live.remove(&m.worker_id) || standby_was_ready;
        if was_standby {
            self.standby = None;
        }
        let was_killed = self.killed.remove(&m.worker_id);
        if self.retired.remove(&m.worker_id) || !serving {
            // Retired (its place was already filled or given up), or we are stopping.
            debug!(worker = %m.worker_id, "worker exited ({how})");
            return Ok(());
        }
        // A worker that could not start is backed off, so a broken one cannot fork-loop. It said
        // why (`error`), or it died before it could (no `WorkerReady` either). One that was
        // serving, or that the broker killed, is replaced at once; its tasks were answered or
        // retried by the broker.
        let early = m.error.is_some() || (!was_ready && !was_killed);
        self.early_exits = if early { self.early_exits + 1 } else { 0 };
        if let Some(e) = &m.error {
            // The traceback once per run of failures; each later one in a line.
            let detail = match (&e.traceback, self.early_exits) {
                (Some(tb), 1) => format!("\n{}", tb.trim_end()),
                _ => String::new(),
            };
            error!("Worker {} (pid={}) failed to start: {}: {} ({how}){detail}", m.worker_id, m.pid, e.ename, e.evalue);
        } else if was_killed {
            info!("Worker {} (pid={}) was killed; replacing it", m.worker_id, m.pid);
        } else if !early {
            warn!("Worker {} (pid={}) died ({how}); replacing it", m.worker_id, m.pid);
        }
        if was_standby {
            if !early {
                self.ensure_standby().await?;
            } else {
                // The next recycling forks another; no loop of broken spares meanwhile.
                error!("Standby worker {} (pid={}) exited ({how}) before it was ready", m.worker_id, m.pid);
            }
            return Ok(());
        }
        // Replace up to the target (not one per exit), so capacity cannot creep.
        let deficit = self.target.saturating_sub(self.capacity());
        if !early {
            self.fork(deficit).await?;
        } else if deficit > 0 {
            let delay = backoff(CRASH_BACKOFF_FIRST, self.early_exits);
            error!(
                "Worker {} (pid={}) exited ({how}) {} time(s) in a row before it was ready; next replacement in {delay:.1?}",
                m.worker_id, m.pid, self.early_exits
            );
            self.owe(deficit, delay);
        }
        Ok(())
    }

    fn owe(&mut self, n: u32, delay: Duration) {
        self.owed += n;
        let at = Instant::now() + delay;
        self.owed_at = Some(self.owed_at.map_or(at, |t| t.max(at)));
    }

    /// The zygote died: its workers died with it. Start a new one (backed off if this keeps
    /// happening) and fork the pool again.
    async fn restart_zygote(
        &mut self,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<Option<ExitCode>> {
        self.zygote_restarts += 1;
        let delay = backoff(ZYGOTE_BACKOFF_FIRST, self.zygote_restarts);
        error!(
            "The zygote (pid={}) died; restarting it in {delay:.1?} (restart #{})",
            self.zygote.pid, self.zygote_restarts
        );
        self.broker.send(Command::ZygoteLost);
        kill_group(self.zygote.pid);
        self.live.clear();
        self.forking.clear();
        self.standby = None;
        self.killed.clear();
        self.retired.clear();
        self.owed = 0;
        self.owed_at = None;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut *shutdown => return Ok(Some(ExitCode::Ok)),
        }
        let (zygote, ready) = match start_zygote(&self.config, self.run_dir).await {
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
        self.send_task_options(ready);
        self.fork(self.target).await?;
        self.ensure_standby().await?;
        Ok(None)
    }

    /// SIGHUP: re-read the config file; apply pool sizes and recycling limits.
    async fn reload(&mut self) -> anyhow::Result<()> {
        let new = match self.config.reload() {
            Ok(c) => c,
            Err(e) => {
                error!("SIGHUP: keeping the current configuration: {e:?}");
                return Ok(());
            }
        };
        if let Err(e) = new.validate() {
            error!("SIGHUP: keeping the current configuration: {e}");
            return Ok(());
        }
        self.broker.send(Command::SetLimits(new.limits()));
        let target = new.workers.clamp(new.min_workers(), new.max_workers());
        info!(
            "SIGHUP: reloaded: {target} workers (min {}, max {}), recycling {:?}",
            new.min_workers(),
            new.max_workers(),
            new.limits()
        );
        self.config.workers = new.workers;
        self.config.min_workers = new.min_workers;
        self.config.max_workers = new.max_workers;
        self.config.max_tasks_per_worker = new.max_tasks_per_worker;
        self.config.max_worker_rss_mb = new.max_worker_rss_mb;
        self.config.max_worker_lifetime_s = new.max_worker_lifetime_s;
        self.config.worker_idle_timeout_s = new.worker_idle_timeout_s;
        self.target = target;
        let capacity = self.capacity();
        if capacity < target {
            self.fork(target - capacity).await?;
        }
        let extra: Vec<String> = self.live.iter().take(capacity.saturating_sub(target) as usize).cloned().collect();
        for worker_id in extra {
            self.live.remove(&worker_id);
            self.retired.insert(worker_id.clone());
            self.broker.send(Command::Retire { worker_id, reason: recycle_reason::IDLE });
        }
        if !self.wants_standby() {
            if let Some(worker_id) = self.standby.take() {
                self.retired.insert(worker_id.clone());
                self.broker.send(Command::Retire { worker_id, reason: recycle_reason::IDLE });
            }
        }
        self.ensure_standby().await
    }

    fn worker_id(&mut self) -> String {
        let id = format!("worker-{:03}", self.next_worker);
        self.next_worker += 1;
        id
    }

    async fn fork(&mut self, count: u32) -> anyhow::Result<()> {
        if count == 0 {
            return Ok(());
        }
        let ids: Vec<String> = (0..count)
            .map(|_| {
                let id = self.worker_id();
                info!("Spawning worker {id}");
                self.forking.insert(id.clone(), Instant::now());
                id
            })
            .collect();
        self.send_fork(ids).await
    }

    async fn send_fork(&mut self, worker_ids: Vec<String>) -> anyhow::Result<()> {
        let heartbeat_ms = (self.config.heartbeat_interval_ms > 0).then_some(self.config.heartbeat_interval_ms);
        if let Err(e) = self.zygote.send(&Fork { worker_ids, heartbeat_ms }).await {
            // The zygote is gone: its closed link (read side) restarts it and forks the pool.
            warn!("cannot ask the zygote to fork: {e:#}");
        }
        Ok(())
    }
}

fn backoff(first: Duration, n: u32) -> Duration {
    first.saturating_mul(1 << n.saturating_sub(1).min(16)).min(CRASH_BACKOFF_MAX)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
