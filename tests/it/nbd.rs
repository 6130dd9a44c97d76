//! `thinarc serve` against real NBD clients from Debian (`nbdcopy`, `nbdinfo`,
//! `qemu-img`, `qemu-io`, installed on first use) and against a raw protocol client
//! for the bad input no well-behaved client sends: every copy equals the point's
//! restore byte for byte, zero runs show as holes, random reads match the image, local
//! and on the S3 test server; a damaged block fails only the reads that touch it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thinarc::format::ArchiveReader;
use thinarc::nbd::{self, Request, cmd, errno, opt, rep};

use crate::util::{Rng, TempRepo, assert_same_image, ensure_tool, make_image, read, write};

const MIB: usize = 1 << 20;

fn ensure_clients() {
    ensure_tool("nbdinfo", &["--version"], "libnbd-bin", "NBD client tests");
    ensure_tool("qemu-img", &["--version"], "qemu-utils", "NBD client tests");
}

/// A running `thinarc serve` on a Unix socket in the test's directory.
struct Server {
    child: Child,
    socket: PathBuf,
    /// The first line it printed.
    banner: String,
}

impl Server {
    fn start(t: &TempRepo, args: &[&str]) -> Server {
        Server::start_at(t, args, t.path("nbd.sock"))
    }

    fn start_at(t: &TempRepo, args: &[&str], socket: PathBuf) -> Server {
        Server::start_with(t, args, socket, t.env_pairs())
    }

    fn start_with(
        t: &TempRepo,
        args: &[&str],
        socket: PathBuf,
        env: Vec<(String, String)>,
    ) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_thinarc"))
            .args(["-r", t.location(), "serve"])
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start thinarc serve");
        let mut banner = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut banner)
            .unwrap();
        assert!(
            banner.contains(&format!("nbd+unix:///?socket={}", socket.display())),
            "serve printed {banner:?}"
        );
        Server {
            child,
            socket,
            banner,
        }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// Sends `signal`, waits for the exit and returns (exit code, stderr).
    fn stop(mut self, signal: i32) -> (Option<i32>, String) {
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "serve did not end within 10 s of signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code(), err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let o = Command::new(program).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An image with zero runs (whole 64 KiB blocks), random data and text.
fn image(size: usize, seed: u64) -> Vec<u8> {
    let mut img = make_image(size, seed);
    for z in (0..size).step_by(5 * 64 * 1024) {
        let end = (z + 3 * 64 * 1024).min(size);
        img[z..end].fill(0);
    }
    img
}

/// Two points of volume `v`; returns the image of the newest.
fn two_points(t: &TempRepo, size: usize) -> Vec<u8> {
    let src = t.path("src.img");
    let mut img = image(size, 3);
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    let mut rng = Rng::new(9);
    for _ in 0..6 {
        let at = rng.below((size - 4096) as u64) as usize;
        rng.fill(&mut img[at..at + 4096]);
    }
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    img
}

/// The restore of `at`, as the reference.
fn restored(t: &TempRepo, at: &str) -> Vec<u8> {
    let out = t.path(&format!("restored-{at}.img"));
    t.ok(&["restore", "v", out.to_str().unwrap(), "--at", at]);
    read(&out)
}

/// Parses `qemu-io -c 'read -v OFF LEN'`: its hex dump.
fn qemu_io_read(uri: &str, offset: u64, len: u64) -> Vec<u8> {
    let out = run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            &format!("read -v {offset} {len}"),
            uri,
        ],
    );
    let mut bytes = Vec::new();
    for line in out.lines() {
        let Some((addr, rest)) = line.split_once(": ") else {
            continue;
        };
        if u64::from_str_radix(addr, 16).is_err() {
            continue;
        }
        bytes.extend(
            rest.split_whitespace()
                .take_while(|w| w.len() == 2)
                .take(16)
                .map(|w| u8::from_str_radix(w, 16).unwrap()),
        );
    }
    bytes
}

