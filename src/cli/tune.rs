//! `socklab tune`: experiments that show what each socket option does, against a server it
//! starts on loopback (this binary's `serve`, on `127.0.0.1:0`, unused services off) or an
//! existing echo server (`--addr`). Each experiment prints a table with the values in effect
//! (the client's read back with getsockopt, the server's from its `listening` line) and writes
//! an SVG chart to `--out`; `--report DIR` also writes DIR/index.html, one page with every
//! chart, table and suggestion ([`report`]).
//!
//! The experiments live in submodules, one each: [`nodelay`], [`buffers`], [`backlog`],
//! [`reuseaddr`], [`udp_rcvbuf`], [`time_wait`], [`reuseport`], [`keepalive`], [`kernel`];
//! [`server`] starts and stops the server, [`chart`] draws, [`wire`] holds the client side of
//! the echo and `files` protocols. An experiment writes what it finds into its [`Section`],
//! which prints it and keeps it for the report.

pub mod backlog;
pub mod buffers;
pub mod chart;
pub mod keepalive;
pub mod kernel;
pub mod nodelay;
pub mod png;
pub mod report;
pub mod reuseaddr;
pub mod reuseport;
pub mod server;
pub mod time_wait;
pub mod udp_rcvbuf;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use self::server::ServerError;

/// Run experiments that show what TCP_NODELAY, SO_SNDBUF/SO_RCVBUF, the listen backlog,
/// SO_REUSEADDR, the UDP receive buffer, TIME_WAIT and SO_LINGER, SO_REUSEPORT and TCP
/// keepalive do, with tables, SVG charts and (--report) one HTML page.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// Name the experiments and exit.
    #[arg(long)]
    pub list: bool,
    /// Run only this experiment (see --list).
    #[arg(long, value_name = "NAME")]
    pub only: Option<String>,
    /// A smaller, faster version of each experiment.
    #[arg(long)]
    pub quick: bool,
    /// Directory for the SVG charts (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./tune-out")]
    pub out: PathBuf,
    /// Write DIR/index.html: every chart, table and suggestion on one page that needs no
    /// network (the charts are written into DIR too, next to it; --out is then unused).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Also write each chart as PNG beside its SVG (rendered from the SVG with the system's
    /// fonts), for tools that take no SVG.
    #[arg(long)]
    pub png: bool,
    /// Use this existing echo server instead of starting one (the experiments that need to
    /// restart or reconfigure the server are skipped).
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<SocketAddr>,
}

/// What every experiment gets.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The smaller version.
    pub quick: bool,
    /// Where charts go.
    pub out: PathBuf,
    /// An existing echo server to use, instead of one of our own.
    pub addr: Option<SocketAddr>,
}

/// Why an experiment failed.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// Starting, talking to or stopping the server.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A socket or file operation.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The server answered something the protocol does not allow.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Drawing a chart.
    #[error("cannot draw {path}: {message}")]
    Chart {
        /// The SVG being written.
        path: PathBuf,
        /// What plotters said.
        message: String,
    },
    /// The experiment needs a server of its own, and `--addr` was given.
    #[error("needs a server of its own (it restarts or reconfigures it); run without --addr")]
    NeedsOwnServer,
    /// The experiment cannot run here (no root for a network namespace, no `ip`...).
    #[error("{0}")]
    Unsupported(String),
}

impl TuneError {
    /// An [`TuneError::Io`] saying what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TuneError {
        let what = what.into();
        move |source| TuneError::Io { what, source }
    }
}

/// One experiment.
pub struct Experiment {
    /// Its name for `--only`.
    pub name: &'static str,
    /// One line on what it shows.
    pub about: &'static str,
    /// Runs it, writing tables, text, charts and suggestions into the section.
    pub run: fn(&Ctx, &mut Section) -> Result<(), TuneError>,
}

/// One thing an experiment said, in order.
#[derive(Debug)]
pub enum Block {
    /// A table.
    Table(Table),
    /// A paragraph (an empty one is a blank line on the terminal only).
    Text(String),
}

