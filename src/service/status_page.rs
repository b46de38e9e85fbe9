//! The status page of the metrics listener (PROTOCOL.md, "Metrics"): `GET /` renders every
//! listener and every service's counters as HTML on the server (readable without JavaScript),
//! and its embedded script then follows `/events` (server-sent events, one snapshot a second)
//! to update the tables and draw the last five minutes of requests/s and bytes/s. Sans-IO:
//! gathered counters in, bytes out. The page, its script and its style are in the binary.

use std::fmt::Write;

pub(crate) mod history;

use serde_json::{Value, json};

use crate::kind::ServiceKind;
use crate::metrics::Gathered;

/// The script of the page (inlined into it: one request, no network beyond this server).
const SCRIPT: &str = include_str!("status_page/status.js");
/// Its style.
const STYLE: &str = include_str!("status_page/status.css");

/// A listener as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSummary {
    /// Its service.
    pub service: ServiceKind,
    /// `tcp`, `udp`, `unix` or `unixgram`.
    pub transport: &'static str,
    /// The bound address.
    pub addr: String,
    /// It speaks TLS.
    pub tls: bool,
    /// Its clients must pass the HMAC challenge.
    pub auth: bool,
}

/// The snapshot `/events` sends and the script reads: what `stats --json` shows, the process's
/// memory and descriptors, and the listeners.
pub(crate) fn snapshot(gathered: &Gathered, listeners: &[ListenerSummary]) -> Value {
    let mut v = gathered.stats_json();
    add_requests(&mut v);
    if let Some(map) = v.as_object_mut() {
        map.insert(
            "process".into(),
            json!({
                "rss_bytes": gathered.process.rss_bytes,
                "open_fds": gathered.process.open_fds,
            }),
        );
        let listed: Vec<Value> = listeners
            .iter()
            .map(|l| {
                json!({"service": l.service.name(), "transport": l.transport, "addr": l.addr,
                       "tls": l.tls, "auth": l.auth})
            })
            .collect();
        map.insert("listeners".into(), Value::Array(listed));
        map.insert("unix_ms".into(), json!(history::unix_ms_now()));
    }
    v
}

/// Each service's requests and failed requests, where it has requests: `files`' frames (and
/// those answered with an error code), a datagram service's datagrams. The byte streams and
/// chat count bytes only.
fn add_requests(v: &mut Value) {
    let frames: Vec<(u64, bool)> = v
        .get("frames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|f| {
            let n = f.get("count").and_then(Value::as_u64).unwrap_or(0);
            (n, f.get("outcome").and_then(Value::as_str) != Some("ok"))
        })
        .collect();
    let Some(services) = v.get_mut("services").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, s) in services.iter_mut() {
        let (requests, errors) = match name.as_str() {
            "files" => (
                frames.iter().map(|(n, _)| n).sum(),
                frames.iter().filter(|(_, e)| *e).map(|(n, _)| n).sum(),
            ),
            _ => (
                count(s, &["datagrams_received"]),
                count(s, &["datagrams_dropped"]),
            ),
        };
        if let Some(s) = s.as_object_mut() {
            s.insert("requests".into(), json!(requests));
            s.insert("request_errors".into(), json!(errors));
        }
    }
}

/// One server-sent event carrying a snapshot.
pub(crate) fn event(gathered: &Gathered, listeners: &[ListenerSummary], out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // JSON has no raw newline: the event is one `data:` line.
    let _ = serde_json::to_writer(&mut *out, &snapshot(gathered, listeners));
    out.extend_from_slice(b"\n\n");
}

/// `&`, `<`, `>` and `"` as HTML entities.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A counter of one service in the snapshot.
fn count(service: &Value, keys: &[&str]) -> u64 {
    keys.iter()
        .filter_map(|k| service.get(*k).and_then(Value::as_u64))
        .fold(0, u64::saturating_add)
}

