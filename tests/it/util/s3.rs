//! A real S3-compatible server for the tests: moto's server, over HTTP on loopback.
//!
//! On first use it is installed into a virtualenv under the target directory
//! (`target/s3-venv`, or `THINARC_TEST_VENV`), which needs `python3` with `venv` and
//! access to PyPI. One server is started per test process on a free port and dies with
//! the process. Each test uses its own bucket.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

/// The moto version the tests are written against.
const MOTO: &str = "moto[server]>=5.2,<6";

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
}

/// The server of this test process, started on first use.
pub fn moto() -> &'static Moto {
    static SERVER: OnceLock<Result<Moto, String>> = OnceLock::new();
    SERVER
        .get_or_init(start)
        .as_ref()
        .unwrap_or_else(|e| panic!("cannot start the S3 test server (moto): {e}"))
}

fn venv() -> PathBuf {
    std::env::var_os("THINARC_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/s3-venv"))
}

/// Installs moto into the virtualenv unless it is there; serialised across processes
/// with a lock file.
fn install() -> Result<PathBuf, String> {
    let venv = venv();
    let server = venv.join("bin/moto_server");
    if server.exists() {
        return Ok(server);
    }
    std::fs::create_dir_all(venv.parent().unwrap()).map_err(|e| e.to_string())?;
    let lock = std::fs::File::create(venv.with_extension("lock")).map_err(|e| e.to_string())?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(format!("cannot lock {}", venv.display()));
    }
    if server.exists() {
        return Ok(server);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    eprintln!("installing {MOTO} into {} (first run only)", venv.display());
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        MOTO,
    ]))?;
    Ok(server)
}

fn start() -> Result<Moto, String> {
    let server = install()?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let log = std::env::temp_dir().join(format!("thinarc-moto-{port}.log"));
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    // The server is started from a thread that lives as long as the process: with
    // PR_SET_PDEATHSIG the kernel kills it when that thread, i.e. the process, ends.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut cmd = Command::new(&server);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let spawned = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", server.display()));
        let ok = spawned.is_ok();
        let _ = tx.send(spawned.map(|_| ()));
        if ok {
            loop {
                std::thread::park();
            }
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if http(port, "GET", "/").is_ok_and(|status| status == 200) {
            return Ok(Moto {
                endpoint: format!("http://127.0.0.1:{port}"),
                port,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "moto did not answer on port {port} within 60 s; see {}",
        log.display()
    ))
}

/// Sends an unsigned request and returns the HTTP status.
fn http(port: u16, method: &str, path: &str) -> Result<u16, String> {
    request(port, method, path).map(|(status, _)| status)
}

/// Sends an unsigned request and returns the HTTP status and the whole answer.
fn request(port: u16, method: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response {resp:?}"))?;
    Ok((status, resp))
}

impl Moto {
    /// Deletes every object of `bucket` under `prefix` (e.g. the lock of a killed run).
    pub fn delete_under(&self, bucket: &str, prefix: &str) {
        use futures::TryStreamExt;
        use object_store::ObjectStoreExt;
        let store = self.store(bucket);
        let prefix = object_store::path::Path::from(prefix);
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let found: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
            for m in found {
                store.delete(&m.location).await.unwrap();
            }
        });
    }

    /// The keys of the incomplete multipart uploads in `bucket`.
    pub fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        let (status, body) =
            request(self.port, "GET", &format!("/{bucket}?uploads")).expect("list uploads");
        assert_eq!(status, 200, "{body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }

    /// Creates a new, uniquely named bucket and returns its name.
    pub fn bucket(&self) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "thinarc-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let status = http(self.port, "PUT", &format!("/{name}")).expect("create bucket");
        assert_eq!(status, 200, "creating bucket {name}");
        name
    }

    /// The environment a `thinarc` process needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "thinarc-test"),
            ("AWS_SECRET_ACCESS_KEY", "thinarc-test-secret"),
            ("AWS_REGION", "us-east-1"),
            ("THINARC_RETRY_TIMEOUT", "5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// An object store on `bucket`, for tests that use the library directly.
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        store_at(&self.endpoint, bucket)
    }
}

/// An object store on `bucket` of the test server, reached at `endpoint` (the
/// server's, or a proxy's in front of it).
pub fn store_at(endpoint: &str, bucket: &str) -> Arc<dyn ObjectStore> {
    let s3 = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(bucket)
        .with_access_key_id("thinarc-test")
        .with_secret_access_key("thinarc-test-secret")
        .build()
        .expect("S3 store");
    Arc::new(s3)
}