/// How an experiment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran.
    Ran,
    /// It did not run here, and why.
    Skipped(String),
    /// It failed, and why.
    Failed(String),
}

/// What one experiment found: printed as it comes, kept for `--report`.
#[derive(Debug)]
pub struct Section {
    /// The experiment's name.
    pub name: &'static str,
    /// Its one-line description.
    pub about: &'static str,
    /// Tables and paragraphs, in order.
    pub blocks: Vec<Block>,
    /// The charts it wrote.
    pub charts: Vec<PathBuf>,
    /// Their PNG copies (`--png`).
    pub pngs: Vec<PathBuf>,
    /// What it suggests, one sentence each.
    pub suggests: Vec<String>,
    /// How it ended.
    pub outcome: Outcome,
}

impl Section {
    /// An empty section for `e`.
    pub fn new(e: &Experiment) -> Section {
        Section {
            name: e.name,
            about: e.about,
            blocks: Vec::new(),
            charts: Vec::new(),
            pngs: Vec::new(),
            suggests: Vec::new(),
            outcome: Outcome::Ran,
        }
    }

    /// Prints a paragraph and keeps it.
    pub fn say(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("{text}");
        self.blocks.push(Block::Text(text));
    }

    /// Prints a table (and a blank line) and keeps it.
    pub fn table(&mut self, table: Table) {
        table.print();
        println!();
        self.blocks.push(Block::Table(table));
    }

    /// Prints a suggestion and keeps it.
    pub fn suggest(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("suggests: {text}");
        self.suggests.push(text);
    }

    /// Notes a chart written.
    pub fn chart(&mut self, path: PathBuf) {
        println!("chart: {}", path.display());
        self.charts.push(path);
    }

    /// Writes a PNG beside each of its charts (`--png`).
    fn copy_charts_to_png(&mut self, rasterizer: &png::Rasterizer) -> Result<(), png::PngError> {
        for svg in &self.charts {
            let png = rasterizer.render(svg)?;
            println!("chart: {}", png.display());
            self.pngs.push(png);
        }
        Ok(())
    }
}

/// Every experiment, in the order they run.
pub const EXPERIMENTS: [Experiment; 9] = [
    Experiment {
        name: "nodelay",
        about: "TCP_NODELAY on/off (client and server) x payload size x pattern (request/response, write-write-read): latency p50/p90/p99/max",
        run: nodelay::run,
    },
    Experiment {
        name: "buffers",
        about: "SO_SNDBUF/SO_RCVBUF 4 KiB, 64 KiB, 1 MiB, default x bulk echo throughput (MB/s)",
        run: buffers::run,
    },
    Experiment {
        name: "backlog",
        about: "listen backlog 1, 8, 128, 1024 x a burst of simultaneous connects while the server does not accept",
        run: backlog::run,
    },
    Experiment {
        name: "reuseaddr",
        about: "SO_REUSEADDR off/on: restarting a listener whose old connections sit in TIME_WAIT",
        run: reuseaddr::run,
    },
    Experiment {
        name: "udp-rcvbuf",
        about: "the server's UDP receive buffer x burst size: datagrams the kernel dropped (the server's counters) and replies",
        run: udp_rcvbuf::run,
    },
    Experiment {
        name: "time-wait",
        about: "connection churn: who keeps TIME_WAIT (ss -tan state time-wait), rebinding a port with and without SO_REUSEADDR, SO_LINGER 0 (RST, no TIME_WAIT)",
        run: time_wait::run,
    },
    Experiment {
        name: "reuseport",
        about: "serve --workers N (SO_REUSEPORT): how the kernel spreads connections over the workers, from one and from many source addresses",
        run: reuseport::run,
    },
    Experiment {
        name: "keepalive",
        about: "a peer behind a cut link (network namespace): how long until each side notices, with and without TCP keepalive and TCP_USER_TIMEOUT",
        run: keepalive::run,
    },
    Experiment {
        name: "kernel",
        about: "the kernel settings that bound all of this (read-only, /proc/sys and getrlimit)",
        run: kernel::run,
    },
];

