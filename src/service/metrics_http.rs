//! `metrics`: the counters over HTTP/1.1 (PROTOCOL.md, "Metrics"), sans-IO. `GET /metrics`
//! (and `HEAD`) gets them in the Prometheus text format, `/stats.json` as `stats --json`
//! shows them, `/` the status page (`status_page.rs`) and `/events` its server-sent events,
//! a snapshot a second for as long as the viewer stays; any other path a 404, another method
//! a 405. Requests are read as RFC 9112 asks of a server that does not take bodies:
//! whatever could frame a request differently from a proxy in front of it (two
//! `Content-Length`s, any `Transfer-Encoding`, a bare LF, obs-fold, a malformed request line,
//! no `Host` or two) is a 400, and the connection closes, as does an oversized head (431).

use std::sync::Arc;
use std::time::Duration;

use super::Step;
use super::status_page::{self, ListenerSummary};
use super::{Action, Awaiting};
use crate::frame::websocket as ws;
use crate::kind::ServiceKind;
use crate::metrics::{Counters, Gathered, Peers};
use crate::service::status_page::history::History;

/// How often an `/events` viewer gets a snapshot.
pub const EVENT_EVERY: Duration = Duration::from_secs(1);

/// Longest request head accepted, in bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// Headers accepted per request at most.
const MAX_HEADERS: usize = 32;

/// One HTTP connection.
#[derive(Debug, Default)]
pub struct MetricsHttp {
    /// A response said `Connection: close`: nothing more is read.
    closing: bool,
    /// A scrape waits for the other workers' counters; nothing more is read until it is
    /// answered.
    scrape: Option<Scrape>,
    /// The connection follows `/events`: no more requests, a snapshot a second.
    events: Option<Events>,
    /// The listeners, for the status page.
    listeners: Arc<Vec<ListenerSummary>>,
    /// `/chat`'s handshake was answered: the connection is to become a chat member
    /// (`Action::UpgradeToWsChat`, once); nothing more is read as HTTP.
    upgrade: Option<bool>,
    /// The client authenticated when it connected (a TLS client certificate the metrics
    /// listener verified, or its HMAC handshake): it may join a chat that asks for that.
    authenticated: bool,
}

/// A scrape waiting for every worker's counters.
#[derive(Debug)]
struct Scrape {
    /// What the counters answer.
    reply: Reply,
    /// The response closes the connection.
    close: bool,
    /// HEAD: the head alone.
    head_only: bool,
    /// The reactor has been asked for the counters (`poll_action`).
    asked: bool,
}

/// What gathered counters become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The Prometheus exposition.
    Metrics,
    /// `stats --json`'s body.
    Json,
    /// The status page.
    Page,
    /// One server-sent event of `/events`.
    Event,
    /// The chat page (no counters needed).
    ChatPage,
}

/// An `/events` stream.
#[derive(Debug)]
struct Events {
    /// The next snapshot is due: ask the reactor to wake the stream (`Action::Wake`).
    wake_wanted: bool,
}

/// One response to write.
struct Response<'a> {
    /// Status code and reason.
    status: &'a str,
    /// Its media type.
    content_type: &'a str,
    /// Extra header lines, each ending in CRLF.
    extra: &'a str,
    /// The body GET would carry; HEAD sends only its length.
    body: &'a str,
    /// Whether the connection closes after it.
    close: bool,
    /// HEAD: the head alone.
    head_only: bool,
}

impl Response<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        let connection = if self.close { "close" } else { "keep-alive" };
        let head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\n\
             Content-Length: {}\r\n{}Connection: {connection}\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            self.extra,
        );
        out.extend_from_slice(head.as_bytes());
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
    }
}

/// A 400 (or 431): the request cannot be framed safely, so the connection closes.
fn refuse(out: &mut Vec<u8>, status: &str, why: &str) {
    let body = format!("{why}\n");
    Response {
        status,
        content_type: TEXT,
        extra: "",
        body: &body,
        close: true,
        head_only: false,
    }
    .write(out);
}

/// The chat page (`/chat.html`): a WebSocket client of `/chat`, in the binary.
const CHAT_PAGE: &str = include_str!("status_page/chat.html");

