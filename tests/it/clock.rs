//! Time is not order (issue 10, kind 1): writers whose clocks are behind (−3 h), ahead
//! (+2 days) or frozen, run for real under `faketime`. Whatever the clocks said, prune
//! keeps the tip (the highest seq) under every kind of rule, backup, prune and verify
//! warn when time goes backwards along a chain, `status` neither hides a stale volume
//! behind a future time nor shows a negative age, and a skewed writer neither deletes
//! another run's fresh leftovers or superseded archives before their grace period,
//! nor has its live lock broken early.
//!
//! faketime is installed with apt-get if it is missing (`.ci/run` installs it); if
//! that is impossible these tests fail.

use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{TempRepo, assert_same_image, ensure_tool, make_image, read, write};

const MIB: usize = 1 << 20;

/// Every kind of retention rule, each keeping as little as it can.
const POLICIES: [[&str; 2]; 7] = [
    ["--keep-last", "1"],
    ["--keep-hourly", "1"],
    ["--keep-daily", "1"],
    ["--keep-weekly", "1"],
    ["--keep-monthly", "1"],
    ["--keep-yearly", "1"],
    ["--keep-within", "1h"],
];

fn faketime_installed() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        ensure_tool(
            "faketime",
            &["--version"],
            "faketime",
            "the clock tests run thinarc with skewed and frozen clocks",
        );
    });
}

/// Runs `thinarc args...` with its clock set by faketime's `spec` (tokio's timers keep
/// the real monotonic clock).
fn faked(t: &TempRepo, spec: &str, args: &[&str], env: &[(&str, &str)]) -> crate::util::Output {
    faketime_installed();
    let mut e = vec![("FAKETIME_DONT_FAKE_MONOTONIC", "1")];
    e.extend_from_slice(env);
    t.run_wrapped(&["faketime", "-f", spec], args, &e)
}

/// Backs up image `n` (4 MiB, seeded) as the next point of `v`, under `spec` (or the
/// real clock); returns stderr.
fn backup(t: &TempRepo, spec: Option<&str>, n: u64) -> String {
    let img = t.path(&format!("{n}.img"));
    write(&img, &make_image(4 * MIB, n));
    let args = ["backup", img.to_str().unwrap(), "--volume", "v"];
    let out = match spec {
        Some(s) => faked(t, s, &args, &[]),
        None => t.run(&args),
    };
    assert!(out.success, "{}", out.show());
    out.stderr
}