/// Runs `socklab tune`.
pub fn run(args: &TuneArgs) -> ExitCode {
    if args.list {
        for e in &EXPERIMENTS {
            println!("{:<11} {}", e.name, e.about);
        }
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<&Experiment> = match &args.only {
        Some(name) => match EXPERIMENTS.iter().find(|e| e.name == name.as_str()) {
            Some(e) => vec![e],
            None => {
                let names: Vec<&str> = EXPERIMENTS.iter().map(|e| e.name).collect();
                eprintln!(
                    "socklab tune: no experiment `{name}`; there are: {}",
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
        },
        None => EXPERIMENTS.iter().collect(),
    };
    let out = args.report.clone().unwrap_or_else(|| args.out.clone());
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("socklab tune: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    // Find out now, not after minutes of experiments, that the page cannot be written.
    if let Some(dir) = &args.report
        && let Err(e) = report::check_writable(dir)
    {
        eprintln!("socklab tune: {e}");
        return ExitCode::FAILURE;
    }
    // Find out now too that PNGs cannot be drawn.
    let rasterizer = match args.png.then(png::Rasterizer::new).transpose() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("socklab tune: {e}");
            return ExitCode::from(2);
        }
    };
    // The backlog burst holds many sockets at once.
    let _ = crate::sockopt::raise_fd_limit();
    let ctx = Ctx {
        quick: args.quick,
        out,
        addr: args.addr,
    };
    let mut failed = 0;
    let mut sections = Vec::new();
    for e in chosen {
        println!("== {} ==", e.name);
        println!("{}", e.about);
        println!();
        let mut section = Section::new(e);
        match (e.run)(&ctx, &mut section) {
            Ok(()) => {}
            Err(err @ (TuneError::NeedsOwnServer | TuneError::Unsupported(_))) => {
                println!("skipped: {err}");
                section.outcome = Outcome::Skipped(err.to_string());
            }
            Err(err) => {
                failed += 1;
                println!("failed: {err}");
                eprintln!("socklab tune: {}: {err}", e.name);
                section.outcome = Outcome::Failed(err.to_string());
            }
        }
        if let Some(r) = &rasterizer
            && let Err(e) = section.copy_charts_to_png(r)
        {
            failed += 1;
            eprintln!("socklab tune: {}: {e}", section.name);
        }
        println!();
        sections.push(section);
    }
    if let Some(dir) = &args.report {
        match report::write(dir, &sections, args.quick) {
            Ok(page) => println!("report: {}", page.display()),
            Err(e) => {
                eprintln!("socklab tune: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A table printed with aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    /// Column titles.
    headers: Vec<String>,
    /// Rows of cells, as many as there are headers.
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The column titles.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The rows.
    pub fn rows(&self) -> &[Vec<String>] {
        &self.rows
    }

    /// Prints it to stdout, numbers right-aligned.
    pub fn print(&self) {
        let cols = self.headers.len();
        let mut width: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let numeric = |s: &str| {
            s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '-')
                && s.chars().all(|c| c.is_ascii_digit() || ".,-".contains(c))
        };
        let line = |cells: &[String]| {
            let mut out = String::from("|");
            for i in 0..cols {
                let c = cells.get(i).map_or("", String::as_str);
                let w = width.get(i).copied().unwrap_or(0);
                if numeric(c) {
                    out.push_str(&format!(" {c:>w$} |"));
                } else {
                    out.push_str(&format!(" {c:<w$} |"));
                }
            }
            out
        };
        println!("{}", line(&self.headers));
        let mut sep = String::from("|");
        for w in &width {
            sep.push_str(&"-".repeat(w + 2));
            sep.push('|');
        }
        println!("{sep}");
        for r in &self.rows {
            println!("{}", line(r));
        }
    }
}

/// `on`/`off` for a flag.
pub fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

/// A byte count in the largest binary unit that divides it (4 KiB, 1 MiB, 100 B).
pub fn bytes(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}
