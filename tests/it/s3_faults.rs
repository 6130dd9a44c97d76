//! S3 stores that misbehave (issue 10, kinds 5 and 6): an endpoint that accepts
//! connections and never answers, and a store that answers HTTP 501 to
//! `If-None-Match: *`, the latter through a small proxy in front of the moto server.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::s3::moto;
use crate::util::{Output, assert_same_image, make_image, read, thinarc_env, write};

const MIB: usize = 1 << 20;

/// The environment for a `thinarc` run against `endpoint` (moto's credentials).
fn env_for(endpoint: &str, dir: &std::path::Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = moto()
        .env()
        .into_iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL" && k != "THINARC_RETRY_TIMEOUT")
        .collect();
    env.push(("AWS_ENDPOINT_URL".into(), endpoint.into()));
    env.push((
        "THINARC_STATE_DIR".into(),
        dir.join("state").display().to_string(),
    ));
    env
}

fn run(location: &str, args: &[&str], env: &[(String, String)]) -> Output {
    let mut full = vec!["-r".to_string(), location.to_string()];
    full.extend(args.iter().map(|s| s.to_string()));
    thinarc_env(&full, env)
}

/// A loopback listener that accepts connections and never answers; its connections
/// stay open until it is dropped.
struct Silent {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Silent {
    fn start() -> Silent {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => held.push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Silent { port, stop }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// silent-s3-endpoint.sh: an endpoint that never answers. Each request times out (5 s
/// connect, 20 s read), a request that stalls twice ends the run, and
/// `THINARC_RETRY_TIMEOUT` bounds the whole wait. The error names the request and
/// the timeouts.
#[test]
fn silent_s3_endpoint_fails_within_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let silent = Silent::start();
    let endpoint = format!("http://127.0.0.1:{}", silent.port);
    let mut env = env_for(&endpoint, dir.path());
    env.push(("THINARC_RETRY_TIMEOUT".into(), "10".into()));
    let started = Instant::now();
    let o = run("s3://bkt/r1", &["list"], &env);
    let took = started.elapsed();
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(13),
        "THINARC_RETRY_TIMEOUT=10 took {took:?}"
    );
    let expected = format!(
        "no answer from the store to GET {endpoint}/bkt/r1/config within the timeouts (connect 5s, read 10s)"
    );
    assert!(
        o.stderr.contains(&expected),
        "{}\nexpected: {expected}",
        o.stderr
    );

