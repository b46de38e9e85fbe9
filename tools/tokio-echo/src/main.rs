//! `tokio-echo ADDR`: the ordinary tokio echo server, an anchor for `tools/bench-anchors.sh`.
//!
//! A current-thread runtime; the accept loop spawns one task per connection, and each task
//! reads into a buffer and writes back what it read with `write_all`, until end of file or an
//! error. TCP_NODELAY is set on every connection, as socklab does. Nothing else: it is meant to
//! be the plain, idiomatic program a socklab echo is compared with.

use std::process::ExitCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes read at a time per connection.
const BUF: usize = 16 * 1024;

fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: tokio-echo HOST:PORT");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio-echo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(&addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio-echo: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Accepts connections for ever, one task each; prints `listening ADDR` once bound.
async fn serve(addr: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(echo(stream));
    }
}

/// Sends back everything a connection sends, until it closes.
async fn echo(mut stream: TcpStream) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Some(data) = buf.get(..n) else { return };
        if stream.write_all(data).await.is_err() {
            return;
        }
    }
}
