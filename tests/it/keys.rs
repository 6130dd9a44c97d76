//! Keys of encrypted repositories (issue 12), on real runs of the binary: `init`
//! encrypted by default, every source of key material and its order, which command
//! asks for which key (and which asks for none), wrong and removed passphrases,
//! corrupted slot objects, recipient slots with `--identity`, write-only hosts with a
//! writer key, key slot commands, and `run` with key sources per repository. Local
//! store, and the S3 test server.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::util::{Output, TempRepo, make_image, read, thinarc_env, write};

const MIB: usize = 1 << 20;
const PASS: &str = "correct horse battery staple";

/// Writes `text` to `name` in the test directory; returns its path as a string.
fn file(t: &TempRepo, name: &str, text: &str) -> String {
    let p = t.path(name);
    write(&p, text.as_bytes());
    p.display().to_string()
}

/// An encrypted repository whose one slot opens with [`PASS`] (from a password file,
/// `pass.txt` in the test directory).
fn encrypted(t: TempRepo) -> TempRepo {
    let pass = file(&t, "pass.txt", &format!("{PASS}\n"));
    t.ok(&["init", "--password-file", &pass]);
    t
}

/// Backs `img.img` (1 MiB, seed `seed`) up as volume `v` with `key` arguments.
fn backup(t: &TempRepo, seed: u64, key: &[&str]) -> Output {
    let src = t.path("img.img");
    write(&src, &make_image(MIB, seed));
    let mut args = vec!["backup", src.to_str().unwrap(), "--volume", "v"];
    args.extend_from_slice(key);
    t.run(&args)
}

/// Restores `v` to `out.img` (removed first) with `key` arguments and `env`.
fn restore(t: &TempRepo, key: &[&str], env: &[(&str, &str)]) -> Output {
    let out = t.path("out.img");
    let _ = std::fs::remove_file(&out);
    let mut args = vec!["restore", "v", out.to_str().unwrap()];
    args.extend_from_slice(key);
    t.run_env(&args, env)
}

/// Asserts a failure with exit code 1 whose stderr is exactly `line`.
fn fails_with(o: &Output, line: &str) {
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert_eq!(o.stderr.trim_end(), line, "{}", o.show());
}

