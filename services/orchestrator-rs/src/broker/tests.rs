//! The poll loop on real sockets, one pass at a time: the order in which commands from the
//! tokio side and messages from the sockets are acted on.

use neutrino_protocol::{
    decode_meta, encode_meta, header, parse_header, MessageType, Shutdown, SubmitTask, TaskRejected, WorkerReady,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::*;
use crate::scheduler::WorkerCounts;

/// How long a test waits for a message to cross a socket.
const DELIVERY_MS: i64 = 10_000;

fn broker() -> (Broker, BrokerHandle, UnboundedReceiver<Event>) {
    let config = BrokerConfig {
        frontends: vec!["tcp://127.0.0.1:*".into()],
        backend: "tcp://127.0.0.1:*".into(),
        policy: Policy { queue_limit: 16, window: 1, pipeline_max_us: 1000.0, limits: Limits::default() },
        max_message_bytes: 1 << 20,
        idle_spin: Duration::ZERO,
        liveness: None,
        curve: None,
    };
    let (events, rx) = unbounded_channel();
    let (broker, handle) = Broker::new(config, Metrics::new(), events).unwrap();
    (broker, handle, rx)
}

/// A DEALER connected to `to` (one of the broker's sockets) under `identity`.
fn peer(broker: &Broker, to: &zmq::Socket, identity: &str) -> zmq::Socket {
    let s = broker._ctx.socket(zmq::DEALER).unwrap();
    s.set_identity(identity.as_bytes()).unwrap();
    s.connect(&to.get_last_endpoint().unwrap().unwrap()).unwrap();
    s
}

/// Waits until `socket` has a message to read.
fn wait_readable(socket: &zmq::Socket) {
    let mut items = [socket.as_poll_item(zmq::POLLIN)];
    assert_eq!(zmq::poll(&mut items, DELIVERY_MS).unwrap(), 1, "nothing arrived within {DELIVERY_MS} ms");
}

/// A worker that sent `WorkerReady`, once the message waits in the broker's backend socket.
fn ready_worker(broker: &Broker, worker_id: &str) -> zmq::Socket {
    let worker = peer(broker, &broker.backend, worker_id);
    let ready = WorkerReady { worker_id: worker_id.into(), pid: 4242, credits: 1, tasks: vec![] };
    worker.send_multipart([header(WorkerReady::TYPE).to_vec(), encode_meta(&ready)], 0).unwrap();
    wait_readable(&broker.backend);
    worker
}

fn standby_only() -> WorkerCounts {
    WorkerCounts { ready: 0, idle: 0, retiring: 0, standby: 1 }
}

#[test]
fn a_standby_whose_ready_message_comes_in_the_same_poll_as_its_command_is_a_standby() {
    let (mut broker, handle, _events) = broker();
    // The supervisor's order: the command, then the fork, then the worker's `WorkerReady`; a
    // broker kept off the CPU meanwhile finds both waiting at once.
    handle.send(Command::Standby { worker_id: "worker-002".into() });
    let _worker = ready_worker(&broker, "worker-002");
    assert!(matches!(broker.turn(), Flow::Continue));
    assert_eq!(broker.sched.worker_counts(), standby_only(), "it takes no tasks");
}

#[test]
fn a_standby_command_sent_without_a_wake_up_is_seen_by_its_ready_message() {
    let (mut broker, handle, _events) = broker();
    // The supervisor queues `Standby` quietly: only the worker's `WorkerReady` wakes the broker.
    handle.send_quiet(Command::Standby { worker_id: "worker-002".into() });
    let _worker = ready_worker(&broker, "worker-002");
    assert!(matches!(broker.turn(), Flow::Continue));
    assert_eq!(broker.sched.worker_counts(), standby_only(), "it takes no tasks");
}

#[test]
fn a_ready_message_read_after_this_passs_commands_still_sees_its_standby_command() {
    let (mut broker, handle, _events) = broker();
    // Sent while the broker reads its sockets: after it looked at the command channel.
    handle.send(Command::Drain);
    handle.send(Command::Standby { worker_id: "worker-002".into() });
    let _worker = ready_worker(&broker, "worker-002");
    broker.drain(Side::Backend);
    assert_eq!(broker.sched.worker_counts(), standby_only());
    assert!(!broker.sched.is_draining(), "the other commands keep their turn");
    assert!(matches!(broker.turn(), Flow::Continue));
    assert!(broker.sched.is_draining(), "and are applied on the next pass");
}

fn retiring_only() -> WorkerCounts {
    WorkerCounts { ready: 0, idle: 0, retiring: 1, standby: 0 }
}

fn retire_idle(worker_id: &str) -> Command {
    Command::Retire { worker_id: worker_id.into(), reason: RetireReason::Idle }
}

/// How many workers the metrics count as retired for being idle (a shrink, or a standby let go).
fn idle_retirements(broker: &Broker) -> usize {
    let text = broker.metrics.render();
    let line = text.lines().find(|l| l.starts_with("neutrino_orchestrator_worker_recycles_total{reason=\"idle\"}"));
    line.map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// The worker's next message is `Shutdown`.
fn assert_told_to_shut_down(worker: &zmq::Socket) {
    wait_readable(worker);
    let msg = worker.recv_multipart(0).unwrap();
    assert_eq!(MessageType::from_code(parse_header(&msg[0]).unwrap()), Some(MessageType::Shutdown));
    let shutdown: Shutdown = decode_meta(&msg[1]).unwrap();
    assert!(shutdown.graceful);
}

#[test]
fn a_standby_retired_while_it_starts_is_retired_once_it_is_ready() {
    let (mut broker, handle, _events) = broker();
    // A SIGHUP turned recycling off while the standby forked: its `Retire` comes before its
    // `WorkerReady`, each in a pass of its own.
    handle.send(Command::Standby { worker_id: "worker-002".into() });
    handle.send(retire_idle("worker-002"));
    assert!(matches!(broker.turn(), Flow::Continue));
    assert_eq!(idle_retirements(&broker), 0, "nothing retired yet");
    let worker = ready_worker(&broker, "worker-002");
    assert!(matches!(broker.turn(), Flow::Continue));
    assert_eq!(broker.sched.worker_counts(), retiring_only(), "not left idle as a standby");
    assert_eq!(idle_retirements(&broker), 1);
    assert_told_to_shut_down(&worker);
    assert!(broker.retire_ids.is_empty() && broker.standby_ids.is_empty());
}

#[test]
fn a_retire_and_the_ready_message_it_precedes_in_one_poll_retire_the_worker() {
    let (mut broker, handle, _events) = broker();
    handle.send(retire_idle("worker-001"));
    let worker = ready_worker(&broker, "worker-001");
    assert!(matches!(broker.turn(), Flow::Continue));
    assert_eq!(broker.sched.worker_counts(), retiring_only());
    assert_eq!(idle_retirements(&broker), 1);
    assert_told_to_shut_down(&worker);
}

#[test]
fn a_retire_for_a_worker_that_exits_before_it_is_ready_is_forgotten() {
    let (mut broker, handle, _events) = broker();
    handle.send(Command::Standby { worker_id: "worker-002".into() });
    handle.send(retire_idle("worker-002"));
    // It could not start (or could not be forked: the zygote reports that as an exit too).
    handle.send(Command::WorkerExited { worker_id: "worker-002".into(), how: "exit code 1".into() });
    handle.send(Command::Standby { worker_id: "worker-003".into() });
    handle.send(retire_idle("worker-003"));
    assert!(matches!(broker.turn(), Flow::Continue));
    assert!(!broker.retire_ids.contains_key("worker-002") && !broker.standby_ids.contains("worker-002"));
    // A lost zygote takes every worker it forked, ready or not; not the next zygote's standby.
    handle.send(Command::ZygoteLost);
    handle.send(Command::Standby { worker_id: "worker-004".into() });
    assert!(matches!(broker.turn(), Flow::Continue));
    assert!(broker.retire_ids.is_empty());
    assert_eq!(broker.standby_ids, HashSet::from(["worker-004".to_owned()]));
    assert_eq!(idle_retirements(&broker), 0);
}

#[test]
fn a_second_retire_for_a_retiring_worker_is_not_counted_again() {
    let (mut broker, handle, _events) = broker();
    handle.send(retire_idle("worker-001"));
    let worker = ready_worker(&broker, "worker-001");
    assert!(matches!(broker.turn(), Flow::Continue));
    handle.send(retire_idle("worker-001"));
    assert!(matches!(broker.turn(), Flow::Continue));
    assert_eq!(idle_retirements(&broker), 1);
    assert!(broker.retire_ids.is_empty(), "a known worker's retire is never remembered");
    assert_told_to_shut_down(&worker);
}

#[test]
fn a_submission_sent_after_the_drain_command_is_refused_as_draining() {
    let (mut broker, handle, _events) = broker();
    handle.send(Command::Drain);
    let client = peer(&broker, &broker.frontend, "client");
    let submit = SubmitTask {
        id: 1,
        task: "add".into(),
        timeout_s: None,
        retries: None,
        ack: None,
        traceparent: None,
        tracestate: None,
    };
    client.send_multipart([header(SubmitTask::TYPE).to_vec(), encode_meta(&submit), vec![0x90]], 0).unwrap();
    wait_readable(&broker.frontend);
    assert!(matches!(broker.turn(), Flow::Continue));
    // Not queued and then answered `shutting_down`: the drain came first.
    wait_readable(&client);
    let reply = client.recv_multipart(0).unwrap();
    assert_eq!(MessageType::from_code(parse_header(&reply[0]).unwrap()), Some(MessageType::TaskRejected));
    let rejected: TaskRejected = decode_meta(&reply[1]).unwrap();
    assert_eq!((rejected.id, rejected.reason.as_str()), (1, "draining"));
}
