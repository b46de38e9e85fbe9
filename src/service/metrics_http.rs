//! `metrics`: the counters in the Prometheus text format over HTTP/1.1 (PROTOCOL.md,
//! "Metrics"), sans-IO. `GET /metrics` gets them; any other request a 404; a malformed or
//! oversized request a 400 (or 431) and the connection closes, like any other bad client.

use super::Step;
use super::{Action, Awaiting};
use crate::metrics::{Counters, Gathered, Peers};

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
}

/// A scrape waiting for every worker's counters.
#[derive(Debug)]
struct Scrape {
    /// The response closes the connection.
    close: bool,
    /// The reactor has been asked for the counters (`poll_action`).
    asked: bool,
}

fn respond(out: &mut Vec<u8>, status: &str, body: &str, close: bool) {
    let connection = if close { "close" } else { "keep-alive" };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}

impl MetricsHttp {
    /// Whether more requests are read.
    pub fn accepts_input(&self) -> bool {
        !self.closing && self.scrape.is_none()
    }

    /// A scrape asks the reactor for every worker's counters, once.
    pub fn poll_action(&mut self) -> Option<Action> {
        let scrape = self.scrape.as_mut().filter(|s| !s.asked)?;
        scrape.asked = true;
        Some(Action::Counters)
    }

    /// Whether a scrape waits for the other workers' counters.
    pub fn awaiting(&self) -> Awaiting {
        match self.scrape {
            Some(_) => Awaiting::Counters,
            None => Awaiting::Nothing,
        }
    }

    /// Every worker's counters came: the waiting scrape is answered.
    pub fn on_counters(&mut self, gathered: &Gathered, out: &mut Vec<u8>) {
        if let Some(scrape) = self.scrape.take() {
            respond(out, "200 OK", &gathered.prometheus(), scrape.close);
        }
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
                    if rest.len() > MAX_HEAD {
                        respond(
                            out,
                            "431 Request Header Fields Too Large",
                            "request head too large\n",
                            true,
                        );
                        self.closing = true;
                    }
                    break;
                }
                Ok(httparse::Status::Complete(n)) => {
                    pos = pos.saturating_add(n);
                    let header = |name: &str| {
                        req.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
                    };
                    let has_body = header("content-length").is_some_and(|v| v != "0")
                        || header("transfer-encoding").is_some();
                    let close = req.version == Some(0)
                        || header("connection").is_some_and(|v| v == "close")
                        || has_body;
                    if has_body {
                        respond(
                            out,
                            "400 Bad Request",
                            "requests with a body are not served\n",
                            true,
                        );
                    } else if req.method == Some("GET") && req.path == Some("/metrics") {
                        self.metrics(out, counters, peers, close);
                    } else {
                        respond(
                            out,
                            "404 Not Found",
                            "only GET /metrics is served here\n",
                            close,
                        );
                    }
                    self.closing = close;
                }
                Err(e) => {
                    respond(
                        out,
                        "400 Bad Request",
                        &format!("malformed request: {e}\n"),
                        true,
                    );
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
    /// A scrape: answered at once by a worker alone, otherwise once every worker's counters
    /// are gathered (`on_counters`).
    fn metrics(&mut self, out: &mut Vec<u8>, counters: &Counters, peers: &Peers, close: bool) {
        if peers.alone() {
            let gathered = Gathered::alone(peers.worker, counters);
            respond(out, "200 OK", &gathered.prometheus(), close);
        } else {
            self.scrape = Some(Scrape {
                close,
                asked: false,
            });
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
    fn metrics_404_and_keep_alive() {
        let (out, step) =
            run(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /other HTTP/1.1\r\n\r\nGET /met");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("# TYPE socklab_loop_iterations_total counter"));
        assert!(out.contains("HTTP/1.1 404 Not Found"));
        assert!(!step.close);
        assert_eq!(
            step.consumed,
            out.len().min(step.consumed),
            "partial request kept"
        );
        let full = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /other HTTP/1.1\r\n\r\n";
        assert_eq!(step.consumed, full.len());
    }

    #[test]
    fn with_other_workers_a_scrape_waits_for_their_counters() {
        let mut m = MetricsHttp::default();
        let mut out = Vec::new();
        let peers = Peers {
            worker: 1,
            workers: 2,
        };
        let one = b"GET /metrics HTTP/1.1\r\n\r\n";
        let two = [
            &one[..],
            b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
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
        };
        m.on_counters(&gathered, &mut out);
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
}
