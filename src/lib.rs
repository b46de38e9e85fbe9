//! socklab: a high-concurrency socket server on one hand-written mio reactor.
//!
//! Map of the crate:
//! - [`addr`]: the addresses a service can listen on (`HOST:PORT`, `unix:PATH`, `unixgram:PATH`).
//! - [`config`]: the server's configuration, built from the command line and [`config_file`].
//! - [`config_file`]: the TOML file of `serve --config`, and `--print-config`.
//! - [`sockopt`]: the only place that touches socket2: building listeners and reading options back.
//! - [`reactor`]: the event loop; the only server code that imports mio. `mod.rs` is the loop;
//!   binding, accepting, a stream connection, datagrams, `exec`'s children, the disk thread,
//!   chat fan-out, workers and shutdown are a file each.
//! - [`service`]: sans-IO services (bytes in, replies out), one file each.
//! - [`metrics`]: the counters every reactor keeps.
//! - [`frame`]: sans-IO codecs: length-prefixed, header+body, lines.
//! - [`timerfd`]: a one-shot timerfd in a mio poll (the reactor's alarm, the bench's rate timer).
//! - [`client`]: a blocking client of the `files` service, used by the client commands.
//! - [`cli`]: one file per subcommand of the `socklab` binary.

pub mod addr;
pub mod cli;
pub mod client;
pub mod config;
pub mod frame;
pub mod kind;
pub mod metrics;
mod net;
pub mod reactor;
pub mod service;
pub mod sockopt;
pub(crate) mod sys;

/// The old path of [`sys::timerfd`], kept for `cli/bench/worker.rs`, which names it there.
pub(crate) use sys::timerfd;