/// The scenario every store runs: copies by two clients equal the restores, zero runs
/// are holes, random reads match, several clients at once.
fn serve_scenario(t: &TempRepo) {
    ensure_clients();
    let size = 6 * MIB + 4096 * 3;
    let newest = two_points(t, size);
    assert_same_image(
        &restored(t, "latest"),
        &newest,
        "restore of the newest point",
    );
    for at in ["1", "latest"] {
        let expected = restored(t, at);
        let server = Server::start(t, &["v", "--at", at, "--cache", "2MiB"]);
        assert!(
            server.banner.starts_with("serving v seq "),
            "{}",
            server.banner
        );
        let uri = server.uri();
        // Several clients at once: nbdcopy with its several connections, qemu-img.
        let copies: Vec<_> = (0..3)
            .map(|i| {
                let out = t.path(&format!("copy-{at}-{i}.img"));
                let uri = uri.clone();
                std::thread::spawn(move || {
                    let out_s = out.to_str().unwrap().to_owned();
                    if i == 2 {
                        run(
                            "qemu-img",
                            &["convert", "-f", "raw", "-O", "raw", &uri, &out_s],
                        );
                    } else {
                        run("nbdcopy", &["--connections=4", &uri, &out_s]);
                    }
                    out
                })
            })
            .collect();
        for c in copies {
            let out = c.join().unwrap();
            assert_same_image(&read(&out), &expected, &format!("copy of --at {at}"));
        }
        // nbdinfo --map: the zero runs are holes; together they tile the export.
        let map = run("nbdinfo", &["--map", &uri]);
        let mut pos = 0u64;
        for line in map.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (off, len): (u64, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
            assert_eq!(off, pos, "{map}");
            let zero = expected[off as usize..(off + len) as usize]
                .iter()
                .all(|&b| b == 0);
            if f[3] == "hole,zero" {
                assert!(zero, "a hole at {off}+{len} holds data:\n{map}");
            } else {
                assert_eq!(f[3], "data", "{map}");
            }
            pos = off + len;
        }
        assert_eq!(pos, size as u64, "{map}");
        assert!(map.contains("hole,zero"), "no hole in:\n{map}");
        // Random reads, unaligned, some across chunk boundaries.
        let mut rng = Rng::new(5);
        for _ in 0..8 {
            let len = 1 + rng.below(200_000);
            let off = rng.below(size as u64 - len);
            let got = qemu_io_read(&uri, off, len);
            assert_eq!(
                got,
                &expected[off as usize..(off + len) as usize],
                "qemu-io read of {len} bytes at {off}"
            );
        }
        // The end of the export, short last block included.
        let got = qemu_io_read(&uri, size as u64 - 5000, 5000);
        assert_eq!(got, &expected[size - 5000..]);
        let socket = server.socket.clone();
        let (code, err) = server.stop(libc::SIGTERM);
        assert_eq!(code, Some(0), "serve on SIGTERM:\n{err}");
        assert!(!socket.exists(), "the socket file is removed");
    }
}

#[test]
fn serve_clients_read_the_point() {
    serve_scenario(&TempRepo::new());
}

/// An encrypted repository serves as a plain one does while the serve process holds
/// its key (from `THINARC_PASSWORD` here); without key material, serve refuses before
/// it listens, naming what to give.
#[test]
fn serve_reads_an_encrypted_repository_with_its_key() {
    let t = TempRepo::uninit().with_env("THINARC_PASSWORD", "serve test passphrase");
    t.ok(&["init"]);
    serve_scenario(&t);
    let socket = t.path("nokey.sock");
    let o = Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-r", t.location(), "serve", "v", "--socket"])
        .arg(&socket)
        .envs(
            t.env_pairs()
                .into_iter()
                .filter(|(k, _)| k != "THINARC_PASSWORD"),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: serve needs the repository key of encrypted repository"),
        "{err}"
    );
    assert!(!socket.exists(), "nothing listened");
}

#[test]
fn serve_clients_read_the_point_on_s3() {
    serve_scenario(&TempRepo::s3());
}

/// A raw client: handshake as the protocol document says, then requests.
struct Raw(UnixStream);

impl Raw {
    fn connect(socket: &Path) -> Raw {
        let s = UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = Raw(s);
        let greeting = r.take(18);
        assert_eq!(greeting[..], nbd::server_greeting()[..]);
        r.send(&(nbd::FLAG_C_FIXED_NEWSTYLE | nbd::FLAG_C_NO_ZEROES).to_be_bytes());
        r
    }