/// Plain text: errors, and the Prometheus exposition format.
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The position of the first LF not preceded by CR: RFC 9112 lets a server refuse bare LF,
/// and a proxy that reads lines differently would see other requests in the same bytes.
fn bare_lf(head: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', head).find(|&i| i == 0 || head.get(i - 1) != Some(&b'\r'))
}

/// `Content-Length`'s value: digits only (no sign, no list), optional white space around.
fn content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Why a parsed request must be refused with 400 before it is routed, if it must.
fn framing_error(head: &[u8], req: &httparse::Request<'_, '_>) -> Option<String> {
    if let Some(at) = bare_lf(head) {
        return Some(format!("bare LF at byte {at}: lines end with CRLF"));
    }
    let mut length = None;
    let mut hosts = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Some("Transfer-Encoding is not supported".into());
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Some("more than one Content-Length".into());
            }
            length = Some(content_length(h.value).ok_or("a malformed Content-Length"));
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    match length {
        Some(Err(why)) => return Some(why.into()),
        Some(Ok(n)) if n > 0 => return Some("requests with a body are not served".into()),
        _ => {}
    }
    if hosts > 1 {
        return Some("more than one Host".into());
    }
    if hosts == 0 && req.version == Some(1) {
        return Some("an HTTP/1.1 request without Host".into());
    }
    None
}

