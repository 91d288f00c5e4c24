//! Pool decisions, driven without a zygote, a broker or sockets.

use clap::Parser;
use neutrino_protocol::{ErrorInfo, ErrorKind};

use super::*;

fn pool(flags: &[&str]) -> Pool {
    let args = ["neutrino-orchestrator", "--app", "app:app"].iter().chain(flags);
    Pool::new(Config::try_parse_from(args).unwrap(), Metrics::new(), Instant::now())
}

fn fork(ids: &[&str]) -> Action {
    Action::Fork(ids.iter().map(|id| id.to_string()).collect())
}

fn standby(id: &str) -> Action {
    Action::Standby(id.into())
}

fn retire(id: &str) -> Action {
    Action::Retire { worker_id: id.into(), reason: RetireReason::Idle }
}

/// Starts the pool and makes every worker it forked ready.
fn started(flags: &[&str]) -> Pool {
    let mut p = pool(flags);
    for action in p.start() {
        for id in forked(&action) {
            p.on_ready(id, 1);
        }
    }
    p
}

fn forked(action: &Action) -> Vec<String> {
    match action {
        Action::Fork(ids) => ids.clone(),
        Action::Standby(id) => vec![id.clone()],
        _ => vec![],
    }
}

fn exit(p: &mut Pool, id: &str, code: u32, error: Option<ErrorInfo>) -> Vec<Action> {
    let m = WorkerExited { worker_id: id.into(), pid: 7, exit_code: Some(code), signal: None, error };
    p.on_exit(&m, &exit_status(&m), true)
}

fn start_error() -> Option<ErrorInfo> {
    Some(ErrorInfo::neutrino(ErrorKind::WorkerStartError, "boom"))
}

fn idle(id: &str, for_s: u64) -> Load {
    Load { queue_depth: 0, ready: 1, idle: 1, longest_idle: Some((id.into(), Duration::from_secs(for_s))) }
}

/// `owed_at` lies `delay` after a moment between `before` and now.
fn assert_owed_in(p: &Pool, before: Instant, delay: Duration) {
    let at = p.owed_at().expect("a replacement is owed");
    assert!(at >= before + delay && at <= Instant::now() + delay, "owed {:?} after start", at - before);
}

#[test]
fn start_forks_the_pool_in_one_message_and_announces_ready_when_full() {
    let mut p = pool(&["--workers", "2"]);
    assert_eq!(p.start(), vec![fork(&["worker-001", "worker-002"])]);
    p.on_ready("worker-001".into(), 1);
    assert!(!p.metrics.is_ready());
    p.on_ready("worker-002".into(), 2);
    assert!(p.metrics.is_ready());
}

#[test]
fn a_worker_that_dies_while_serving_is_replaced_at_once() {
    let mut p = started(&["--workers", "2"]);
    assert_eq!(exit(&mut p, "worker-001", 1, None), vec![fork(&["worker-003"])]);
    assert_eq!(p.owed_at(), None);
}

#[test]
fn a_killed_worker_is_replaced_at_once_even_before_it_was_ready() {
    let mut p = pool(&["--workers", "1"]);
    p.start();
    p.on_killed("worker-001".into());
    assert_eq!(exit(&mut p, "worker-001", 1, None), vec![fork(&["worker-002"])]);
}

#[test]
fn workers_that_crash_at_start_are_replaced_after_a_doubling_backoff() {
    let mut p = pool(&["--workers", "1"]);
    p.start();
    let before = Instant::now();
    assert_eq!(exit(&mut p, "worker-001", 1, start_error()), vec![]);
    assert_owed_in(&p, before, CRASH_BACKOFF_FIRST);
    assert_eq!(p.fork_owed(), vec![fork(&["worker-002"])]);
    assert_eq!(p.owed_at(), None);

    // Dying before `WorkerReady` without saying why counts as a start failure too.
    let before = Instant::now();
    assert_eq!(exit(&mut p, "worker-002", 1, None), vec![]);
    assert_owed_in(&p, before, CRASH_BACKOFF_FIRST * 2);
    assert_eq!(p.fork_owed(), vec![fork(&["worker-003"])]);

    // One that starts ends the run of failures: the next crash at start waits the first delay.
    p.on_ready("worker-003".into(), 3);
    assert_eq!(exit(&mut p, "worker-003", 1, None), vec![fork(&["worker-004"])]);
    let before = Instant::now();
    exit(&mut p, "worker-004", 1, start_error());
    assert_owed_in(&p, before, CRASH_BACKOFF_FIRST);
}

#[test]
fn the_backoff_is_capped() {
    assert_eq!(backoff(CRASH_BACKOFF_FIRST, 1), CRASH_BACKOFF_FIRST);
    assert_eq!(backoff(CRASH_BACKOFF_FIRST, 3), CRASH_BACKOFF_FIRST * 4);
    assert_eq!(backoff(CRASH_BACKOFF_FIRST, 40), CRASH_BACKOFF_MAX);
}

