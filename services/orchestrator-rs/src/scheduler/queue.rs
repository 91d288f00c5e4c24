//! Tasks waiting for a worker: the queue in dispatch order (new tasks join the back; tasks put
//! back, and retries whose delay is over, go to the front) and the tasks waiting out a retry
//! delay, by due time. Plain collections: the bound, the draining flag and the workers are the
//! scheduler's.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Instant;

use super::Task;

#[derive(Debug)]
pub(super) struct Queue<P> {
    ready: VecDeque<Task<P>>,
    /// Tasks waiting for their next attempt: due time and a key into `delayed_tasks`.
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_tasks: HashMap<u64, Task<P>>,
    next_key: u64,
}

impl<P> Queue<P> {
    pub fn new() -> Self {
        Queue { ready: VecDeque::new(), delayed: BinaryHeap::new(), delayed_tasks: HashMap::new(), next_key: 0 }
    }

    /// Tasks ready for a worker (not those waiting for a retry).
    pub fn len(&self) -> usize {
        self.ready.len()
    }

    /// Tasks waiting for a retry.
    pub fn delayed(&self) -> usize {
        self.delayed_tasks.len()
    }

    pub fn push_back(&mut self, task: Task<P>) {
        self.ready.push_back(task);
    }

    pub fn push_front(&mut self, task: Task<P>) {
        self.ready.push_front(task);
    }

    pub fn front(&self) -> Option<&Task<P>> {
        self.ready.front()
    }

    pub fn pop_front(&mut self) -> Option<Task<P>> {
        self.ready.pop_front()
    }

    /// Holds a task back until `due` (see [`Queue::release_due`]).
    pub fn delay(&mut self, task: Task<P>, due: Instant) {
        let key = self.next_key;
        self.next_key += 1;
        self.delayed.push(Reverse((due, key)));
        self.delayed_tasks.insert(key, task);
    }

    /// Moves tasks whose retry delay is over to the front, earliest due first.
    pub fn release_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse((at, key))) = self.delayed.peek().copied() {
            if at > now {
                break;
            }
            self.delayed.pop();
            due.extend(self.delayed_tasks.remove(&key));
        }
        for task in due.into_iter().rev() {
            self.ready.push_front(task);
        }
    }

    /// When the earliest delayed task is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse((due, _))| *due)
    }

    /// Takes out the task a client submitted as `client_task_id`, ready or delayed.
    pub fn remove(&mut self, client: &[u8], client_task_id: u64) -> Option<Task<P>> {
        let mine = |t: &Task<P>| t.client == client && t.client_task_id == client_task_id;
        if let Some(pos) = self.ready.iter().position(mine) {
            return self.ready.remove(pos);
        }
        let key = self.delayed_tasks.iter().find(|(_, t)| mine(t)).map(|(k, _)| *k)?;
        self.delayed_tasks.remove(&key)
    }

    /// Empties the queue: the ready tasks in order, then the delayed ones.
    pub fn drain(&mut self) -> Vec<Task<P>> {
        self.delayed.clear();
        let mut out: Vec<Task<P>> = self.ready.drain(..).collect();
        out.extend(self.delayed_tasks.drain().map(|(_, t)| t));
        out
    }
}
