//! `socklab chat`: a full-duplex client of `chat` (lines over TCP or a unix socket) and, with
//! `--udp`, of `udp-chat` (PROTOCOL.md, "Line service: chat" and "Datagram chat").
//!
//! Threads, no event loop: a reader thread turns what the server sends into lines, an input
//! thread turns stdin into lines (or, on a terminal, into key presses), and the main thread
//! takes both from one channel, so typing and receiving never wait for each other.
//!
//! On a terminal (stdin and stdout both), a small line editor runs in raw mode: each incoming
//! line is printed above the prompt, and the prompt and the partly typed line are drawn again
//! below it, so nothing the user is typing gets mangled. A [`RawMode`] guard restores the
//! terminal however the command ends, panics included. Otherwise (pipes) lines are sent as read
//! and incoming lines printed as they come.
//!
//! The editor counts one column per character (wide characters and combining marks are not
//! measured) and scrolls a line longer than the terminal sideways.
//!
//! The command ends after sending `/quit` (Ctrl-C, Ctrl-D on an empty line and the end of stdin
//! send it too), or when the server closes the connection (`* connection closed`).
//!
//! Over TCP or unix the server greets every member (`* welcome <nick>`): no line from it within
//! `--timeout` of connecting, or a server that takes nothing sent for that long, is an error
//! (exit 1). udp-chat never answers the sender, so `--udp` has nothing to wait for.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use crossterm::event::{self, Event, KeyEvent, KeyEventKind};

mod editor;

use super::stream::{Conn, MAX_DATAGRAM, StreamError, connect, udp_socket};
use crate::addr::ListenAddr;
use crate::client::{AuthError, NoAnswer, Stall, client_secret, handshake, is_timeout};
use editor::Editor;
pub use editor::RawMode;

/// The prompt of the line editor.
const PROMPT: &str = "> ";
/// How long to wait, after sending `/quit`, for the server to close (and for what it sent
/// before to arrive).
const QUIT_GRACE: Duration = Duration::from_secs(2);
/// The server's first words to a member (PROTOCOL.md): not a challenge.
const WELCOME: &[u8] = b"* welcome ";

/// `socklab chat`: talk to the chat room.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The chat service: HOST:PORT or unix:PATH (HOST:PORT of udp-chat with --udp).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    addr: ListenAddr,
    /// Use udp-chat: each line is one datagram; relayed datagrams are printed as they come.
    #[arg(long)]
    udp: bool,
    /// Give up (exit 1) when the server sends no welcome within this long of connecting, or
    /// takes nothing sent for this long (not with --udp: udp-chat never answers the sender).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// File holding the shared secret, for a server that asks for authentication (else the
    /// SOCKLAB_SECRET environment variable, if set). Without one, a server that asks is an
    /// error (exit 1).
    #[arg(long, value_name = "PATH")]
    secret_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: crate::tls::client::TlsArgs,
}

/// Why `socklab chat` failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Connect(#[from] StreamError),
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
    #[error("the terminal failed: {0}")]
    Terminal(io::Error),
    #[error("reading stdin failed: {0}")]
    Stdin(io::Error),
    #[error("writing stdout failed: {0}")]
    Stdout(io::Error),
    #[error("sending to the server failed: {0}")]
    Send(io::Error),
    #[error("the connection failed: {0}")]
    Receive(io::Error),
    #[error("a line is {0} bytes; a datagram carries at most {MAX_DATAGRAM}")]
    LineTooLong(usize),
    #[error(transparent)]
    NoAnswer(NoAnswer),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// What the main thread is told.
#[derive(Debug)]
enum Msg {
    /// A line from the server, without its newline (or one relayed datagram).
    Incoming(Vec<u8>),
    /// A notice to show (not from the server).
    Notice(String),
    /// The server closed the connection (`None`) or it failed.
    Closed(Option<io::Error>),
    /// A line of stdin, without its newline.
    Line(Vec<u8>),
    /// End of stdin.
    InputEnd,
    /// Reading stdin failed.
    InputError(io::Error),
    /// A key was pressed (terminal mode).
    Key(KeyEvent),
    /// The terminal was resized (terminal mode).
    Resize,
}

/// Where typed lines go.
enum Peer {
    Stream(Conn),
    Udp(UdpSocket),
}

