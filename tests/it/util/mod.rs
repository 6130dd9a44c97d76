//! Test helpers: temporary directories, deterministic images, and a runner for the
//! `thinarc` binary with readable failures.

#![allow(dead_code)]

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
        t.ok(&["init"]);
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
        t.ok(&["init"]);
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

    /// The environment every run of this repository gets (state directory, S3
    /// credentials).
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
        let mut full = vec!["-r".to_string(), self.location.clone()];
        full.extend(args.iter().map(|s| s.to_string()));
        let mut e = self.env.clone();
        e.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        thinarc_env(&full, &e)
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_thinarc"));
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
