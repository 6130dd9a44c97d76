//! Issue 10, kind 7 (its restore and input items): output says only what is true.
//! `restore` prints "verified" only when it established the whole image's digest,
//! says what it did with an existing target's bytes past the volume, and errors quote
//! bad input as a short excerpt with its line number.

use crate::util::{Rng, TempRepo, assert_same_image, read, write};

const MIB: usize = 1 << 20;

/// Two points of volume `v` (4 MiB, 4 KiB blocks); returns their images.
fn two_points(t: &TempRepo) -> (Vec<u8>, Vec<u8>) {
    let src = t.path("v.img");
    // Random data, no zero blocks: every block is written, so the sizes are exact.
    let mut first = vec![0u8; 4 * MIB];
    Rng::new(70).fill(&mut first);
    write(&src, &first);
    let backup = [
        "-q",
        "backup",
        src.to_str().unwrap(),
        "--volume",
        "v",
        "--block-size",
        "4K",
    ];
    t.ok(&backup);
    let mut second = first.clone();
    Rng::new(71).fill(&mut second[MIB..MIB + 8192]);
    write(&src, &second);
    t.ok(&backup);
    (first, second)
}

/// The archive id of point `seq` of `v`.
fn archive(t: &TempRepo, seq: u64) -> String {
    let list = t.json(&["list", "v"]);
    let p = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["seq"] == seq)
        .unwrap();
    p["id"].as_str().unwrap().to_string()
}

/// Splits "... in 0.1s..." around its seconds, to compare the rest exactly.
fn without_seconds(line: &str) -> String {
    let (head, tail) = line.rsplit_once(" in ").expect("a time");
    let rest = tail.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    format!("{head} in Ns{}", rest.trim_start_matches('s'))
}

#[test]
fn restore_says_verified_only_for_what_it_verified() {
    let t = TempRepo::new();
    let (first, second) = two_points(&t);
    let target = t.path("replica.img");
    let tp = target.to_str().unwrap();
    let (a1, a2) = (archive(&t, 1), archive(&t, 2));

    // A plain restore recomputes the image digest from every block it wrote.
    let out = t.ok(&["restore", "v", tp, "--at", "1"]);
    let digest1 = t.json(&["list", "v"])[0]["image_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        without_seconds(out.trim_end()),
        format!(
            "restored v seq 1 archive {a1} to {tp}: 4.0 MiB written, image digest {digest1} verified in Ns"
        )
    );

    // --since with the target checked first: verified too.
    let r = t.json(&["restore", "v", tp, "--at", "2", "--since", "1"]);
    assert_eq!(r["image_verified"], true);
    assert_same_image(&read(&target), &second, "since 1");

    // --trust-target: only the written blocks were checked, and the output says so.
    write(&target, &first);
    let o = t.run(&[
        "restore",
        "v",
        tp,
        "--at",
        "2",
        "--since",
        "1",
        "--trust-target",
    ]);
    assert!(o.success, "{}", o.show());
    assert_eq!(
        without_seconds(o.stdout.trim_end()),
        format!(
            "restored v seq 2 archive {a2} to {tp} (changes since seq 1): 8.0 KiB written in Ns; written blocks checked; target not verified (--trust-target)"
        )
    );
    assert!(!o.stdout.contains("verified in"), "{}", o.stdout);
    assert!(
        o.stderr.contains(&format!(
            "warning: --trust-target: {tp} was assumed to hold seq 1 without reading it"
        )),
        "{}",
        o.stderr
    );
    write(&target, &first);
    let r = t.json(&[
        "restore",
        "v",
        tp,
        "--at",
        "2",
        "--since",
        "1",
        "--trust-target",
    ]);
    assert_eq!(r["image_verified"], false);
    assert_eq!(r["target_checked"], false);
}

#[test]
fn restore_onto_a_longer_file_cuts_it_to_the_volume_and_says_so() {
    let t = TempRepo::new();
    let (_, second) = two_points(&t);
    let target = t.path("longer.img");
    let tp = target.to_str().unwrap();
    let mut garbage = vec![0u8; 6 * MIB];
    Rng::new(72).fill(&mut garbage);
    write(&target, &garbage);
    let out = t.ok(&["restore", "v", tp]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains(" verified in "), "{out}");
    assert_eq!(
        lines[1],
        format!(
            "{tp} was longer than the volume: its last {} bytes were cut off, so it holds exactly the image",
            2 * MIB
        )
    );
    assert_same_image(&read(&target), &second, "the cut target");

    write(&target, &garbage);
    let r = t.json(&["restore", "v", tp]);
    assert_eq!(
        r["beyond_volume"],
        serde_json::json!({"action": "trimmed", "bytes": 2 * MIB})
    );
    // A target of the volume's size has nothing beyond it.
    let r = t.json(&["restore", "v", tp]);
    assert!(r.get("beyond_volume").is_none(), "{r}");
}