/// The key slot objects of a local repository.
fn slot_files(t: &TempRepo) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(t.repo().join("keys"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn config(t: &TempRepo) -> Value {
    serde_json::from_slice(&read(&t.repo().join("config"))).unwrap()
}

#[test]
fn init_is_encrypted_by_default_and_needs_a_passphrase_before_writing() {
    let t = TempRepo::uninit();
    let o = t.run(&["init"]);
    fails_with(
        &o,
        "error: init creates an encrypted repository: give its passphrase, or --recipient age1…, or --no-encryption: no passphrase given and no terminal to ask on: give --password-file, --password-command or THINARC_PASSWORD (for a new passphrase, --new-password-file)",
    );
    assert!(!t.repo().join("config").exists(), "nothing written");

    let t = encrypted(t);
    let c = config(&t);
    assert_eq!(c["version"], 2, "{c}");
    assert_eq!(
        c["encryption"]["scheme"],
        "age-x25519/chacha20poly1305/hmac-sha256"
    );
    let slots = slot_files(&t);
    assert_eq!(slots.len(), 1, "{slots:?}");
    let slot: Value = serde_json::from_slice(&read(&slots[0])).unwrap();
    assert_eq!(slot["kind"], "passphrase");
    assert_eq!(slot["key_id"], c["encryption"]["key_id"]);
    assert_eq!(
        slots[0].file_name().unwrap().to_str().unwrap(),
        format!("{}.json", slot["id"].as_str().unwrap())
    );
    let kdf = &slot["kdf"];
    assert_eq!(
        (
            &kdf["algorithm"],
            &kdf["version"],
            &kdf["m_cost"],
            &kdf["t_cost"],
            &kdf["p_cost"]
        ),
        (
            &Value::from("argon2id"),
            &Value::from(19),
            &Value::from(65536),
            &Value::from(3),
            &Value::from(1)
        )
    );
    assert_eq!(slot["nonce"].as_str().unwrap().len(), 48);
    // The passphrase is in no object.
    assert!(!String::from_utf8_lossy(&read(&slots[0])).contains(PASS));

    // init on an existing repository: refused before any passphrase is asked for.
    let e = t.fails(&["init"]);
    assert!(e.contains("a thinarc repository already exists at"), "{e}");

    // --no-encryption: version 1, no keys.
    let plain = TempRepo::new();
    assert_eq!(config(&plain)["version"], 1);
    assert!(config(&plain).get("encryption").is_none());
    let e = plain.fails(&["key", "list"]);
    assert!(
        e.contains("is not encrypted: key slots belong to encrypted repositories"),
        "{e}"
    );
}

#[test]
fn passphrase_sources_are_tried_in_the_documented_order() {
    let t = encrypted(TempRepo::uninit());
    let good = file(&t, "good.txt", &format!("{PASS}\r\n"));
    let bad = file(&t, "bad.txt", "wrong\n");
    let o = backup(&t, 1, &["--password-file", &good]);
    assert!(o.success, "{}", o.show());
    let wrong = format!(
        "error: wrong passphrase for {} (tried 1 passphrase slots; `thinarc key list` shows them)",
        t.location()
    );
    let echo_good = format!("echo '{PASS}'; echo second line");
    // (arguments, environment, whether the passphrase that opens is the one used)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], bool);
    let cases: &[Case] = &[
        // --password-file wins over everything.
        (
            &["--password-file", &good],
            &[("THINARC_PASSWORD", "wrong")],
            true,
        ),
        (
            &["--password-file", &bad],
            &[("THINARC_PASSWORD", PASS)],
            false,
        ),
        // THINARC_PASSWORD_FILE, then --password-command.
        (
            &["--password-command", "echo wrong"],
            &[("THINARC_PASSWORD_FILE", &good)],
            true,
        ),
        (
            &["--password-command", "echo wrong"],
            &[("THINARC_PASSWORD_FILE", &bad)],
            false,
        ),
        // --password-command (its first line), then THINARC_PASSWORD.
        (
            &["--password-command", &echo_good],
            &[("THINARC_PASSWORD", "wrong")],
            true,
        ),
        (
            &["--password-command", "echo wrong"],
            &[("THINARC_PASSWORD", PASS)],
            false,
        ),
        (&[], &[("THINARC_PASSWORD", PASS)], true),
        (&[], &[("THINARC_PASSWORD", "wrong")], false),
    ];
    for (args, env, ok) in cases {
        let o = restore(&t, args, env);
        if *ok {
            assert!(o.success, "{args:?} {env:?}: {}", o.show());
            assert_eq!(read(&t.path("out.img")), make_image(MIB, 1));
        } else {
            fails_with(&o, &wrong);
            assert!(!t.path("out.img").exists(), "{args:?}: nothing written");
        }
    }
    // A failing command: its status and stderr, one line.
    let o = restore(
        &t,
        &["--password-command", "echo locked out >&2; exit 3"],
        &[],
    );
    fails_with(
        &o,
        "error: password command \"echo locked out >&2; exit 3\": exit status: 3 (locked out)",
    );
    let o = restore(
        &t,
        &["--password-file", &t.path("nope").display().to_string()],
        &[],
    );
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(
        o.stderr.contains("cannot read password file"),
        "{}",
        o.show()
    );
}

#[test]
fn commands_that_need_a_key_fail_before_any_work_and_the_others_ask_for_none() {
    let t = encrypted(TempRepo::uninit());
    let pass = t.path("pass.txt").display().to_string();
    let o = backup(&t, 2, &[]);
    fails_with(
        &o,
        &format!(
            "error: backup needs a key of encrypted repository {}: give a passphrase (--password-file, --password-command, THINARC_PASSWORD), an identity (--identity) or a writer key (--writer-key)",
            t.location()
        ),
    );
    assert!(!t.repo().join("volumes").exists(), "nothing written");
    assert!(backup(&t, 2, &["--password-file", &pass]).success);

    let needs = |action: &str| {
        format!(
            "error: {action} needs the repository key of encrypted repository {}: give a passphrase (--password-file, --password-command, THINARC_PASSWORD) or an identity (--identity)",
            t.location()
        )
    };
    fails_with(&restore(&t, &[], &[]), &needs("restore"));
    assert!(!t.path("out.img").exists());
    fails_with(
        &t.run(&["verify", "--data"]),
        &needs("verify of block data"),
    );
    fails_with(&t.run(&["prune", "--keep-last", "1"]), &needs("prune"));
    let to = t.path("copy").display().to_string();
    fails_with(&t.run(&["copy", "--to", &to]), &needs("copy"));
    assert!(!t.path("copy").exists());
    fails_with(&t.run(&["key", "add"]), &needs("key add"));

    // list, status, structural verify and key list: no key, no prompt.
    for args in [&["list"][..], &["status"], &["verify"], &["key", "list"]] {
        let o = t.run(args);
        assert!(o.success, "{args:?}: {}", o.show());
    }
}

#[test]
fn write_only_host_backs_up_but_a_key_holder_must_run_what_reads() {
    let t = encrypted(TempRepo::uninit());
    let pass = t.path("pass.txt").display().to_string();
    let wk = t.path("writer.key");
    let wks = wk.display().to_string();
    t.ok(&["key", "export-writer", "-o", &wks, "--password-file", &pass]);
    let mode = std::fs::metadata(&wk).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = String::from_utf8(read(&wk)).unwrap();
    assert!(
        text.starts_with("# thinarc writer key of repository "),
        "{text}"
    );
    assert!(text.contains("it cannot decrypt them"), "{text}");
    assert!(!text.contains("AGE-SECRET-KEY"), "{text}");
    // Never overwritten.
    let o = t.run(&["key", "export-writer", "-o", &wks, "--password-file", &pass]);
    fails_with(
        &o,
        &format!("error: {wks} exists: give another file (a writer key is never overwritten)"),
    );

    // Backups with the writer key alone (from the flag or the environment).
    let o = backup(&t, 3, &["--writer-key", &wks]);
    assert!(o.success, "{}", o.show());
    let o = t.run_env(
        &[
            "backup",
            t.path("img.img").to_str().unwrap(),
            "--volume",
            "v",
        ],
        &[("THINARC_WRITER_KEY_FILE", &wks)],
    );
    assert!(o.success, "{}", o.show());
    for args in [&["list"][..], &["status"], &["verify"]] {
        let o = t.run(&[args, &["--writer-key", &wks]].concat());
        assert!(o.success, "{args:?}: {}", o.show());
    }

    let holder = |action: &str| {
        format!(
            "error: {action} needs the repository key (a writer key only encrypts) of encrypted repository {}: a key holder must run it, with a passphrase or identity of the repository",
            t.location()
        )
    };
    fails_with(
        &restore(&t, &["--writer-key", &wks], &[]),
        &holder("restore"),
    );
    assert!(!t.path("out.img").exists());
    let w = ["--writer-key", wks.as_str()];
    fails_with(
        &t.run(&[&["verify", "--data"][..], &w].concat()),
        &holder("verify of block data"),
    );
    fails_with(
        &t.run(&[&["prune", "--keep-last", "1"][..], &w].concat()),
        &holder("prune"),
    );
    let to = t.path("offline").display().to_string();
    fails_with(
        &t.run(&[&["copy", "--to", &to, "--consolidate"][..], &w].concat()),
        &holder("copy"),
    );
    assert!(!t.path("offline").exists());
    // The key holder restores what the write-only host wrote.
    let o = restore(&t, &["--password-file", &pass], &[]);
    assert!(o.success, "{}", o.show());
    assert_eq!(read(&t.path("out.img")), make_image(MIB, 3));

    // A writer key of another repository is refused.
    let other = encrypted(TempRepo::uninit());
    let owk = other.path("w.key").display().to_string();
    let opass = other.path("pass.txt").display().to_string();
    other.ok(&[
        "key",
        "export-writer",
        "-o",
        &owk,
        "--password-file",
        &opass,
    ]);
    let o = backup(&t, 4, &["--writer-key", &owk]);
    let key_id = |r: &TempRepo| {
        config(r)["encryption"]["key_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    fails_with(
        &o,
        &format!(
            "error: the key given for {} is key {}, but the repository's key is {}: use a passphrase, identity or writer key of this repository",
            t.location(),
            key_id(&other),
            key_id(&t)
        ),
    );
}

#[test]
fn key_slots_add_remove_and_passwd_and_the_removed_passphrase_no_longer_opens() {
    let t = encrypted(TempRepo::uninit());
    let pass = t.path("pass.txt").display().to_string();
    let second = file(&t, "second.txt", "second passphrase\n");
    let third = file(&t, "third.txt", "third passphrase\n");
    assert!(backup(&t, 5, &["--password-file", &pass]).success);
    t.ok(&[
        "key",
        "add",
        "--label",
        "admin2",
        "--new-password-file",
        &second,
        "--password-file",
        &pass,
    ]);
    let list = t.json(&["key", "list"]);
    let slots = list["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2, "{list}");
    assert_eq!(slots[1]["label"], "admin2");
    assert!(slots[1].get("ciphertext").is_none(), "{list}");
    let (first_id, second_id) = (
        slots[0]["id"].as_str().unwrap().to_string(),
        slots[1]["id"].as_str().unwrap().to_string(),
    );
    let text = t.ok(&["key", "list"]);
    assert!(text.starts_with("ID "), "{text}");
    assert!(
        text.contains(&second_id) && text.contains("admin2"),
        "{text}"
    );

    assert!(restore(&t, &["--password-file", &second], &[]).success);
    t.ok(&["key", "remove", &first_id, "--password-file", &second]);
    let wrong = format!(
        "error: wrong passphrase for {} (tried 1 passphrase slots; `thinarc key list` shows them)",
        t.location()
    );
    fails_with(&restore(&t, &["--password-file", &pass], &[]), &wrong);
    // The last slot stays.
    let o = t.run(&["key", "remove", &second_id, "--password-file", &second]);
    fails_with(
        &o,
        &format!(
            "error: key slot {second_id} is the last slot of {} that can decrypt it: add another (`thinarc key add`) before removing it",
            t.location()
        ),
    );
    let o = t.run(&[
        "key",
        "remove",
        "0123456789abcdef",
        "--password-file",
        &second,
    ]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(
        o.stderr.contains("has no key slot 0123456789abcdef"),
        "{}",
        o.show()
    );

    // passwd: the slot that unlocked is replaced, its label kept.
    t.ok(&[
        "key",
        "passwd",
        "--password-file",
        &second,
        "--new-password-file",
        &third,
    ]);
    fails_with(&restore(&t, &["--password-file", &second], &[]), &wrong);
    assert!(restore(&t, &["--password-file", &third], &[]).success);
    let list = t.json(&["key", "list"]);
    assert_eq!(list["slots"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["slots"][0]["label"], "admin2");
    assert_ne!(list["slots"][0]["id"], Value::from(second_id));
}

#[test]
fn corrupted_key_slot_is_named_and_skipped() {
    let t = encrypted(TempRepo::uninit());
    let pass = t.path("pass.txt").display().to_string();
    let second = file(&t, "second.txt", "second passphrase\n");
    assert!(backup(&t, 6, &["--password-file", &pass]).success);
    t.ok(&[
        "key",
        "add",
        "--new-password-file",
        &second,
        "--password-file",
        &pass,
    ]);
    // The slot init wrote (the first listed) opens with PASS: corrupt that one.
    let list = t.json(&["key", "list"]);
    let init_id = list["slots"][0]["id"].as_str().unwrap().to_string();
    let init_slot = t.repo().join("keys").join(format!("{init_id}.json"));
    write(&init_slot, b"{\"kind\": \"passphrase\", \"id\": ");
    let o = restore(&t, &["--password-file", &second], &[]);
    assert!(o.success, "{}", o.show());
    let named = format!(
        "key slot keys/{init_id}.json of {} is corrupt: ",
        t.location()
    );
    assert!(o.stderr.contains(&named), "{}", o.show());
    // When nothing opens, the one error line names the corrupt slot too.
    let o = restore(&t, &["--password-file", &pass], &[]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    let wrong = format!(
        "error: wrong passphrase for {} (tried 1 passphrase slots; `thinarc key list` shows them); skipped: {named}",
        t.location()
    );
    assert!(o.stderr.starts_with(&wrong), "{}", o.show());
    assert_eq!(o.stderr.trim_end().lines().count(), 1, "{}", o.show());
    let list = t.json(&["key", "list"]);
    assert_eq!(list["slots"].as_array().unwrap().len(), 1, "{list}");
    assert!(
        list["problems"][0].as_str().unwrap().contains(&named),
        "{list}"
    );
    // A corrupt object can be removed, even though it is not a usable slot.
    t.ok(&["key", "remove", &init_id, "--password-file", &second]);
    assert_eq!(slot_files(&t).len(), 1);
}

#[test]
fn recipient_slot_unlocks_with_its_identity_only() {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let other = age::x25519::Identity::generate();
    let t = TempRepo::uninit();
    t.ok(&["init", "--recipient", &recipient, "--label", "ops"]);
    let secret = |id: &age::x25519::Identity| {
        use age::secrecy::ExposeSecret as _;
        format!("# created: test\n{}\n", id.to_string().expose_secret())
    };
    let id_file = file(&t, "id.txt", &secret(&identity));
    let other_file = file(&t, "other.txt", &secret(&other));
    let list = t.json(&["key", "list"]);
    assert_eq!(list["slots"][0]["kind"], "recipient");
    assert_eq!(
        list["slots"][0]["recipient"],
        Value::from(recipient.clone())
    );

    assert!(backup(&t, 7, &["--identity", &id_file]).success);
    let o = restore(&t, &[], &[("THINARC_IDENTITY_FILE", &id_file)]);
    assert!(o.success, "{}", o.show());
    assert_eq!(read(&t.path("out.img")), make_image(MIB, 7));
    fails_with(
        &restore(&t, &["--identity", &other_file], &[]),
        &format!(
            "error: the identity given opens none of the 1 recipient slots of {} (`thinarc key list` shows their recipients)",
            t.location()
        ),
    );
    // A file that is not an identity file is bad input (exit 2).
    let bad = file(&t, "bad.txt", "AGE-SECRET-KEY-1NOTAKEY\n");
    let o = restore(&t, &["--identity", &bad], &[]);
    assert_eq!(o.code, Some(2), "{}", o.show());
    assert_eq!(
        o.stderr.trim_end(),
        format!(
            "error: identity file {bad}: line 1 is not an age X25519 identity (AGE-SECRET-KEY-1…)"
        ),
        "{}",
        o.show()
    );

    // A passphrase slot added by the identity holder; a recipient slot on a passphrase
    // repository.
    let pass = file(&t, "pass.txt", "added later\n");
    t.ok(&[
        "key",
        "add",
        "--new-password-file",
        &pass,
        "--identity",
        &id_file,
    ]);
    assert!(restore(&t, &["--password-file", &pass], &[]).success);
    let p = encrypted(TempRepo::uninit());
    let ppass = p.path("pass.txt").display().to_string();
    p.ok(&[
        "key",
        "add",
        "--recipient",
        &recipient,
        "--password-file",
        &ppass,
    ]);
    assert!(backup(&p, 8, &["--identity", &id_file]).success);
    let e = p.fails(&[
        "key",
        "add",
        "--recipient",
        "age1nope",
        "--password-file",
        &ppass,
    ]);
    assert!(
        e.contains("\"age1nope\" is not an age X25519 recipient"),
        "{e}"
    );
}

#[test]
fn run_reads_key_sources_per_repository() {
    let t = TempRepo::uninit();
    let a = encrypted(TempRepo::uninit());
    let b = TempRepo::uninit();
    let bpass = file(&b, "pass.txt", "other passphrase\n");
    b.ok(&["init", "--password-file", &bpass]);
    let apass = a.path("pass.txt").display().to_string();
    let img = t.path("d.img");
    write(&img, &make_image(MIB, 9));
    let state = t.path("state").display().to_string();
    let conf = |a_keys: &str| {
        let text = format!(
            r#"state_dir = "{state}"
[repositories.a]
location = "{a}"
{a_keys}
[repositories.b]
location = "{b}"
password_command = "cat {bpass}"

[[volumes]]
name = "v"
source = "{img}"
repository = "a"
retention = {{ keep_last = 3 }}

[[volumes]]
name = "v"
source = "{img}"
repository = "b"
"#,
            a = a.location(),
            b = b.location(),
            img = img.display(),
        );
        file(&t, "thinarc.toml", &text)
    };
    let env = [("THINARC_STATE_DIR".to_string(), state.clone())];
    let path = conf(&format!("password_file = \"{apass}\""));
    let o = thinarc_env(&["run", "--config", &path], &env);
    assert!(o.success, "{}", o.show());
    assert_eq!(a.json(&["list", "v"]).as_array().map(Vec::len), Some(1));

    // Without a's key: the run stops before any work (b is not backed up either),
    // naming the repository and what the run does there.
    let path = conf("");
    let o = thinarc_env(&["run", "--config", &path], &env);
    fails_with(
        &o,
        &format!(
            "error: cannot unlock repository a ({a}) for the backup and prune of v: prune needs the repository key of encrypted repository {a}: give a passphrase (--password-file, --password-command, THINARC_PASSWORD) or an identity (--identity)",
            a = a.location()
        ),
    );
    assert_eq!(b.json(&["list", "v"]).as_array().map(Vec::len), Some(1));
    // A wrong passphrase, and a copy of b's: b named, with its volume and the copy.
    let wrong = file(&t, "wrong.txt", "wrong\n");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&format!("cat {bpass}"), &format!("cat {wrong}"));
    let copy = t.path("copy").display().to_string();
    let path = file(
        &t,
        "thinarc.toml",
        &format!("{text}\n[[copies]]\nfrom = \"b\"\nto = \"{copy}\"\n"),
    );
    let o = thinarc_env(&["run", "--config", &path, "--password-file", &apass], &env);
    fails_with(
        &o,
        &format!(
            "error: cannot unlock repository b ({b}) for the backup of v, copy to {copy}: wrong passphrase for {b} (tried 1 passphrase slots; `thinarc key list` shows them)",
            b = b.location()
        ),
    );
    assert_eq!(b.json(&["list", "v"]).as_array().map(Vec::len), Some(1));
    let path = conf("");
    // The command line's sources serve a repository whose table names none.
    let o = thinarc_env(&["run", "--config", &path, "--password-file", &apass], &env);
    assert!(o.success, "{}", o.show());
    // An unknown key in a repository table is a config error (exit 2).
    let path = conf("passphrase = \"x\"");
    let o = thinarc_env(&["run", "--config", &path], &env);
    assert_eq!(o.code, Some(2), "{}", o.show());
    assert!(
        o.stderr.contains("unknown field `passphrase`"),
        "{}",
        o.show()
    );
}

#[test]
fn s3_encrypted_repository_keys() {
    let t = TempRepo::s3_uninit();
    let o = t.run(&["init"]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    let t = encrypted(t);
    let pass = t.path("pass.txt").display().to_string();
    let wk = t.path("w.key").display().to_string();
    t.ok(&["key", "export-writer", "-o", &wk, "--password-file", &pass]);
    let o = backup(&t, 10, &["--writer-key", &wk]);
    assert!(o.success, "{}", o.show());
    let o = restore(&t, &["--writer-key", &wk], &[]);
    assert_eq!(o.code, Some(1), "{}", o.show());
    assert!(
        o.stderr.contains("a key holder must run it"),
        "{}",
        o.show()
    );
    let o = restore(&t, &[], &[("THINARC_PASSWORD", "wrong")]);
    fails_with(
        &o,
        &format!(
            "error: wrong passphrase for {} (tried 1 passphrase slots; `thinarc key list` shows them)",
            t.location()
        ),
    );
    let o = restore(&t, &[], &[("THINARC_PASSWORD", PASS)]);
    assert!(o.success, "{}", o.show());
    assert_eq!(read(&t.path("out.img")), make_image(MIB, 10));
    let list = t.json(&["key", "list"]);
    assert_eq!(list["slots"].as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn copy_creates_an_encrypted_destination_with_the_source_key() {
    let t = encrypted(TempRepo::uninit());
    let pass = t.path("pass.txt").display().to_string();
    assert!(backup(&t, 11, &["--password-file", &pass]).success);
    let to = t.path("offline");
    let tos = to.display().to_string();
    t.ok(&["copy", "--to", &tos, "--password-file", &pass]);
    let dest: Value = serde_json::from_slice(&read(&to.join("config"))).unwrap();
    assert_eq!(dest["version"], 2, "{dest}");
    assert_eq!(dest["encryption"], config(&t)["encryption"]);
    // The destination opens with the same passphrase, alone.
    let out = t.path("from-copy.img");
    let o = thinarc_env(
        &[
            "-r",
            &tos,
            "restore",
            "v",
            out.to_str().unwrap(),
            "--password-file",
            &pass,
        ],
        &t.env_pairs(),
    );
    assert!(o.success, "{}", o.show());
    assert_eq!(read(&out), make_image(MIB, 11));
    let o = thinarc_env(&["-r", &tos, "key", "list", "--json"], &t.env_pairs());
    let list: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(list["slots"][0]["kind"], "passphrase", "{list}");
    // A second copy unlocks the existing destination with the same sources.
    t.ok(&["copy", "--to", &tos, "--password-file", &pass]);
    // An existing destination under another passphrase: refused before any work.
    let other = TempRepo::uninit();
    let opass = file(&other, "pass.txt", "another one\n");
    other.ok(&["init", "--password-file", &opass]);
    let o = t.run(&["copy", "--to", other.location(), "--password-file", &pass]);
    fails_with(
        &o,
        &format!(
            "error: wrong passphrase for {} (tried 1 passphrase slots; `thinarc key list` shows them)",
            other.location()
        ),
    );
    assert!(!other.repo().join("volumes").exists());
}

/// A password command that prints without end, hangs or prints nothing, and a key slot
/// whose Argon2 passes were raised to hang every unlock: each is one clear error, and
/// nothing hangs (the hanging command is stopped; the test's own bound is generous).
#[test]
fn broken_password_commands_and_tampered_slot_costs_fail_fast() {
    let t = encrypted(TempRepo::uninit());
    let pass = t.path("pass.txt").display().to_string();
    assert!(backup(&t, 5, &["--password-file", &pass]).success);
    let o = restore(&t, &["--password-command", "yes"], &[]);
    fails_with(
        &o,
        "error: password command \"yes\": it printed more than 64 KiB (a passphrase is one line); it was stopped",
    );
    let o = restore(&t, &["--password-command", "true"], &[]);
    fails_with(
        &o,
        "error: password command \"true\": it printed no passphrase (its first line is empty)",
    );
    let o = restore(&t, &["--password-command", "exit 7"], &[]);
    fails_with(&o, "error: password command \"exit 7\": exit status: 7");
    // A slot asking for three million passes is corrupt, not a reason to hang.
    let slots = slot_files(&t);
    let text = String::from_utf8(read(&slots[0])).unwrap();
    assert!(text.contains("\"t_cost\": 3"), "{text}");
    write(
        &slots[0],
        text.replace("\"t_cost\": 3", "\"t_cost\": 3000000")
            .as_bytes(),
    );
    let o = restore(&t, &["--password-file", &pass], &[]);
    assert!(!o.success, "{}", o.show());
    assert!(
        o.stderr.contains("out of range") && o.stderr.contains("has no usable passphrase slot"),
        "{}",
        o.show()
    );
}

/// A host given a writer key expects encrypted backups: on an unencrypted repository
/// the backup still runs, and says in a warning that the key is not used.
#[test]
fn writer_key_on_an_unencrypted_repository_is_warned_about() {
    let enc = encrypted(TempRepo::uninit());
    let pass = enc.path("pass.txt").display().to_string();
    let key = enc.path("writer.key").display().to_string();
    enc.ok(&["key", "export-writer", "-o", &key, "--password-file", &pass]);
    let plain = TempRepo::new();
    let o = backup(&plain, 1, &["--writer-key", &key]);
    assert!(o.success, "{}", o.show());
    let warning = format!(
        "{} is not encrypted: the writer key given is not used, and backup writes its archive in clear",
        plain.location()
    );
    assert!(o.stderr.contains(&warning), "{}", o.show());
}

/// A passphrase that a slot already opens with is refused as a new one, by `key add`
/// and by `key passwd` (the same passphrase again, or another slot's): one `error:`
/// line naming the slot, exit 1, and no slot is written or removed.
#[test]
fn a_passphrase_already_in_a_slot_is_refused_by_key_add_and_key_passwd() {
    let t = encrypted(TempRepo::uninit());
    let pass = t.path("pass.txt").display().to_string();
    let second = file(&t, "second.txt", "second passphrase\n");
    t.ok(&[
        "key",
        "add",
        "--new-password-file",
        &second,
        "--password-file",
        &pass,
    ]);
    let ids = |t: &TempRepo| -> Vec<String> {
        t.json(&["key", "list"])["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let before = ids(&t);
    let (first, other) = (&before[0], &before[1]);
    let in_use = |id: &str| {
        format!(
            "error: the new passphrase already opens key slot {id} of {}: choose another passphrase (`thinarc key list` shows the slots)",
            t.location()
        )
    };
    for (args, id) in [
        (
            vec![
                "key",
                "add",
                "--new-password-file",
                &pass,
                "--password-file",
                &pass,
            ],
            first,
        ),
        (
            vec![
                "key",
                "add",
                "--new-password-file",
                &second,
                "--password-file",
                &pass,
            ],
            other,
        ),
        (
            vec![
                "key",
                "passwd",
                "--new-password-file",
                &pass,
                "--password-file",
                &pass,
            ],
            first,
        ),
        (
            vec![
                "key",
                "passwd",
                "--new-password-file",
                &second,
                "--password-file",
                &pass,
            ],
            other,
        ),
    ] {
        fails_with(&t.run(&args), &in_use(id));
        assert_eq!(ids(&t), before, "{args:?} changed no slot");
    }
    // A passphrase no slot uses is taken.
    let third = file(&t, "third.txt", "third passphrase\n");
    t.ok(&[
        "key",
        "passwd",
        "--new-password-file",
        &third,
        "--password-file",
        &pass,
    ]);
    let after = ids(&t);
    assert!(
        after.len() == 2 && after.contains(other) && !after.contains(first),
        "{after:?}"
    );
    t.ok(&["verify", "--data", "--password-file", &third]);
}

/// Structural `verify` (no key given) checks that some key slot wraps the key the
/// config names: when none does (the config's key id changed, or every slot names
/// another key), nothing can unlock the repository, and verify says so naming config
/// and the slots (exit 4). With a slot that matches, nothing is reported.
#[test]
fn verify_reports_a_config_whose_key_no_slot_wraps() {
    let t = encrypted(TempRepo::uninit());
    let pass = t.path("pass.txt").display().to_string();
    assert!(backup(&t, 9, &["--password-file", &pass]).success);
    let o = t.run(&["verify"]);
    assert_eq!(o.code, Some(0), "{}", o.show());
    let key_id = config(&t)["encryption"]["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = "0123456789abcdef0123456789abcdef";
    let slot = slot_files(&t).remove(0);
    let slot_name = format!("keys/{}", slot.file_name().unwrap().to_str().unwrap());
    let original = read(&slot);
    // Every slot names another key.
    let text = String::from_utf8(original.clone()).unwrap();
    write(&slot, text.replace(&key_id, other).as_bytes());
    let o = t.run(&["verify", "v", "--json"]);
    assert_eq!(o.code, Some(4), "{}", o.show());
    let report: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        report["problems"][0],
        serde_json::json!({
            "volume": "config",
            "seq": null,
            "archive": null,
            "block": null,
            "problem": format!(
                "config names key {key_id}, but no key slot wraps it ({slot_name} wraps key {other}): nothing can unlock the repository; compare config and keys/ with a copy and put back the one that changed"
            ),
        }),
        "{}",
        o.show()
    );
    write(&slot, &original);
    // The config names another key: the same problem, from the other side.
    let config_path = t.repo().join("config");
    let config_text = String::from_utf8(read(&config_path)).unwrap();
    write(&config_path, config_text.replace(&key_id, other).as_bytes());
    let o = t.run(&["verify"]);
    assert_eq!(o.code, Some(4), "{}", o.show());
    assert!(
        o.stdout.starts_with(&format!(
            "problem: config: config names key {other}, but no key slot wraps it ({slot_name} wraps key {key_id}): nothing can unlock"
        )),
        "{}",
        o.show()
    );
    write(&config_path, config_text.as_bytes());
    assert_eq!(t.run(&["verify"]).code, Some(0));
}

/// A write-only host and blocks recorded damaged: damage records are clear JSON, so
/// the host reads them as a key holder's backup does. Blocks recorded damaged in its
/// parent chain are read from the source and stored again in its next delta (not a
/// full), once: its state remembers them, so the delta after stores nothing again.
#[test]
fn write_only_host_stores_recorded_damaged_blocks_again_in_a_delta() {
    let t = encrypted(TempRepo::uninit());
    let pass = t.path("pass.txt").display().to_string();
    let wk = t.path("writer.key").display().to_string();
    t.ok(&["key", "export-writer", "-o", &wk, "--password-file", &pass]);
    let src = t.path("w.img");
    let mut img = make_image(2 * MIB, 21);
    write(&src, &img);
    let src = src.display().to_string();
    // 256 KiB blocks: one block per frame, so the flipped byte below damages one
    // block, which verify records in full. (A frame of several blocks that fails is
    // recorded by its first block only: see the report.)
    let writer_backup = || {
        let o = t.run(&[
            "backup",
            &src,
            "--volume",
            "v",
            "--block-size",
            "256K",
            "--writer-key",
            &wk,
            "--json",
        ]);
        assert!(o.success, "{}", o.show());
        (serde_json::from_str::<Value>(&o.stdout).unwrap(), o)
    };
    assert_eq!(writer_backup().0["kind"], "full");
    img[100_000..100_010].fill(7);
    write(&t.path("w.img"), &img);
    assert_eq!(writer_backup().0["kind"], "delta");

    // A key holder's scrub finds a flipped byte in the data of seq 1.
    let archive = std::fs::read_dir(t.repo().join("volumes/v/archives"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("000000000001-")
        })
        .unwrap();
    let mut bytes = read(&archive);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    write(&archive, &bytes);
    let o = t.run(&["verify", "--data", "--password-file", &pass]);
    assert_eq!(o.code, Some(4), "{}", o.show());
    let records: Vec<Value> = std::fs::read_dir(t.repo().join("volumes/v/damage"))
        .unwrap()
        .map(|e| serde_json::from_slice(&read(&e.unwrap().path())).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["kind"], "blocks", "{records:?}");
    let damaged = records[0]["blocks"].as_array().unwrap().len();

    // The writer's next backup is a delta storing those blocks again.
    let (report, o) = writer_backup();
    assert_eq!(report["kind"], "delta", "{}", o.show());
    assert_eq!(report["blocks_changed"], damaged as u64, "{}", o.show());
    let warned = format!(
        "seq 2 depends on {damaged} damaged block(s) of {} (seq 1), first block {}, as recorded: these blocks are read from the source and stored again",
        records[0]["archive"].as_str().unwrap(),
        records[0]["blocks"][0]
    );
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == warned.as_str()),
        "{}",
        o.show()
    );
    let out = t.path("out.img");
    t.ok(&[
        "restore",
        "v",
        out.to_str().unwrap(),
        "--password-file",
        &pass,
    ]);
    assert_eq!(read(&out), img, "the newest point restores byte for byte");

    // Once: the delta after stores nothing again.
    let (report, o) = writer_backup();
    assert_eq!(report["kind"], "delta", "{}", o.show());
    assert_eq!(report["blocks_changed"], 0, "{}", o.show());
    assert!(
        !o.stdout.contains("damaged block(s)") && !o.stderr.contains("damaged block(s)"),
        "{}",
        o.show()
    );
}
