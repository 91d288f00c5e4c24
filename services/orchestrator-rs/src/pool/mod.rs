//! The worker pool as plain state: which workers exist, forking replacements before retired
//! workers leave, backing off workers that crash at start, growing and shrinking an elastic
//! pool, restarting a dead zygote, and SIGHUP's new sizes. It does no I/O: each event returns
//! the [`Action`]s that the supervisor (`supervisor.rs`) carries out.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use neutrino_protocol::WorkerExited;
use tracing::{debug, error, info, warn};

use crate::broker::Load;
use crate::config::Config;
use crate::metrics::{ExitReason, Metrics};
use crate::scheduler::RetireReason;

#[cfg(test)]
mod tests;

/// A worker that exits before it was ready could not start: its replacement is backed off,
/// starting here and doubling per consecutive failure, so a broken worker cannot fork-loop.
const CRASH_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Same for restarting a zygote that died.
const ZYGOTE_BACKOFF_FIRST: Duration = Duration::from_millis(500);

/// What the pool asks of the zygote and the broker, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask the zygote to fork these workers (one `Fork` message).
    Fork(Vec<String>),
    /// Tell the broker this worker is the standby, then ask the zygote to fork it.
    Standby(String),
    /// Ask the broker to retire this worker: no new tasks, it exits once idle.
    Retire { worker_id: String, reason: RetireReason },
    /// The zygote died: stop what is left of it, start a new one after this delay, then call
    /// [`Pool::zygote_started`].
    RestartZygote { after: Duration },
}

pub struct Pool {
    config: Config,
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

impl Pool {
    /// `started`: when the orchestrator started, for the "ready" log line.
    pub fn new(config: Config, metrics: Metrics, started: Instant) -> Self {
        let target = config.workers;
        Pool {
            config,
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
        }
    }

