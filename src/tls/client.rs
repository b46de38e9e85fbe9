//! The client commands' TLS: `--tls`, `--ca`, `--server-name`, `--cert`/`--key`.
