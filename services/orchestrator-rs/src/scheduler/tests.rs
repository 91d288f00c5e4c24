//! Scheduler behaviour, driven without sockets or processes.

use std::time::{Duration, Instant};

use super::*;

impl Payload for u32 {
    fn duplicate(&self) -> Self {
        *self
    }
}

fn sched(window: u32, queue_limit: usize) -> Scheduler<u32> {
    Scheduler::new(Policy { queue_limit, window, pipeline_max_us: 1000.0, limits: Limits::default() })
}

fn task(id: u64, name: &str) -> Task<u32> {
    with_policy(id, name, TaskPolicy::default())
}

fn with_policy(id: u64, name: &str, policy: TaskPolicy) -> Task<u32> {
    Task {
        client: b"c1".to_vec(),
        client_task_id: id,
        name: name.into(),
        policy,
        attempt: 1,
        accepted_at: Instant::now(),
        trace: TraceContext::default(),
        payload: id as u32,
    }
}

fn traced(id: u64, retries: u32, accepted_at: Instant) -> Task<u32> {
    let trace = TraceContext {
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        tracestate: Some("rojo=00f067aa0ba902b7".into()),
    };
    Task { accepted_at, trace, ..with_policy(id, "a", retrying(retries, None)) }
}

fn retrying(retries: u32, timeout_s: Option<f64>) -> TaskPolicy {
    TaskPolicy { timeout_s, retries, backoff_s: 0.001, backoff_max_s: 0.002 }
}

fn assignments(s: &mut Scheduler<u32>, now: Instant) -> Vec<Assignment<u32>> {
    std::iter::from_fn(|| s.next_assignment(now)).collect()
}

fn ready(s: &mut Scheduler<u32>, id: &[u8], now: Instant) {
    assert!(s.worker_ready(id.to_vec(), 10, 8, false, now).is_empty());
}

#[test]
fn a_task_waits_until_a_worker_is_ready_then_is_pushed() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    s.submit(task(1, "add")).unwrap();
    assert!(s.next_assignment(now).is_none());
    ready(&mut s, b"w1", now);
    let a = s.next_assignment(now).unwrap();
    assert_eq!((a.worker.as_slice(), a.payload, a.attempt), (&b"w1"[..], 1, 1));
    assert_eq!(s.worker_counts(), WorkerCounts { ready: 1, idle: 0, retiring: 0, standby: 0 });
}

#[test]
fn a_full_queue_rejects_busy_and_draining_rejects_draining() {
    let mut s = sched(1, 2);
    s.submit(task(1, "a")).unwrap();
    s.submit(task(2, "a")).unwrap();
    assert_eq!(s.submit(task(3, "a")).unwrap_err(), RejectReason::Busy);
    assert_eq!(s.start_draining().len(), 2);
    assert_eq!(s.submit(task(4, "a")).unwrap_err(), RejectReason::Draining);
}

#[test]
fn a_finished_task_frees_the_worker_for_the_next_pull() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    ready(&mut s, b"w1", now);
    for i in 1..=3 {
        s.submit(task(i, "a")).unwrap();
    }
    let first = assignments(&mut s, now);
    assert_eq!(first.len(), 1, "window 1: one in flight");
    let done = s.task_finished(b"w1", first[0].task_id, None, None, now);
    let origin = Origin { client: b"c1".to_vec(), client_task_id: 1, attempts: 1, queue_us: Some(0) };
    assert_eq!(done, Finished::Reply(origin));
    assert_eq!(assignments(&mut s, now).len(), 1);
    assert_eq!(s.queue_depth(), 1);
}

#[test]
fn idle_workers_are_used_before_any_pipelining() {
    let (mut s, now) = (sched(4, 10), Instant::now());
    s.observe_run_time("a", 10);
    ready(&mut s, b"w1", now);
    ready(&mut s, b"w2", now);
    s.submit(task(1, "a")).unwrap();
    s.submit(task(2, "a")).unwrap();
    let a = assignments(&mut s, now);
    assert_ne!(a[0].worker, a[1].worker);
}