#[test]
fn bad_input_is_quoted_as_a_short_excerpt_with_its_line() {
    let t = TempRepo::new();
    let (first, _) = two_points(&t);
    let src = t.path("v.img");
    write(&src, &first);
    let s = src.to_str().unwrap();
    let cb = t.path("cb.txt");
    let c = cb.to_str().unwrap();
    let backup = ["backup", s, "--volume", "v", "--changed-blocks", c];

    // A 50 MB line (the field case): one short line, naming the line number.
    let mut text = b"# ranges\n0 4096\n".to_vec();
    text.extend(std::iter::repeat_n(b'1', 50_000_000));
    write(&cb, &text);
    let e = t.fails(&backup);
    assert!(e.len() < 300, "{} bytes of error", e.len());
    assert_eq!(
        e.trim_end(),
        format!(
            "error: {c}:3: expected `OFFSET LENGTH`, found \"{}\"... (50000000 bytes)",
            "1".repeat(60)
        )
    );
    // A long number in a well-formed line.
    write(
        &cb,
        format!("0 4096\n0x{} 5\n", "f".repeat(100_000)).as_bytes(),
    );
    let e = t.fails(&backup);
    assert!(e.len() < 300, "{e}");
    assert!(
        e.contains(&format!(
            "{c}:2: offset \"0x{}\"... (100002 bytes) is not a number",
            "f".repeat(58)
        )),
        "{e}"
    );
    // A range past the end of the source names its line.
    write(
        &cb,
        format!("# one\n0 4096\n\n{} 4096\n", 4 * MIB).as_bytes(),
    );
    let e = t.fails(&backup);
    assert_eq!(
        e.trim_end().lines().last().unwrap(),
        format!(
            "error: backup of {s} to volume v failed: --changed-blocks {c}:4: range {}+4096 lies past the end of the source ({} bytes): is the list for this source? nothing was read or committed",
            4 * MIB,
            4 * MIB
        )
    );

    // A point selector (a usage error, exit code 2) and a config value.
    let long = "z".repeat(100_000);
    let o = t.run(&[
        "restore",
        "v",
        t.path("out.img").to_str().unwrap(),
        "--at",
        &long,
    ]);
    assert_eq!(o.code, Some(2), "{}", o.show());
    assert!(o.stderr.len() < 400, "{} bytes of error", o.stderr.len());
    assert_eq!(
        o.stderr.lines().next().unwrap(),
        format!(
            "error: invalid value '{z}... (100000 bytes)' for '--at <AT>': \"{z}\"... (100000 bytes) is not `latest`, a sequence number or an archive id (in full, or a unique prefix of at least 6 hex digits)",
            z = "z".repeat(60)
        )
    );
    // A volume name, on a command that takes one and on one that looks it up.
    let long_volume = "v".repeat(5000);
    for args in [
        vec!["backup", s, "--volume", long_volume.as_str()],
        vec!["list", long_volume.as_str()],
        vec!["restore", long_volume.as_str(), "/tmp/never.img"],
    ] {
        let o = t.run(&args);
        assert!(!o.success, "{}", o.show());
        assert!(
            o.stderr.len() < 400 && o.stderr.contains("... (5000 bytes)"),
            "{} bytes of error: {}",
            o.stderr.len(),
            &o.stderr[..o.stderr.len().min(300)]
        );
    }
    let config = t.path("thinarc.toml");
    write(
        &config,
        format!(
            "read_limit = \"{}\"\n[repositories.main]\nlocation = \"{}\"\n",
            "x".repeat(1_000_000),
            t.location()
        )
        .as_bytes(),
    );
    let e = t.fails(&["run", "--config", config.to_str().unwrap()]);
    assert!(e.len() < 300, "{} bytes of error", e.len());
    assert!(e.contains(":1:14: \"xxxxx"), "{e}");
    assert!(e.contains("\"... (1000000 bytes) is not a rate"), "{e}");
    write(
        &config,
        format!(
            "threads = \"{}\"\n[repositories.main]\nlocation = \"{}\"\n",
            "y".repeat(1_000_000),
            t.location()
        )
        .as_bytes(),
    );
    let e = t.fails(&["run", "--config", config.to_str().unwrap()]);
    assert!(
        e.len() < 400,
        "{} bytes of error: {}",
        e.len(),
        &e[..400.min(e.len())]
    );
}

/// A loop device over a file, detached when dropped.
struct Loop(String);

impl Loop {
    /// Attaches `file` (needs root and loop devices: a test that cannot run fails).
    fn attach(file: &std::path::Path) -> Loop {
        let o = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .expect("run losetup (util-linux)");
        assert!(
            o.status.success(),
            "cannot attach a loop device (this test needs root): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Loop(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn restore_onto_a_longer_device_leaves_its_end_untouched_and_says_so() {
    let t = TempRepo::new();
    let (_, second) = two_points(&t);
    let backing = t.path("device.img");
    let mut garbage = vec![0u8; 6 * MIB];
    Rng::new(73).fill(&mut garbage);
    write(&backing, &garbage);
    let dev = Loop::attach(&backing);
    let out = t.ok(&["restore", "v", &dev.0]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains(" verified in "), "{out}");
    assert_eq!(
        lines[1],
        format!(
            "{} is longer than the volume: its last {} bytes were left untouched",
            dev.0,
            2 * MIB
        )
    );
    let now = read(std::path::Path::new(&dev.0));
    assert_eq!(now.len(), 6 * MIB);
    assert_same_image(&now[..4 * MIB], &second, "the restored image");
    assert!(
        now[4 * MIB..] == garbage[4 * MIB..],
        "the end was not touched"
    );
}
