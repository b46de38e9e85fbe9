//! The disk threads: an upload's md5 and its blocking disk work (writes, fsync, rename) run
//! off the loop, so that the loop never waits on the disk and never spends its core hashing.
//! A job has two halves: the hashing thread runs the first, which returns the second for the
//! disk thread. Both threads take jobs in the order queued, so a connection's results come
//! back in order; they come through a channel, and a `mio::Waker` wakes the poll to collect
//! them.

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use mio::{Token, Waker};

use super::{Entry, Reactor};
use crate::service::Event;
use crate::service::files::DiskJob;

/// The second half of a job, for the disk thread.
pub type Work<R> = Box<dyn FnOnce() -> R + Send>;

/// A job: its first half runs on the hashing thread and returns the second.
pub type Job<R> = Box<dyn FnOnce() -> Work<R> + Send>;

/// The two threads and the channels in and out.
pub struct DiskThreads<R: Send + 'static> {
    /// Work for the hashing thread, tagged with the connection it is for.
    jobs: Option<Sender<(Token, Job<R>)>>,
    /// Results, tagged likewise.
    done: Receiver<(Token, R)>,
    /// The hashing thread, then the disk thread: joined in that order on drop.
    handles: Vec<JoinHandle<()>>,
}

impl<R: Send + 'static> DiskThreads<R> {
    /// Starts both threads; the disk thread wakes the poll through `waker` after each job. (A
    /// poll has one waker, which the reactor shares with whatever else must wake it.)
    pub fn start(waker: Arc<Waker>) -> io::Result<Self> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<(Token, Job<R>)>();
        let (work_tx, work_rx) = mpsc::channel::<(Token, Work<R>)>();
        let (done_tx, done_rx) = mpsc::channel();
        let disk = std::thread::Builder::new()
            .name("socklab-disk".into())
            .spawn(move || {
                for (token, work) in work_rx {
                    if done_tx.send((token, work())).is_err() {
                        return;
                    }
                    if let Err(e) = waker.wake() {
                        tracing::error!("the disk thread cannot wake the loop: {e}");
                    }
                }
            })?;
        // Should the hashing thread fail to start, dropping `work_tx` ends the disk thread.
        let hash = std::thread::Builder::new()
            .name("socklab-hash".into())
            .spawn(move || {
                yield_to_the_loop();
                for (token, job) in jobs_rx {
                    if work_tx.send((token, job())).is_err() {
                        return;
                    }
                }
            })?;
        Ok(DiskThreads {
            jobs: Some(jobs_tx),
            done: done_rx,
            handles: vec![hash, disk],
        })
    }

    /// Queues a job.
    pub fn submit(&self, token: Token, job: Job<R>) {
        if let Some(tx) = &self.jobs
            && tx.send((token, job)).is_err()
        {
            tracing::error!("the disk threads are gone; a disk job was dropped");
        }
    }

    /// A finished job, if there is one.
    pub fn try_done(&self) -> Option<(Token, R)> {
        self.done.try_recv().ok()
    }
}

/// Lowers the calling thread's priority (nice 10), so that when the hashing thread and the
/// loop want the same core, the loop wins: an upload is hashed with what the loop leaves, and
/// every other connection keeps its latency. A hashing thread that falls behind only fills
/// the upload's in-flight window, which pauses that one connection.
fn yield_to_the_loop() {
    // SAFETY: gettid and setpriority take and return plain integers.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10)
    };
    if r != 0 {
        tracing::debug!(
            "cannot lower the hashing thread's priority: {}",
            io::Error::last_os_error()
        );
    }
}

impl<R: Send + 'static> Drop for DiskThreads<R> {
    fn drop(&mut self) {
        // Closing the channel ends the hashing thread once the queued work is done, which
        // closes the disk thread's channel in turn.
        self.jobs = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Reactor {
    /// Hands a connection's disk job to the hashing and disk threads, after its earlier ones.
    /// They start with the first job: until then the process has one thread, and a process with one
    /// thread pays no atomic reference count on the descriptor of every read and write (the
    /// kernel's `fdget`) and no cancellation bookkeeping in libc's `send` and `recv`.
    pub(super) fn submit_disk_job(&mut self, token: Token, job: DiskJob) {
        if self.disk.is_none() {
            match DiskThreads::start(Arc::clone(&self.links.waker)) {
                Ok(disk) => self.disk = Some(disk),
                Err(e) => {
                    tracing::error!("cannot start the disk threads: {e}; closing the connection");
                    if let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) {
                        c.dead = true;
                        self.core.to_close.push(token);
                    }
                    return;
                }
            }
        }
        if let Some(disk) = &self.disk {
            disk.submit(token, job);
        }
    }

    /// Gives each connection the results of its disk work, and drives it: a `put` response
    /// may be ready, or reading may resume.
    pub(super) fn collect_disk_results(&mut self) {
        let mut touched = Vec::new();
        while let Some((token, done)) = self.disk.as_ref().and_then(DiskThreads::try_done) {
            if let Some(Entry::Conn(c)) = self.core.sources.get_mut(token) {
                c.service
                    .on_event(Event::DiskDone(done), c.out.tail(), &mut self.svc.ctx());
                if !touched.contains(&token) {
                    touched.push(token);
                }
            }
        }
        for token in touched {
            // Resumes input paused by upload bytes in flight or a commit (`resume_held_input`).
            self.drive_conn(token, false, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::Duration;

    #[test]
    fn jobs_run_in_order_and_wake_the_poll() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(7)).unwrap());
        let disk: DiskThreads<u32> = DiskThreads::start(waker).unwrap();
        for i in 0..100u32 {
            disk.submit(Token(i as usize), Box::new(move || Box::new(move || i * 2)));
        }
        let mut got = Vec::new();
        let mut events = Events::with_capacity(8);
        while got.len() < 100 {
            poll.poll(&mut events, Some(Duration::from_secs(10)))
                .unwrap();
            assert!(!events.is_empty(), "the waker must wake the poll");
            while let Some((t, r)) = disk.try_done() {
                assert_eq!(r, t.0 as u32 * 2);
                got.push(r);
            }
        }
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    }
}