#[test]
fn replacements_owed_count_toward_capacity_so_crashes_do_not_overfork() {
    let mut p = pool(&["--workers", "2"]);
    p.start();
    exit(&mut p, "worker-001", 1, start_error());
    exit(&mut p, "worker-002", 1, start_error());
    // Both owed, once: the second exit did not owe the first one's replacement again.
    assert_eq!(p.fork_owed(), vec![fork(&["worker-003", "worker-004"])]);
}

#[test]
fn a_retired_workers_exit_is_not_replaced() {
    let mut p = started(&["--workers", "2", "--min-workers", "1", "--worker-idle-timeout", "5"]);
    assert_eq!(p.on_load(idle("worker-001", 10)), vec![retire("worker-001")]);
    assert_eq!(exit(&mut p, "worker-001", 0, None), vec![]);
}

#[test]
fn with_recycling_on_a_standby_is_forked_and_takes_a_recycled_workers_place() {
    let mut p = pool(&["--workers", "1", "--max-tasks-per-worker", "5"]);
    assert_eq!(p.start(), vec![fork(&["worker-001"]), standby("worker-002")]);
    p.on_ready("worker-002".into(), 2);
    assert!(!p.metrics.is_ready(), "the standby does not take tasks");
    p.on_ready("worker-001".into(), 1);
    assert!(p.metrics.is_ready());

    let actions = p.on_recycled("worker-001".into(), Some("worker-002".into()), true);
    assert_eq!(actions, vec![standby("worker-003")], "promoted: only a new standby is forked");
    assert_eq!(exit(&mut p, "worker-001", 0, None), vec![], "the recycled worker's exit is expected");
}

#[test]
fn a_recycle_without_a_ready_standby_forks_a_replacement() {
    let mut p = pool(&["--workers", "1", "--max-tasks-per-worker", "5"]);
    p.start();
    p.on_ready("worker-001".into(), 1);
    // The standby (worker-002) is still forking: a replacement, and no second standby.
    assert_eq!(p.on_recycled("worker-001".into(), None, true), vec![fork(&["worker-003"])]);
}

#[test]
fn a_recycle_with_no_standby_promoted_forks_a_replacement_even_if_ours_was_ready() {
    let mut p = started(&["--workers", "1", "--max-tasks-per-worker", "5"]);
    // The broker killed our ready standby (silent); its exit has not reached the pool yet.
    p.on_killed("worker-002".into());
    assert_eq!(p.on_recycled("worker-001".into(), None, true), vec![fork(&["worker-003"])]);
    assert_eq!(exit(&mut p, "worker-002", 1, None), vec![standby("worker-004")]);
    assert_eq!(exit(&mut p, "worker-001", 0, None), vec![], "the recycled worker's exit is expected");
}

#[test]
fn a_standby_that_crashes_at_start_is_not_refork_looped() {
    let mut p = pool(&["--workers", "1", "--max-tasks-per-worker", "5"]);
    p.start();
    p.on_ready("worker-001".into(), 1);
    assert_eq!(exit(&mut p, "worker-002", 1, start_error()), vec![]);
    assert_eq!(p.owed_at(), None);
    // The next recycle forks a replacement and a new standby.
    let actions = p.on_recycled("worker-001".into(), None, true);
    assert_eq!(actions, vec![fork(&["worker-003"]), standby("worker-004")]);
}

#[test]
fn a_ready_standby_that_dies_is_replaced_by_another_standby() {
    let mut p = started(&["--workers", "1", "--max-tasks-per-worker", "5"]);
    assert_eq!(exit(&mut p, "worker-002", 1, None), vec![standby("worker-003")]);
}

#[test]
fn nothing_is_replaced_while_draining() {
    let mut p = started(&["--workers", "1", "--max-tasks-per-worker", "5"]);
    assert_eq!(p.on_recycled("worker-001".into(), Some("worker-002".into()), false), vec![]);
    let m = WorkerExited { worker_id: "worker-003".into(), pid: 7, exit_code: Some(1), signal: None, error: None };
    assert_eq!(p.on_exit(&m, "exit code 1", false), vec![]);
}

#[test]
fn an_elastic_pool_grows_while_tasks_wait_and_no_worker_is_idle() {
    let mut p = started(&["--workers", "1", "--max-workers", "2"]);
    let waiting = Load { queue_depth: 3, ready: 1, idle: 0, longest_idle: None };
    assert_eq!(p.on_load(waiting.clone()), vec![fork(&["worker-002"])]);
    assert_eq!(p.on_load(waiting.clone()), vec![], "one fork at a time");
    p.on_ready("worker-002".into(), 2);
    assert_eq!(p.on_load(waiting), vec![], "not past --max-workers");
}

#[test]
fn an_elastic_pool_shrinks_a_long_idle_worker_down_to_its_minimum() {
    let mut p = started(&["--workers", "3", "--min-workers", "1", "--worker-idle-timeout", "5"]);
    assert_eq!(p.on_load(idle("worker-001", 4)), vec![], "not idle long enough");
    assert_eq!(p.on_load(idle("worker-001", 5)), vec![retire("worker-001")]);
    assert_eq!(p.on_load(idle("worker-002", 9)), vec![retire("worker-002")]);
    assert_eq!(p.on_load(idle("worker-003", 9)), vec![], "at --min-workers");
    // A crash now replaces up to the shrunk target only.
    assert_eq!(exit(&mut p, "worker-003", 1, None), vec![fork(&["worker-004"])]);
}