/// The server's end: where typed lines go, and how long to wait for it.
struct Link {
    peer: Peer,
    /// The server's address, for messages.
    addr: String,
    timeout: Duration,
    /// Bytes sent so far.
    sent: u64,
    /// Until the server's first line (its `* welcome`) has come, when to give up waiting for
    /// it; `None` once it came, and always over UDP.
    welcome_by: Option<Instant>,
    /// Whether we answered a challenge: a close before the welcome then means the server
    /// refused the answer.
    authenticated: bool,
}

impl Link {
    /// What a close of the connection means: the server refused our answer to its challenge
    /// when it closes before its welcome.
    fn refused(&self) -> Option<ChatError> {
        (self.authenticated && self.welcome_by.is_some()).then(|| {
            ChatError::Auth(AuthError::Refused {
                peer: self.addr.clone(),
            })
        })
    }

    fn send_line(&mut self, line: &[u8]) -> Result<(), ChatError> {
        match &mut self.peer {
            Peer::Stream(conn) => {
                let mut msg = Vec::with_capacity(line.len().saturating_add(1));
                msg.extend_from_slice(line);
                msg.push(b'\n');
                let mut rest = msg.as_slice();
                while !rest.is_empty() {
                    match conn.write(rest) {
                        Ok(0) => {
                            return Err(ChatError::Send(io::ErrorKind::WriteZero.into()));
                        }
                        Ok(n) => {
                            self.sent = self.sent.saturating_add(n as u64);
                            rest = rest.get(n..).unwrap_or_default();
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if is_timeout(&e) => return Err(self.no_answer(Stall::Take)),
                        Err(e) => return Err(ChatError::Send(e)),
                    }
                }
                Ok(())
            }
            Peer::Udp(sock) => {
                if line.len() > MAX_DATAGRAM {
                    return Err(ChatError::LineTooLong(line.len()));
                }
                let n = sock.send(line).map_err(ChatError::Send)?;
                self.sent = self.sent.saturating_add(n as u64);
                Ok(())
            }
        }
    }

    fn no_answer(&self, stall: Stall) -> ChatError {
        ChatError::NoAnswer(NoAnswer {
            peer: self.addr.clone(),
            stall,
            timeout: self.timeout,
            sent: self.sent,
            // Only waited for before anything came.
            received: 0,
        })
    }

    fn is_udp(&self) -> bool {
        matches!(self.peer, Peer::Udp(_))
    }
}

/// `socklab chat`.
pub fn run(args: &ChatArgs) -> ExitCode {
    match chat(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("socklab chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn chat(args: &ChatArgs) -> Result<ExitCode, ChatError> {
    let (tx, rx) = mpsc::channel();
    let mut authenticated = false;
    let peer = if args.udp {
        let ListenAddr::Inet(server) = args.addr else {
            return Err(StreamError::NotUdp(args.addr.to_string()).into());
        };
        let sock = udp_socket(server)?;
        let reader = sock.try_clone().map_err(ChatError::Receive)?;
        spawn("chat-reader", tx.clone(), move |tx| {
            read_datagrams(reader, server, tx)
        })?;
        Peer::Udp(sock)
    } else {
        let secret = client_secret(args.secret_file.as_deref())?;
        let mut conn = connect(&args.addr, &args.tls, args.timeout)?;
        let opening = handshake(
            &mut conn,
            &args.addr.to_string(),
            secret.as_ref(),
            args.timeout,
            WELCOME,
        )?;
        authenticated = opening.authenticated;
        // The reader blocks until the server speaks; the welcome's deadline is the main
        // thread's.
        conn.clear_read_timeout().map_err(ChatError::Receive)?;
        conn.set_write_timeout(args.timeout)
            .map_err(ChatError::Send)?;
        let reader = conn.try_clone().map_err(ChatError::Receive)?;
        let early = opening.early;
        spawn("chat-reader", tx.clone(), move |tx| {
            read_lines(reader, early, tx)
        })?;
        Peer::Stream(conn)
    };
    // (A timeout too long to add to the clock waits for ever.)
    let welcome_by = if args.udp {
        None
    } else {
        Instant::now().checked_add(args.timeout)
    };
    let link = Link {
        peer,
        addr: args.addr.to_string(),
        timeout: args.timeout,
        sent: 0,
        welcome_by,
        authenticated,
    };

    if io::stdin().is_terminal() && io::stdout().is_terminal() {
        // Raw mode first: keys typed from now on reach the editor, not the cooked line buffer.
        let _raw = RawMode::enable()?;
        spawn("chat-keys", tx, read_keys)?;
        let mut screen = Editor::new(io::stdout());
        if args.udp {
            screen.notice(&format!(
                "* udp-chat at {}: others hear you, and you them, once you have sent a line",
                args.addr
            ))?;
        }
        screen.redraw()?;
        main_loop(link, &rx, &mut screen)
    } else {
        spawn("chat-stdin", tx, read_stdin)?;
        let mut plain = Plain(io::stdout());
        main_loop(link, &rx, &mut plain)
    }
}

fn spawn(
    name: &str,
    tx: Sender<Msg>,
    body: impl FnOnce(Sender<Msg>) + Send + 'static,
) -> Result<(), ChatError> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || body(tx))
        .map(drop)
        .map_err(ChatError::Thread)
}

/// Reads the server's byte stream and sends it on line by line.
fn read_lines(mut conn: Conn, early: Vec<u8>, tx: Sender<Msg>) {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    // What came during the handshake goes first, as if read now.
    let mut first = (!early.is_empty()).then_some(early);
    let end = loop {
        let got = match first.take() {
            Some(early) => {
                pending.extend_from_slice(&early);
                Ok(early.len())
            }
            None => conn.read(&mut buf).inspect(|&n| {
                pending.extend_from_slice(buf.get(..n).unwrap_or_default());
            }),
        };
        match got {
            Ok(0) => break None,
            Ok(_) => {
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let mut line: Vec<u8> = pending.drain(..=pos).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if tx.send(Msg::Incoming(line)).is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(e),
        }
    };
    if !pending.is_empty() {
        let _ = tx.send(Msg::Incoming(pending));
    }
    let _ = tx.send(Msg::Closed(end));
}

/// Receives relayed datagrams and sends each on as one incoming message.
fn read_datagrams(sock: UdpSocket, server: SocketAddr, tx: Sender<Msg>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let msg = match sock.recv(&mut buf) {
            Ok(n) => Msg::Incoming(buf.get(..n).unwrap_or_default().to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // An ICMP "port unreachable" for an earlier datagram: say so and keep going.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Msg::Notice(format!("* error: nothing listens at {server} (udp)"))
            }
            Err(e) => {
                let _ = tx.send(Msg::Closed(Some(e)));
                return;
            }
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// Reads stdin line by line (pipe mode).
fn read_stdin(tx: Sender<Msg>) {
    let mut stdin = io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        let msg = match stdin.read_until(b'\n', &mut line) {
            Ok(0) => Msg::InputEnd,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Msg::Line(line.clone())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Msg::InputError(e),
        };
        let last = !matches!(msg, Msg::Line(_));
        if tx.send(msg).is_err() || last {
            return;
        }
    }
}

/// Reads terminal events (terminal mode).
fn read_keys(tx: Sender<Msg>) {
    loop {
        let msg = match event::read() {
            Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => Msg::Key(key),
            Ok(Event::Resize(..)) => Msg::Resize,
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Msg::InputError(e));
                return;
            }
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// How the main loop shows things and takes key presses.
trait Output {
    /// Prints one incoming line (or notice).
    fn incoming(&mut self, line: &[u8]) -> Result<(), ChatError>;
    /// Prints a notice of the client's own.
    fn notice(&mut self, text: &str) -> Result<(), ChatError> {
        self.incoming(text.as_bytes())
    }
    /// Applies a key press; returns what it asks for.
    fn key(&mut self, _key: KeyEvent) -> Result<Typed, ChatError> {
        Ok(Typed::Nothing)
    }
    /// Redraws after a resize.
    fn redraw(&mut self) -> Result<(), ChatError> {
        Ok(())
    }
    /// Leaves the screen tidy before exiting.
    fn finish(&mut self) -> Result<(), ChatError> {
        Ok(())
    }
}

/// What a key press amounted to.
#[derive(Debug, PartialEq, Eq)]
enum Typed {
    Nothing,
    /// Enter: this line is to be sent.
    Line(String),
    /// Ctrl-C, or Ctrl-D on an empty line.
    Quit,
}

/// Pipe mode: incoming lines go to stdout as they are.
struct Plain<W: Write>(W);

impl<W: Write> Output for Plain<W> {
    fn incoming(&mut self, line: &[u8]) -> Result<(), ChatError> {
        self.0.write_all(line).map_err(ChatError::Stdout)?;
        self.0.write_all(b"\n").map_err(ChatError::Stdout)?;
        self.0.flush().map_err(ChatError::Stdout)
    }
}

fn main_loop(
    mut link: Link,
    rx: &Receiver<Msg>,
    out: &mut impl Output,
) -> Result<ExitCode, ChatError> {
    let result = run_loop(&mut link, rx, out);
    let finished = out.finish();
    let code = result?;
    finished?;
    Ok(code)
}

/// The next message, waiting until `by` at most: `Timeout` once it passed, `Disconnected`
/// when every sender is gone.
fn next(rx: &Receiver<Msg>, by: Option<Instant>) -> Result<Msg, RecvTimeoutError> {
    match by {
        Some(by) => rx.recv_timeout(by.saturating_duration_since(Instant::now())),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    }
}

fn run_loop(
    link: &mut Link,
    rx: &Receiver<Msg>,
    out: &mut impl Output,
) -> Result<ExitCode, ChatError> {
    loop {
        let msg = match next(rx, link.welcome_by) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => return Err(link.no_answer(Stall::Answer)),
            // Every sender gone means both threads ended: nothing more can happen.
            Err(RecvTimeoutError::Disconnected) => return Ok(ExitCode::SUCCESS),
        };
        let line = match msg {
            Msg::Incoming(line) => {
                link.welcome_by = None;
                out.incoming(&line)?;
                continue;
            }
            Msg::Notice(text) => {
                out.notice(&text)?;
                continue;
            }
            Msg::Closed(end) => {
                if let Some(e) = link.refused() {
                    return Err(e);
                }
                return closed(end, out);
            }
            Msg::Resize => {
                out.redraw()?;
                continue;
            }
            Msg::Key(key) => match out.key(key)? {
                Typed::Nothing => continue,
                Typed::Line(line) => line.into_bytes(),
                Typed::Quit => return quit(link, rx, out),
            },
            Msg::Line(line) => line,
            Msg::InputEnd => return quit(link, rx, out),
            Msg::InputError(e) => {
                // Leave politely, then report.
                let _ = quit(link, rx, out);
                return Err(ChatError::Stdin(e));
            }
        };
        if line == b"/quit" {
            return quit(link, rx, out);
        }
        if line.is_empty() {
            continue;
        }
        match link.send_line(&line) {
            Ok(()) => {}
            Err(e @ ChatError::LineTooLong(_)) => {
                out.notice(&format!("* error: {e}; not sent"))?;
            }
            Err(e @ ChatError::NoAnswer(_)) => return Err(e),
            Err(e) => {
                // The reader will see the connection end too; say it once, here.
                out.notice("* connection closed")?;
                return Err(e);
            }
        }
    }
}

fn closed(end: Option<io::Error>, out: &mut impl Output) -> Result<ExitCode, ChatError> {
    out.notice("* connection closed")?;
    match end {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => Err(ChatError::Receive(e)),
    }
}

/// Sends `/quit` and waits (bounded) for the server to close, printing what it still sends. A
/// server that has not said a word by the welcome's deadline is an error.
fn quit(link: &mut Link, rx: &Receiver<Msg>, out: &mut impl Output) -> Result<ExitCode, ChatError> {
    if link.is_udp() {
        // udp-chat has no commands: `/quit` would be relayed to everyone.
        return Ok(ExitCode::SUCCESS);
    }
    match link.send_line(b"/quit") {
        Ok(()) => {}
        Err(e @ ChatError::NoAnswer(_)) => return Err(e),
        Err(_) => return Ok(ExitCode::SUCCESS),
    }
    if let Peer::Stream(conn) = &mut link.peer {
        let _ = conn.shutdown(Shutdown::Write);
    }
    let grace_by = Instant::now() + QUIT_GRACE;
    loop {
        match next(rx, Some(link.welcome_by.unwrap_or(grace_by))) {
            Ok(Msg::Incoming(line)) => {
                link.welcome_by = None;
                out.incoming(&line)?;
            }
            Ok(Msg::Closed(_)) | Err(RecvTimeoutError::Disconnected) => {
                return link.refused().map_or(Ok(ExitCode::SUCCESS), Err);
            }
            Err(RecvTimeoutError::Timeout) if link.welcome_by.is_some() => {
                return Err(link.no_answer(Stall::Answer));
            }
            Err(RecvTimeoutError::Timeout) => return Ok(ExitCode::SUCCESS),
            Ok(_) => {}
        }
    }
}
