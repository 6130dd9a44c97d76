//! `--help` reads like a man page (commands first; each command's own options, then
//! Repository, Limits, Logging and alerts; defaults shown; an example line), and the
//! completions and man pages generated from the same clap definitions work.

use std::process::Command;

use crate::util::{ensure_tool, thinarc};

/// The commands `thinarc --help` lists, in order (without `help`).
pub fn commands() -> Vec<String> {
    subcommands(&[])
}

/// The subcommands `thinarc ARGS... --help` lists, in order (without `help`); none
/// when it has no Commands section.
fn subcommands(args: &[&str]) -> Vec<String> {
    let o = thinarc(&[args, &["--help"]].concat());
    assert!(o.success, "{}", o.show());
    let Some((_, rest)) = o.stdout.split_once("Commands:\n") else {
        return Vec::new();
    };
    rest.lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// The man pages' names without `.1`: `thinarc-COMMAND` for each command, and
/// `thinarc-COMMAND-SUB` for each subcommand of one (as `key add`).
pub fn man_pages() -> Vec<String> {
    let mut pages = Vec::new();
    for c in commands() {
        for sub in subcommands(&[&c]) {
            pages.push(format!("thinarc-{c}-{sub}"));
        }
        pages.push(format!("thinarc-{c}"));
    }
    pages
}

/// Asserts that `headings` appear in `help` in this order, each on a line of its own.
fn in_order(help: &str, headings: &[&str]) {
    let mut from = 0;
    for h in headings {
        let at = help[from..]
            .find(&format!("\n{h}\n"))
            .unwrap_or_else(|| panic!("no {h:?} after byte {from} in:\n{help}"));
        from += at + 1;
    }
}

#[test]
fn help_backup_groups_options_shows_defaults_and_ends_with_examples() {
    let o = thinarc(&["backup", "--help"]);
    assert!(o.success, "{}", o.show());
    let help = format!("\n{}", o.stdout);
    in_order(
        &help,
        &[
            "Arguments:",
            "Options:",
            "Repository:",
            "Limits:",
            "Logging and alerts:",
            "Examples:",
        ],
    );
    // Its own options first, the global ones under their headings.
    let section = |h: &str| {
        let (_, rest) = help.split_once(&format!("\n{h}\n")).unwrap();
        rest.split("\n\n").next().unwrap().to_owned()
    };
    assert!(
        section("Options:").contains("--changed-blocks <FILE>"),
        "{help}"
    );
    assert!(!section("Options:").contains("--repo"), "{help}");
    assert!(
        section("Repository:").contains("-r, --repo <REPO>"),
        "{help}"
    );
    assert!(section("Limits:").contains("--read-limit <RATE>"), "{help}");
    assert!(section("Limits:").contains("--low-priority"), "{help}");
    assert!(
        section("Logging and alerts:").contains("-q, --quiet"),
        "{help}"
    );
    assert!(
        section("Logging and alerts:").contains("--on-failure <CMD>"),
        "{help}"
    );
    // Defaults shown.
    for default in [
        "[default: 64K]",
        "[default: 90]",
        "[default: 80]",
        "[default: one per core]",
    ] {
        assert!(help.contains(default), "no {default} in:\n{help}");
    }
    assert!(
        section("Examples:").starts_with("  thinarc -r /srv/backup backup lvm:vg0/web\n"),
        "{help}"
    );
}

#[test]
fn help_lists_commands_first_and_every_command_has_an_example() {
    let o = thinarc(&["--help"]);
    in_order(
        &format!("\n{}", o.stdout),
        &["Commands:", "Options:", "Repository:", "Examples:"],
    );
    let commands = commands();
    for c in ["init", "backup", "restore", "run", "completions"] {
        assert!(
            commands.iter().any(|x| x == c),
            "{c} missing from {commands:?}"
        );
    }
    assert!(
        !commands.iter().any(|x| x == "man"),
        "man is hidden: {commands:?}"
    );
    for c in &commands {
        let o = thinarc(&[c.as_str(), "--help"]);
        assert!(o.success, "{}", o.show());
        let example = o
            .stdout
            .split_once("\nExample:\n")
            .or_else(|| o.stdout.split_once("\nExamples:\n"))
            .map(|(_, e)| e);
        assert!(
            example.is_some_and(|e| e.starts_with("  thinarc ") && e.contains(c.as_str())),
            "{c} --help has no example line:\n{}",
            o.stdout
        );
    }
}

#[test]
fn help_completions_parse_with_bash_n_and_complete_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, must) in [
        ("bash", "complete -F _thinarc"),
        ("zsh", "#compdef thinarc"),
        ("fish", "complete -c thinarc"),
    ] {
        let o = thinarc(&["completions", shell]);
        assert!(o.success && o.stderr.is_empty(), "{}", o.show());
        assert!(o.stdout.contains(must), "{shell}: no {must:?}");
        assert!(
            o.stdout.contains("restore") && o.stdout.contains("changed-blocks"),
            "{shell}"
        );
        std::fs::write(dir.path().join(shell), &o.stdout).unwrap();
    }
    let bash = dir.path().join("bash");
    let o = Command::new("bash").arg("-n").arg(&bash).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Sourced, it completes the subcommands.
    let script = format!(
        "source {}; COMP_WORDS=(thinarc re); COMP_CWORD=1; COMP_LINE='thinarc re'; \
         COMP_POINT=10; _thinarc thinarc re thinarc; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        bash.display()
    );
    let o = Command::new("bash").arg("-c").arg(script).output().unwrap();
    let words = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        words.lines().collect::<Vec<_>>(),
        ["restore", "repair"],
        "{words}"
    );
    let o = thinarc(&["completions", "tcsh"]);
    assert_eq!(o.code, Some(2), "{}", o.show());
}

/// Renders `page` with `man -l` (package man-db, installed if missing) and returns the
/// text, asserting man said nothing on stderr.
pub fn man_l(page: &std::path::Path) -> String {
    ensure_tool(
        "man",
        &["--version"],
        "man-db",
        "the man pages are rendered with man -l",
    );
    let o = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "100")
        .env("MANPAGER", "cat")
        .output()
        .expect("run man -l");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && stderr.is_empty(),
        "{}: {stderr}",
        page.display()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn help_man_pages_one_per_command_render_with_man_l() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let o = thinarc(&[std::ffi::OsStr::new("man"), man.as_os_str()]);
    assert!(o.success && o.stdout.is_empty(), "{}", o.show());
    let mut pages: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    let mut want: Vec<String> = man_pages().iter().map(|c| format!("{c}.1")).collect();
    want.push("thinarc.1".into());
    want.sort();
    assert_eq!(pages, want);
    let text = man_l(&man.join("thinarc-backup.1"));
    in_order(
        &format!("\n{text}"),
        &[
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "REPOSITORY",
            "LIMITS",
            "LOGGING AND ALERTS",
            "EXAMPLES",
        ],
    );
    assert!(
        text.contains("thinarc-backup - Back up an image file"),
        "{text}"
    );
    assert!(
        text.contains("thinarc -r /srv/backup backup lvm:vg0/web"),
        "{text}"
    );
    let text = man_l(&man.join("thinarc.1"));
    assert!(text.contains("thinarc-restore(1)"), "{text}");
    // A directory that cannot be created is an error naming it.
    let o = thinarc(&[
        std::ffi::OsStr::new("man"),
        dir.path().join("man/thinarc.1/x").as_os_str(),
    ]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(
        o.stderr
            .contains("error: cannot create man page directory "),
        "{}",
        o.show()
    );
}
