//! A minimal HTTP/1.1 server for JSON-RPC: `POST` with a JSON body (any path), `GET /health`.
//!
//! Bounded: at most `MAX_CONNECTIONS` connections, a request head of `MAX_HEAD` bytes, a body of
//! `MAX_BODY` bytes, and `IDLE` of silence per request; keep-alive unless the client says close.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const MAX_CONNECTIONS: usize = 256;
const MAX_HEAD: usize = 16 * 1024;
/// A transaction is at most 1232 bytes; 100 keys of getMultipleAccounts are about 5 KiB.
const MAX_BODY: usize = 256 * 1024;
const IDLE: Duration = Duration::from_secs(60);

/// Serves `listener` forever; `handle(body) -> JSON text` answers every POST.
pub async fn serve<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(Vec<u8>) -> Fut + Clone + 'static,
    Fut: Future<Output = String> + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                eprintln!("dgpu-local-rpc: accept failed: {err}");
                continue;
            }
        };
        let handle = handle.clone();
        tokio::task::spawn_local(async move {
            let _permit = permit;
            if let Err(err) = connection(stream, handle).await {
                if err.kind() != std::io::ErrorKind::UnexpectedEof {
                    eprintln!("dgpu-local-rpc: connection: {err}");
                }
            }
        });
    }
}

async fn connection<F, Fut>(mut stream: TcpStream, handle: F) -> std::io::Result<()>
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: Future<Output = String>,
{
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let head_end = loop {
            if let Some(at) = find(&buf, b"\r\n\r\n") {
                break at;
            }
            if buf.len() > MAX_HEAD {
                return respond(&mut stream, 431, "text/plain", b"head too large", true).await;
            }
            if read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(()); // the client closed between requests
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_string();
        let (mut length, mut close) = (0usize, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse().unwrap_or(usize::MAX);
            } else if name == "connection" && value.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
        let method = request_line.split(' ').next().unwrap_or_default();
        if length > MAX_BODY {
            return respond(&mut stream, 413, "text/plain", b"body too large", true).await;
        }
        let body_start = head_end + 4;
        while buf.len() < body_start + length {
            if read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = buf[body_start..body_start + length].to_vec();
        buf.drain(..body_start + length);
        match method {
            "POST" => {
                let answer = handle(body).await;
                respond(&mut stream, 200, "application/json", answer.as_bytes(), close).await?;
            }
            "GET" if request_line.contains(" /health") => {
                respond(&mut stream, 200, "text/plain", b"ok", close).await?;
            }
            _ => respond(&mut stream, 405, "text/plain", b"POST JSON-RPC here", close).await?,
        }
        if close {
            return Ok(());
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Ok(Err(err)) => Err(err),
        Err(_) => Ok(0), // idle: drop the connection
    }
}

async fn respond(stream: &mut TcpStream, status: u16, kind: &str, body: &[u8], close: bool) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Request Header Fields Too Large",
    };
    let connection = if close { "close" } else { "keep-alive" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