    fn send(&mut self, b: &[u8]) {
        self.0.write_all(b).unwrap();
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        self.0.read_exact(&mut b).unwrap();
        b
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = nbd::IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b);
    }

    /// An option reply: (option, type, data).
    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.take(20);
        assert_eq!(h[..8], nbd::OPTION_REPLY_MAGIC.to_be_bytes());
        let be32 = |at: usize| u32::from_be_bytes(h[at..at + 4].try_into().unwrap());
        let data = self.take(be32(16) as usize);
        (be32(8), be32(12), data)
    }

    /// NBD_OPT_GO on the default export, simple replies.
    fn go(&mut self) {
        let mut d = 0u32.to_be_bytes().to_vec();
        d.extend_from_slice(&0u16.to_be_bytes());
        self.option(opt::GO, &d);
        loop {
            let (_, t, _) = self.reply();
            if t == rep::ACK {
                break;
            }
            assert_eq!(t, rep::INFO);
        }
    }

    fn request(&mut self, kind: u16, offset: u64, length: u32) {
        let mut b = Vec::new();
        Request {
            flags: 0,
            kind,
            cookie: 42,
            offset,
            length,
        }
        .encode(&mut b);
        self.send(&b);
    }

    /// A simple reply's error.
    fn simple_error(&mut self) -> u32 {
        let h = self.take(16);
        assert_eq!(h[..4], nbd::SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(h[8..], 42u64.to_be_bytes());
        u32::from_be_bytes(h[4..8].try_into().unwrap())
    }
}

#[test]
fn serve_bad_input_gets_protocol_errors() {
    let t = TempRepo::new();
    let size = 2 * MIB;
    let img = image(size, 4);
    let src = t.path("src.img");
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    let server = Server::start(&t, &["v"]);

    // Unknown option, unknown export: error replies, the haggling goes on.
    let mut c = Raw::connect(&server.socket);
    c.option(77, b"xyz");
    let (o, ty, msg) = c.reply();
    assert_eq!((o, ty), (77, rep::ERR_UNSUP));
    assert_eq!(
        String::from_utf8(msg).unwrap(),
        "option 77 is not supported by this server"
    );
    let mut d = 4u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"nope");
    d.extend_from_slice(&0u16.to_be_bytes());
    c.option(opt::INFO, &d);
    assert_eq!(c.reply().1, rep::ERR_UNKNOWN);
    // Block status without a negotiated context is refused at transmission.
    c.go();
    // Read past the end, a length that overflows, an unknown command, a write and a
    // trim on the read-only export, block status without base:allocation.
    c.request(cmd::READ, size as u64 - 10, 20);
    assert_eq!(c.simple_error(), errno::EINVAL);
    c.request(cmd::READ, u64::MAX - 1, 4);
    assert_eq!(c.simple_error(), errno::EINVAL);
    c.request(99, 0, 10);
    assert_eq!(c.simple_error(), errno::EINVAL);
    c.request(cmd::WRITE, 0, 4096);
    c.send(&[7; 4096]);
    assert_eq!(c.simple_error(), errno::EPERM);
    c.request(cmd::TRIM, 0, 4096);
    assert_eq!(c.simple_error(), errno::EPERM);
    c.request(cmd::BLOCK_STATUS, 0, 4096);
    assert_eq!(c.simple_error(), errno::EINVAL);
    // The connection still serves reads after all that.
    c.request(cmd::READ, 100, 1000);
    assert_eq!(c.simple_error(), 0);
    assert_eq!(c.take(1000), img[100..1100]);
    c.request(cmd::DISC, 0, 0);

    // NBD_OPT_LIST names the export; NBD_OPT_EXPORT_NAME (the oldest way in) answers
    // size and flags (no 124 zero bytes: both sides set NO_ZEROES); NBD_OPT_ABORT is
    // acknowledged.
    let mut c = Raw::connect(&server.socket);
    c.option(opt::LIST, &[]);
    assert_eq!(c.reply(), (opt::LIST, rep::SERVER, nbd::rep_server("v")));
    assert_eq!(c.reply().1, rep::ACK);
    c.option(opt::EXPORT_NAME, b"v");
    let h = c.take(10);
    assert_eq!(h[..8], (size as u64).to_be_bytes());
    let flags = u16::from_be_bytes([h[8], h[9]]);
    assert_ne!(flags & nbd::tflag::READ_ONLY, 0, "read-only export");
    c.request(cmd::READ, 0, 512);
    assert_eq!(c.simple_error(), 0);
    assert_eq!(c.take(512), img[..512]);
    let mut c = Raw::connect(&server.socket);
    c.option(opt::ABORT, &[]);
    assert_eq!(c.reply().1, rep::ACK);

    // A client that disconnects mid-reply: four reads of the whole export, and it
    // hangs up before reading the replies.
    let mut c = Raw::connect(&server.socket);
    c.go();
    for _ in 0..4 {
        c.request(cmd::READ, 0, size as u32);
    }
    drop(c);
    // Garbage instead of a request magic ends that connection only.
    let mut c = Raw::connect(&server.socket);
    c.go();
    c.send(&[0xee; 28]);
    let mut b = [0; 1];
    assert_eq!(c.0.read(&mut b).unwrap(), 0, "the server closes");

    // A client that is not fixed newstyle is closed on.
    let mut c = UnixStream::connect(&server.socket).unwrap();
    let mut g = [0; 18];
    c.read_exact(&mut g).unwrap();
    c.write_all(&0u32.to_be_bytes()).unwrap();
    assert_eq!(c.read(&mut b).unwrap(), 0);

    // The server still serves a real client after all of these.
    ensure_clients();
    let out = t.path("copy.img");
    run("nbdcopy", &[&server.uri(), out.to_str().unwrap()]);
    assert_same_image(&read(&out), &img, "copy after the bad clients");
    let (code, err) = server.stop(libc::SIGINT);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("client flags 0x0: unknown bits set or fixed newstyle missing"),
        "{err}"
    );
    assert!(err.contains("bad request magic 0xeeeeeeee"), "{err}");
}

