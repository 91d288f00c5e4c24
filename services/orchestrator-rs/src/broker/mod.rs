//! The ZeroMQ thread: the only module that touches `zmq`. It owns the frontend (clients) and
//! backend (workers) ROUTER sockets and the [`Scheduler`], and talks to the tokio side through
//! a command channel plus a wake-up socket that `zmq::poll` watches beside the ZeroMQ sockets.
//!
//! - `mod.rs`: the interface to the tokio side (commands, events), the poll loop, draining.
//! - `sockets.rs`: creating and binding the sockets, routing replies, receiving and sending.
//! - `clients.rs`: frontend messages (submit, cancel, ping, describe) and replies.
//! - `workers.rs`: backend messages, timeouts, liveness, recycling, killing workers.
//! - `zap.rs`: the ZAP handler thread that lets CURVE clients in by their public key.
//!
//! With CURVE on (`BrokerConfig::curve`), the tcp:// frontends are one CURVE-server socket and
//! the ipc:// ones another, plain socket; the client ids of both then carry a first byte naming
//! their socket (`sockets::TAG_*`), so that replies go back the way their request came in.

mod clients;
mod sockets;
mod workers;
mod zap;

#[cfg(test)]
mod tests;

pub use clients::{decode_client, task_policy, BadClientMessage, ClientMessage};
pub use workers::{decode_worker, BadWorkerMessage, WorkerMessage};

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use neutrino_protocol::{ErrorInfo, ErrorKind, Message, TaskOptions};
use tokio::sync::mpsc::UnboundedSender;
use tracing::error;

use crate::catalog::{Catalog, CatalogBytes};
use crate::curve::ServerKeys;
use crate::metrics::Metrics;
use crate::scheduler::{Limits, Payload, Policy, RetireReason, Scheduler};
use sockets::{recv_parts, route, send, tag_client, Sockets, Unsent, TAG_CURVE, TAG_PLAIN};

/// Most messages read from one socket before looking at the others, so neither side starves.
const MAX_BATCH: usize = 512;
/// How long the frontend may keep sending the final replies after the broker stops.
const FINAL_REPLIES_LINGER_MS: i32 = 2_000;
/// How often the pool's load is reported to the supervisor (for an elastic pool).
const LOAD_REPORT_EVERY: Duration = Duration::from_millis(100);

/// Requests from the tokio side.
#[derive(Debug)]
pub enum Command {
    /// The zygote reported this worker's process gone (`how`: "exit code 1", "signal 9").
    WorkerExited { worker_id: String, how: String },
    /// The zygote died: every worker it forked is gone.
    ZygoteLost,
    /// The app's per-task defaults, from `ZygoteReady`.
    TaskOptions(HashMap<String, TaskOptions>),
    /// The app's task catalog, from `ZygoteCatalog` (served to `DescribeTasks`).
    Catalog(CatalogBytes),
    /// New recycling limits (SIGHUP).
    SetLimits(Limits),
    /// Retire this worker (the pool is shrinking, or a reload lowered its size).
    Retire { worker_id: String, reason: RetireReason },
    /// The worker about to be forked under this id is a standby (see `Scheduler::promote_standby`).
    Standby { worker_id: String },
    /// Stop accepting, answer queued tasks with `shutting_down`, report `Drained` when idle.
    Drain,
    /// Answer whatever is still queued or in flight and end the thread.
    Stop,
}

/// What the broker reports to the tokio side.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    WorkerReady {
        worker_id: String,
        pid: u32,
    },
    /// The worker reached a recycling limit and gets no new tasks; `promoted` is the standby
    /// that took its place at once (fork a new standby), or `None` (fork a replacement).
    Recycled {
        worker_id: String,
        reason: RetireReason,
        promoted: Option<String>,
    },
    /// The broker killed this worker (timeout, cancel, silence): its exit is expected.
    Killed {
        worker_id: String,
        reason: &'static str,
    },
    /// Pool load, every `LOAD_REPORT_EVERY` while it changes.
    Load(Load),
    /// Draining and nothing is left in flight.
    Drained,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Load {
    pub queue_depth: usize,
    pub ready: u32,
    pub idle: u32,
    /// The worker idle the longest and for how long.
    pub longest_idle: Option<(String, Duration)>,
}

pub struct BrokerConfig {
    pub frontends: Vec<String>,
    pub backend: String,
    pub policy: Policy,
    pub max_message_bytes: i64,
    /// How long to keep polling before blocking while latency-bound (see `spin_poll`).
    pub idle_spin: Duration,
    /// Workers are declared dead after this long without a message (`None`: never).
    pub liveness: Option<Duration>,
    /// CURVE keys for the tcp:// frontends (`None`: plain text).
    pub curve: Option<ServerKeys>,
}

