//! `dgpu-local-rpc`: a local *development* Solana JSON-RPC endpoint. It is not a validator.
//!
//! It runs the dgpu_escrow program natively (as a builtin of solana-program-test, exactly as the
//! native tests do) next to the real SPL Token and Associated Token Account programs, behind the
//! JSON-RPC methods that `SolanaEscrow`, `dgpu wallet` and solana-py use. Nothing here is a
//! cluster: one process, one bank, no consensus, no persistence, tokens of a fresh mint that are
//! worth nothing; the program costs 1 compute unit natively and its logs are not in transaction
//! logs (see SOLANA-NOTES.md 4d). The same Python code talks to devnet or mainnet by URL.
//!
//! ```text
//! dgpu-local-rpc --info PATH [--host 127.0.0.1] [--port 0] [--clock-speed N] [--start-time UNIX]
//!                [--fee-bps 500] [--decimals 6] [--bare]
//! ```
//! At start it creates, with real transactions, a mint (mint authority: the public development
//! admin), the treasury's token account and the program's Config (`--bare` skips that). When it
//! is ready it writes `PATH` (JSON: url, pid, program id, mint, treasury, the admin's keypair
//! file, ...); the admin's keypair (a public development key) is written next to it, mode 0600.
//! The ledger clock runs `--clock-speed` times faster than wall time (0: it stands still, for
//! tests); `dgpu_advanceClock [seconds]` moves it forward (development only, like `dgpu_info`). The program's `msg!`
//! output goes to stdout natively, so everything this endpoint says goes to stderr.

// solana-program-test 3.x marks its API "Agave Unstable"; it is still the in-process native harness.
#![allow(deprecated)]

#[path = "../../tests/native/entry.rs"]
mod entry;
mod http;
mod ledger;

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

struct Args {
    host: String,
    port: u16,
    info: PathBuf,
    opts: ledger::Options,
}

const USAGE: &str = "usage: dgpu-local-rpc --info PATH [--host 127.0.0.1] [--port 0] [--clock-speed N] \
                     [--start-time UNIX] [--fee-bps 500] [--decimals 6] [--bare]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: "127.0.0.1".into(),
        port: 0,
        info: PathBuf::new(),
        opts: ledger::Options { clock_speed: 1, start_time: None, setup: true, fee_bps: 500, decimals: 6 },
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bare" {
            args.opts.setup = false;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--info" => args.info = PathBuf::from(&value),
            "--host" => args.host = value,
            "--port" => args.port = value.parse().map_err(|e| bad(&e))?,
            "--clock-speed" => {
                args.opts.clock_speed = value.parse().map_err(|e| bad(&e))?;
                if args.opts.clock_speed > 100_000 {
                    return Err("--clock-speed is 0..=100000 (0: time moves only by dgpu_advanceClock)".into());
                }
            }
            "--start-time" => args.opts.start_time = Some(value.parse().map_err(|e| bad(&e))?),
            "--fee-bps" => args.opts.fee_bps = value.parse().map_err(|e| bad(&e))?,
            "--decimals" => args.opts.decimals = value.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if args.info.as_os_str().is_empty() {
        return Err(format!("--info PATH is required\n{USAGE}"));
    }
    Ok(args)
}

/// One JSON-RPC call handed to the ledger thread.
struct Call {
    method: String,
    params: Value,
    reply: oneshot::Sender<Result<Value, ledger::RpcError>>,
}

/// Writes `data` to `path` (mode 0600) through a temporary file, so a reader never sees half.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn error_object(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

async fn one(call: Value, ledger: &mpsc::Sender<Call>) -> Value {
    let id = call.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = call.get("method").and_then(Value::as_str) else {
        return error_object(id, -32600, "Invalid request", None);
    };
    let params = call.get("params").cloned().unwrap_or(json!([]));
    let (reply, answer) = oneshot::channel();
    if ledger.send(Call { method: method.to_string(), params, reply }).await.is_err() {
        return error_object(id, -32603, "Internal error: the ledger stopped", None);
    }
    match answer.await {
        Ok(Ok(result)) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Ok(Err(e)) => error_object(id, e.code, &e.message, e.data),
        Err(_) => error_object(id, -32603, "Internal error: the ledger stopped", None),
    }
}

async fn answer(body: Vec<u8>, ledger: mpsc::Sender<Call>) -> String {
    let out = match serde_json::from_slice::<Value>(&body) {
        Err(_) => error_object(Value::Null, -32700, "Parse error", None),
        Ok(Value::Array(calls)) if calls.len() > 100 => {
            error_object(Value::Null, -32600, "Invalid request: at most 100 calls per batch", None)
        }
        Ok(Value::Array(calls)) => {
            let mut out = vec![];
            for call in calls {
                out.push(one(call, &ledger).await);
            }
            Value::Array(out)
        }
        Ok(call) => one(call, &ledger).await,
    };
    out.to_string()
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    // Bounded: callers wait (HTTP keeps its connection) when the ledger is this far behind.
    let (calls, mut inbox) = mpsc::channel::<Call>(1024);
    let (ready, started) = std::sync::mpsc::channel::<Result<(Value, [u8; 64]), String>>();
    let opts = args.opts;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("ledger runtime");
        let mut ledger = match rt.block_on(ledger::Ledger::start(&opts)) {
            Ok(ledger) => ledger,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok((ledger.info.clone(), ledger.admin.to_bytes())));
        // The ledger's runtime (and with it program-test's blockhash ticker) runs only here.
        while let Some(call) = inbox.blocking_recv() {
            let out = rt.block_on(ledger.handle(&call.method, &call.params));
            let _ = call.reply.send(out);
        }
    });
    let (mut info, admin) = match started.recv() {
        Ok(Ok(ready)) => ready,
        Ok(Err(e)) => {
            eprintln!("dgpu-local-rpc: the ledger did not start: {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("dgpu-local-rpc: the ledger thread died while starting");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("http runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = match tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("dgpu-local-rpc: cannot listen on {}:{}: {e}", args.host, args.port);
                std::process::exit(1);
            }
        };
        let addr = listener.local_addr().expect("local address");
        let url = format!("http://{addr}");
        let dir = args.info.parent().map(Path::to_path_buf).unwrap_or_default();
        let admin_path = dir.join("dgpu-local-rpc-admin.json");
        let admin_json = serde_json::to_vec(&admin.to_vec()).expect("keypair json");
        let written = write_private(&admin_path, &admin_json).and_then(|()| {
            info["name"] = json!("dgpu-local-rpc");
            info["kind"] = json!("local development endpoint (solana-program-test, native program); not a validator");
            info["url"] = json!(url);
            info["pid"] = json!(std::process::id());
            info["admin_keypair"] = json!(admin_path);
            info["mint_authority_keypair"] = json!(admin_path);
            info["dev_methods"] = json!(["dgpu_advanceClock", "dgpu_info"]);
            write_private(&args.info, serde_json::to_string_pretty(&info).expect("info json").as_bytes())
        });
        if let Err(e) = written {
            eprintln!("dgpu-local-rpc: cannot write {}: {e}", args.info.display());
            std::process::exit(1);
        }
        eprintln!(
            "dgpu-local-rpc: local development endpoint (not a validator) on {url}; program {}, mint {}, clock x{}; info in {}",
            info["program_id"].as_str().unwrap_or("?"),
            info["mint"].as_str().unwrap_or("none"),
            info["clock_speed"],
            args.info.display()
        );
        http::serve(listener, move |body| answer(body, calls.clone())).await;
    });
}