#[test]
fn short_tasks_are_pipelined_up_to_the_window_and_long_ones_are_not() {
    let now = Instant::now();
    let mut s = sched(3, 100);
    ready(&mut s, b"w1", now);
    s.observe_run_time("short", 20);
    for i in 1..=5 {
        s.submit(task(i, "short")).unwrap();
    }
    assert_eq!(assignments(&mut s, now).len(), 3, "window of 3");

    let mut s = sched(3, 100);
    ready(&mut s, b"w1", now);
    s.observe_run_time("long", 50_000);
    s.submit(task(1, "long")).unwrap();
    s.submit(task(2, "long")).unwrap();
    assert_eq!(assignments(&mut s, now).len(), 1);
}

#[test]
fn nothing_is_pipelined_behind_a_long_or_unknown_task() {
    let (mut s, now) = (sched(4, 100), Instant::now());
    ready(&mut s, b"w1", now);
    s.observe_run_time("short", 20);
    s.submit(task(1, "never-seen")).unwrap();
    s.submit(task(2, "short")).unwrap();
    assert_eq!(assignments(&mut s, now).len(), 1);
}

#[test]
fn the_worker_window_is_capped_by_its_credits() {
    let (mut s, now) = (sched(8, 100), Instant::now());
    s.worker_ready(b"w1".to_vec(), 10, 2, false, now);
    s.observe_run_time("short", 20);
    for i in 1..=5 {
        s.submit(task(i, "short")).unwrap();
    }
    assert_eq!(assignments(&mut s, now).len(), 2);
}

#[test]
fn a_dead_worker_fails_its_running_task_and_requeues_the_ones_behind_it() {
    let (mut s, now) = (sched(4, 10), Instant::now());
    s.observe_run_time("a", 20);
    ready(&mut s, b"w1", now);
    for i in 1..=3 {
        s.submit(task(i, "a")).unwrap();
    }
    assert_eq!(assignments(&mut s, now).len(), 3);
    let answers = s.worker_failed(b"w1", Failure::WorkerDied("exited with code 1".into()), now);
    assert_eq!(answers.len(), 1, "only the running task spent its attempt");
    assert_eq!(answers[0].origin.client_task_id, 1);
    assert_eq!(answers[0].error.kind, "worker_died");
    assert_eq!(s.queue_depth(), 2, "the two never started");
    ready(&mut s, b"w2", now);
    let again = assignments(&mut s, now);
    assert_eq!(again.iter().map(|a| a.payload).collect::<Vec<_>>(), vec![2, 3], "in their original order");
    assert!(again.iter().all(|a| a.attempt == 1), "no attempt spent");
}

#[test]
fn a_result_from_the_wrong_worker_is_ignored_and_each_task_answers_once() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    ready(&mut s, b"w1", now);
    s.submit(task(1, "a")).unwrap();
    let a = s.next_assignment(now).unwrap();
    assert_eq!(s.task_finished(b"w2", a.task_id, None, None, now), Finished::Dropped);
    assert!(matches!(s.task_finished(b"w1", a.task_id, None, None, now), Finished::Reply(_)));
    assert_eq!(s.task_finished(b"w1", a.task_id, None, None, now), Finished::Dropped);
}

#[test]
fn a_requeued_assignment_goes_first_and_frees_its_credit() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    ready(&mut s, b"w1", now);
    s.submit(task(1, "a")).unwrap();
    s.submit(task(2, "a")).unwrap();
    let a = s.next_assignment(now).unwrap();
    s.requeue_front(a.task_id, a.payload, a.trace);
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.next_assignment(now).unwrap().payload, 1, "the requeued task runs first");
}