/// The path of a request target, without its query: origin form (`/metrics?x`) or absolute
/// form (`http://host/metrics`).
fn target_path(target: &str) -> &str {
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|scheme| {
            let prefix = target.get(..scheme.len())?;
            prefix
                .eq_ignore_ascii_case(scheme)
                .then(|| target.get(scheme.len()..))
                .flatten()
        })
        .map_or(target, |authority_on| {
            authority_on
                .find('/')
                .map_or("/", |i| authority_on.get(i..).unwrap_or("/"))
        });
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// Whether a `Connection` field lists `close`.
fn asks_close(req: &httparse::Request<'_, '_>) -> bool {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

impl MetricsHttp {
    /// A connection of a listener among `listeners` (which the status page lists).
    pub fn new(listeners: Arc<Vec<ListenerSummary>>) -> MetricsHttp {
        MetricsHttp {
            listeners,
            ..MetricsHttp::default()
        }
    }

    /// Whether more requests are read.
    pub fn accepts_input(&self) -> bool {
        !self.closing && self.scrape.is_none() && self.events.is_none() && self.upgrade.is_none()
    }

    /// Whether everything this connection will write is written: a response that closes it,
    /// or the 101 of a WebSocket upgrade (after which the service is replaced).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn finished(&self) -> bool {
        (self.closing && self.scrape.is_none()) || self.upgrade.is_some()
    }

    /// A scrape asks the reactor for every worker's counters, once; an `/events` stream asks to
    /// be woken for its next snapshot.
    pub fn poll_action(&mut self) -> Option<Action> {
        if let Some(asked @ false) = &mut self.upgrade {
            *asked = true;
            return Some(Action::UpgradeToWsChat);
        }
        if let Some(scrape) = self.scrape.as_mut().filter(|s| !s.asked) {
            scrape.asked = true;
            return Some(Action::Counters);
        }
        let events = self.events.as_mut().filter(|e| e.wake_wanted)?;
        events.wake_wanted = false;
        Some(Action::Wake(EVENT_EVERY))
    }

    /// The connection is open; `authenticated` as its listener established.
    pub fn on_opened(&mut self, authenticated: bool) {
        self.authenticated = authenticated;
    }

    /// The stream's snapshot is due: gather the counters for it.
    pub fn on_wake(&mut self) {
        if self.events.is_some() && self.scrape.is_none() {
            self.scrape = Some(Scrape {
                reply: Reply::Event,
                close: false,
                head_only: false,
                asked: false,
            });
        }
    }

    /// Whether a scrape waits for the other workers' counters.
    pub fn awaiting(&self) -> Awaiting {
        match self.scrape {
            Some(_) => Awaiting::Counters,
            None => Awaiting::Nothing,
        }
    }

    /// Every worker's counters came: the waiting scrape is answered (the page opens with the
    /// `history` of the last minutes).
    pub fn on_counters(&mut self, gathered: &Gathered, history: &History, out: &mut Vec<u8>) {
        let Some(scrape) = self.scrape.take() else {
            return;
        };
        let (body, content_type) = match scrape.reply {
            Reply::Metrics => (gathered.prometheus(), TEXT),
            Reply::Json => (format!("{}\n", gathered.stats_json()), "application/json"),
            Reply::Page => (
                status_page::page(gathered, &self.listeners, history),
                "text/html; charset=utf-8",
            ),
            // Served at once, never gathered for.
            Reply::ChatPage => return,
            Reply::Event => {
                status_page::event(gathered, &self.listeners, out);
                if let Some(events) = &mut self.events {
                    events.wake_wanted = true;
                }
                return;
            }
        };
        Response {
            status: "200 OK",
            content_type,
            extra: "",
            body: &body,
            close: scrape.close,
            head_only: scrape.head_only,
        }
        .write(out);
    }

    /// Answers every complete request in `input`.
    pub fn on_input(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        counters: &Counters,
        peers: &Peers,
    ) -> Step {
        let mut pos = 0usize;
        while self.accepts_input() {
            let rest = input.get(pos..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(rest) {
                Ok(httparse::Status::Partial) => {
                    // All of `rest` belongs to this one request's head.
                    if let Some(at) = bare_lf(rest) {
                        refuse(out, "400 Bad Request", &format!("bare LF at byte {at}"));
                        self.closing = true;
                    } else if rest.len() > MAX_HEAD {
                        refuse(
                            out,
                            "431 Request Header Fields Too Large",
                            "request head too large",
                        );
                        self.closing = true;
                    }
                    break;
                }
                Ok(httparse::Status::Complete(n)) => {
                    pos = pos.saturating_add(n);
                    let head = rest.get(..n).unwrap_or_default();
                    if let Some(why) = framing_error(head, &req) {
                        refuse(out, "400 Bad Request", &why);
                        self.closing = true;
                    } else {
                        self.closing = self.answer(&req, out, counters, peers);
                    }
                }
                Err(e) => {
                    refuse(out, "400 Bad Request", &format!("malformed request: {e}"));
                    self.closing = true;
                }
            }
        }
        Step {
            consumed: pos,
            close: self.closing,
        }
    }
}

impl MetricsHttp {
    /// Answers a well-framed request (a scrape with other workers waits for their counters,
    /// `on_counters`); returns whether the connection closes after it.
    fn answer(
        &mut self,
        req: &httparse::Request<'_, '_>,
        out: &mut Vec<u8>,
        counters: &Counters,
        peers: &Peers,
    ) -> bool {
        let close = req.version == Some(0) || asks_close(req);
        let method = req.method.unwrap_or_default();
        let head_only = method == "HEAD";
        let reply = match target_path(req.path.unwrap_or_default()) {
            "/metrics" => Some(Reply::Metrics),
            "/stats.json" => Some(Reply::Json),
            "/" | "/index.html" => Some(Reply::Page),
            "/events" => Some(Reply::Event),
            "/chat" => return self.websocket(req, out),
            "/chat.html" => Some(Reply::ChatPage),
            _ => None,
        };
        let exposition;
        let (status, content_type, extra, body) = match (method, reply) {
            ("GET", Some(Reply::Event)) => return self.start_events(out),
            ("GET" | "HEAD", Some(Reply::ChatPage)) => {
                ("200 OK", "text/html; charset=utf-8", "", CHAT_PAGE)
            }
            ("GET" | "HEAD", Some(Reply::Metrics)) if peers.alone() => {
                exposition = Gathered::alone(peers.worker, counters).prometheus();
                ("200 OK", TEXT, "", exposition.as_str())
            }
            // The page and the JSON show the process's memory too, which the reactor reads
            // when it gathers the counters.
            ("GET" | "HEAD", Some(reply)) if reply != Reply::Event => {
                self.scrape = Some(Scrape {
                    reply,
                    close,
                    head_only,
                    asked: false,
                });
                return close;
            }
            (_, Some(Reply::Event)) => (
                "405 Method Not Allowed",
                TEXT,
                "Allow: GET\r\n",
                "only GET is served here\n",
            ),
            (_, Some(_)) => (
                "405 Method Not Allowed",
                TEXT,
                "Allow: GET, HEAD\r\n",
                "only GET and HEAD are served here\n",
            ),
            (_, None) => (
                "404 Not Found",
                TEXT,
                "",
                "served here: / (status page), /metrics, /stats.json, /events, /chat, /chat.html\n",
            ),
        };
        Response {
            status,
            content_type,
            extra,
            body,
            close,
            head_only,
        }
        .write(out);
        close
    }

    /// `/events`: the head now, then an event a second until the viewer leaves (its end is
    /// the connection's, so no length is given); the connection stays open.
    fn start_events(&mut self, out: &mut Vec<u8>) -> bool {
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
              Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        );
        self.events = Some(Events { wake_wanted: false });
        self.on_wake();
        false
    }
}