#[test]
fn serve_damaged_block_fails_only_its_reads() {
    ensure_clients();
    let t = TempRepo::new();
    let size = 4 * MIB;
    let mut img = vec![0u8; size];
    Rng::new(8).fill(&mut img);
    let src = t.path("src.img");
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    // A flipped byte in the first frame (the first blocks of the volume).
    let dir = t.repo().join("volumes/v/archives");
    let archive = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "tarc"))
        .unwrap();
    let mut bytes = read(&archive);
    let body = ArchiveReader::open(&bytes).unwrap().trailer.body_offset as usize;
    bytes[body + 100] ^= 0x5a;
    write(&archive, &bytes);
    let key = format!(
        "volumes/v/archives/{}",
        archive.file_name().unwrap().to_str().unwrap()
    );

    let server = Server::start(&t, &["v"]);
    let uri = server.uri();
    let o = Command::new("qemu-io")
        .args(["-r", "-f", "raw", "-c", "read 0 4096", &uri])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("Input/output error"), "qemu-io: {out}");
    // A block of another frame reads fine, and matches.
    assert_eq!(
        qemu_io_read(&uri, 3 * MIB as u64, 8192),
        img[3 * MIB..3 * MIB + 8192]
    );
    // nbdcopy of the whole export fails: never wrong bytes.
    let copy = t.path("copy.img");
    let o = Command::new("nbdcopy")
        .args([&uri, copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success(), "nbdcopy of a damaged export succeeded");
    let (code, err) = server.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "read of bytes 0..4096 failed: archive {key}: block 0: "
        )),
        "the log names archive and block:\n{err}"
    );
}

#[test]
fn serve_refuses_a_socket_in_use_and_unknown_points() {
    let t = TempRepo::new();
    let src = t.path("src.img");
    write(&src, &image(MIB, 2));
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    let server = Server::start(&t, &["v"]);
    let sock = server.socket.to_str().unwrap().to_owned();
    let o = t.run(&["serve", "v", "--socket", &sock]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert_eq!(
        o.stderr.trim_end(),
        format!(
            "error: cannot serve v: socket {sock}: another server is listening on it (stop it or name another path)"
        )
    );
    let o = t.run(&["serve", "v", "--at", "7", "--socket", "/tmp/x.sock"]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(
        o.stderr.starts_with("error: cannot serve v: "),
        "{}",
        o.show()
    );
    let o = t.run(&["serve", "v"]);
    assert_eq!(o.code, Some(2), "{}", o.show());
    // A socket file left by a server killed hard is taken over.
    let path = server.socket.clone();
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(path.exists());
    drop(server);
    let again = Server::start_at(&t, &["v"], path);
    let (code, _) = again.stop(libc::SIGINT);
    assert_eq!(code, Some(0));
}

/// Every file of the local repository and its bytes.
fn repo_files(t: &TempRepo) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push((p.clone(), read(&p)));
            }
        }
    }
    let mut out = Vec::new();
    walk(&t.repo(), &mut out);
    out.sort();
    out
}

