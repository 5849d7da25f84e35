//! The demo app: a dependency-free HTTP/1.1 server that answers every request with the
//! region and machine it runs on, read from the platform's environment.
//!
//! `GET /` answers a line of text, `GET /json` the same as JSON, `GET /healthz` answers `ok`.
//! `GET /replay/REGION` answers like `/json` in REGION and elsewhere asks the edge to replay
//! the request there (`fly-replay: region=REGION`), as an app that writes only in its primary
//! region would.
//! It listens on `$PORT` (default 8080) on all addresses, IPv4 and IPv6.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

fn env(names: &[&str]) -> String {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

struct Identity {
    app: String,
    region: String,
    machine: String,
}

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_string());
    let id = Identity {
        app: env(&["ALOFT_APP_NAME", "FLY_APP_NAME"]),
        region: env(&["ALOFT_REGION", "FLY_REGION"]),
        machine: env(&["ALOFT_MACHINE_ID", "FLY_MACHINE_ID"]),
    };
    let listener = TcpListener::bind(format!("[::]:{port}"))
        .or_else(|_| TcpListener::bind(format!("0.0.0.0:{port}")))
        .unwrap_or_else(|e| {
            eprintln!("hello: cannot listen on port {port}: {e}");
            std::process::exit(1);
        });
    println!(
        "hello: app {} machine {} in {} listening on :{port}",
        id.app, id.machine, id.region
    );
    let id = std::sync::Arc::new(id);
    for stream in listener.incoming().flatten() {
        let id = id.clone();
        thread::spawn(move || {
            let _ = serve(stream, &id);
        });
    }
}

fn serve(stream: TcpStream, id: &Identity) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = std::io::BufWriter::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        let mut close = request_line.ends_with("HTTP/1.0\r\n");
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().unwrap_or(0),
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        std::io::copy(&mut (&mut reader).take(length as u64), &mut std::io::sink())?;
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let mut extra = String::new();
        if close {
            extra.push_str("connection: close\r\n");
        }
        let path = match path.strip_prefix("/replay/") {
            Some(region) if region != id.region => {
                extra.push_str(&format!("fly-replay: region={region}\r\n"));
                "/replayed"
            }
            Some(_) => "/json",
            None => path,
        };
        let (status, kind, body) = match path {
            "/replayed" => ("409 Conflict", "text/plain", String::new()),
            "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
            "/json" => (
                "200 OK",
                "application/json",
                format!(
                    "{{\"app\":\"{}\",\"region\":\"{}\",\"machine\":\"{}\"}}\n",
                    id.app, id.region, id.machine
                ),
            ),
            _ => (
                "200 OK",
                "text/plain",
                format!(
                    "Hello from Aloft! app={} region={} machine={}\n",
                    id.app, id.region, id.machine
                ),
            ),
        };
        write!(
            out,
            "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len(),
        )?;
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}
