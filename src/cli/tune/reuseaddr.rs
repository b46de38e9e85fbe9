//! Experiment `reuseaddr`: restarting a listener while its old connections sit in TIME_WAIT.
//!
//! A server is started on `127.0.0.1:0`, a few clients connect and exchange a few bytes, then
//! the server gets SIGTERM and closes first, so its side of every connection ends in
//! TIME_WAIT (for 60 s on Linux) once the clients close too. It is then started again on the
//! same port, first with `--no-reuseaddr` (bind fails: "address already in use"), then with
//! SO_REUSEADDR on (the default; bind succeeds).

use std::io::{ErrorKind, Read, Write};

use super::server::{Server, ServerError};
use super::{Ctx, Section, Table, TuneError, chart, wire};

/// One start of the server.
struct Attempt {
    /// What was tried.
    what: String,
    /// SO_REUSEADDR asked for.
    reuseaddr: bool,
    /// TIME_WAIT sockets on the port just before.
    time_wait: usize,
    /// Whether it bound.
    bound: bool,
    /// The listening line's options, or the error.
    detail: String,
}

/// Runs the experiment.
pub fn run(ctx: &Ctx, sec: &mut Section) -> Result<(), TuneError> {
    if ctx.addr.is_some() {
        return Err(TuneError::NeedsOwnServer);
    }
    let clients = if ctx.quick { 4 } else { 16 };
    let mut attempts = Vec::new();
    let first = Server::start(&["echo"], &["--shutdown-grace".into(), "2s".into()])?;
    let l = first.listener("echo")?;
    let addr = l.addr;
    let port = addr.port();
    attempts.push(Attempt {
        what: "first start".into(),
        reuseaddr: true,
        time_wait: time_wait_on(port),
        bound: true,
        detail: l.options_text.clone(),
    });
    let mut conns = Vec::new();
    for _ in 0..clients {
        let mut s = wire::connect(addr, true)?;
        wire::write_all(&mut s, b"ping")?;
        let mut back = Vec::new();
        wire::read_exact(&mut s, 4, &mut back)?;
        conns.push(s);
    }
    sec.say(format!(
        "{clients} connections to {addr} exchanged bytes; SIGTERM: the server closes them first"
    ));
    let status = first.stop();
    sec.say(format!("first server: {status}"));
    // Each client sees the server's FIN, then closes its side; the server's side, having
    // closed first, moves to TIME_WAIT.
    for mut s in conns {
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = s.flush();
    }
    let again = |reuse: bool| -> Result<Attempt, TuneError> {
        let time_wait = time_wait_on(port);
        let mut extra = vec!["--shutdown-grace".to_string(), "2s".to_string()];
        if !reuse {
            extra.push("--no-reuseaddr".into());
        }
        let what = format!(
            "restart on port {port}, {}",
            if reuse {
                "SO_REUSEADDR on"
            } else {
                "--no-reuseaddr"
            }
        );
        match Server::start_at(&[("echo", addr.to_string())], &extra) {
            Ok(s) => {
                let detail = s
                    .listener("echo")
                    .map(|l| l.options_text.clone())
                    .unwrap_or_default();
                s.stop();
                Ok(Attempt {
                    what,
                    reuseaddr: reuse,
                    time_wait,
                    bound: true,
                    detail,
                })
            }
            Err(ServerError::Exited { stderr, .. }) => Ok(Attempt {
                what,
                reuseaddr: reuse,
                time_wait,
                bound: false,
                detail: error_line(&stderr),
            }),
            Err(e) => Err(e.into()),
        }
    };
    attempts.push(again(false)?);
    attempts.push(again(true)?);
    let mut table = Table::new(&["attempt", "SO_REUSEADDR", "TIME_WAIT on port", "result"]);
    for a in &attempts {
        table.row(vec![
            a.what.clone(),
            super::on_off(a.reuseaddr),
            a.time_wait.to_string(),
            if a.bound {
                format!("bound: {}", a.detail)
            } else {
                format!("bind failed: {}", a.detail)
            },
        ]);
    }
    sec.table(table);
    sec.say("");
    for a in attempts.iter().skip(1) {
        let how = if a.reuseaddr {
            "with SO_REUSEADDR"
        } else {
            "without SO_REUSEADDR"
        };
        if a.bound {
            sec.say(format!(
                "result: {how} the restart succeeded ({} TIME_WAIT sockets on the port)",
                a.time_wait
            ));
        } else {
            sec.say(format!("result: {how} the restart failed: {}", a.detail));
        }
    }
    sec.say("The side that closes first keeps each connection in TIME_WAIT for 60 s (2 x MSL, fixed in Linux) so that stray segments of the old connection cannot be taken for a new one. Without SO_REUSEADDR, bind() refuses a port that TIME_WAIT connections still name; with it, a listener may bind over them. That is why servers set it by default, and why `socklab serve --no-reuseaddr` cannot restart for a minute after it closed connections.");
    let labels: Vec<String> = attempts
        .iter()
        .map(|a| {
            format!(
                "{} ({})",
                a.what,
                if a.bound { "bound" } else { "EADDRINUSE" }
            )
        })
        .collect();
    let refused = attempts.iter().skip(1).find(|a| !a.reuseaddr);
    let title = match refused {
        Some(a) if !a.bound => format!(
            "Restart over {} TIME_WAIT sockets: EADDRINUSE without SO_REUSEADDR, bound with it",
            a.time_wait
        ),
        _ => "Restarting a listener with connections in TIME_WAIT".to_string(),
    };
    sec.suggest("Keep SO_REUSEADDR on for listeners (socklab's default): without it a server that closed connections cannot restart on its port for 60 s.");
    let svg = chart::bars(
        &ctx.out,
        "reuseaddr.svg",
        &chart::Spec {
            title: &title,
            x_desc: "start attempt (outcome)",
            y_desc: "TIME_WAIT sockets on the port (count)",
            labels: &labels,
            empty_note: "no start was attempted",
            missing: "",
        },
        &[chart::Series {
            name: "TIME_WAIT sockets on the port".into(),
            values: attempts.iter().map(|a| a.time_wait as f64).collect(),
        }],
    )?;
    sec.chart(svg);
    Ok(())
}

/// The server's error line from its stderr (the last line that says something).
fn error_line(stderr: &str) -> String {
    let line = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no message)");
    // Drop the log's timestamp and level.
    match line.find("ERROR") {
        Some(i) => line.get(i + 5..).unwrap_or(line).trim().to_string(),
        None => line.trim().to_string(),
    }
}

/// TCP sockets in TIME_WAIT whose local port is `port`, from /proc/net/tcp and tcp6.
pub fn time_wait_on(port: u16) -> usize {
    super::time_wait::proc_time_wait()
        .into_iter()
        .filter(|&(local, _)| local == port)
        .count()
}
