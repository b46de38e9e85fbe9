//! The TOML file: parsing, errors with their key and line, and the round trip.

use super::*;

fn err(text: &str) -> String {
    match parse(text, "t.toml") {
        Ok(s) => match s.finish() {
            Ok(e) => panic!("accepted:\n{text}\n=> {e:?}"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_empty_file_is_the_defaults() {
    let from_file = parse("", "empty").unwrap().finish().unwrap();
    let defaults = ServeSettings::default().finish().unwrap();
    assert_eq!(from_file, defaults);
    assert_eq!(defaults.server.listeners.len(), ServiceKind::ALL.len());
}

/// Each kind of bad input, with the place its error must start with.
const BAD: &[(&str, &str, &str)] = &[
    (
        "unknown top-level key",
        "workers = 1\nworker = 2\n",
        "t.toml:2: worker: unknown field",
    ),
    (
        "unknown key in a table",
        "[socket]\nnodelay = true\nbogus = 1\n",
        "t.toml:3: socket.bogus: unknown field",
    ),
    (
        "unknown table",
        "[limit]\nmax_conns = 1\n",
        "t.toml:1: limit: unknown field",
    ),
    (
        "unknown key in a listener",
        "[[listener]]\nservice = \"echo\"\nport = 7\n",
        "t.toml:3: listener[0].port: unknown field",
    ),
    (
        "wrong type",
        "[limits]\nmax_conns = \"many\"\n",
        "t.toml:2: limits.max_conns: invalid type",
    ),
    (
        "wrong type of a table",
        "limits = 3\n",
        "t.toml:1: limits: invalid type: integer `3`, expected a table of limits",
    ),
    (
        "a word for a connection count",
        "[limits]\nmax_conns_per_ip = \"many\"\n",
        "t.toml:2: limits.max_conns_per_ip: invalid value: string \"many\", expected a \
         count of connections (0: no limit) or \"auto\"",
    ),
    (
        "a negative connection count",
        "[limits]\nmax_conns_per_ip = -1\n",
        "t.toml:2: limits.max_conns_per_ip: invalid value: integer `-1`",
    ),
    (
        "a number for a duration",
        "[limits]\nidle_timeout = 300\n",
        "t.toml:2: limits.idle_timeout: invalid type",
    ),
    (
        "not a duration",
        "[auth]\ntimeout = \"soon\"\n",
        "t.toml:2: auth.timeout: `soon` is not a duration",
    ),
    (
        "not a size",
        "[files]\nmax_header = \"12 potatoes\"\n",
        "t.toml:2: files.max_header: `12 potatoes` is not a size",
    ),
    (
        "a port over 65535",
        "[[listener]]\nservice = \"echo\"\naddr = \"127.0.0.1:70000\"\n",
        "t.toml:3: listener[0].addr: `127.0.0.1:70000` is not HOST:PORT",
    ),
    (
        "a buffer of 0",
        "[socket]\nrcvbuf = 0\n",
        "t.toml:2: socket.rcvbuf: a socket buffer must be at least 1 byte",
    ),
    (
        "a listener's buffer of 0",
        "[[listener]]\nservice = \"echo\"\n[listener.socket]\nsndbuf = \"0KiB\"\n",
        "t.toml:4: listener[0].socket.sndbuf: a socket buffer",
    ),
    (
        "a backlog of 0",
        "[socket]\nbacklog = 0\n",
        "t.toml:2: socket.backlog: must be between 1",
    ),
    (
        "a backlog past i32",
        "[socket]\nbacklog = 3000000000\n",
        "t.toml:2: socket.backlog: must be between 1",
    ),
    (
        "0 workers",
        "workers = 0\n",
        "t.toml:1: workers: must be between 1 and 256",
    ),
    (
        "too many workers",
        "workers = 257\n",
        "t.toml:1: workers: must be between 1 and 256",
    ),
    (
        "max_conns 0",
        "[limits]\nmax_conns = 0\n",
        "t.toml:2: limits.max_conns: must be at least 1",
    ),
    (
        "a negative count",
        "[limits]\naccept_budget = -1\n",
        "t.toml:2: limits.accept_budget: invalid value",
    ),
    (
        "a zero size",
        "[limits]\nread_budget = \"0B\"\n",
        "t.toml:2: limits.read_budget: must be at least 1 byte",
    ),
    (
        "a zero timeout",
        "[exec]\ntimeout = \"0s\"\n",
        "t.toml:2: exec.timeout: must be longer than 0",
    ),
    (
        "an endless timeout",
        "[limits]\nidle_timeout = \"1000years\"\n",
        "t.toml:2: limits.idle_timeout: `1000years` is longer than",
    ),
    (
        "an unknown service",
        "[[listener]]\nservice = \"ehco\"\n",
        "t.toml:2: listener[0].service: `ehco` is not a service",
    ),
    (
        "a listener without a service",
        "[[listener]]\naddr = \"127.0.0.1:1\"\n",
        "t.toml:1: listener[0]: missing field `service`",
    ),
    (
        "a stream service on unixgram",
        "[[listener]]\nservice = \"echo\"\naddr = \"unixgram:/tmp/x\"\n",
        "t.toml:3: listener[0].addr: echo is a stream service",
    ),
    (
        "a datagram service on unix",
        "[[listener]]\nservice = \"echo\"\n[[listener]]\nservice = \"udp-echo\"\naddr = \"unix:/tmp/x\"\n",
        "t.toml:5: listener[1].addr: udp-echo is a datagram service",
    ),
    (
        "time on a unix socket",
        "[[listener]]\nservice = \"time\"\naddr = \"unixgram:/tmp/x\"\n",
        "t.toml:3: listener[0].addr: time runs over UDP only",
    ),
    (
        "files open without auth",
        "[[listener]]\nservice = \"files\"\naddr = \"0.0.0.0:7080\"\n",
        "t.toml:3: listener[0].addr: files on 0.0.0.0:7080 would be reachable",
    ),
    (
        "auth on a datagram service",
        "[[listener]]\nservice = \"udp-echo\"\nauth = true\n",
        "t.toml:3: listener[0].auth: udp-echo is a datagram service",
    ),
    (
        "a program not on PATH",
        "[exec]\nallow = [\"no-such-program-socklab\"]\n",
        "t.toml:2: exec.allow: `no-such-program-socklab` is not a program on PATH",
    ),
    (
        "a duplicate key",
        "workers = 1\nworkers = 2\n",
        "t.toml:2: not valid TOML: duplicate key: `workers`",
    ),
    (
        "broken TOML",
        "[limits\nmax_conns = 1\n",
        "t.toml:1: not valid TOML",
    ),
    (
        "a zero input bound",
        "[limits]\nmax_input = 0\n",
        "t.toml:2: limits.max_input: must be at least 1 byte",
    ),
    (
        "an input bound that is not a size",
        "[limits]\nmax_input = \"lots\"\n",
        "t.toml:2: limits.max_input: `lots` is not a size",
    ),
    (
        "a log level that is not one",
        "log = \"loud\"\n",
        "t.toml:1: log: unknown variant `loud`",
    ),
    (
        "no listener left",
        "listener = []\n",
        "no service is left to start",
    ),
];

#[test]
fn each_kind_of_bad_input_names_its_key_and_line() {
    for (what, text, want) in BAD {
        let e = err(text);
        assert!(
            e.starts_with(want),
            "{what}: got\n{e}\nwant it to start with\n{want}"
        );
    }
}

#[test]
fn errors_quote_the_line() {
    let e = err("workers = 2\n\n[limits]\nmax_conns = 0\n");
    assert!(e.ends_with("\n    4 | max_conns = 0"), "{e}");
}

#[test]
fn the_chat_bus_reads_back_and_refuses_bad_values() {
    let text = "[chat.bus]\nredis = \"127.0.0.1:6379\"\nnode = \"web1\"\nchannel = \"room:1\"\n\
                presence_ttl = \"6s\"\nmax_backlog = \"1MiB\"\npassword_file = \"/p\"\n";
    let first = parse(text, "t.toml").unwrap().finish().unwrap();
    let bus = first.server.chat_bus.as_ref().expect("a bus");
    assert_eq!(bus.addr.to_string(), "127.0.0.1:6379");
    assert_eq!(bus.settings.node, "web1");
    assert_eq!(bus.settings.channel, "room:1");
    assert_eq!(bus.settings.presence_ttl, Duration::from_secs(6));
    assert_eq!(bus.settings.max_backlog, 1 << 20);
    assert_eq!(
        bus.settings.password, None,
        "read at start-up, never from the file"
    );
    let printed = first.to_toml().unwrap();
    let again = parse(&printed, "printed").unwrap().finish().unwrap();
    assert_eq!(again, first, "{printed}");
    // No bus without the table.
    assert_eq!(
        parse("", "t").unwrap().finish().unwrap().server.chat_bus,
        None
    );
    for (bad, says) in [
        ("[chat.bus]\nnode = \"x\"\n", "needs `redis"),
        ("[chat.bus]\nredis = \"nowhere\"\n", "not HOST:PORT"),
        ("[chat.bus]\nredis = \"unix:\"\n", "needs a path"),
        (
            "[chat.bus]\nredis = \"127.0.0.1:1\"\nnode = \"much-too-long-name\"\n",
            "node name",
        ),
        (
            "[chat.bus]\nredis = \"127.0.0.1:1\"\nchannel = \"a b\"\n",
            "channel name",
        ),
        ("[chat.bus]\nredis = \"127.0.0.1:1\"\nbogus = 1\n", "bogus"),
    ] {
        let e = err(bad);
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn a_listeners_tls_table_loads_prints_back_and_is_checked() {
    let text = "[limits]\ntls_handshake_timeout = \"3s\"\n\n[[listener]]\nservice = \"chat\"\n\
                addr = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n\
                client_ca = \"/ca.pem\"\n";
    let e = parse(text, "t.toml").unwrap().finish().unwrap();
    let tls = e.server.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.cert, std::path::Path::new("/c.pem"));
    assert_eq!(
        tls.client_ca.as_deref(),
        Some(std::path::Path::new("/ca.pem"))
    );
    assert_eq!(
        e.server.limits.tls_handshake_timeout,
        Duration::from_secs(3)
    );
    let printed = e.to_toml().unwrap();
    let again = parse(&printed, "printed").unwrap().finish().unwrap();
    assert_eq!(again, e, "{printed}");
    for (bad, says) in [
        (
            "[[listener]]\nservice = \"udp-echo\"\n[listener.tls]\ncert = \"/c\"\nkey = \"/k\"\n",
            "TLS runs over streams",
        ),
        (
            "[[listener]]\nservice = \"echo\"\n[listener.tls]\ncert = \"/c\"\n",
            "missing field `key`",
        ),
        (
            "[[listener]]\nservice = \"echo\"\n[listener.tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/x\"\n",
            "unknown field `ca`",
        ),
        (
            "[limits]\ntls_handshake_timeout = \"0s\"\n",
            "tls_handshake_timeout",
        ),
    ] {
        let e = err(bad);
        assert!(e.contains(says), "{bad}: {e}");
    }
}