#[test]
fn an_overrunning_task_is_found_and_retried_while_attempts_remain() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    ready(&mut s, b"w1", now);
    s.submit(with_policy(1, "slow", retrying(1, Some(0.5)))).unwrap();
    let a = s.next_assignment(now).unwrap();
    assert!(s.overran(now + Duration::from_millis(400)).is_empty());
    let late = now + Duration::from_millis(600);
    assert_eq!(s.overran(late), vec![(b"w1".to_vec(), 10)]);
    assert!(s.worker_failed(b"w1", Failure::Timeout, late).is_empty(), "retried, not answered");
    assert_eq!(s.delayed(), 1);
    assert!(s.next_deadline(None).is_some_and(|d| d > late));
    s.release_due_retries(late + Duration::from_secs(1));
    ready(&mut s, b"w2", late);
    let second = s.next_assignment(late).unwrap();
    assert_eq!((second.attempt, second.payload), (2, a.payload));
    let out = s.worker_failed(b"w2", Failure::Timeout, late + Duration::from_secs(2));
    assert_eq!(out.len(), 1, "no retries left");
    assert_eq!((out[0].error.kind.as_str(), out[0].origin.attempts), ("timeout", 2));
}

#[test]
fn a_task_asking_for_a_retry_gets_one_only_while_attempts_remain() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    ready(&mut s, b"w1", now);
    s.submit(with_policy(1, "flaky", retrying(1, None))).unwrap();
    let a = s.next_assignment(now).unwrap();
    assert_eq!(s.task_finished(b"w1", a.task_id, None, Some(Some(0.0)), now), Finished::Retrying);
    s.release_due_retries(now + Duration::from_secs(1));
    let b = s.next_assignment(now).unwrap();
    let done = s.task_finished(b"w1", b.task_id, None, Some(None), now);
    let origin = Origin { client: b"c1".to_vec(), client_task_id: 1, attempts: 2, queue_us: Some(0) };
    assert_eq!(done, Finished::Reply(origin));
}

#[test]
fn the_trace_context_rides_on_every_attempt() {
    let (mut s, now) = (sched(4, 10), Instant::now());
    let want = traced(1, 2, now).trace;
    ready(&mut s, b"w1", now);
    s.submit(traced(1, 2, now)).unwrap();
    let first = s.next_assignment(now).unwrap();
    assert_eq!((first.attempt, &first.trace), (1, &want));
    // attempt 2 after a retry the task asked for
    assert_eq!(s.task_finished(b"w1", first.task_id, None, Some(Some(0.0)), now), Finished::Retrying);
    s.release_due_retries(now + Duration::from_secs(2));
    let second = s.next_assignment(now).unwrap();
    assert_eq!((second.attempt, &second.trace), (2, &want));
    // attempt 3 after its worker died
    assert!(s.worker_failed(b"w1", Failure::WorkerDied("killed".into()), now).is_empty());
    s.release_due_retries(now + Duration::from_secs(5));
    ready(&mut s, b"w2", now);
    let third = s.next_assignment(now).unwrap();
    assert_eq!((third.attempt, &third.trace), (3, &want));
}

#[test]
fn an_unsent_or_unstarted_assignment_keeps_its_trace_context() {
    let (mut s, now) = (sched(4, 10), Instant::now());
    let want = traced(1, 0, now).trace;
    s.observe_run_time("a", 20);
    ready(&mut s, b"w1", now);
    // No retries: the assignment took the only copy; a failed send gives it back.
    s.submit(traced(1, 0, now)).unwrap();
    let a = s.next_assignment(now).unwrap();
    s.requeue_front(a.task_id, a.payload, a.trace);
    let again = s.next_assignment(now).unwrap();
    assert_eq!((again.attempt, &again.trace), (1, &want));
    // Pipelined behind a running task whose worker dies: sent again, unchanged.
    s.submit(traced(2, 0, now)).unwrap();
    let behind = s.next_assignment(now).unwrap();
    assert_eq!(behind.payload, 2);
    assert_eq!(s.worker_failed(b"w1", Failure::WorkerDied("killed".into()), now).len(), 1);
    ready(&mut s, b"w2", now);
    let resent = s.next_assignment(now).unwrap();
    assert_eq!((resent.payload, resent.attempt, &resent.trace), (2, 1, &want));
    // A task without a trace context gets none.
    s.submit(task(3, "a")).unwrap();
    assert_eq!(s.next_assignment(now).unwrap().trace, TraceContext::default());
}

