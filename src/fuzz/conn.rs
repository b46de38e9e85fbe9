//! Shared harness of the structure-aware service targets: a connection the way the reactor
//! drives it (unconsumed input kept and offered again in front of the next bytes, actions
//! drained after every drive, long responses pulled with `next_output`), with the invariants
//! every stream service must keep checked after each step.

use crate::metrics::{Counters, Gathered, Peers};
use crate::service::chat::ChatRoom;
use crate::service::status_page::history::History;
use crate::service::{Action, Ctx, Event, Output, StreamService};
use arbitrary::Arbitrary;

/// Output a single drive may produce at most, for the inputs these targets give (a few KiB):
/// a reply far larger than the request that caused it is a bug (amplification).
pub(crate) const MAX_OUTPUT: usize = 1 << 20;

/// One step a fuzz input asks of a connection.
#[derive(Debug, Arbitrary)]
pub(crate) enum Op {
    /// Bytes arrive in one read.
    Input(Vec<u8>),
    /// The socket would block: the reactor pulls long output and runs queued actions.
    WouldBlock,
    /// The client goes away.
    Close,
}

/// A connection under test: its service, what it holds back and what it wrote.
pub(crate) struct Conn {
    pub(crate) service: StreamService,
    pub(crate) held: Vec<u8>,
    pub(crate) out: Vec<u8>,
    pub(crate) closed: bool,
    pub(crate) counters: Counters,
    pub(crate) room: ChatRoom,
    pub(crate) others: Vec<u8>,
    pub(crate) peers: Peers,
    pub(crate) history: History,
}

impl Conn {
    pub(crate) fn new(service: StreamService) -> Self {
        Conn {
            service,
            held: Vec::new(),
            out: Vec::new(),
            closed: false,
            counters: Counters::default(),
            room: ChatRoom::default(),
            others: Vec::new(),
            peers: Peers::default(),
            history: History::default(),
        }
    }

    fn ctx(&mut self) -> (Ctx<'_>, &mut StreamService, &mut Vec<u8>) {
        (
            Ctx {
                counters: &mut self.counters,
                room: &mut self.room,
                others: &mut self.others,
                peers: &self.peers,
                history: &self.history,
            },
            &mut self.service,
            &mut self.out,
        )
    }

    pub(crate) fn open(&mut self, authenticated: bool) {
        let (mut ctx, svc, out) = self.ctx();
        svc.on_event(
            Event::Opened {
                id: 1,
                authenticated,
            },
            out,
            &mut ctx,
        );
    }

    /// Feeds `bytes` as the reactor would; returns the output it produced.
    pub(crate) fn input(&mut self, bytes: &[u8]) -> usize {
        assert!(!self.closed, "input after close");
        let before = self.out.len();
        self.held.extend_from_slice(bytes);
        if self.service.accepts_input() {
            let held = std::mem::take(&mut self.held);
            let (mut ctx, svc, out) = self.ctx();
            let step = svc.on_input(&held, out, &mut ctx);
            assert!(
                step.consumed <= held.len(),
                "consumed {} of {}",
                step.consumed,
                held.len()
            );
            self.held = held.get(step.consumed..).unwrap_or_default().to_vec();
            if step.close {
                self.closed = true;
            }
        }
        let produced = self.out.len().saturating_sub(before);
        assert!(
            produced <= MAX_OUTPUT,
            "one drive produced {produced} bytes"
        );
        produced
    }

    /// Runs queued actions (disk jobs inline; exec is not run) and pulls long output.
    pub(crate) fn would_block(&mut self) {
        for _ in 0..64 {
            let mut progressed = false;
            let mut woken = false;
            while let Some(action) = self.service.poll_action() {
                progressed = true;
                match action {
                    Action::Disk(job) => {
                        // The hashing thread's part, then the disk thread's.
                        let done = job()();
                        let (mut ctx, svc, out) = self.ctx();
                        svc.on_event(Event::DiskDone(done), out, &mut ctx);
                    }
                    // One worker: its own counters are everything.
                    Action::Counters => {
                        let gathered = Gathered::alone(0, &self.counters);
                        let (mut ctx, svc, out) = self.ctx();
                        svc.on_event(Event::Counters(&gathered), out, &mut ctx);
                    }
                    // Commands are never run by a fuzz target: the request was parsed and
                    // checked against the policy, which is what is under test.
                    Action::Exec(_) => return,
                    // Delivered once the queue is empty, as time passes between wakes; the
                    // outer loop bounds a stream's events.
                    Action::Wake(_) => woken = true,
                    // The reactor replaces the service; what metrics does up to there is
                    // under test.
                    Action::UpgradeToWsChat => {}
                }
            }
            if woken {
                let (mut ctx, svc, out) = self.ctx();
                svc.on_event(Event::Wake, out, &mut ctx);
            }
            if self.service.has_output() {
                let before = self.out.len();
                match self
                    .service
                    .next_output(&mut self.out, 16 * 1024, false, &mut self.counters)
                {
                    Output::Produced => progressed = true,
                    Output::SendFile { .. } => panic!("sendfile offered when not allowed"),
                    Output::Broken => {
                        self.closed = true;
                        return;
                    }
                    Output::None => {}
                }
                assert!(
                    self.out.len().saturating_sub(before) <= 64 * 1024,
                    "next_output overshot its budget"
                );
            }
            if !progressed {
                return;
            }
        }
    }

    pub(crate) fn close(&mut self) {
        let (mut ctx, svc, out) = self.ctx();
        svc.on_event(Event::Closing, out, &mut ctx);
        self.closed = true;
    }

    /// Replays `ops`; stops at the first close.
    pub(crate) fn run(&mut self, ops: &[Op]) {
        for op in ops {
            if self.closed {
                return;
            }
            match op {
                Op::Input(b) => {
                    self.input(b);
                }
                Op::WouldBlock => self.would_block(),
                Op::Close => self.close(),
            }
        }
    }
}
