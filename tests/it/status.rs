//! Result records, `status` (text, JSON, Prometheus textfile) and the on-failure hook,
//! on real runs of the binary.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::util::{TempRepo, make_image, write};

const MIB: usize = 1 << 20;

/// Parses a Prometheus textfile into `metric{labels}` → value, checking every line is
/// a comment or a sample.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        out.insert(series.to_string(), value.parse().expect("number"));
    }
    out
}

/// RFC 3339 → Unix seconds.
fn unix(v: &Value) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    t.timestamp_millis() as f64 / 1000.0
}

#[test]
fn status_reports_last_success_and_failure_from_the_records() {
    let t = TempRepo::new();
    let src = t.path("web.img");
    write(&src, &make_image(2 * MIB, 40));
    let b1 = t.json(&["backup", src.to_str().unwrap(), "--volume", "vg0/web"]);
    let b2 = t.json(&["backup", src.to_str().unwrap(), "--volume", "vg0/web"]);
    let missing = t.path("gone.img");
    let e = t.fails(&["backup", missing.to_str().unwrap(), "--volume", "vg0/web"]);
    assert!(e.contains("cannot open source"), "{e}");

    let prom = t.path("metrics/thinarc.prom");
    std::fs::create_dir(t.path("metrics")).unwrap(); // the collector's folder
    let o = t.run(&["status", "--json", "--prometheus", prom.to_str().unwrap()]);
    assert_eq!(
        o.code,
        Some(1),
        "a failed last backup needs attention\n{}",
        o.show()
    );
    assert!(
        o.stderr.contains("error: needs attention: vg0/web"),
        "{}",
        o.show()
    );
    let s: Value = serde_json::from_str(&o.stdout).unwrap();
    let v = &s["volumes"][0];
    assert_eq!(v["volume"], "vg0/web");
    assert_eq!(v["points"], 2);
    assert_eq!(v["chain_length"], 2);
    assert_eq!(v["newest"]["seq"], 2);
    assert_eq!(v["newest"]["archive"], b2["archive"]);
    let ok = &v["backup"]["last_success"];
    assert_eq!(ok["result"], "success");
    assert_eq!(ok["archive"], b2["archive"]);
    assert_eq!(ok["seq"], 2);
    assert_eq!(ok["bytes_read"], b2["bytes_read"]);
    assert_eq!(ok["bytes_written"], b2["stored_bytes"]);
    let failed = &v["backup"]["last_failure"];
    assert_eq!(failed["result"], "failure");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("cannot open source {}", missing.display())),
        "{failed}"
    );
    assert_eq!(v["backup"]["last"], *failed);
    let stored = b1["stored_bytes"].as_u64().unwrap() + b2["stored_bytes"].as_u64().unwrap();
    assert_eq!(v["stored_bytes"].as_u64().unwrap(), stored);

    // The textfile says the same.
    let m = samples(&std::fs::read_to_string(&prom).unwrap());
    let key = |name: &str| {
        format!(
            "{name}{{volume=\"vg0/web\",repository=\"{}\"}}",
            t.location()
        )
    };
    assert_eq!(
        m[&key("thinarc_last_success_timestamp_seconds")],
        unix(&ok["finished"])
    );
    assert_eq!(
        m[&key("thinarc_last_failure_timestamp_seconds")],
        unix(&failed["finished"])
    );
    assert_eq!(m[&key("thinarc_last_run_success")], 0.0);
    assert_eq!(m[&key("thinarc_points")], 2.0);
    assert_eq!(m[&key("thinarc_chain_length")], 2.0);
    assert_eq!(m[&key("thinarc_stored_bytes")], stored as f64);
    assert_eq!(
        m[&key("thinarc_last_backup_read_bytes")],
        b2["bytes_read"].as_f64().unwrap()
    );

    // A new success clears the alarm.
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "vg0/web", "-q"]);
    let o = t.run(&["status", "--prometheus", prom.to_str().unwrap()]);
    assert!(o.success, "{}", o.show());
    assert!(o.stdout.contains("vg0/web"), "{}", o.show());
    assert!(o.stdout.contains("last failure"), "{}", o.show());
    let m = samples(&std::fs::read_to_string(&prom).unwrap());
    assert_eq!(m[&key("thinarc_last_run_success")], 1.0);
    assert_eq!(m[&key("thinarc_points")], 3.0);
}