#[test]
fn queue_time_runs_from_acceptance_to_the_last_assignment_backoffs_included() {
    let (mut s, t0) = (sched(1, 10), Instant::now());
    let ms = |n| t0 + Duration::from_millis(n);
    ready(&mut s, b"w1", t0);
    s.submit(traced(1, 1, t0)).unwrap();
    let first = s.next_assignment(ms(5)).unwrap();
    assert_eq!(first.queued_for, Duration::from_millis(5));
    assert_eq!(s.task_finished(b"w1", first.task_id, Some(100), Some(Some(1.0)), ms(10)), Finished::Retrying);
    s.release_due_retries(ms(2_000));
    let second = s.next_assignment(ms(2_500)).unwrap();
    let Finished::Reply(origin) = s.task_finished(b"w1", second.task_id, Some(7), None, ms(2_600)) else {
        panic!("answered")
    };
    assert_eq!((origin.attempts, origin.queue_us), (2, Some(2_500_000)));
    // An orchestrator error about an assigned attempt has it too; a task never assigned has none.
    s.submit(traced(2, 0, ms(3_000))).unwrap();
    s.next_assignment(ms(3_001)).unwrap();
    let answers = s.worker_failed(b"w1", Failure::Timeout, ms(4_000));
    assert_eq!(answers[0].origin.queue_us, Some(1_000));
    s.submit(traced(3, 0, ms(5_000))).unwrap();
    let Cancelled::Answer(never) = s.cancel(b"c1", 3) else { panic!("queued") };
    assert_eq!((never.origin.attempts, never.origin.queue_us), (0, None));
}

#[test]
fn cancel_drops_queued_kills_running_and_answers_held_at_once() {
    let (mut s, now) = (sched(4, 10), Instant::now());
    s.observe_run_time("a", 20);
    ready(&mut s, b"w1", now);
    for i in 1..=3 {
        s.submit(task(i, "a")).unwrap();
    }
    assert_eq!(assignments(&mut s, now).len(), 3);
    s.submit(task(4, "a")).unwrap();
    assert!(matches!(s.cancel(b"c1", 4), Cancelled::Answer(a) if a.origin.attempts == 0));
    assert_eq!(s.cancel(b"other", 1), Cancelled::NotFound);
    // Task 2 waits behind the running task 1: answered now, its result dropped later.
    let Cancelled::Answer(held) = s.cancel(b"c1", 2) else { panic!("held task") };
    assert_eq!(held.error.kind, "cancelled");
    // Task 1 runs: the worker must be killed.
    assert_eq!(s.cancel(b"c1", 1), Cancelled::Kill { worker: b"w1".to_vec(), pid: 10 });
    let answers = s.worker_failed(b"w1", Failure::Cancelled, now);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].error.kind, "cancelled");
    assert_eq!(s.queue_depth(), 1, "task 3 goes back; cancelled task 2 does not");
}

#[test]
fn a_worker_over_its_task_limit_retires_and_is_shut_down_when_empty() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    s.set_limits(Limits { max_tasks: 2, ..Limits::default() });
    ready(&mut s, b"w1", now);
    for i in 1..=3 {
        s.submit(task(i, "a")).unwrap();
    }
    for _ in 0..2 {
        let a = s.next_assignment(now).unwrap();
        s.task_finished(b"w1", a.task_id, None, None, now);
    }
    assert_eq!(s.check_recycle(b"w1", now), Some(RetireReason::MaxTasks));
    assert_eq!(s.check_recycle(b"w1", now), None, "reported once");
    assert!(s.next_assignment(now).is_none(), "a retiring worker gets nothing new");
    assert_eq!(s.to_shut_down(), vec![b"w1".to_vec()]);
    assert!(s.to_shut_down().is_empty(), "shut down once");
    assert_eq!(s.worker_counts(), WorkerCounts { ready: 0, idle: 0, retiring: 1, standby: 0 });
}