#[test]
fn serve_overlay_keeps_writes_off_the_repository() {
    ensure_clients();
    let t = TempRepo::new();
    let size = 3 * MIB;
    let newest = two_points(&t, size);
    let before = repo_files(&t);
    let overlay = t.path("overlay");
    let overlay_s = overlay.to_str().unwrap().to_owned();
    let server = Server::start(&t, &["v", "--overlay", &overlay_s]);
    assert!(
        server
            .banner
            .contains(&format!("writes go to the overlay {overlay_s}")),
        "{}",
        server.banner
    );
    let uri = server.uri();
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 1000 5000",
            "-c",
            "write -z 70000 100000",
            "-c",
            "discard 300000 8192",
            "-c",
            "write -P 0xcd 3145000 728",
            "-c",
            "flush",
            &uri,
        ],
    );
    let mut expected = newest.clone();
    expected[1000..6000].fill(0xab);
    expected[70000..170000].fill(0);
    expected[300000..308192].fill(0);
    expected[3145000..3145728].fill(0xcd);
    let copy = t.path("copy.img");
    run("nbdcopy", &[&uri, copy.to_str().unwrap()]);
    assert_same_image(
        &read(&copy),
        &expected,
        "the export with the overlay's writes",
    );
    let (code, err) = server.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{err}");

    // The writes outlive the server; the repository never saw them.
    let server = Server::start(&t, &["v", "--overlay", &overlay_s]);
    run("nbdcopy", &[&server.uri(), copy.to_str().unwrap()]);
    assert_same_image(&read(&copy), &expected, "the overlay served again");
    server.stop(libc::SIGINT);
    assert!(repo_files(&t) == before, "the repository changed");
    let out = t.ok(&["verify", "v", "--data"]);
    assert!(out.contains("0 problem(s)"), "{out}");
    assert_same_image(
        &restored(&t, "latest"),
        &newest,
        "restore after the overlay",
    );

    // The overlay belongs to its point.
    let o = t.run(&[
        "serve",
        "v",
        "--at",
        "1",
        "--overlay",
        &overlay_s,
        "--socket",
        "/tmp/unused.sock",
    ]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    let first = o.stderr.lines().next().unwrap_or_default().to_owned();
    assert!(
        first.starts_with(&format!("error: cannot serve v: overlay {overlay_s}: was made for another point (\"thinarc overlay 1: volume v seq 2 archive ")),
        "{}",
        o.show()
    );
    std::fs::remove_file(format!("{overlay_s}.map")).unwrap();
    let o = t.run(&[
        "serve",
        "v",
        "--overlay",
        &overlay_s,
        "--socket",
        "/tmp/unused.sock",
    ]);
    assert_eq!(
        o.stderr.trim_end(),
        format!(
            "error: cannot serve v: overlay {overlay_s}: holds data but its map {overlay_s}.map is missing: name a new overlay file"
        ),
    );
}