/// The columns of the services table: title and the counters it adds up.
const COLUMNS: [(&str, &[&str]); 10] = [
    ("open", &["connections_open"]),
    ("accepted", &["connections_accepted"]),
    ("requests", &["requests"]),
    ("errors", &["request_errors"]),
    (
        "rejected",
        &[
            "rejected_max_conns",
            "rejected_fd_limit",
            "rejected_auth",
            "rejected_per_ip",
            "rejected_proxy",
            "rejected_tls",
        ],
    ),
    ("bytes in", &["bytes_received"]),
    ("bytes out", &["bytes_sent"]),
    ("datagrams in", &["datagrams_received"]),
    ("datagrams out", &["datagrams_sent"]),
    (
        "dropped",
        &["datagrams_dropped", "datagrams_kernel_dropped"],
    ),
];

/// The whole page, rendered now: the first view needs no script.
pub(crate) fn page(
    gathered: &Gathered,
    listeners: &[ListenerSummary],
    history: &history::History,
) -> String {
    let snap = snapshot(gathered, listeners);
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>socklab status</title><style>{STYLE}</style></head><body>\n\
         <h1>socklab <span id=\"live\" class=\"dim\">(as of the page load)</span></h1>\n"
    );
    let workers = snap.get("workers").and_then(Value::as_u64).unwrap_or(1);
    let _ = write!(
        h,
        "<p>workers <b id=\"workers\">{workers}</b> · resident memory <b id=\"rss\">{}</b> · \
         open descriptors <b id=\"fds\">{}</b> · loop busy <b id=\"busy\">–</b> · updates \
         <b id=\"updates\">0</b></p>",
        human_bytes(gathered.process.rss_bytes),
        gathered.process.open_fds
    );
    h.push('\n');
    h.push_str("<h2>Rates, last five minutes</h2>\n<div class=\"charts\"><figure><figcaption>requests/s (frames and chat lines) and connections/s</figcaption><svg id=\"chart-req\" viewBox=\"0 0 600 160\" role=\"img\"></svg></figure><figure><figcaption>bytes/s in and out</figcaption><svg id=\"chart-bytes\" viewBox=\"0 0 600 160\" role=\"img\"></svg></figure></div>\n");
    listeners_table(&mut h, listeners);
    services_table(&mut h, &snap);
    workers_table(&mut h, &snap);
    h.push_str("<p class=\"dim\">Also: <a href=\"/metrics\">/metrics</a> (Prometheus) · <a href=\"/stats.json\">/stats.json</a> · <a href=\"/events\">/events</a> (server-sent events)</p>\n");
    // The charts' first minutes: integers only, so nothing in it can end the script element.
    let _ = writeln!(
        h,
        "<script type=\"application/json\" id=\"history\">{}</script>",
        history.json()
    );
    let _ = write!(h, "<script>{SCRIPT}</script>\n</body></html>\n");
    h
}

/// The listeners' table: address, transport, TLS and auth of each.
fn listeners_table(h: &mut String, listeners: &[ListenerSummary]) {
    h.push_str("<h2>Listeners</h2>\n<table id=\"listeners\"><tr><th>service</th><th>transport</th><th>address</th><th>TLS</th><th>auth</th></tr>\n");
    for l in listeners {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            l.service,
            l.transport,
            escape(&l.addr),
            if l.tls { "on" } else { "off" },
            if l.auth { "on" } else { "off" }
        );
    }
    h.push_str("</table>\n");
}