#[test]
fn records_live_in_the_repository_and_in_the_state_directory() {
    let t = TempRepo::new();
    let src = t.path("db.img");
    write(&src, &make_image(MIB, 41));
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "db", "-q"]);
    let in_repo = t.repo().join("volumes/db/records/backup.success.json");
    let repo_record: Value = serde_json::from_slice(&std::fs::read(&in_repo).unwrap()).unwrap();
    assert_eq!(repo_record["result"], "success");

    // Another host (no local records) sees the same in the repository.
    let o = t.run_env(
        &["status", "--json"],
        &[("THINARC_STATE_DIR", t.path("other").to_str().unwrap())],
    );
    assert!(o.success, "{}", o.show());
    let s: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(s["volumes"][0]["backup"]["last_success"], repo_record);

    // With the repository gone, the failure is recorded locally and status still
    // shows it, saying the repository is unreachable.
    std::fs::rename(t.repo(), t.path("moved")).unwrap();
    let e = t.fails(&["backup", src.to_str().unwrap(), "--volume", "db"]);
    assert!(
        e.contains("is not a thinarc repository") || e.contains("no thinarc repository"),
        "{e}"
    );
    let o = t.run(&["status", "--json"]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(
        o.stderr.contains("error: repository unreachable"),
        "{}",
        o.show()
    );
    let s: Value = serde_json::from_str(&o.stdout).unwrap();
    let v = &s["volumes"][0];
    assert_eq!(v["volume"], "db");
    assert_eq!(v["backup"]["last"]["result"], "failure");
    assert_eq!(
        v["backup"]["last_success"], repo_record,
        "the local copy of the success"
    );
    assert!(
        v["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("repository unreachable")
    );
}

#[test]
fn on_failure_hook_gets_the_summary_on_stdin_and_in_its_environment() {
    let t = TempRepo::new();
    let out = t.path("hook.out");
    let hook = format!(
        "{{ cat; echo \"event=$THINARC_EVENT command=$THINARC_COMMAND volumes=$THINARC_FAILED_VOLUMES n=$THINARC_FAILURES\"; }} > {}",
        out.display()
    );
    let src = t.path("ok.img");
    write(&src, &make_image(MIB, 42));
    t.ok(&[
        "backup",
        src.to_str().unwrap(),
        "--volume",
        "ok",
        "--on-failure",
        &hook,
        "-q",
    ]);
    assert!(!out.exists(), "the hook runs only on failure");

    t.fails(&[
        "backup",
        t.path("nope.img").to_str().unwrap(),
        "--volume",
        "vg0/nope",
        "--on-failure",
        &hook,
    ]);
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    let first = lines.next().unwrap();
    assert!(
        first.starts_with("thinarc backup failed on ") && first.contains("cannot open source"),
        "{text}"
    );
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("- backup of vg0/nope in "),
        "{text}"
    );
    assert_eq!(
        lines.next().unwrap(),
        "event=failure command=backup volumes=vg0/nope n=1",
        "{text}"
    );

    // A failing hook is reported, and the command's own error still decides the exit.
    let o = t.run(&[
        "backup",
        t.path("nope.img").to_str().unwrap(),
        "--on-failure",
        "exit 3",
    ]);
    assert_eq!(o.code, Some(1));
    assert!(
        o.stderr
            .contains("on-failure command: `exit 3` exited with exit status: 3"),
        "{}",
        o.show()
    );
}

#[test]
fn an_interrupted_backup_is_recorded_as_failed() {
    let t = TempRepo::new();
    let src = t.path("slow.img");
    write(&src, &make_image(16 * MIB, 43));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_thinarc"))
        .args(["-r", t.location(), "backup", src.to_str().unwrap(), "-q"])
        .args(["--read-limit", "2M"])
        .env("THINARC_STATE_DIR", t.path("state"))
        .spawn()
        .unwrap();
    // Wait until the run is recorded as started.
    let last = t.repo().join("volumes/slow.img/records/backup.last.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !last.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let running: Value = serde_json::from_slice(&std::fs::read(&last).unwrap()).unwrap();
    assert_eq!(running["result"], "running");
    // SAFETY: sending SIGINT to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(!child.wait().unwrap().success());
    let done: Value = serde_json::from_slice(&std::fs::read(&last).unwrap()).unwrap();
    assert_eq!(done["result"], "failure");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.starts_with("interrupted by SIGINT: nothing partial was committed"),
        "{error}"
    );
    assert_eq!(done["started"], running["started"]);
}

#[test]
fn prometheus_textfile_folder_missing_is_refused_and_not_created() {
    let t = TempRepo::new();
    let src = t.path("db.img");
    write(&src, &make_image(MIB, 43));
    t.ok(&["backup", src.to_str().unwrap(), "--volume", "db", "-q"]);
    let dir = t.path("textfiles");
    let prom = dir.join("sub/thinarc.prom");
    let p = prom.to_str().unwrap();
    let refused = |args: &[&str], problem: &str| {
        let o = t.run(args);
        assert_eq!(o.code, Some(2), "{}", o.show());
        assert_eq!(
            o.stderr,
            format!(
                "error: cannot write the textfile {}: {problem}; it should be node_exporter's textfile directory (--collector.textfile.directory): fix the path, or create the folder\n",
                args[2]
            )
        );
        assert_eq!(o.stdout, "", "refused before the status is shown");
    };
    let missing = format!("{} does not exist", dir.join("sub").display());
    refused(&["status", "--prometheus", p], &missing);
    refused(&["status", "--prometheus", p, "--json"], &missing);
    assert!(!dir.exists(), "no folder is created");
    // A file where the folder should be.
    let file_prom = src.join("thinarc.prom");
    refused(
        &["status", "--prometheus", file_prom.to_str().unwrap()],
        &format!("{} is not a folder", src.display()),
    );
    // Once the collector's folder exists, the textfile is written into it.
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    t.ok(&["status", "--prometheus", p]);
    let m = samples(&std::fs::read_to_string(&prom).unwrap());
    assert_eq!(
        m[&format!(
            "thinarc_points{{volume=\"db\",repository=\"{}\"}}",
            t.location()
        )],
        1.0
    );
}
