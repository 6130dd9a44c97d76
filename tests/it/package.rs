//! The Debian package: `packaging/deb.sh` builds it with cargo-deb, here with
//! `--profile dev --no-build` from the binary under test (a release build would take
//! minutes more; cargo-deb warns that dev is not for releases), and `dpkg-deb` shows
//! what a user would install. Needs `cargo-deb` (.ci/run installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::help::{man_l, man_pages};

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Builds the package into a new temporary directory: (the directory, the .deb).
fn build() -> (tempfile::TempDir, PathBuf) {
    let have = Command::new("cargo").args(["deb", "--version"]).output();
    assert!(
        have.is_ok_and(|o| o.status.success()),
        "cargo-deb is missing: .ci/run installs it (cargo install cargo-deb --locked --version 3.8.0)"
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_thinarc"));
    let target = bin.parent().and_then(Path::parent).unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    run(Command::new("bash")
        .arg(root.join("packaging/deb.sh"))
        // No -dbgsym.ddeb here: compressing the dev build's full debug info takes a
        // minute and a half.
        .args([
            "--profile",
            "dev",
            "--no-build",
            "--no-dbgsym",
            "--fast",
            "--output",
        ])
        .arg(out.path())
        .env("CARGO_TARGET_DIR", target));
    let deb = out.path().join(format!(
        "thinarc_{}-1_{}.deb",
        env!("CARGO_PKG_VERSION"),
        run(Command::new("dpkg").arg("--print-architecture")).trim()
    ));
    assert!(deb.is_file(), "no {}", deb.display());
    (out, deb)
}

#[test]
fn package_deb_holds_binary_man_pages_completions_units_and_docs_but_nothing_in_etc() {
    let (dir, deb) = build();
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let mut files: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    files.sort_unstable();
    let mut want: Vec<String> = [
        "./usr/bin/thinarc",
        "./usr/lib/systemd/system/thinarc.service",
        "./usr/lib/systemd/system/thinarc.timer",
        "./usr/share/bash-completion/completions/thinarc",
        "./usr/share/doc/thinarc/README.md",
        "./usr/share/doc/thinarc/copyright",
        "./usr/share/doc/thinarc/examples/thinarc.toml",
        "./usr/share/fish/vendor_completions.d/thinarc.fish",
        "./usr/share/man/man1/thinarc.1.gz",
        "./usr/share/zsh/vendor-completions/_thinarc",
    ]
    .map(str::to_owned)
    .into();
    want.extend(
        man_pages()
            .iter()
            .map(|c| format!("./usr/share/man/man1/{c}.1.gz")),
    );
    want.sort();
    assert_eq!(files, want, "{listing}");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x 0/0 ") && l.ends_with(" ./usr/bin/thinarc")),
        "{listing}"
    );
    // Nothing under /etc, so no conffile: the user's /etc/thinarc/thinarc.toml is
    // never touched by an install, an upgrade or a purge.
    assert!(!listing.contains(" ./etc/"), "{listing}");
    let control = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(!control.contains("conffiles"), "{control}");

    let field = |f: &str| {
        run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f))
            .trim_end()
            .to_owned()
    };
    assert_eq!(field("Package"), "thinarc");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert_eq!(field("Section"), "admin");
    assert_eq!(field("Priority"), "optional");
    assert_eq!(field("Recommends"), "lvm2, thin-provisioning-tools");
    assert!(
        field("Depends").starts_with("libc6 (>= "),
        "{}",
        field("Depends")
    );
    assert!(!field("Maintainer").is_empty());
    let description = field("Description");
    let summary = description.lines().next().unwrap();
    assert_eq!(
        summary,
        "Block-level backups of LVM thin volumes, block devices and images"
    );
    assert!(description.contains("(not enabled"), "{description}");

    // Unpacked: the binary runs, the man pages render, the service runs /usr/bin/thinarc.
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let version = run(Command::new(root.join("usr/bin/thinarc")).arg("--version"));
    assert_eq!(version, format!("thinarc {}\n", env!("CARGO_PKG_VERSION")));
    // Stripped (its debug symbols go to thinarc-dbgsym_*.ddeb in a release build).
    let sections = run(Command::new("readelf")
        .args(["-S", "--wide"])
        .arg(root.join("usr/bin/thinarc")));
    assert!(!sections.contains(".debug_info"), "{sections}");
    let text = man_l(&root.join("usr/share/man/man1/thinarc-restore.1.gz"));
    assert!(text.contains("thinarc-restore - Restore a point"), "{text}");
    let service =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/thinarc.service")).unwrap();
    assert!(
        service.contains("\nExecStart=/usr/bin/thinarc run --config /etc/thinarc/thinarc.toml\n"),
        "{service}"
    );
    assert!(!service.contains("/usr/local"), "{service}");
    let example = std::fs::read(root.join("usr/share/doc/thinarc/examples/thinarc.toml")).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/thinarc.toml");
    assert_eq!(example, std::fs::read(source).unwrap());
}