/// The `created` time of each point of `v`, by seq.
fn created(t: &TempRepo) -> Vec<(u64, String)> {
    let list = t.json(&["list", "v"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["seq"].as_u64().unwrap(),
                p["created"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The warning every command prints for point `seq` created before its parent.
fn backwards(t: &TempRepo, seq: u64, parent: u64) -> String {
    let times = created(t);
    let at = |s: u64| times.iter().find(|(q, _)| *q == s).unwrap().1.clone();
    format!(
        "WARN time goes backwards in v: seq {seq} was created at {}, before its parent seq {parent} ({}); a writer's clock was wrong or jumped (check NTP). Points are ordered by seq, so seq {seq} is still the newer point",
        at(seq),
        at(parent)
    )
}

/// Every kind of rule, in a dry run, keeps `tip` as the newest point and (each keeping
/// one point or one hour) drops the points before it that it cannot keep.
fn every_rule_keeps(t: &TempRepo, tip: u64) {
    for policy in POLICIES {
        let mut args = vec!["prune", "v", "--dry-run"];
        args.extend(policy);
        let report = t.json(&args);
        let points = report[0]["points"].as_array().unwrap();
        let tip_point = points.iter().find(|p| p["seq"] == tip).unwrap();
        assert_eq!(tip_point["keep"], true, "{policy:?}: {report:#}");
        assert_eq!(tip_point["reasons"][0], "newest", "{policy:?}");
        if policy[0] == "--keep-last" {
            let kept: Vec<&Value> = points.iter().filter(|p| p["keep"] == true).collect();
            assert_eq!(kept.len(), 1, "{policy:?}: {report:#}");
        }
    }
}

/// Prunes `v` to its newest point and checks that it restores image `n`.
fn prune_to_newest_restores(t: &TempRepo, n: u64, warning: &str) {
    let out = t.run(&["prune", "v", "--keep-daily", "1"]);
    assert!(out.success, "{}", out.show());
    assert!(out.stderr.contains(warning), "{}", out.show());
    let restored = t.path("restored.img");
    let _ = std::fs::remove_file(&restored);
    t.ok(&["restore", "v", restored.to_str().unwrap()]);
    assert_same_image(
        &read(&restored),
        &read(&t.path(&format!("{n}.img"))),
        "the newest point",
    );
}

#[test]
fn time_is_not_order_clock_behind_keeps_the_newest_point() {
    let t = TempRepo::new();
    backup(&t, None, 1);
    let stderr = backup(&t, Some("-3h"), 2);
    let warning = backwards(&t, 2, 1);
    assert!(stderr.contains(&warning), "{stderr}");
    every_rule_keeps(&t, 2);

    // status: the age is the header's (3 h and a bit), never negative.
    let status = t.json(&["status", "v"]);
    let newest = &status["volumes"][0]["newest"];
    assert_eq!(newest["seq"], 2);
    let age = newest["age_seconds"].as_f64().unwrap();
    assert!(
        (3.0 * 3600.0 - 60.0..3.0 * 3600.0 + 600.0).contains(&age),
        "{age}"
    );

    // verify warns but finds no problem.
    let out = t.run(&["verify", "v"]);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert!(out.stderr.contains(&warning), "{}", out.show());

    prune_to_newest_restores(&t, 2, &warning);
    assert_eq!(created(&t).iter().map(|p| p.0).collect::<Vec<_>>(), [2]);
}

#[test]
fn time_is_not_order_clock_ahead_is_reported_and_never_hides_the_tip() {
    let t = TempRepo::new();
    backup(&t, None, 1);
    backup(&t, Some("+2d"), 2);
    // The newest point comes from the future: status says so (it does not show an age
    // of 0 that would hide a stale volume for two days) and needs attention.
    let out = t.run(&["status", "v", "--json"]);
    assert!(!out.success, "{}", out.show());
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    let v = &status["volumes"][0];
    assert_eq!(v["newest"]["age_seconds"], 0.0);
    let problem = v["problems"][0].as_str().unwrap();
    let seq2 = created(&t)[1].1.clone();
    let ahead: f64 = problem
        .strip_prefix(&format!("seq 2 was created at {seq2}, "))
        .and_then(|r| r.split_once("s after this host's clock ("))
        .filter(|(_, r)| {
            r.ends_with(
                "): a writer's clock is ahead (check NTP), so the age of the newest point cannot be told",
            )
        })
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("{problem}"));
    assert!(
        (2.0 * 86400.0 - 600.0..=2.0 * 86400.0).contains(&ahead),
        "{ahead}"
    );

    // The next point, written with the right clock, looks two days older than its
    // parent: it is still the newest.
    let stderr = backup(&t, None, 3);
    let warning = backwards(&t, 3, 2);
    assert!(stderr.contains(&warning), "{stderr}");
    every_rule_keeps(&t, 3);
    prune_to_newest_restores(&t, 3, &warning);
    let out = t.run(&["status", "v"]);
    assert!(out.success, "{}", out.show());
}

#[test]
fn time_is_not_order_frozen_clock_keeps_the_tip() {
    let t = TempRepo::new();
    for n in 1..=3 {
        let stderr = backup(&t, Some("2026-01-01 00:00:00"), n);
        assert!(!stderr.contains("time goes backwards"), "{stderr}");
    }
    let times = created(&t);
    assert!(
        times.iter().all(|(_, c)| c == "2026-01-01T00:00:00.000Z"),
        "{times:?}"
    );
    every_rule_keeps(&t, 3);
    // Start-at (the clock runs from a past time) after real-time points.
    let stderr = backup(&t, Some("@2026-01-01 00:00:00"), 4);
    assert!(!stderr.contains("time goes backwards"), "{stderr}");
    every_rule_keeps(&t, 4);
    prune_to_newest_restores(&t, 4, "");
}

/// Waits until `dir` holds a file.
fn wait_for_file(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(dir).map_or(0, |d| d.count()) == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing appeared in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn time_is_not_order_skewed_writers_break_no_live_lock_and_delete_nothing_early() {
    let t = TempRepo::new();
    backup(&t, None, 1);

    // A fresh leftover of another writer survives a cleanup run with a clock 2 days
    // ahead: grace periods are measured on the store's clock.
    let leftover = t
        .repo()
        .join("volumes/v/archives/000000000009-0123456789abcdef0123456789abcdef.tarc");
    write(&leftover, b"an upload that is still going");
    backup(&t, Some("+2d"), 2);
    assert!(
        leftover.exists(),
        "a fresh leftover was deleted by a skewed clock"
    );
    // ... and goes once it is really older than the grace period.
    std::fs::File::options()
        .write(true)
        .open(&leftover)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    backup(&t, None, 3);
    assert!(!leftover.exists(), "an old leftover was kept");

    // A holder whose clock is 3 hours behind, refreshing every 0.25 s: contenders with
    // a right clock and with a clock 2 days ahead are refused all along.
    let img = t.path("big.img");
    write(&img, &make_image(6 * MIB, 4));
    let mut holder = std::process::Command::new("faketime")
        .args([
            "-f",
            "-3h",
            env!("CARGO_BIN_EXE_thinarc"),
            "-q",
            "-r",
            t.location(),
        ])
        .args([
            "--read-limit",
            "1M",
            "backup",
            img.to_str().unwrap(),
            "--volume",
            "v",
        ])
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("THINARC_LOCK_TTL", "1")
        .env("THINARC_STATE_DIR", t.path("state"))
        .spawn()
        .unwrap();
    wait_for_file(&t.repo().join("volumes/v/locks"));
    let other = t.path("1.img");
    let args = ["backup", other.to_str().unwrap(), "--volume", "v"];
    for round in 0..4 {
        let spec = if round % 2 == 0 { "+0" } else { "+2d" };
        let out = faked(&t, spec, &args, &[]);
        assert_eq!(out.code, Some(3), "round {round} ({spec}): {}", out.show());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(holder.wait().unwrap().success());
    // Four points (seqs jump past 9, which the leftover named: no seq is reused).
    assert_eq!(created(&t).len(), 4);

    // A prune with a clock 2 days ahead keeps what it superseded for the grace period
    // (a restore that listed before may still read it): nothing is deleted yet.
    let out = faked(
        &t,
        "+2d",
        &["prune", "v", "--keep-last", "1", "--json"],
        &[],
    );
    assert!(out.success, "{}", out.show());
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report[0]["objects_deleted"], 0, "{report:#}");
    let archives = std::fs::read_dir(t.repo().join("volumes/v/archives"))
        .unwrap()
        .count();
    assert!(archives >= 4, "{archives} archive objects left");
}
