//! Thin wrappers over Linux system calls that both the server and the clients use. They know
//! nothing of socklab: no configuration, no services, only the kernel and mio.
//!
//! - [`timerfd`]: a one-shot timerfd in a mio poll.

pub(crate) mod timerfd;