    /// The first workers, once the zygote is ready.
    pub fn start(&mut self) -> Vec<Action> {
        let mut actions = self.fork(self.target);
        actions.extend(self.ensure_standby());
        actions
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

    /// When the replacements owed after a crash backoff are due ([`Pool::fork_owed`]).
    pub fn owed_at(&self) -> Option<Instant> {
        self.owed_at
    }

    /// The crash backoff is over: fork the replacements owed.
    pub fn fork_owed(&mut self) -> Vec<Action> {
        let n = std::mem::take(&mut self.owed);
        self.owed_at = None;
        self.fork(n)
    }

    pub fn on_ready(&mut self, worker_id: String, pid: u32) {
        if self.retired.contains(&worker_id) {
            // A standby that a reload let go while it started: the broker retires it now.
            return info!("Worker {worker_id} ready (pid={pid}); retired already, it exits");
        }
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
    /// place if one was ready; fork the next standby, or a replacement if none was. The broker
    /// knows a standby before its `WorkerReady` (see the broker's poll loop), so it never takes
    /// ours for a regular worker: `None` means ours was not ready there (still starting, or gone).
    /// A worker not live here any more (its exit came first and was replaced, or we retired it
    /// first and gave up its place) is not replaced again, nor remembered as retired.
    pub fn on_recycled(&mut self, worker_id: String, promoted: Option<String>, serving: bool) -> Vec<Action> {
        let was_live = self.live.remove(&worker_id);
        if was_live {
            self.retired.insert(worker_id);
        }
        if !serving {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match promoted {
            // The broker put it to work whatever we knew of the recycled worker.
            Some(spare) => {
                self.standby = None;
                self.live.insert(spare);
            }
            None if was_live => actions = self.fork(1),
            None => {}
        }
        actions.extend(self.ensure_standby());
        actions
    }

    /// The broker killed this worker (timeout, cancel, silence): its exit is not a crash.
    /// One whose exit came first is forgotten already: nothing to remember.
    pub fn on_killed(&mut self, worker_id: String) {
        if self.knows(&worker_id) {
            self.killed.insert(worker_id);
        }
    }

    /// A worker asked for and not exited yet (starting, live, the standby, or retiring).
    fn knows(&self, worker_id: &str) -> bool {
        self.live.contains(worker_id)
            || self.forking.contains_key(worker_id)
            || self.retired.contains(worker_id)
            || self.standby.as_deref() == Some(worker_id)
    }

    fn wants_standby(&self) -> bool {
        let limits = self.config.limits();
        limits.max_tasks > 0 || limits.max_rss_kb > 0 || limits.max_lifetime.is_some()
    }

    /// Forks a standby if recycling is on and there is none.
    fn ensure_standby(&mut self) -> Option<Action> {
        if self.standby.is_some() || !self.wants_standby() {
            return None;
        }
        let id = self.worker_id();
        info!("Spawning worker {id} (standby)");
        self.forking.insert(id.clone(), Instant::now());
        self.standby = Some(id.clone());
        Some(Action::Standby(id))
    }

    /// Elastic pool: grow while tasks wait and no worker is idle; shrink a long-idle worker.
    pub fn on_load(&mut self, load: Load) -> Vec<Action> {
        let (min, max) = (self.config.min_workers(), self.config.max_workers());
        if load.queue_depth > 0 && load.idle == 0 && self.regular_forking() == 0 && self.capacity() < max {
            self.target = (self.target + 1).min(max);
            info!("Growing the pool to {} workers ({} tasks waiting)", self.target, load.queue_depth);
            return self.fork(1);
        }
        if let Some((worker_id, idle_for)) = load.longest_idle {
            // The load report may name a worker whose exit we handled since: it is not ours to
            // retire (the broker would wait for it to report ready, forever).
            if idle_for >= self.config.worker_idle_timeout()
                && self.target > min
                && self.live.len() as u32 > min
                && self.live.contains(&worker_id)
            {
                self.target -= 1;
                info!("Shrinking the pool to {} workers ({worker_id} idle for {idle_for:.0?})", self.target);
                return vec![self.retire(worker_id)];
            }
        }
        Vec::new()
    }

    fn retire(&mut self, worker_id: String) -> Action {
        self.live.remove(&worker_id);
        self.retired.insert(worker_id.clone());
        Action::Retire { worker_id, reason: RetireReason::Idle }
    }

    /// A worker process is gone (SPEC.md §4.4, `WorkerExited`; `how` from [`exit_status`]). Its
    /// exit code is reported, never acted on (§7): whether it could not start is what `error`
    /// says, or, without one, whether its `WorkerReady` had arrived. Nothing a worker does stops
    /// the pod.
    pub fn on_exit(&mut self, m: &WorkerExited, how: &str, serving: bool) -> Vec<Action> {
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
            self.metrics.worker_exited(ExitReason::Retired);
            return Vec::new();
        }
        // A worker that could not start is backed off, so a broken one cannot fork-loop. It said
        // why (`error`), or it died before it could (no `WorkerReady` either). One that was
        // serving, or that the broker killed, is replaced at once; its tasks were answered or
        // retried by the broker.
        let early = m.error.is_some() || (!was_ready && !was_killed);
        self.early_exits = if early { self.early_exits + 1 } else { 0 };
        self.metrics.worker_exited(match (early, was_killed) {
            (true, _) => ExitReason::StartFailed,
            (false, true) => ExitReason::Killed,
            (false, false) => ExitReason::Crashed,
        });
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
        if was_standby && early {
            // The next recycling forks another; no loop of broken spares meanwhile.
            error!("Standby worker {} (pid={}) exited ({how}) before it was ready", m.worker_id, m.pid);
            return Vec::new();
        }
        if was_standby {
            return self.ensure_standby().into_iter().collect();
        }
        // Replace up to the target (not one per exit), so capacity cannot creep.
        let deficit = self.target.saturating_sub(self.capacity());
        if !early {
            return self.fork(deficit);
        }
        if deficit > 0 {
            let delay = backoff(CRASH_BACKOFF_FIRST, self.early_exits);
            error!(
                "Worker {} (pid={}) exited ({how}) {} time(s) in a row before it was ready; next replacement in {delay:.1?}",
                m.worker_id, m.pid, self.early_exits
            );
            self.owe(deficit, delay);
        }
        Vec::new()
    }

    fn owe(&mut self, n: u32, delay: Duration) {
        self.owed += n;
        let at = Instant::now() + delay;
        self.owed_at = Some(self.owed_at.map_or(at, |t| t.max(at)));
    }

    /// The zygote (`pid`) died, and its workers with it: forget them all and restart it, backed
    /// off if this keeps happening.
    pub fn zygote_lost(&mut self, pid: u32) -> Vec<Action> {
        self.zygote_restarts += 1;
        let delay = backoff(ZYGOTE_BACKOFF_FIRST, self.zygote_restarts);
        error!("The zygote (pid={pid}) died; restarting it in {delay:.1?} (restart #{})", self.zygote_restarts);
        self.live.clear();
        self.forking.clear();
        self.standby = None;
        self.killed.clear();
        self.retired.clear();
        self.owed = 0;
        self.owed_at = None;
        vec![Action::RestartZygote { after: delay }]
    }

    /// A new zygote is ready after [`Action::RestartZygote`]: fork the pool again.
    pub fn zygote_started(&mut self) -> Vec<Action> {
        self.start()
    }

    /// SIGHUP: apply `new`'s pool sizes and recycling limits (the caller validated it and gave
    /// the broker its limits).
    pub fn reload(&mut self, new: &Config) -> Vec<Action> {
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
        let mut actions = self.fork(target.saturating_sub(capacity));
        let extra: Vec<String> = self.live.iter().take(capacity.saturating_sub(target) as usize).cloned().collect();
        for worker_id in extra {
            actions.push(self.retire(worker_id));
        }
        if !self.wants_standby() {
            if let Some(worker_id) = self.standby.take() {
                // Still starting: no longer a regular worker on its way either (`capacity`). The
                // broker retires it once it is ready, and its exit is expected.
                self.forking.remove(&worker_id);
                self.retired.insert(worker_id.clone());
                actions.push(Action::Retire { worker_id, reason: RetireReason::Idle });
            }
        }
        actions.extend(self.ensure_standby());
        actions
    }

    fn worker_id(&mut self) -> String {
        let id = format!("worker-{:03}", self.next_worker);
        self.next_worker += 1;
        id
    }

    fn fork(&mut self, count: u32) -> Vec<Action> {
        if count == 0 {
            return Vec::new();
        }
        let ids = (0..count)
            .map(|_| {
                let id = self.worker_id();
                info!("Spawning worker {id}");
                self.forking.insert(id.clone(), Instant::now());
                id
            })
            .collect();
        vec![Action::Fork(ids)]
    }
}

/// How a worker ended, for logs and the broker: "exit code 1", "killed by signal 9".
pub fn exit_status(m: &WorkerExited) -> String {
    match (m.exit_code, m.signal) {
        (_, Some(sig)) => format!("killed by signal {sig}"),
        (Some(code), _) => format!("exit code {code}"),
        _ => "unknown status".to_owned(),
    }
}

fn backoff(first: Duration, n: u32) -> Duration {
    first.saturating_mul(1 << n.saturating_sub(1).min(16)).min(CRASH_BACKOFF_MAX)
}