    // The default: two stalls of 20 s, not the 180 s retry budget.
    env.retain(|(k, _)| k != "THINARC_RETRY_TIMEOUT");
    let started = Instant::now();
    let o = run("s3://bkt/r1", &["list"], &env);
    let took = started.elapsed();
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(took < Duration::from_secs(45), "the default took {took:?}");
    assert!(
        o.stderr.contains(
            "within the timeouts (connect 5s, read 20s), twice in a row: the endpoint is not answering"
        ),
        "{}",
        o.stderr
    );
}

/// A proxy in front of moto that answers 501 to every request with `If-None-Match`.
struct Proxy501 {
    child: Child,
    port: u16,
}

const PROXY: &str = r#"
import http.client, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
UP = int(sys.argv[1])
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def go(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "If-None-Match" in self.headers:
            msg = b"<Error><Code>NotImplemented</Code></Error>"
            self.send_response(501); self.send_header("Content-Length", str(len(msg))); self.end_headers()
            return self.wfile.write(msg)
        c = http.client.HTTPConnection("127.0.0.1", UP); c.request(self.command, self.path, body, dict(self.headers))
        r = c.getresponse(); data = r.read(); self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length") or self.command == "HEAD" and k.lower() == "content-length":
                self.send_header(k, v)
        if self.command != "HEAD": self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD": self.wfile.write(data)
    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = go
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

impl Proxy501 {
    fn start() -> Proxy501 {
        let up = moto()
            .env()
            .into_iter()
            .find(|(k, _)| k == "AWS_ENDPOINT_URL")
            .unwrap()
            .1;
        let up_port = up.rsplit(':').next().unwrap().trim_end_matches('/');
        let mut child = Command::new("python3")
            .args(["-c", PROXY, up_port])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 for the 501 proxy");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("proxy port");
        Proxy501 { child, port }
    }
}

impl Drop for Proxy501 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// store-answers-501-to-conditional-put.sh: a 501 to `If-None-Match: *` is named in one
/// line at once (no retries); a repository created with `--allow-unsafe-store` works
/// there: backups commit, a second point chains, prune and restore work.
#[test]
fn conditional_writes_501_is_named_at_once_and_allow_unsafe_store_works() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy501::start();
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let env = env_for(&endpoint, dir.path());
    let bucket = moto().bucket();

    let started = Instant::now();
    let o = run(
        &format!("s3://{bucket}/a"),
        &["init", "--no-encryption"],
        &env,
    );
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let line = format!(
        "the store at {endpoint} does not support conditional writes (If-None-Match: *, HTTP 501): thinarc needs them to commit safely; use a store that does, or --allow-unsafe-store to accept the risk of two writers"
    );
    assert!(o.stderr.contains(&line), "{}\nexpected: {line}", o.stderr);
    assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {}", o.stderr);

    let loc = format!("s3://{bucket}/b");
    let o = run(
        &loc,
        &["init", "--no-encryption", "--allow-unsafe-store"],
        &env,
    );
    assert!(o.success, "{}", o.show());
    let src = dir.path().join("u.img");
    let mut img = make_image(2 * MIB, 90);
    let mut points = Vec::new();
    for i in 0..3u8 {
        img[i as usize * 70_000..][..5000].fill(i + 1);
        write(&src, &img);
        let o = run(
            &loc,
            &["backup", src.to_str().unwrap(), "--volume", "u"],
            &env,
        );
        assert!(o.success, "{}", o.show());
        points.push(img.clone());
    }
    let o = run(&loc, &["prune", "u", "--keep-last", "2"], &env);
    assert!(o.success, "{}", o.show());
    let out = dir.path().join("out.img");
    for (seq, want) in [(2, &points[1]), (3, &points[2])] {
        let o = run(
            &loc,
            &[
                "restore",
                "u",
                out.to_str().unwrap(),
                "--at",
                &seq.to_string(),
            ],
            &env,
        );
        assert!(o.success, "{}", o.show());
        assert_same_image(&read(&out), want, &format!("seq {seq} on an unsafe store"));
    }
}

/// Starts `thinarc backup` of `src` to `t` slowly, and waits until its multipart
/// upload exists on the server.
fn start_slow_backup(t: &crate::util::TempRepo, src: &std::path::Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thinarc"));
    for (k, _) in std::env::vars() {
        if k.starts_with("THINARC_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(["-q", "-r", t.location(), "--upload-limit", "8M", "backup"])
        .arg(src)
        .args(["--volume", "v"])
        .envs(moto().env())
        .env("THINARC_STATE_DIR", t.path("state"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while moto().pending_uploads(t.bucket()).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no upload started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

/// sigint-leaves-multipart-upload.sh: SIGINT during an S3 upload aborts the upload
/// before the run exits, and the message says so.
#[test]
fn interrupted_s3_upload_is_aborted_by_its_run() {
    let t = crate::util::TempRepo::s3();
    let src = t.path("d.img");
    let mut img = vec![0u8; 48 * MIB];
    crate::util::Rng::new(91).fill(&mut img);
    write(&src, &img);
    let child = start_slow_backup(&t, &src);
    signal(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "interrupted by SIGINT: nothing partial was committed, and the partial upload was removed"
        ),
        "{stderr}"
    );
    assert_eq!(moto().pending_uploads(t.bucket()), Vec::<String>::new());
}

/// An upload left by a killed run (SIGKILL: no chance to abort) is reported by
/// `status` and aborted by the next run of the volume once it is older than the grace
/// period. (moto reports every upload as started in 2010, so here that is at once.)
#[test]
fn uploads_left_by_killed_runs_are_reported_and_aborted_later() {
    let t = crate::util::TempRepo::s3();
    let src = t.path("d.img");
    let small = make_image(MIB, 92);
    write(&src, &small);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    let mut img = vec![0u8; 48 * MIB];
    crate::util::Rng::new(93).fill(&mut img);
    write(&src, &img);
    let mut child = start_slow_backup(&t, &src);
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    let left = moto().pending_uploads(t.bucket());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].starts_with("repo/volumes/v/archives/000000000002-"),
        "{left:?}"
    );

    let status = t.run(&["status"]);
    assert!(
        status.stdout.contains("1 incomplete upload")
            || status.stderr.contains("1 incomplete upload"),
        "{}",
        status.show()
    );
    let verify = t.ok(&["verify"]);
    assert!(
        verify.contains("1 incomplete upload(s) of killed runs, the oldest started "),
        "{verify}"
    );
    let json = t.json(&["verify"]);
    assert_eq!(
        json["incomplete_uploads"].as_array().unwrap().len(),
        1,
        "{json}"
    );
    // The killed run's lock goes stale only after its TTL: remove it for the test.
    moto().delete_under(t.bucket(), "repo/volumes/v/locks/");
    write(&src, &small);
    let r = t.json(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    assert_eq!(r["leftovers_removed"], 1, "{r}");
    assert_eq!(moto().pending_uploads(t.bucket()), Vec::<String>::new());
    let status = t.ok(&["status"]);
    assert!(!status.contains("incomplete upload"), "{status}");
    let out = t.path("out.img");
    t.ok(&["restore", "v", out.to_str().unwrap()]);
    assert_same_image(&read(&out), &small, "the newest point");
}
