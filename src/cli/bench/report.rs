//! The end of a `socklab bench` run: whether the generator itself was the bound (saturated),
//! and the report, as JSON or as a few lines for people.

use super::{BenchArgs, Report};

/// Busy share of the load threads' cores at which they, not the server, set the pace.
const SATURATED_PERCENT: f64 = 90.0;

/// Whether `threads` load threads that used `cpu_percent` of one core were saturated.
pub(super) fn saturated(cpu_percent: f64, threads: u32) -> bool {
    cpu_percent >= SATURATED_PERCENT * f64::from(threads.max(1))
}

/// Prints a report as one JSON object on stdout.
pub(super) fn print_json(r: &impl serde::Serialize) {
    match serde_json::to_string(r) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("socklab bench: cannot encode the report: {e}"),
    }
}

/// The latency line of a report for people (TCP and UDP alike).
pub(super) fn print_latency(l: &super::Latency) {
    println!(
        "  latency    p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  max {:.1} us",
        l.p50, l.p90, l.p99, l.p99_9, l.max
    );
}

/// The load generator's own CPU line.
pub(super) fn print_cpu(cpu_s: f64, cpu_percent: f64) {
    println!("  bench cpu  {cpu_s:.2} s, {cpu_percent:.1}% of one core");
}

/// Prints the report: JSON on stdout with --json, else a few lines for people.
pub(super) fn print_report(args: &BenchArgs, r: &Report) {
    if args.json {
        print_json(r);
        return;
    }
    let what = match r.frame_cmd {
        Some(cmd) => format!(
            "frame {} ({} B requests)",
            format!("{cmd:?}").to_lowercase(),
            r.request_bytes
        ),
        None => format!(
            "{} ({} B requests)",
            format!("{:?}", r.mode).to_lowercase(),
            r.request_bytes
        ),
    };
    let rate = r
        .rate
        .map(|x| format!(", open loop at {x} req/s"))
        .unwrap_or_default();
    println!(
        "socklab bench {}: {what}, {} conns x depth {}, {} thread(s){rate}, {:.1} s after {:.1} s warm-up",
        r.addr, r.conns, r.depth, r.threads, r.duration_s, r.warmup_s
    );
    println!(
        "  requests   {} ({:.0} req/s), {:.2} MB/s ({} B sent, {} B received)",
        r.requests, r.requests_per_s, r.mb_per_s, r.bytes_sent, r.bytes_received
    );
    if r.connects > 0 {
        println!(
            "  connects   {} ({:.0}/s): a connection per request",
            r.connects, r.connects_per_s
        );
    }
    if r.interrupted {
        println!(
            "  note       interrupted (Ctrl-C): the figures are of the {:.1} s measured",
            r.duration_s
        );
    }
    print_latency(&r.latency_us);
    println!(
        "  errors     {} ({} connection errors, {} error replies), {} reconnects",
        r.errors, r.connection_errors, r.error_replies, r.reconnects
    );
    print_cpu(r.cpu_s, r.cpu_percent);
    if r.generator_saturated {
        println!(
            "  note       the load generator kept its {} thread(s) {:.0}% busy: it, not the server, may bound requests/s and latency here; compare server CPU per request (--server-pid), or add --threads on a machine with cores to spare",
            r.threads,
            r.cpu_percent / f64::from(r.threads.max(1))
        );
    }
    if let (Some(pid), Some(cpu), Some(per)) =
        (r.server_pid, r.server_cpu_s, r.server_cpu_per_request_us)
    {
        let split = match (
            r.server_user_cpu_per_request_us,
            r.server_sys_cpu_per_request_us,
        ) {
            (Some(user), Some(sys)) => format!(" (user {user:.2}, system {sys:.2})"),
            _ => String::new(),
        };
        println!("  server cpu {cpu:.2} s, {per:.2} us/request{split} (pid {pid})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_is_per_load_thread() {
        assert!(saturated(99.0, 1));
        assert!(saturated(90.0, 1));
        assert!(!saturated(89.9, 1));
        assert!(!saturated(150.0, 2), "two threads at 75 % each have room");
        assert!(saturated(185.0, 2));
        assert!(!saturated(0.0, 1));
    }
}