/// Every service's counters, one row each, whether it runs or not.
fn services_table(h: &mut String, snap: &Value) {
    h.push_str("<h2>Services</h2>\n<table id=\"services\"><tr><th>service</th>");
    for (title, _) in COLUMNS {
        let _ = write!(h, "<th>{title}</th>");
    }
    h.push_str("</tr>\n");
    let empty = json!({});
    for kind in ServiceKind::ALL {
        let s = snap
            .get("services")
            .and_then(|s| s.get(kind.name()))
            .unwrap_or(&empty);
        let _ = write!(h, "<tr data-service=\"{kind}\"><td>{kind}</td>");
        for (title, keys) in COLUMNS {
            let _ = write!(h, "<td data-col=\"{title}\">{}</td>", count(s, keys));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

/// Each worker's open and accepted connections and bytes.
fn workers_table(h: &mut String, snap: &Value) {
    h.push_str("<h2>Per worker</h2>\n<table id=\"workers-table\"><tr><th>worker</th><th>open</th><th>accepted</th><th>bytes in</th><th>bytes out</th></tr>\n");
    for w in snap
        .get("per_worker")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let services: Vec<&Value> = w
            .get("services")
            .and_then(Value::as_object)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        let sum = |keys: &[&str]| services.iter().map(|s| count(s, keys)).sum::<u64>();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            w.get("worker").and_then(Value::as_u64).unwrap_or(0),
            sum(&["connections_open"]),
            sum(&["connections_accepted"]),
            sum(&["bytes_received"]),
            sum(&["bytes_sent"])
        );
    }
    h.push_str("</table>\n");
}

/// `1.5 MiB`.
fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units.get(i).copied().unwrap_or("B"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counters;

    fn gathered() -> Gathered {
        let mut c = Counters::default();
        c.service(ServiceKind::Echo).accepted = 7;
        c.service(ServiceKind::Echo).bytes_received = 1234;
        c.frame("put", "ok");
        c.frame("put", "ok");
        c.frame("get", "not_found");
        c.service(ServiceKind::UdpEcho).datagrams_received = 5;
        let mut g = Gathered::alone(0, &c);
        g.process.rss_bytes = 3 << 20;
        g.process.open_fds = 12;
        g
    }

    fn listeners() -> Vec<ListenerSummary> {
        vec![ListenerSummary {
            service: ServiceKind::Echo,
            transport: "unix",
            addr: "unix:/tmp/<odd>&\"name\"".into(),
            tls: true,
            auth: false,
        }]
    }

    #[test]
    fn the_page_shows_counters_listeners_and_the_process_without_script() {
        let mut past = history::History::default();
        for (t, r) in [(1_000, 5), (2_000, 9)] {
            past.push(history::Sample {
                unix_ms: t,
                requests: r,
                ..Default::default()
            });
        }
        let html = page(&gathered(), &listeners(), &past);
        assert!(html.starts_with("<!doctype html>"));
        // The charts open on the minutes before the page.
        assert!(
            html.contains(
                "<script type=\"application/json\" id=\"history\">[[1000,5,0,0,0],[2000,9,0,0,0]]</script>"
            ),
            "{html}"
        );
        assert!(html.contains("<td data-col=\"accepted\">7</td>"), "{html}");
        assert!(html.contains("<td data-col=\"bytes in\">1234</td>"));
        assert!(html.contains("<th>requests</th><th>errors</th>"));
        assert!(html.contains("3.0 MiB") && html.contains(">12<"));
        assert!(
            html.contains("unix:/tmp/&lt;odd&gt;&amp;&quot;name&quot;"),
            "escaped"
        );
        assert!(!html.contains("<odd>"));
        assert!(html.contains("<td>on</td>"), "TLS on");
        for kind in ServiceKind::ALL {
            assert!(html.contains(&format!("data-service=\"{kind}\"")), "{kind}");
        }
        assert!(html.contains("new EventSource"), "the script is inlined");
    }

    #[test]
    fn an_event_is_one_data_line_of_json() {
        let mut out = Vec::new();
        event(&gathered(), &listeners(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("data: ") && text.ends_with("\n\n"));
        assert_eq!(text.matches('\n').count(), 2, "{text}");
        let v: Value = serde_json::from_str(text.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(v["services"]["echo"]["connections_accepted"], 7);
        assert_eq!(v["process"]["open_fds"], 12);
        assert_eq!(v["services"]["echo"]["requests"], 0, "bytes only");
        assert_eq!(v["services"]["files"]["requests"], 3);
        assert_eq!(v["services"]["files"]["request_errors"], 1);
        assert_eq!(v["services"]["udp-echo"]["requests"], 5);
        assert_eq!(v["listeners"][0]["tls"], true);
        // The server's clock: the page's rates come from differences of one clock.
        let at = v["unix_ms"].as_u64().unwrap();
        assert!(at.abs_diff(history::unix_ms_now()) < 60_000, "{at}");
    }
}