#[test]
fn a_standby_takes_no_tasks_until_promoted() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    s.worker_ready(b"spare".to_vec(), 11, 8, true, now);
    s.submit(task(1, "a")).unwrap();
    assert!(s.next_assignment(now).is_none());
    assert!(s.longest_idle(now).is_none(), "a standby is never shrunk away");
    assert_eq!(s.worker_counts().standby, 1);
    assert_eq!(s.promote_standby(now), Some(b"spare".to_vec()));
    assert_eq!(s.next_assignment(now).unwrap().worker, b"spare".to_vec());
    assert_eq!(s.promote_standby(now), None);
}

#[test]
fn a_retiring_standby_is_never_promoted() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    s.worker_ready(b"spare".to_vec(), 11, 8, true, now);
    assert!(s.retire(b"spare", RetireReason::Idle));
    assert_eq!(s.promote_standby(now), None);
    assert_eq!(s.worker_counts(), WorkerCounts { ready: 0, idle: 0, retiring: 1, standby: 0 });
}

#[test]
fn rss_and_lifetime_limits_retire_workers() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    s.set_limits(Limits { max_rss_kb: 1000, max_lifetime: Some(Duration::from_secs(10)), ..Limits::default() });
    ready(&mut s, b"w1", now);
    ready(&mut s, b"w2", now);
    assert_eq!(s.heard_from(b"w1", Some(999), now), None);
    assert_eq!(s.heard_from(b"w1", Some(1001), now), Some(RetireReason::MaxRss));
    assert!(s.expired_lifetimes(now + Duration::from_secs(5)).is_empty());
    let later = now + Duration::from_secs(12);
    assert_eq!(s.expired_lifetimes(later), vec![(b"w2".to_vec(), RetireReason::MaxLifetime)]);
}

#[test]
fn silent_workers_are_reported_after_the_liveness_window() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    ready(&mut s, b"w1", now);
    let liveness = Duration::from_secs(3);
    assert!(s.silent(liveness, now + Duration::from_secs(2)).is_empty());
    s.heard_from(b"w1", None, now + Duration::from_secs(2));
    assert!(s.silent(liveness, now + Duration::from_secs(4)).is_empty());
    assert_eq!(s.silent(liveness, now + Duration::from_secs(6)), vec![(b"w1".to_vec(), 10)]);
}

#[test]
fn draining_hands_back_queued_and_delayed_tasks() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    ready(&mut s, b"w1", now);
    s.submit(with_policy(1, "a", retrying(2, None))).unwrap();
    let a = s.next_assignment(now).unwrap();
    s.task_finished(b"w1", a.task_id, None, Some(None), now);
    s.submit(task(2, "a")).unwrap();
    assert_eq!(s.start_draining().len(), 2);
    assert_eq!(s.delayed(), 0);
}

#[test]
fn the_longest_idle_worker_is_found_for_shrinking() {
    let (mut s, now) = (sched(1, 10), Instant::now());
    ready(&mut s, b"w1", now);
    ready(&mut s, b"w2", now + Duration::from_secs(1));
    let (id, idle) = s.longest_idle(now + Duration::from_secs(5)).unwrap();
    assert_eq!((id.as_slice(), idle), (&b"w1"[..], Duration::from_secs(5)));
    assert!(s.retire(b"w1", RetireReason::Idle));
    assert_eq!(s.longest_idle(now + Duration::from_secs(5)).unwrap().0, b"w2".to_vec());
}
