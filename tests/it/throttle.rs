//! Host impact, on real runs of the binary: read and upload rate limits hold within
//! ±20% over runs of several seconds, `--low-priority` really sets nice 19 and the
//! idle I/O class on every thread of the process, and log lines under systemd carry
//! their syslog priority.

use std::time::{Duration, Instant};

use crate::util::{TempRepo, make_image, write};

const MIB: usize = 1 << 20;

/// Asserts that `bytes` took `seconds` at `rate` bytes/s, within ±20%.
fn assert_rate(bytes: u64, seconds: f64, rate: u64, what: &str) {
    let measured = bytes as f64 / seconds;
    let ratio = measured / rate as f64;
    assert!(
        (0.8..=1.2).contains(&ratio),
        "{what}: {bytes} bytes in {seconds:.2}s = {measured:.0} B/s, limit {rate} B/s (ratio {ratio:.2})"
    );
}

#[test]
fn read_limit_paces_source_reads() {
    let t = TempRepo::new();
    let src = t.path("r.img");
    write(&src, &make_image(24 * MIB, 31));
    let r = t.json(&["backup", src.to_str().unwrap(), "--read-limit", "6M/s"]);
    let bytes = r["bytes_read"].as_u64().unwrap();
    assert_eq!(bytes, 24 * MIB as u64, "{r}");
    assert_rate(bytes, r["seconds"].as_f64().unwrap(), 6 << 20, "read limit");
}

#[test]
fn upload_limit_paces_uploads() {
    let t = TempRepo::new();
    let src = t.path("u.img");
    // Random data: the archive is as large as the image.
    let mut image = vec![0u8; 20 * MIB];
    crate::util::Rng::new(32).fill(&mut image);
    write(&src, &image);
    let r = t.json(&["backup", src.to_str().unwrap(), "--upload-limit", "5M"]);
    let stored = r["stored_bytes"].as_u64().unwrap();
    assert!(stored > 20 * MIB as u64, "{r}");
    assert_rate(
        stored,
        r["seconds"].as_f64().unwrap(),
        5 << 20,
        "upload limit",
    );
}

#[test]
fn rate_limit_without_unit_suffix_and_bad_rates() {
    let t = TempRepo::new();
    let src = t.path("b.img");
    write(&src, &make_image(MIB, 33));
    let e = t.fails(&["backup", src.to_str().unwrap(), "--rate-limit", "0"]);
    assert!(e.contains("a rate limit must be more than 0"), "{e}");
    let e = t.fails(&["backup", src.to_str().unwrap(), "--rate-limit", "fast"]);
    assert!(
        e.contains("\"fast\" is not a rate (bytes per second, e.g. 50M or 50M/s)"),
        "{e}"
    );
}

/// The nice value and I/O priority class of every thread of `pid`.
fn thread_priorities(pid: u32) -> Vec<(i64, i32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let tid: i32 = t.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            // Fields after the parenthesised command name; nice is field 19.
            let rest = &stat[stat.rfind(')')? + 2..];
            let nice: i64 = rest.split(' ').nth(16)?.parse().ok()?;
            // SAFETY: ioprio_get(IOPRIO_WHO_PROCESS, tid) only reads a priority.
            let prio = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, tid) };
            Some((nice, prio as i32))
        })
        .collect()
}

#[test]
fn low_priority_sets_nice_and_idle_io_on_every_thread() {
    let t = TempRepo::new();
    let src = t.path("p.img");
    write(&src, &make_image(8 * MIB, 34));
    // Slow enough to look at the running process.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-r", t.location(), "backup", src.to_str().unwrap()])
        .args(["--low-priority", "--read-limit", "4M", "-q"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        let p = thread_priorities(child.id());
        if p.len() > seen.len() {
            seen = p;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.wait().unwrap().success());
    assert!(seen.len() > 2, "threads seen: {seen:?}");
    for (nice, prio) in &seen {
        assert_eq!(*nice, 19, "{seen:?}");
        // Class 3 = idle, or best-effort (2) level 7 where the scheduler refuses idle.
        assert!(prio >> 13 == 3 || *prio == (2 << 13 | 7), "{seen:?}");
    }
}

#[test]
fn under_systemd_log_lines_carry_their_syslog_priority() {
    let t = TempRepo::new();
    let src = t.path("j.img");
    write(&src, &make_image(MIB, 35));
    let o = t.run_env(
        &["backup", src.to_str().unwrap(), "--volume", "j"],
        &[("JOURNAL_STREAM", "8:12345")],
    );
    assert!(o.success, "{}", o.show());
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert!(
        lines[0].starts_with("<6>backup started volume=j source="),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("<6>backup committed volume=j seq=1 archive="),
        "{lines:?}"
    );
    let o = t.run_env(
        &[
            "backup",
            t.path("missing").to_str().unwrap(),
            "--volume",
            "j",
        ],
        &[("JOURNAL_STREAM", "8:12345")],
    );
    assert!(
        o.stderr
            .lines()
            .last()
            .unwrap()
            .starts_with("<3>error: backup of "),
        "{}",
        o.show()
    );
    assert!(o.stderr.lines().all(|l| l.starts_with('<')), "{}", o.show());
}
