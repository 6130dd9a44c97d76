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
//! Each line on its standard input prints `requests: N` on standard error, the requests
//! since the last such line; the proxy stops when its standard input closes. Written in
//! Rust because the Python proxy it replaces capped a local S3 server's throughput.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    let requests = Arc::new(AtomicU64::new(0));
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
            eprintln!("requests: {}", requests.swap(0, Ordering::Relaxed));
        }
        let _ = closed.send(());
    });
    tokio::select! {
        () = accept => {}
        _ = stdin_closed => {}
    }
    Ok(())
}

/// Copies both ways until either side closes, delaying the first bytes of each request.
async fn relay(client: TcpStream, server: TcpStream, delay: Duration, requests: &AtomicU64) {
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut client_r, mut client_w) = client.into_split();
    let (mut server_r, mut server_w) = server.into_split();
    // True when the server spoke last: the client's next bytes start a request.
    let server_turn = AtomicBool::new(true);
    let up = async {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n @ 1..) = client_r.read(&mut buf).await {
            if server_turn.swap(false, Ordering::Relaxed) {
                requests.fetch_add(1, Ordering::Relaxed);
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
