//! A TCP proxy for `bench/s3latency.sh` that adds latency to every request of a
//! request/response protocol (HTTP/1.1 to an S3 server): each time a client starts
//! sending after the server last spoke on that connection (a new request, on a new or
//! a kept-alive connection), the client's bytes wait DELAY_MS before they go on. Bytes
//! of one request body are not delayed again; answers are not delayed.
//!
//! ```text
//! delayproxy LISTEN_PORT TARGET_HOST TARGET_PORT [DELAY_MS=20]
//! ```
//!
//! Each line on its standard input prints the requests since the last such line on
//! standard error, in all and by kind: LIST (a GET listing objects or multipart
//! uploads), GET, HEAD, PUT, POST, DELETE, e.g. `requests: 37 GET=31 LIST=2 PUT=4`;
//! the proxy stops when its standard input closes. Written in Rust because a Python
//! proxy capped a local S3 server's throughput.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (listen, target, delay) = match &args[1..] {
        [listen, host, port] => (listen, format!("{host}:{port}"), 20.0),
        [listen, host, port, ms] => (listen, format!("{host}:{port}"), ms.parse::<f64>()?),
        _ => return Err("usage: delayproxy LISTEN_PORT TARGET_HOST TARGET_PORT [DELAY_MS]".into()),
    };
    let delay = Duration::from_secs_f64(delay / 1000.0);
    let listener = TcpListener::bind(format!("127.0.0.1:{listen}")).await?;
    let requests: Arc<Counts> = Arc::default();
    let counted = requests.clone();
    let accept = async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let (target, requests) = (target.clone(), counted.clone());
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(&target).await {
                    relay(client, server, delay, &requests).await;
                }
            });
        }
    };
    // Standard input is read on a thread of its own (tokio's is not enabled here).
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for _ in std::io::stdin().lines().map_while(Result::ok) {
            let kinds = std::mem::take(&mut *requests.lock().expect("not poisoned"));
            let all: u64 = kinds.values().sum();
            let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!(" {k}={n}")).collect();
            eprintln!("requests: {all}{}", kinds.concat());
        }
        let _ = closed.send(());
    });
    tokio::select! {
        () = accept => {}
        _ = stdin_closed => {}
    }
    Ok(())
}

/// Requests by kind since the last report.
type Counts = Mutex<BTreeMap<String, u64>>;

/// The kind of the HTTP request whose first bytes are `data`: its method, or LIST for
/// a GET listing objects (`list-type=`) or multipart uploads (`uploads`).
fn kind(data: &[u8]) -> String {
    let line = data.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let listing = query
        .split('&')
        .any(|q| q.starts_with("list-type=") || q == "uploads" || q == "uploads=");
    if method == "GET" && listing {
        "LIST".into()
    } else {
        method.into()
    }
}

/// Copies both ways until either side closes, delaying the first bytes of each request.
async fn relay(client: TcpStream, server: TcpStream, delay: Duration, requests: &Counts) {
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut client_r, mut client_w) = client.into_split();
    let (mut server_r, mut server_w) = server.into_split();
    // True when the server spoke last: the client's next bytes start a request.
    let server_turn = AtomicBool::new(true);
    let up = async {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n @ 1..) = client_r.read(&mut buf).await {
            if server_turn.swap(false, Ordering::Relaxed) {
                let kind = kind(&buf[..n]);
                *requests
                    .lock()
                    .expect("not poisoned")
                    .entry(kind)
                    .or_default() += 1;
                tokio::time::sleep(delay).await;
            }
            if server_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_w.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n @ 1..) = server_r.read(&mut buf).await {
            server_turn.store(true, Ordering::Relaxed);
            if client_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_w.shutdown().await;
    };
    tokio::join!(up, down);
}
