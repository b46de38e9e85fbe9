//! socklab: a high-concurrency socket server on one hand-written mio reactor.
//!
//! Map of the crate (no module imports one that imports it back; `kind` and `addr` are leaves):
//! - `kind`: the vocabulary every part speaks (`kind::ServiceKind`); a leaf, it imports
//!   nothing of the crate.
//! - [`addr`]: the addresses a service can listen on (`HOST:PORT`, `unix:PATH`, `unixgram:PATH`).
//! - `config`: the server's configuration: `mod.rs` the model, `file.rs` the TOML file of
//!   `serve --config` and `--print-config`, `values.rs` its value types, `flags.rs` serve's
//!   flags and how they apply over the file.
//! - `sockopt`: the only place that touches socket2: building listeners and reading options back.
//! - `reactor`: the event loop; the only server code that imports mio. `mod.rs` is the loop;
//!   binding, accepting, a stream connection, its transport, datagrams, `exec`'s children, the
//!   disk thread, chat fan-out, workers and shutdown are a file each.
//! - `service`: sans-IO services (bytes in, replies out), one file each.
//! - `metrics`: the counters every reactor keeps.
//! - [`frame`]: sans-IO codecs: length-prefixed, header+body, lines.
//! - `sys`: thin wrappers over Linux calls that server and clients share: `sys::timerfd`,
//!   a one-shot timerfd in a mio poll (the reactor's alarm, the bench's rate timer).
//! - `tls`: TLS on rustls: the listeners' certificates (loaded, checked, reloaded) and the
//!   client commands' `--tls`; the reactor's TLS transport is `reactor/transport/tls.rs`.
//! - [`client`]: a blocking client of the `files` service, used by the client commands.
//! - [`cli`]: one file per subcommand of the `socklab` binary.
//!
//! Public are what the binary (`cli::main`), the integration tests, the benches and the fuzz
//! targets use: the modules `addr`, `cli`, `client`, `frame`, and the re-exports below; the
//! rest is `pub(crate)`.

pub mod addr;
pub mod cli;
pub mod client;
pub(crate) mod config;
pub mod frame;
/// Structure-aware fuzz target bodies; built only for the fuzz crate.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
pub(crate) mod kind;
pub(crate) mod metrics;
mod net;
pub(crate) mod reactor;
pub(crate) mod service;
pub(crate) mod sockopt;
pub(crate) mod sys;
pub(crate) mod tls;

/// The configuration file's API, for `tests/config_file.rs`.
pub use config::file as config_file;
/// The shared secret of authentication, for the tests' clients.
pub use service::auth::Secret;
/// The server side of a TLS connection over any stream, for `benches/tls_records.rs`.
#[doc(hidden)]
pub use tls::BenchServerTls;
/// Two rustls configurations that trust each other, for `benches/tls_records.rs`.
#[doc(hidden)]
pub use tls::trusting_pair as tls_trusting_pair;