#[test]
fn serve_listens_on_tcp_and_prints_the_uri() {
    ensure_clients();
    let t = TempRepo::new();
    let img = image(MIB, 6);
    let src = t.path("src.img");
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args([
            "-r",
            t.location(),
            "-q",
            "serve",
            "v",
            "--listen",
            "127.0.0.1:0",
        ])
        .envs(t.env_pairs())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut uri = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut uri)
        .unwrap();
    let uri = uri.trim_end().to_owned();
    assert!(
        uri.starts_with("nbd://127.0.0.1:") && uri.ends_with('/'),
        "{uri}"
    );
    let info = run("nbdinfo", &[&uri]);
    assert!(info.contains("export-size: 1048576"), "{info}");
    assert!(info.contains("is_read_only: true"), "{info}");
    let copy = t.path("copy.img");
    run("nbdcopy", &[&uri, copy.to_str().unwrap()]);
    assert_same_image(&read(&copy), &img, "copy over TCP");
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// Read-ahead: a sequential reader gets the next chunks loaded before it asks (they
/// count against the cache), a random reader only the chunks it reads, and a
/// sequential read over what was loaded ahead returns the image.
#[tokio::test(flavor = "multi_thread")]
async fn serve_reads_ahead_only_for_sequential_readers() {
    use thinarc::point::{CHUNK_BYTES, RandomReader, ReadStream};
    use thinarc::repo::{PointSelector, VolumeName};

    let lib = crate::chain::LibRepo::new().await;
    let volume = VolumeName::new("v").expect("volume name");
    // Random data: every chunk costs its 1 MiB in the cache.
    let mut img = vec![0; 24 * MIB];
    Rng::new(21).fill(&mut img);
    write(&lib.path("img"), &img);
    crate::chain::backup_file(&lib.repo, &volume, &lib.path("img"), None)
        .await
        .expect("backup");
    let open = || async {
        let commits = lib.repo.existing_commits(&volume).await.expect("commits");
        let chain = lib
            .repo
            .resolve(&commits, &PointSelector::Latest)
            .await
            .expect("resolve");
        Arc::new(RandomReader::new(&lib.repo, chain, 64 << 20))
    };
    let chunk = CHUNK_BYTES;
    let settle = || tokio::time::sleep(Duration::from_millis(300));

    // Random: three 4 KiB reads in three chunks load those three chunks only.
    let reader = open().await;
    let mut stream = ReadStream::default();
    for at in [5, 2, 9] {
        let range = at * chunk..at * chunk + 4096;
        reader.read_ahead(&mut stream, range.clone());
        let mut out = vec![0; 4096];
        reader.read(range.start, &mut out).await.expect("read");
        assert_eq!(out, img[range.start as usize..range.end as usize]);
    }
    settle().await;
    let held = reader.cached();
    assert!(
        held <= 3 * chunk + 3 * 4096,
        "random reads held {held} bytes"
    );

    // Sequential: from the third 256 KiB read on, the next 8 chunks are loaded ahead.
    let reader = open().await;
    let mut stream = ReadStream::default();
    let step = 256 << 10;
    for i in 0..3 {
        let range = i * step..(i + 1) * step;
        reader.read_ahead(&mut stream, range.clone());
        let mut out = vec![0; step as usize];
        reader.read(range.start, &mut out).await.expect("read");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while reader.cached() < 9 * chunk && Instant::now() < deadline {
        settle().await;
    }
    let held = reader.cached();
    assert!(
        (9 * chunk..=10 * chunk).contains(&held),
        "a sequential reader held {held} bytes (9 chunks expected)"
    );
    let mut out = vec![0; 9 * MIB];
    reader.read(0, &mut out).await.expect("read");
    assert_eq!(out, img[..9 * MIB]);
}

impl Raw {
    /// A read on a connection past `go`: its bytes, or the error of its simple reply.
    fn read(&mut self, offset: u64, length: u32) -> Result<Vec<u8>, u32> {
        self.request(cmd::READ, offset, length);
        match self.simple_error() {
            0 => Ok(self.take(length as usize)),
            e => Err(e),
        }
    }
}

/// A point pruned while it is served: within the grace period its superseded
/// archives are kept and reads go on; once `prune --no-grace` deleted them, a read
/// is an I/O error and the log names the point and says it was pruned.
#[test]
fn serve_point_pruned_while_served_names_the_point() {
    let t = TempRepo::new();
    let size = 4 * MIB;
    let mut first = vec![0u8; size];
    Rng::new(31).fill(&mut first);
    let src = t.path("src.img");
    write(&src, &first);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    let mut second = first.clone();
    second[..MIB].fill(7);
    write(&src, &second);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);

    // One chunk of cache: every read below is fetched from the repository.
    let server = Server::start(&t, &["v", "--at", "1", "--cache", "1MiB"]);
    // "serving v seq 1 archive ID (…"
    let archive = server.banner.split_whitespace().nth(5).unwrap().to_owned();
    let mut c = Raw::connect(&server.socket);
    c.go();
    let at = |mib: usize| &first[mib * MIB..mib * MIB + 65536];
    assert_eq!(c.read(0, 65536).as_deref(), Ok(at(0)));

    t.ok(&["prune", "v", "--keep-last", "1"]);
    let listed = t.ok(&["list", "v"]);
    assert!(!listed.contains(" 1 "), "seq 1 is still listed:\n{listed}");
    assert_eq!(
        c.read(2 * MIB as u64, 65536).as_deref(),
        Ok(at(2)),
        "a read within the grace period"
    );

    t.ok(&["prune", "v", "--keep-last", "1", "--no-grace"]);
    assert_eq!(c.read(3 * MIB as u64, 65536), Err(errno::EIO));
    drop(c);
    let (code, err) = server.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{err}");
    let expected = format!(
        "read of bytes 3145728..3211264 failed: point v seq 1 (archive {archive}) was pruned \
         while it was served and its archives are deleted (past the grace period): serve a \
         point that exists (see `thinarc list v`)"
    );
    assert!(err.contains(&expected), "{err}\nexpected: {expected}");
}