#[test]
fn a_lost_zygote_is_restarted_after_a_doubling_backoff_and_the_pool_forked_again() {
    let mut p = started(&["--workers", "2", "--max-tasks-per-worker", "5"]);
    exit(&mut p, "worker-001", 1, start_error());
    assert_eq!(p.zygote_lost(9), vec![Action::RestartZygote { after: ZYGOTE_BACKOFF_FIRST }]);
    assert_eq!(p.owed_at(), None, "owed replacements die with the zygote");
    assert_eq!(p.zygote_started(), vec![fork(&["worker-004", "worker-005"]), standby("worker-006")]);
    assert_eq!(p.zygote_lost(9), vec![Action::RestartZygote { after: ZYGOTE_BACKOFF_FIRST * 2 }]);
    // A worker that starts resets the backoff.
    p.zygote_started();
    p.on_ready("worker-007".into(), 7);
    assert_eq!(p.zygote_lost(9), vec![Action::RestartZygote { after: ZYGOTE_BACKOFF_FIRST }]);
}

#[test]
fn a_reload_grows_or_shrinks_the_pool_and_turns_the_standby_on_or_off() {
    let config = |flags: &[&str]| {
        let args = ["neutrino-orchestrator", "--app", "app:app"].iter().chain(flags);
        Config::try_parse_from(args).unwrap()
    };
    let mut p = started(&["--workers", "1"]);
    let actions = p.reload(&config(&["--workers", "3", "--max-tasks-per-worker", "5"]));
    assert_eq!(actions, vec![fork(&["worker-002", "worker-003"]), standby("worker-004")]);
    for id in ["worker-002", "worker-003", "worker-004"] {
        p.on_ready(id.into(), 1);
    }

    let actions = p.reload(&config(&["--workers", "2"]));
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(matches!(&actions[0], Action::Retire { worker_id, .. } if worker_id != "worker-004"));
    assert_eq!(actions[1], retire("worker-004"), "no recycling: the standby is retired");
}

#[test]
fn a_standby_let_go_by_a_reload_while_it_starts_never_joins_the_pool() {
    let config = |flags: &[&str]| {
        Config::try_parse_from(["neutrino-orchestrator", "--app", "app:app"].iter().chain(flags)).unwrap()
    };
    let mut p = pool(&["--workers", "1", "--max-workers", "2", "--max-tasks-per-worker", "5"]);
    assert_eq!(p.start(), vec![fork(&["worker-001"]), standby("worker-002")]);
    p.on_ready("worker-001".into(), 1);
    // Recycling off while the standby forks: it is retired, not a regular worker on its way.
    let actions = p.reload(&config(&["--workers", "1", "--max-workers", "2"]));
    assert_eq!(actions, vec![retire("worker-002")]);
    assert_eq!(p.capacity(), 1);
    let waiting = Load { queue_depth: 3, ready: 1, idle: 0, longest_idle: None };
    assert_eq!(p.on_load(waiting), vec![fork(&["worker-003"])], "its fork does not hold growth back");
    p.on_ready("worker-002".into(), 2);
    assert!(!p.live.contains("worker-002"), "the broker retires it once ready");
    assert_eq!(exit(&mut p, "worker-002", 0, None), vec![], "its exit is expected");
    assert!(p.retired.is_empty() && p.forking.len() == 1, "{:?}", p.forking);
}

#[test]
fn a_load_report_naming_a_worker_that_already_exited_retires_nothing() {
    let mut p = started(&["--workers", "3", "--min-workers", "1", "--worker-idle-timeout", "5"]);
    assert_eq!(exit(&mut p, "worker-001", 1, None), vec![fork(&["worker-004"])]);
    // Sent by the broker before it heard of that exit.
    assert_eq!(p.on_load(idle("worker-001", 10)), vec![]);
    assert_eq!(p.target, 3);
    assert!(p.retired.is_empty());
}

#[test]
fn news_of_a_worker_that_already_exited_is_not_remembered_or_replaced_twice() {
    let mut p = started(&["--workers", "1", "--max-tasks-per-worker", "5"]);
    // worker-001 crashed right after its last result; the pool heard of the exit first.
    assert_eq!(exit(&mut p, "worker-001", 1, None), vec![fork(&["worker-003"])]);
    p.on_killed("worker-001".into());
    assert!(p.killed.is_empty());
    // The broker recycled it on that result, with no ready standby: no second replacement.
    assert_eq!(p.on_recycled("worker-001".into(), None, true), vec![]);
    assert!(p.retired.is_empty());
    // With the standby promoted there, the pool follows: a new standby, no replacement.
    let mut p = started(&["--workers", "1", "--max-tasks-per-worker", "5"]);
    exit(&mut p, "worker-001", 1, None);
    assert_eq!(p.on_recycled("worker-001".into(), Some("worker-002".into()), true), vec![standby("worker-004")]);
    assert!(p.live.contains("worker-002") && p.retired.is_empty());
}
