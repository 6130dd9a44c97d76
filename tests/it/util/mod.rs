//! Test helpers: temporary directories, deterministic images, and a runner for the
//! `thinarc` binary with readable failures.

#![allow(dead_code)]

pub mod etagless;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary directory for scratch files, and a repository: at `repo/` in it, or
/// in a fresh bucket of the S3 test server.
pub struct TempRepo {
    pub dir: tempfile::TempDir,
    location: String,
    env: Vec<(String, String)>,
}

impl TempRepo {
    /// A new directory with an initialised repository.
    pub fn new() -> Self {
        let t = TempRepo::uninit();
        t.ok(&["init", "--no-encryption"]);
        t
    }

    /// A new directory without a repository.
    pub fn uninit() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = dir.path().join("repo").display().to_string();
        let env = state_env(&dir);
        TempRepo { dir, location, env }
    }

    /// An initialised repository at `s3://BUCKET/repo` on the S3 test server.
    pub fn s3() -> Self {
        let t = TempRepo::s3_uninit();
        t.ok(&["init", "--no-encryption"]);
        t
    }

    /// A fresh bucket on the S3 test server, no repository yet.
    pub fn s3_uninit() -> Self {
        let moto = s3::moto();
        let bucket = moto.bucket();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = moto.env();
        env.extend(state_env(&dir));
        TempRepo {
            dir,
            location: format!("s3://{bucket}/repo"),
            env,
        }
    }

    /// An initialised repository on the S3 test server reached through
    /// [`etagless`](etagless::etagless), whose object listings show no ETag.
    pub fn s3_without_etags() -> Self {
        let mut t = TempRepo::s3_uninit();
        let proxy = etagless::etagless();
        for (k, v) in &mut t.env {
            if k == "AWS_ENDPOINT_URL" {
                v.clone_from(&proxy.endpoint);
            }
        }
        t.ok(&["init", "--no-encryption"]);
        t
    }

    /// The S3 endpoint this repository's commands use, if it is on S3.
    pub fn s3_endpoint(&self) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == "AWS_ENDPOINT_URL")
            .map(|(_, v)| v.as_str())
    }

    /// The environment every run of this repository gets (state directory, S3
    /// credentials).
    /// The same directory with `key=value` in the environment of every command.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    /// The repository location as given to `-r`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The bucket of an S3 repository.
    pub fn bucket(&self) -> &str {
        self.location
            .trim_start_matches("s3://")
            .split('/')
            .next()
            .unwrap()
    }

    /// The repository path.
    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// A path inside the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `thinarc -r REPO args...`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["-r".to_string(), self.location.clone()];
        full.extend(args.iter().map(|s| s.to_string()));
        thinarc_env(&full, &self.env)
    }

    /// Runs with extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.run_wrapped(&[], args, env)
    }

    /// Runs `wrapper... thinarc -r REPO args...` (e.g. under `faketime`) with extra
    /// environment variables.
    pub fn run_wrapped(&self, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut full = vec!["-r".to_string(), self.location.clone()];
        full.extend(args.iter().map(|s| s.to_string()));
        let mut e = self.env.clone();
        e.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        thinarc_wrapped(wrapper, &full, &e)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.success, "thinarc {args:?} failed:\n{}", o.show());
        o.stdout
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.success,
            "thinarc {args:?} should have failed:\n{}",
            o.show()
        );
        o.stderr
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{out}"))
    }
}

/// Result records of a test go to `state/` in its directory, never to the host's
/// `/var/lib/thinarc`.
fn state_env(dir: &tempfile::TempDir) -> Vec<(String, String)> {
    vec![(
        "THINARC_STATE_DIR".to_string(),
        dir.path().join("state").display().to_string(),
    )]
}

/// The result of one run of the binary.
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Both streams, labelled, for assertion messages.
    pub fn show(&self) -> String {
        format!(
            "--- exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the `thinarc` binary built for these tests, never attached to a terminal.
pub fn thinarc<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    thinarc_env(args, &[])
}

/// Runs the `thinarc` binary with `env` added to a clean environment (no `THINARC_*`
/// or `AWS_*` from the caller).
pub fn thinarc_env<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(String, String)]) -> Output {
    thinarc_wrapped(&[], args, env)
}

/// As [`thinarc_env`], run through `wrapper` (a command that takes the program and
/// its arguments after its own, like `faketime SPEC`).
pub fn thinarc_wrapped<S: AsRef<std::ffi::OsStr>>(
    wrapper: &[&str],
    args: &[S],
    env: &[(String, String)],
) -> Output {
    let bin = env!("CARGO_BIN_EXE_thinarc");
    let mut cmd = match wrapper {
        [] => Command::new(bin),
        [program, rest @ ..] => {
            let mut c = Command::new(program);
            c.args(rest).arg(bin);
            c
        }
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("THINARC_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let o = cmd
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run thinarc");
    Output {
        success: o.status.success(),
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Makes sure the command `probe` runs (with `args`), installing the Debian `package`
/// with apt-get if it does not (CI runs as root). Panics, saying `why`, if that is
/// impossible: a test that needs a tool fails without it, it is never skipped.
pub fn ensure_tool(probe: &str, args: &[&str], package: &str, why: &str) {
    let runs = || Command::new(probe).args(args).output().is_ok();
    if runs() {
        return;
    }
    eprintln!("installing {package}: {why}");
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {package}"),
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok && runs(),
        "{package} is missing and could not be installed (apt-get as root): {why}"
    );
}

/// A deterministic pseudo-random generator (xorshift64*), so tests need no seed files.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A deterministic image of `size` bytes: a mix of random data, compressible text and
/// zero regions, like a file system image.
pub fn make_image(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut img = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let len = (4096 + rng.below(200_000) as usize).min(size - at);
        match rng.below(3) {
            0 => rng.fill(&mut img[at..at + len]),
            1 => {
                let text =
                    format!("line {seed} {at} the quick brown fox jumps over the lazy dog\n");
                for (i, b) in img[at..at + len].iter_mut().enumerate() {
                    *b = text.as_bytes()[i % text.len()];
                }
            }
            _ => {}
        }
        at += len;
    }
    img
}

/// Writes `data` to `path`.
pub fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Reads `path`.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Asserts two images are equal, reporting the first differing offset instead of
/// dumping megabytes.
#[track_caller]
pub fn assert_same_image(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length differs");
    if let Some(i) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (block {} of 4 KiB)",
            i / 4096
        );
    }
}

/// A small tmpfs mounted for one test (a disk that fills up), unmounted on drop. The
/// tests run as root; a mount that fails fails the test.
pub struct SmallFs(PathBuf);

impl SmallFs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `3m`) on `dir`, creating it.
    pub fn mount(dir: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs on {} (the disk-full tests need root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        SmallFs(dir.to_path_buf())
    }

    /// Bytes an unprivileged writer may still use.
    pub fn free(&self) -> u64 {
        free_bytes(&self.0)
    }

    /// Fills the disk with a ballast file until `left` bytes are free.
    pub fn fill_until(&self, left: u64) -> PathBuf {
        let ballast = self.0.join("ballast");
        let len = self.free().checked_sub(left).expect("not that much free");
        let f = std::fs::File::create(&ballast).unwrap();
        // SAFETY: fallocate on a descriptor we own.
        let rc = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                i64::try_from(len).unwrap(),
            )
        };
        assert_eq!(
            rc,
            0,
            "fallocate {len}: {}",
            std::io::Error::last_os_error()
        );
        ballast
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Free bytes of the file system holding `path` (statvfs).
pub fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a zeroed statvfs is a valid out-parameter; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    st.f_bavail * st.f_frsize
}
