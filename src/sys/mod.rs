//! Thin wrappers over Linux system calls that both the server and the clients use. They know
//! nothing of socklab: no configuration, no services, only the kernel and mio.
//!
//! - [`timerfd`]: a one-shot timerfd in a mio poll.
//! - [`activation`]: systemd socket activation, the passed descriptors checked.
//! - [`notify`]: sd_notify datagrams, never blocking.
//! - [`contain`]: every descendant of an `exec` command within reach (cgroup or subreaper).
//! - [`fdpass`]: descriptors over a Unix socket (SCM_RIGHTS), the peer's credentials.
//! - [`process`]: this process's resident memory and open descriptors (the status page).

pub(crate) mod activation;
pub(crate) mod contain;
pub(crate) mod fdpass;
pub(crate) mod notify;
pub(crate) mod process;
pub(crate) mod timerfd;
pub(crate) mod udp_drops;
