//! `socklab serve`: builds the configuration from the built-in defaults, the `--config` file
//! and the flags (each overriding the one before), binds every listener, prints one line per
//! listener and `ready`, then runs the reactor until SIGINT or SIGTERM.

use std::cell::RefCell;
use std::io::Write;
use std::process::ExitCode;

use crate::config::file::{self as config_file, ServeSettings};
use crate::config::flags::ServeArgs;
use crate::kind::ServiceKind;
use crate::reactor::handover;
use crate::reactor::handover::successor::{Upgrade, UpgradeError};
use crate::reactor::inherit;
use crate::service::auth::Secret;
use crate::sockopt;
use crate::sys::notify;

/// Runs the server; the exit code is 0 after a signal-initiated shutdown, 2 for a configuration
/// that cannot run.
pub fn run(args: ServeArgs) -> ExitCode {
    // Before any thread or child exists: these take the process's environment and the
    // descriptors systemd passed, so that neither leaks to children.
    let inherited = match crate::sys::activation::take_from_env() {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("socklab serve: socket activation: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = crate::sys::notify::init_from_env() {
        eprintln!("socklab serve: NOTIFY_SOCKET: {e}");
        return ExitCode::from(2);
    }
    crate::sys::notify::watchdog_interval_from_env();
    crate::reactor::handover::record_exe();
    // A successor takes the old process's sockets before anything else: a failure from here on
    // is reported to it (`failed`), and it goes on serving.
    let upgrade = match &args.upgrade_from {
        Some(path) => match Upgrade::connect(path) {
            Ok((u, sockets)) => {
                handover::install(sockets);
                Some(u)
            }
            Err(e) => {
                eprintln!("socklab serve: --upgrade-from {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let upgrade = RefCell::new(upgrade);
    let fail = |msg: String| {
        eprintln!("socklab serve: {msg}");
        if let Some(u) = upgrade.borrow_mut().take() {
            u.fail(&msg);
        }
        ExitCode::from(2)
    };
    // Logging waits for the configuration (it may set the level), so these errors go to stderr
    // directly.
    let mut settings = match &args.config {
        Some(path) => match config_file::load(path) {
            Ok(s) => s,
            Err(e) => return fail(e.to_string()),
        },
        None => ServeSettings::default(),
    };
    args.apply(&mut settings);
    let effective = match settings.finish() {
        Ok(e) => e,
        Err(e) => return fail(e.to_string()),
    };
    if args.print_config {
        let text = match effective.to_toml() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("socklab serve: {e}");
                return ExitCode::from(2);
            }
        };
        let mut out = std::io::stdout().lock();
        return match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("socklab serve: cannot write the configuration: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let offset = effective.log.offset();
    let verbose = u8::try_from(offset.max(0)).unwrap_or(u8::MAX);
    let quiet = u8::try_from((-offset).max(0)).unwrap_or(u8::MAX);
    let _log_guard = crate::cli::init_logging(verbose, quiet);
    match sockopt::raise_fd_limit() {
        Ok((old, new)) if old != new => {
            tracing::debug!("raised the open-file limit from {old} to {new}")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let mut config = effective.server;
    if let Some(bus) = config.chat_bus.as_mut() {
        if let Err(e) = bus.load_password() {
            return fail(e);
        }
        if !config
            .listeners
            .iter()
            .any(|l| l.service == ServiceKind::Chat)
        {
            tracing::warn!("chat bus: chat is not served here, so the bus is not joined");
        }
    }
    if let Some(exec) = &config.files.config.exec {
        if let Err(e) = crate::sys::contain::init(exec.containment) {
            tracing::error!("exec: {e}");
            return ExitCode::from(2);
        }
        warn_exec_unreachable(&config);
    }
    if let Err(e) = inherit::install(inherit::Source::Systemd, inherited, &config.listeners) {
        return fail(format!("socket activation: {e}"));
    }
    let kept_control = match handover::open_control(effective.control.as_deref()) {
        Ok(kept) => kept,
        Err(e) => return fail(e.to_string()),
    };
    let secret = if config.listeners.iter().any(|l| l.auth) {
        match Secret::from_file_or_env(effective.secret_file.as_deref()) {
            Ok(s) => Some(s),
            Err(e) => return fail(e.to_string()),
        }
    } else {
        None
    };
    let tls = match crate::tls::server::TlsSet::load(&config.listeners) {
        Ok(tls) => tls,
        Err(e) => return fail(format!("TLS: {e}")),
    };
    let printed = |bound: &[crate::reactor::BoundListener]| {
        // Tests and scripts read these lines to learn the ports they got; a closed stdout
        // must not stop the server.
        let mut out = std::io::stdout().lock();
        for b in bound {
            let _ = writeln!(out, "{b}");
        }
        let _ = writeln!(out, "ready");
        let _ = out.flush();
        notify::notify(&format!(
            "READY=1\nSTATUS=serving on {} sockets",
            bound.len()
        ));
        handover::close_unclaimed();
        if let Some(u) = upgrade.borrow_mut().take() {
            let path = u.path().display().to_string();
            match u.ready(kept_control) {
                Ok(()) => tracing::info!("took over every socket from the server at {path}"),
                // It gave up on this process (too late) and serves on: two servers must not
                // share the sockets, and none was accepted from here yet, so nothing is lost.
                Err(e @ UpgradeError::Refused(_)) => {
                    eprintln!("socklab serve: --upgrade-from {path}: {e}");
                    std::process::exit(2);
                }
                Err(e) => tracing::warn!("the server at {path} did not confirm the hand-over: {e}"),
            }
        }
    };
    let served = crate::reactor::workers::serve(config, secret, tls, printed);
    // Whatever a command left running dies with the server.
    crate::sys::contain::at_exit();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            if let Some(u) = upgrade.borrow_mut().take() {
                u.fail(&e.to_string());
            }
            // What the configuration asks cannot be had (an address in use, a data directory
            // that cannot be used): 2, like any configuration error; a failure once serving: 1.
            match e {
                crate::reactor::workers::ServeError::Start(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// exec answers only authenticated connections: allowed programs with no `files` listener that
/// authenticates can never run, which deserves a word at start-up rather than a surprise.
fn warn_exec_unreachable(config: &crate::config::ServerConfig) {
    use crate::kind::ServiceKind;
    let files: Vec<_> = config
        .listeners
        .iter()
        .filter(|l| l.service == ServiceKind::Files)
        .collect();
    // A verified client certificate authenticates as the HMAC handshake does.
    let client_certs =
        |l: &&crate::config::ListenerConfig| l.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if files.iter().any(|l| l.auth || client_certs(l)) {
        return;
    }
    let why = if files.is_empty() {
        "files does not run"
    } else {
        "no files listener requires authentication (add --auth files, or TLS client \
         certificates with --tls-client-ca)"
    };
    tracing::warn!("exec is allowed (--exec-allow) but {why}: every exec will be refused");
}