/// Why a WebSocket handshake is refused: status, extra header lines, the reason.
type Refusal = (&'static str, &'static str, &'static str);

/// The values of every `name` field of a request.
fn fields<'r>(req: &'r httparse::Request<'_, '_>, name: &'r str) -> impl Iterator<Item = &'r str> {
    req.headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| std::str::from_utf8(h.value).unwrap_or(""))
}

/// Whether a `name` field lists `token` (case-insensitive, comma-separated).
fn lists(req: &httparse::Request<'_, '_>, name: &str, token: &str) -> bool {
    fields(req, name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks a WebSocket opening handshake (RFC 6455 section 4.2.1); returns the
/// `Sec-WebSocket-Accept` value, or the refusal the RFC gives.
fn check_handshake(req: &httparse::Request<'_, '_>) -> Result<String, Refusal> {
    if req.method != Some("GET") {
        return Err((
            "405 Method Not Allowed",
            "Allow: GET\r\n",
            "a WebSocket handshake is a GET",
        ));
    }
    if !lists(req, "upgrade", "websocket") || !lists(req, "connection", "upgrade") {
        return Err((
            "426 Upgrade Required",
            "Upgrade: websocket\r\nConnection: Upgrade\r\n",
            "/chat is a WebSocket: Upgrade: websocket and Connection: Upgrade are needed",
        ));
    }
    let versions: Vec<&str> = fields(req, "sec-websocket-version").collect();
    if versions.iter().map(|v| v.trim()).ne(["13"]) {
        return Err((
            "426 Upgrade Required",
            "Sec-WebSocket-Version: 13\r\n",
            "only WebSocket version 13 is spoken here",
        ));
    }
    let keys: Vec<&str> = fields(req, "sec-websocket-key").collect();
    match keys.as_slice() {
        [key] => ws::accept_key(key),
        _ => None,
    }
    .ok_or((
        "400 Bad Request",
        "",
        "Sec-WebSocket-Key must be one base64 value of 16 bytes",
    ))
}

impl MetricsHttp {
    /// `/chat`: a WebSocket opening handshake, answered `101` (and the connection becomes a
    /// chat member) or refused; returns whether the connection closes.
    fn websocket(&mut self, req: &httparse::Request<'_, '_>, out: &mut Vec<u8>) -> bool {
        let chat_asks_auth = self
            .listeners
            .iter()
            .any(|l| l.service == ServiceKind::Chat && l.auth);
        let checked = check_handshake(req).and_then(|accept| {
            if chat_asks_auth && !self.authenticated {
                return Err((
                    "403 Forbidden",
                    "",
                    "the chat room asks for authentication: connect to a metrics listener \
                     that verifies TLS client certificates (--tls metrics --tls-client-ca)",
                ));
            }
            Ok(accept)
        });
        match checked {
            Ok(accept) => {
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                out.extend_from_slice(head.as_bytes());
                self.upgrade = Some(false);
                false
            }
            Err((status, extra, why)) => {
                let body = format!("{why}\n");
                Response {
                    status,
                    content_type: TEXT,
                    extra,
                    body: &body,
                    close: true,
                    head_only: false,
                }
                .write(out);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (String, Step) {
        let mut m = MetricsHttp::default();
        let mut out = Vec::new();
        let step = m.on_input(input, &mut out, &Counters::default(), &Peers::default());
        (String::from_utf8(out).unwrap(), step)
    }

    #[test]
    fn with_other_workers_a_scrape_waits_for_their_counters() {
        let mut m = MetricsHttp::default();
        let mut out = Vec::new();
        let peers = Peers {
            worker: 1,
            workers: 2,
        };
        let one = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        let two = [
            &one[..],
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ]
        .concat();
        let step = m.on_input(&two, &mut out, &Counters::default(), &peers);
        assert_eq!(step.consumed, one.len(), "the next request waits");
        assert!(out.is_empty() && !step.close && !m.accepts_input());
        assert!(matches!(m.poll_action(), Some(Action::Counters)));
        assert!(m.poll_action().is_none(), "asked once");
        assert_eq!(m.awaiting(), Awaiting::Counters);
        let gathered = Gathered {
            workers: 2,
            answered: vec![(1, Counters::default())],
            missing: vec![0],
            process: Default::default(),
        };
        m.on_counters(&gathered, &History::default(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("socklab_worker_answered{worker=\"0\"} 0\n"),
            "{text}"
        );
        assert!(m.accepts_input() && m.awaiting() == Awaiting::Nothing);
        let mut out = Vec::new();
        let step = m.on_input(&two[one.len()..], &mut out, &Counters::default(), &peers);
        assert!(
            step.close && out.is_empty(),
            "the close comes with the response"
        );
        assert_eq!(m.awaiting(), Awaiting::Counters);
        assert!(!m.finished(), "the closing response is still to come");
        m.on_counters(&gathered, &History::default(), &mut out);
        assert!(m.finished() && !out.is_empty());
    }

    #[test]
    fn metrics_404_and_keep_alive() {
        let (out, step) =
            run(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /other HTTP/1.1\r\nHost: x\r\n\r\nGET /met");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("# TYPE socklab_loop_iterations_total counter"));
        assert!(out.contains("HTTP/1.1 404 Not Found"));
        assert!(!step.close);
        assert_eq!(
            step.consumed,
            out.len().min(step.consumed),
            "partial request kept"
        );
        let full =
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /other HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(step.consumed, full.len());
    }

    #[test]
    fn bad_requests_close() {
        for bad in [
            &b"\x00\x01garbage\r\n\r\n"[..],
            b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /metrics HTTP/1.0\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
        ] {
            let (out, step) = run(bad);
            assert!(step.close, "{out}");
            assert!(out.starts_with("HTTP/1.1 "), "{out}");
        }
        let huge = [b'a'; MAX_HEAD + 10];
        let (out, step) = run(&huge);
        assert!(out.starts_with("HTTP/1.1 4"), "{out}");
        assert!(step.close);
    }

    #[test]
    fn targets_and_content_lengths() {
        for (target, path) in [
            ("/metrics", "/metrics"),
            ("/metrics?a=1", "/metrics"),
            ("/metrics#x", "/metrics"),
            ("HTTP://h:9/metrics?q", "/metrics"),
            ("http://h", "/"),
            ("*", "*"),
        ] {
            assert_eq!(target_path(target), path, "{target}");
        }
        assert_eq!(content_length(b" 0 "), Some(0));
        assert_eq!(content_length(b"12"), Some(12));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1,1",
            b"0x1",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
        assert_eq!(bare_lf(b"a\r\nb\r\n"), None);
        assert_eq!(bare_lf(b"\nGET"), Some(0));
        assert_eq!(bare_lf(b"a\r\nb\n"), Some(4));
    }

    #[test]
    fn head_has_the_length_and_no_body() {
        let (get, _) = run(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let (head, step) = run(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(!step.close);
        let (get_head, _) = get.split_once("\r\n\r\n").unwrap();
        assert_eq!(head, format!("{get_head}\r\n\r\n"));
    }
}