/// A TCP proxy in front of the S3 test server that can cut every connection: while
/// cut, open connections are closed and new ones closed as soon as they are
/// accepted.
struct Cutter {
    port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Cutter {
    fn start(upstream: String) -> Cutter {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let (cut, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, s) = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if c.load(Ordering::Relaxed) {
                    continue;
                }
                down.set_nonblocking(false).unwrap();
                let up = std::net::TcpStream::connect(&upstream).unwrap();
                for (from, to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    let c = c.clone();
                    std::thread::spawn(move || Cutter::pump(from, to, &c));
                }
            }
        });
        Cutter { port, cut, stop }
    }

    /// Copies `from` to `to` until either end closes or the proxy is cut.
    fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, cut: &AtomicBool) {
        use std::net::Shutdown;
        from.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = vec![0; 65536];
        loop {
            if cut.load(Ordering::Relaxed) {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            match from.read(&mut buf) {
                Ok(0) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    }

    fn set(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.set(true);
    }
}

/// S3 connections dropped during reads: a short cut is retried and the read
/// succeeds; a store that stays cut past the retry budget is an I/O error to the
/// client within bounded time, never a hang, and the log names the volume, the
/// point and the archive object.
#[test]
fn serve_s3_connection_dropped_is_retried_then_eio() {
    let t = TempRepo::s3();
    let size = 8 * MIB;
    let mut img = vec![0u8; size];
    Rng::new(41).fill(&mut img);
    let src = t.path("src.img");
    write(&src, &img);
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "v"]);
    let mut env = t.env_pairs();
    let endpoint = env
        .iter()
        .find(|(k, _)| k == "AWS_ENDPOINT_URL")
        .unwrap()
        .1
        .clone();
    let upstream = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = Cutter::start(upstream);
    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL" && k != "THINARC_RETRY_TIMEOUT");
    env.push((
        "AWS_ENDPOINT_URL".into(),
        format!("http://127.0.0.1:{}", proxy.port),
    ));
    env.push(("THINARC_RETRY_TIMEOUT".into(), "4".into()));
    let server = Server::start_with(&t, &["v", "--cache", "1MiB"], t.path("nbd.sock"), env);
    let mut c = Raw::connect(&server.socket);
    c.0.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    c.go();
    let at = |mib: usize| &img[mib * MIB..mib * MIB + 65536];
    assert_eq!(c.read(0, 65536).as_deref(), Ok(at(0)));

    // Cut for a second: the read is retried and succeeds.
    proxy.set(true);
    let mend = {
        let cut = proxy.cut.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            cut.store(false, Ordering::Relaxed);
        })
    };
    assert_eq!(c.read(2 * MIB as u64, 65536).as_deref(), Ok(at(2)));
    mend.join().unwrap();

    // Cut for good: EIO once the retries are spent.
    proxy.set(true);
    let started = Instant::now();
    assert_eq!(c.read(5 * MIB as u64, 65536), Err(errno::EIO));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "the failed read took {took:?}"
    );
    proxy.set(false);
    assert_eq!(
        c.read(6 * MIB as u64, 65536).as_deref(),
        Ok(at(6)),
        "after mending"
    );
    drop(c);
    let (code, err) = server.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("read of bytes 5242880..5308416 failed: "))
        .unwrap_or_else(|| panic!("no log line of the failed read:\n{err}"));
    assert!(
        line.contains("volume=v") && line.contains("seq=1") && line.contains("volumes/v/archives/"),
        "the log line names volume, point and archive: {line}"
    );
}