/// The tokio side's handle: send commands, join at the end.
pub struct BrokerHandle {
    commands: mpsc::Sender<Command>,
    wake: UnixDatagram,
    thread: Option<JoinHandle<()>>,
}

impl BrokerHandle {
    pub fn send(&self, cmd: Command) {
        if self.commands.send(cmd).is_ok() {
            // A full wake-up buffer already means "look at the channel": losing this byte is fine.
            let _ = self.wake.send(&[1]);
        }
    }

    /// Queues a command without waking the broker: for `Standby`, which nothing reads before the
    /// standby's `WorkerReady`, whose handling looks at the channel first (`Broker::on_ready`).
    /// Under recycling it is sent once per replaced worker; its wake-up was a broker turn (and a
    /// thread switch on an idle pod) of its own.
    pub fn send_quiet(&self, cmd: Command) {
        let _ = self.commands.send(cmd);
    }

    pub fn stop(mut self) {
        self.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds the sockets (so address errors surface here) and starts the broker thread.
pub fn start(config: BrokerConfig, metrics: Metrics, events: UnboundedSender<Event>) -> anyhow::Result<BrokerHandle> {
    let (broker, mut handle) = Broker::new(config, metrics, events)?;
    handle.thread = Some(std::thread::Builder::new().name("broker".into()).spawn(move || broker.run())?);
    Ok(handle)
}

impl Payload for zmq::Message {
    fn duplicate(&self) -> Self {
        zmq::Message::from(&self[..])
    }
}

struct Broker {
    _ctx: zmq::Context,
    /// The frontend: every endpoint, or with CURVE on the ipc:// ones (or the tcp:// ones if
    /// there is no ipc:// frontend).
    frontend: zmq::Socket,
    /// With CURVE on and both kinds of frontends: the CURVE socket of the tcp:// ones.
    secure: Option<zmq::Socket>,
    /// Stops the ZAP handler thread when the broker ends.
    _zap: Option<zap::ZapHandler>,
    backend: zmq::Socket,
    wake: UnixDatagram,
    commands: mpsc::Receiver<Command>,
    /// Commands taken from the channel and not applied yet (see `receive_commands`).
    pending: VecDeque<Command>,
    sched: Scheduler<zmq::Message>,
    task_options: HashMap<String, TaskOptions>,
    catalog: Catalog,
    /// Ids announced as standbys, until they report ready (or exit first).
    standby_ids: HashSet<String>,
    /// Retires for ids not ready yet (a standby let go while it starts), applied once they report
    /// ready, forgotten if they exit first.
    retire_ids: HashMap<String, RetireReason>,
    max_payload: usize,
    idle_spin: Duration,
    liveness: Option<Duration>,
    metrics: Metrics,
    events: UnboundedSender<Event>,
    drained_sent: bool,
    last_load: (Instant, Load),
    parts: Vec<zmq::Message>,
    /// Random per process, in every Pong: clients tell a restarted orchestrator from this one.
    instance: u64,
}

enum Flow {
    Continue,
    Stop,
}

#[derive(Clone, Copy)]
enum Side {
    Frontend,
    /// The CURVE frontend beside a plain one (`Broker::secure`).
    Secure,
    Backend,
}

impl Broker {
    /// The broker with its sockets bound, and the handle that commands it (no thread yet).
    fn new(
        config: BrokerConfig,
        metrics: Metrics,
        events: UnboundedSender<Event>,
    ) -> anyhow::Result<(Broker, BrokerHandle)> {
        let ctx = zmq::Context::new();
        let Sockets { frontend, secure, zap, backend } = sockets::bind(&ctx, &config, &metrics)?;
        let (wake_tx, wake_rx) = UnixDatagram::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        let broker = Broker {
            _ctx: ctx,
            frontend,
            secure,
            _zap: zap,
            backend,
            wake: wake_rx,
            commands: rx,
            pending: VecDeque::new(),
            sched: Scheduler::new(config.policy),
            task_options: HashMap::new(),
            catalog: Catalog::default(),
            standby_ids: HashSet::new(),
            retire_ids: HashMap::new(),
            max_payload: config.max_message_bytes as usize,
            idle_spin: config.idle_spin,
            liveness: config.liveness,
            metrics,
            events,
            drained_sent: false,
            last_load: (Instant::now(), Load::default()),
            parts: Vec::with_capacity(4),
            instance: fastrand::u64(..),
        };
        Ok((broker, BrokerHandle { commands: tx, wake: wake_tx, thread: None }))
    }

    fn run(mut self) {
        while let Flow::Continue = self.turn() {}
        self.answer_queued();
        for origin in self.sched.abandon_in_flight() {
            let text = "the orchestrator stopped its worker while this task ran (grace period over)";
            self.reply_error(&origin, ErrorInfo::neutrino(ErrorKind::WorkerDied, text));
        }
        // The last replies are queued in libzmq; give them a moment to leave before the context ends.
        let _ = self.frontend.set_linger(FINAL_REPLIES_LINGER_MS);
        if let Some(secure) = &self.secure {
            let _ = secure.set_linger(FINAL_REPLIES_LINGER_MS);
        }
    }

    /// One pass of the poll loop: wait for a socket, a command or a deadline, then act on them.
    fn turn(&mut self) -> Flow {
        let timeout_ms = self.poll_timeout_ms(Instant::now());
        let (front, back, wake, secure) = {
            let mut items = [
                self.frontend.as_poll_item(zmq::POLLIN),
                self.backend.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(self.wake.as_raw_fd(), zmq::POLLIN),
                self.secure.as_ref().unwrap_or(&self.frontend).as_poll_item(zmq::POLLIN),
            ];
            let items = &mut items[..if self.secure.is_some() { 4 } else { 3 }];
            let spun = self.spin_now() && spin_poll(items, self.idle_spin) > 0;
            if !spun {
                if let Err(e) = zmq::poll(items, timeout_ms) {
                    if e == zmq::Error::EINTR {
                        return Flow::Continue;
                    }
                    error!("poll failed: {e}");
                    return Flow::Stop;
                }
            }
            let secure = items.get(3).is_some_and(|i| i.is_readable());
            (items[0].is_readable(), items[1].is_readable(), items[2].is_readable(), secure)
        };
        // Commands before sockets: the tokio side sends a command before it causes the messages
        // that depend on it (`Standby` goes out before the fork whose `WorkerReady` it names), so
        // every command sent before a message was produced is in the channel once the message can
        // be read. Reading the sockets first took a standby for a regular worker whenever both
        // waited at the same poll (a busy machine keeps this thread off the CPU for the few ms
        // a fork takes). A message can also arrive while the sockets are being read, after this
        // look at the channel: `on_ready` looks again for the one command that matters there.
        // `Stop` still lets this pass read what waits: results of the last tasks are answered.
        let flow = self.handle_commands(wake);
        // Results before requests: each one frees a worker for the tasks that follow.
        if back {
            self.drain(Side::Backend);
        }
        if front {
            self.drain(Side::Frontend);
        }
        if secure {
            self.drain(Side::Secure);
        }
        if matches!(flow, Flow::Stop) {
            return Flow::Stop;
        }
        let now = Instant::now();
        self.enforce_deadlines(now);
        self.dispatch(now);
        self.after_events(now);
        Flow::Continue
    }

    /// Block until the next time-based duty (retry due, timeout, silence, lifetime), or forever.
    fn poll_timeout_ms(&self, now: Instant) -> i64 {
        if !self.pending.is_empty() {
            return 0; // commands taken mid-read wait for the next pass, not for the next message
        }
        let mut next = self.sched.next_deadline(self.liveness);
        if self.sched.worker_counts().ready > 0 || self.sched.queue_depth() > 0 {
            // keep the load report flowing for the elastic pool (also to grow from zero workers)
            next = Some(
                next.map_or(self.last_load.0 + LOAD_REPORT_EVERY, |n| n.min(self.last_load.0 + LOAD_REPORT_EVERY)),
            );
        }
        match next {
            Some(at) => at.saturating_duration_since(now).as_millis().clamp(1, i64::MAX as u128) as i64,
            None => -1,
        }
    }

    /// Spin only while latency-bound: nothing queued and at most one task in flight per worker.
    /// Under load the CPUs never go idle, so blocking costs no wake-up latency there, and the
    /// spinning would take CPU from the workers.
    fn spin_now(&self) -> bool {
        !self.idle_spin.is_zero()
            && self.sched.queue_depth() == 0
            && self.sched.in_flight() <= self.sched.worker_counts().ready as usize
    }

    fn drain(&mut self, side: Side) {
        for _ in 0..MAX_BATCH {
            let socket = match side {
                Side::Frontend => &self.frontend,
                Side::Secure => self.secure.as_ref().expect("polled only when present"),
                Side::Backend => &self.backend,
            };
            self.parts.clear();
            match recv_parts(socket, &mut self.parts) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    error!("receive failed: {e}");
                    return;
                }
            }
            let mut parts = std::mem::take(&mut self.parts);
            match side {
                Side::Frontend | Side::Secure => {
                    if self.secure.is_some() {
                        tag_client(&mut parts, if matches!(side, Side::Secure) { TAG_CURVE } else { TAG_PLAIN });
                    }
                    self.on_client(&mut parts)
                }
                Side::Backend => self.on_worker(&mut parts),
            }
            self.parts = parts;
        }
    }

