//! `--workers N`: N reactors on N threads. Each binds its own listeners with SO_REUSEPORT,
//! so the kernel spreads connections across them.

use std::io;

use super::{BoundListener, Reactor, StartError};
use crate::config::ServerConfig;
use crate::service::auth::Secret;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("the event loop of worker {worker} failed: {source}")]
    Loop { worker: usize, source: io::Error },
}

/// Binds every worker's listeners, calls `on_bound` with what was bound (once, before any
/// connection is served), then runs every worker until SIGINT or SIGTERM stops them all.
pub fn serve(
    config: ServerConfig,
    secret: Option<Secret>,
    on_bound: impl FnOnce(&[BoundListener]),
) -> Result<(), ServeError> {
    let (mut reactor, bound) = Reactor::bind(config, secret)?;
    on_bound(&bound);
    reactor
        .run()
        .map_err(|source| ServeError::Loop { worker: 0, source })
}
