//! Incremental restore onto a replica (`restore --since`): only the blocks changed
//! between the point the target holds and the restored point are written, across
//! grow and shrink, after checking the target really holds that point.

use crate::util::{Rng, TempRepo, make_image, read, write};

const MIB: usize = 1 << 20;
const BS: usize = 4096;

/// A volume of five points: changes, a grow, a shrink, a grow again. Returns the
/// images.
fn history(t: &TempRepo) -> Vec<Vec<u8>> {
    let src = t.path("v.img");
    let mut rng = Rng::new(60);
    let mut img = make_image(4 * MIB, 61);
    let mut points = Vec::new();
    let backup = |img: &Vec<u8>, points: &mut Vec<Vec<u8>>| {
        write(&src, img);
        t.ok(&[
            "backup",
            src.to_str().unwrap(),
            "--volume",
            "v",
            "--block-size",
            "4K",
            "-q",
        ]);
        points.push(img.clone());
    };
    let mut scribble = |img: &mut Vec<u8>, blocks: usize| {
        for _ in 0..blocks {
            let b = rng.below((img.len() / BS) as u64) as usize;
            rng.fill(&mut img[b * BS..(b + 1) * BS]);
        }
    };
    backup(&img, &mut points); // 1: 4 MiB
    scribble(&mut img, 20);
    backup(&img, &mut points); // 2: 20 blocks changed
    img.resize(5 * MIB + 1000, 7);
    scribble(&mut img, 10);
    backup(&img, &mut points); // 3: grown, not block aligned
    img.truncate(3 * MIB);
    scribble(&mut img, 5);
    backup(&img, &mut points); // 4: shrunk
    img.resize(6 * MIB, 0);
    img[5 * MIB..5 * MIB + 5].copy_from_slice(b"again");
    backup(&img, &mut points); // 5: grown, mostly zero
    points
}

/// A replica restored to `seq`, padded with garbage.
fn replica(t: &TempRepo, seq: u64) -> std::path::PathBuf {
    let path = t.path("replica.img");
    let _ = std::fs::remove_file(&path);
    t.ok(&[
        "restore",
        "v",
        path.to_str().unwrap(),
        "--at",
        &seq.to_string(),
        "-q",
    ]);
    pad(&path);
    path
}

/// Pads `path` with garbage to 8 MiB, as a device larger than the volume would be:
/// what lies past the volume must be rewritten when the volume grows into it.
fn pad(path: &std::path::Path) {
    let mut bytes = read(path);
    let len = bytes.len();
    bytes.resize(8 * MIB, 0);
    Rng::new(len as u64).fill(&mut bytes[len..]);
    write(path, &bytes);
}

fn assert_holds(path: &std::path::Path, image: &[u8], what: &str) {
    let got = read(path);
    crate::util::assert_same_image(&got[..image.len()], image, what);
}

#[test]
fn since_writes_only_the_changes_across_grow_and_shrink() {
    let t = TempRepo::new();
    let points = history(&t);
    let target = replica(&t, 1);
    assert_holds(&target, &points[0], "seq 1");
    let mut at = 1;
    for next in [2u64, 3, 4, 5] {
        pad(&target);
        let r = t.json(&[
            "restore",
            "v",
            target.to_str().unwrap(),
            "--at",
            &next.to_string(),
            "--since",
            &at.to_string(),
        ]);
        assert_eq!(r["since"], at);
        assert_eq!(r["target_checked"], true);
        assert_holds(
            &target,
            &points[next as usize - 1],
            &format!("seq {next} since {at}"),
        );
        let written = r["bytes_written"].as_u64().unwrap();
        match next {
            // 20 changed blocks (some may coincide).
            2 => assert!(written > 0 && written <= 20 * BS as u64, "{r}"),
            // 10 changed blocks, the old boundary block and the new 1 MiB + 1000 bytes.
            3 => assert!(written <= (11 * BS + MIB + 1000) as u64, "{r}"),
            // 5 changed blocks and the new boundary block.
            4 => assert!(written <= 6 * BS as u64, "{r}"),
            // One block of data in the 3 MiB the volume grew by.
            _ => assert!(written <= 2 * BS as u64, "{r}"),
        }
        at = next;
    }
    // Nothing changed between a point and itself.
    let r = t.json(&["restore", "v", target.to_str().unwrap(), "--since", "5"]);
    assert_eq!(r["bytes_written"], 0);
    assert_holds(&target, &points[4], "seq 5 since 5");

    // Several points at once: from seq 1 straight to seq 4.
    let target = replica(&t, 1);
    t.ok(&[
        "restore",
        "v",
        target.to_str().unwrap(),
        "--at",
        "4",
        "--since",
        "1",
        "-q",
    ]);
    assert_holds(&target, &points[3], "seq 4 since 1");
}

#[test]
fn since_checks_the_target_first() {
    let t = TempRepo::new();
    let points = history(&t);
    // A replica of seq 1 that someone wrote to since.
    let target = replica(&t, 1);
    let mut bytes = read(&target);
    bytes[100 * BS..100 * BS + 5].copy_from_slice(b"local");
    write(&target, &bytes);
    let e = t.fails(&[
        "restore",
        "v",
        target.to_str().unwrap(),
        "--at",
        "2",
        "--since",
        "1",
    ]);
    assert!(
        e.contains(&format!(
            "target {} does not hold seq 1 (its image digest is ",
            target.display()
        )) && e.contains(
            "nothing was written: restore without --since, or name the point the target holds"
        ),
        "{e}"
    );
    assert!(read(&target) == bytes, "the target was not touched");

    // --trust-target skips the check, with a warning: the result is wrong here, which
    // is why it is not the default.
    let o = t.run(&[
        "restore",
        "v",
        target.to_str().unwrap(),
        "--at",
        "2",
        "--since",
        "1",
        "--trust-target",
    ]);
    assert!(o.success, "{}", o.show());
    assert!(
        o.stderr.contains(&format!(
            "--trust-target: {} was assumed to hold seq 1 without reading it",
            target.display()
        )),
        "{}",
        o.show()
    );
    assert!(
        read(&target)[..points[1].len()] != points[1][..],
        "the local change survived: the replica is not seq 2"
    );

    // A point that is not an ancestor.
    let e = t.fails(&[
        "restore",
        "v",
        target.to_str().unwrap(),
        "--at",
        "2",
        "--since",
        "4",
    ]);
    assert!(
        e.contains(
            "--since 4: seq 4 is not an earlier point of the chain of seq 2 (its chain is 1 2)"
        ),
        "{e}"
    );
    // A target that does not exist.
    let missing = t.path("missing.img");
    let e = t.fails(&["restore", "v", missing.to_str().unwrap(), "--since", "1"]);
    assert!(
        e.contains(&format!(
            "--since needs an existing target holding that point; {} does not exist",
            missing.display()
        )),
        "{e}"
    );
    assert!(!missing.exists());
    // --trust-target alone is a usage error.
    let o = t.run(&["restore", "v", target.to_str().unwrap(), "--trust-target"]);
    assert_eq!(o.code, Some(2), "{}", o.show());
}