    /// Sends to a client on the socket its request came in on (see [`sockets::route`]).
    fn send_frontend<M: Message>(&self, client: &[u8], msg: &M, payload: Option<zmq::Message>) -> Result<(), Unsent> {
        let (socket, to) = route(&self.frontend, self.secure.as_ref(), client);
        send(socket, to, msg, payload)
    }

    /// Applies every command sent so far, in order. `woken`: the wake-up socket is readable
    /// (its bytes are read first, so a command sent after this look still wakes the next poll).
    fn handle_commands(&mut self, woken: bool) -> Flow {
        if woken {
            let mut buf = [0u8; 64];
            while self.wake.recv(&mut buf).is_ok() {}
        }
        self.receive_commands();
        while let Some(cmd) = self.pending.pop_front() {
            match cmd {
                Command::WorkerExited { worker_id, how } => self.on_worker_exited(&worker_id, &how),
                Command::ZygoteLost => self.on_zygote_lost(),
                Command::TaskOptions(options) => self.task_options = options,
                Command::Catalog(catalog) => self.catalog.set(catalog),
                Command::SetLimits(limits) => self.sched.set_limits(limits),
                Command::Retire { worker_id, reason } => self.retire(&worker_id, reason),
                Command::Standby { .. } => {} // applied on receipt
                Command::Drain => self.answer_queued(),
                Command::Stop => return Flow::Stop,
            }
        }
        Flow::Continue
    }

    /// Takes what waits in the command channel into `pending`, behind what is there already.
    /// `Standby` (and what `ZygoteLost` does to standbys) is applied at once: only `on_ready` reads
    /// what it sets, so its place among the other commands does not matter, and `on_ready` calls
    /// this mid-read without applying the rest (a `WorkerExited` would read the backend socket
    /// again from inside its own read).
    fn receive_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Standby { worker_id } => {
                    self.standby_ids.insert(worker_id);
                }
                Command::ZygoteLost => {
                    // The standby forked by the dead zygote never reports ready. Forgotten here,
                    // in the channel's order: the next zygote's `Standby` may follow in this read.
                    self.standby_ids.clear();
                    self.pending.push_back(Command::ZygoteLost);
                }
                other => self.pending.push_back(other),
            }
        }
    }

    /// Stops accepting and answers every queued task with `shutting_down` (it never ran).
    fn answer_queued(&mut self) {
        for task in self.sched.start_draining() {
            let origin = task.into_origin();
            let text = "the orchestrator shut down before this task ran; safe to retry elsewhere";
            self.reply_error(&origin, ErrorInfo::neutrino(ErrorKind::ShuttingDown, text));
        }
    }

    fn after_events(&mut self, now: Instant) {
        let counts = self.sched.worker_counts();
        self.metrics.set_gauges(self.sched.queue_depth(), counts.idle, counts.ready - counts.idle, counts.retiring);
        if self.sched.is_draining() && !self.drained_sent && self.sched.in_flight() == 0 {
            self.drained_sent = true;
            let _ = self.events.send(Event::Drained);
        }
        if now >= self.last_load.0 + LOAD_REPORT_EVERY {
            let load = Load {
                queue_depth: self.sched.queue_depth(),
                ready: counts.ready,
                idle: counts.idle,
                longest_idle: self
                    .sched
                    .longest_idle(now)
                    .map(|(id, d)| (String::from_utf8_lossy(&id).into_owned(), d)),
            };
            if load != self.last_load.1 || load.longest_idle.is_some() {
                let _ = self.events.send(Event::Load(load.clone()));
            }
            self.last_load = (now, load);
        }
    }
}

/// Polls without blocking for up to `budget`, yielding the CPU between polls; returns how many
/// items became ready (0: the budget ran out). Keeps this vCPU from halting between the messages
/// of a request/reply exchange: waking a halted vCPU costs 100-200 µs on a VM, more than a whole
/// round trip through the orchestrator (measured: p50 350-390 µs without, 175-265 µs with 200 µs).
fn spin_poll(items: &mut [zmq::PollItem], budget: Duration) -> i32 {
    let start = Instant::now();
    while start.elapsed() < budget {
        match zmq::poll(items, 0) {
            Ok(0) => std::thread::yield_now(),
            Ok(n) => return n,
            Err(_) => return 0, // the blocking poll that follows reports it
        }
    }
    0
}
