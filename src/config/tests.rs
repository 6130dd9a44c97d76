use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("/etc/thinarc/t.toml"), text).map_err(|e| e.to_string())
}

const GOOD: &str = r#"
state_dir = "/var/lib/thinarc"
on_failure = "mail -s 'thinarc failed' root"
rate_limit = "50M/s"
upload_limit = "10M"
threads = 2
low_priority = true

[repositories.main]
location = "s3://backups/thinarc"

[repositories.usb]
location = "/mnt/usb/thinarc"

[[volumes]]
name = "vg0/web"
source = "lvm:vg0/web"
repository = "main"
block_size = "64K"
max_pool_data = 85
retention = { keep_daily = 7, keep_weekly = 4, keep_monthly = 6 }

[[volumes]]
name = "images/db"
source = "/srv/images/db.img"
repository = "main"

[[copies]]
from = "main"
to = "/mnt/offline/thinarc"
consolidate = true
volumes = ["vg0/web"]
retention = { keep_weekly = 6 }
"#;

#[test]
fn a_full_config() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.read_limit, Some(50 << 20));
    assert_eq!(c.upload_limit, Some(10 << 20));
    assert_eq!(c.threads, Some(2));
    assert!(c.low_priority);
    assert_eq!(c.repositories["main"], "s3://backups/thinarc");
    assert_eq!(c.volumes.len(), 2);
    let web = &c.volumes[0];
    assert_eq!(web.label(), "vg0/web");
    assert_eq!(web.block_size.map(|b| b.get()), Some(65536));
    assert_eq!(web.max_pool_data, Some(85));
    assert_eq!(web.max_pool_metadata, None);
    let r = web.retention.as_ref().unwrap();
    assert_eq!(
        (r.policy.daily, r.policy.weekly, r.policy.monthly),
        (Some(7), Some(4), Some(6))
    );
    assert_eq!(c.volumes[1].retention, None);
    assert_eq!(c.copies.len(), 1);
    assert_eq!(c.copies[0].volumes[0].as_str(), "vg0/web");
    assert!(c.copies[0].consolidate);
}

#[test]
fn defaults_with_one_repository() {
    let c = parse(
        "[repositories.r]\nlocation = \"/srv/r\"\n[[volumes]]\nname = \"a\"\nsource = \"/dev/sda\"\n[[copies]]\nto = \"/mnt/x\"\n",
    )
    .unwrap();
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(c.volumes[0].repository, "r");
    assert_eq!(c.copies[0].from, "r");
    assert_eq!(c.copies[0].volumes.len(), 1);
    assert_eq!((c.read_limit, c.upload_limit), (None, None));
}

/// Asserts that replacing `from` by `to` in GOOD fails with exactly `error`.
fn bad(from: &str, to: &str, error: &str) {
    assert!(GOOD.contains(from), "{from}");
    let text = GOOD.replacen(from, to, 1);
    assert_eq!(parse(&text).unwrap_err(), error, "{to}");
}

#[test]
fn each_mistake_names_file_line_and_problem() {
    bad(
        "threads = 2",
        "thread = 2",
        "/etc/thinarc/t.toml:6:1: unknown field `thread`, expected one of `state_dir`, `on_failure`, `prometheus`, `rate_limit`, `read_limit`, `upload_limit`, `threads`, `low_priority`, `repositories`, `volumes`, `copies`",
    );
    bad(
        "max_pool_data = 85",
        "max_pool_dat = 85",
        "/etc/thinarc/t.toml:20:1: unknown field `max_pool_dat`, expected one of `name`, `source`, `repository`, `block_size`, `max_pool_data`, `max_pool_metadata`, `retention`, `pre_snapshot`, `post_snapshot`, `hook_timeout`, `freeze`, `freeze_timeout`, `freeze_required`, `... (248 bytes)",
    );
    bad(
        "keep_weekly = 6",
        "keep_weakly = 6",
        "/etc/thinarc/t.toml:33:15: unknown field `keep_weakly`, expected one of `keep_last`, `keep_hourly`, `keep_daily`, `keep_weekly`, `keep_monthly`, `keep_yearly`, `keep_within`, `max_chain_length`",
    );
    bad(
        "block_size = \"64K\"",
        "block_size = \"64Q\"",
        "/etc/thinarc/t.toml:19:14: \"64Q\" has an unknown unit (use K, M, G or T)",
    );
    bad(
        "block_size = \"64K\"",
        "block_size = \"3000\"",
        "/etc/thinarc/t.toml:19:14: block_size = 3000 is not a power of two from 4K to 16M",
    );
    bad(
        "rate_limit = \"50M/s\"",
        "rate_limit = \"fast\"",
        "/etc/thinarc/t.toml:4:14: \"fast\" is not a rate (bytes per second, e.g. 50M or 50M/s)",
    );
    bad(
        "location = \"s3://backups/thinarc\"",
        "location = \"ftp://backups/thinarc\"",
        "/etc/thinarc/t.toml:10:12: repository main: bad location \"ftp://backups/thinarc\": unsupported scheme \"ftp\" (use a path, file:// or s3:// URL)",
    );
    bad(
        "location = \"s3://backups/thinarc\"",
        "location = \"s3:/backups/thinarc\"",
        "/etc/thinarc/t.toml:10:12: repository main: bad location \"s3:/backups/thinarc\": \"s3\" looks like a URL scheme without \"//\" (use s3://BUCKET/PREFIX, file:///PATH, or ./s3:/backups/thinarc for a local directory with a colon in its name)",
    );
    bad(
        "location = \"s3://backups/thinarc\"",
        "location = \"s3:///thinarc\"",
        "/etc/thinarc/t.toml:10:12: repository main: bad location \"s3:///thinarc\": no bucket name (use s3://BUCKET/PREFIX)",
    );
    bad(
        "repository = \"main\"\nblock_size",
        "repository = \"mian\"\nblock_size",
        "/etc/thinarc/t.toml:18:14: volume vg0/web: no repository named \"mian\" (defined: \"main\", \"usb\")",
    );
    bad(
        "repository = \"main\"\nblock_size",
        "block_size",
        "/etc/thinarc/t.toml:15:1: volume vg0/web: say which repository (one of \"main\", \"usb\")",
    );
    bad(
        "source = \"lvm:vg0/web\"",
        "source = \"lvm:web\"",
        "/etc/thinarc/t.toml:17:10: volume vg0/web: source \"lvm:web\": an LVM source is written lvm:VG/LV",
    );
    bad(
        "source = \"lvm:vg0/web\"",
        "source = \"lvm:vg0/-web\"",
        "/etc/thinarc/t.toml:17:10: volume vg0/web: source \"lvm:vg0/-web\": LV name \"-web\" starts with '-' (lvm(8), VALID NAMES)",
    );
    bad(
        "retention = { keep_weekly = 6 }",
        "retention = { keep_weekly = 6, max_chain_length = 0 }",
        "/etc/thinarc/t.toml:33:13: copy to /mnt/offline/thinarc: retention: --max-chain-length must be at least 1 (leave the option out to not use it)",
    );
    bad(
        "source = \"/srv/images/db.img\"",
        "source = \"db.img\"",
        "/etc/thinarc/t.toml:25:10: volume images/db: source \"db.img\": use lvm:VG/LV or an absolute path to a device or image file",
    );
    bad(
        "name = \"images/db\"\nsource = \"/srv/images/db.img\"\n",
        "name = \"images/db\"\n",
        "/etc/thinarc/t.toml:23:1: missing field `source`",
    );
    bad(
        "name = \"images/db\"",
        "name = \"vg0/web\"",
        "/etc/thinarc/t.toml:24:8: volume vg0/web is configured twice for repository main",
    );
    bad(
        "name = \"images/db\"",
        "name = \"images//db\"",
        "/etc/thinarc/t.toml:24:8: invalid volume name \"images//db\": empty segment (leading, trailing or double '/')",
    );
    bad(
        "volumes = [\"vg0/web\"]",
        "volumes = [\"vg0/mail\"]",
        "/etc/thinarc/t.toml:32:12: copy to /mnt/offline/thinarc: volume vg0/mail is not configured for repository main (by name or by a source pattern)",
    );
    bad(
        "to = \"/mnt/offline/thinarc\"",
        "to = \"s3://backups/thinarc\"",
        "/etc/thinarc/t.toml:30:6: copy to s3://backups/thinarc: the destination is the source repository main",
    );
    bad(
        "max_pool_data = 85",
        "max_pool_data = 0",
        "/etc/thinarc/t.toml:20:17: max_pool_data = 0 is not a percentage from 1 to 100",
    );
    bad(
        "max_pool_data = 85",
        "max_pool_data = 900",
        "/etc/thinarc/t.toml:20:17: invalid value: integer `900`, expected u8",
    );
    bad(
        "retention = { keep_weekly = 6 }",
        "retention = { keep_weekly = 0 }",
        "/etc/thinarc/t.toml:33:13: copy to /mnt/offline/thinarc: retention: --keep-weekly must be at least 1 (leave the option out to not use it)",
    );
    bad(
        "retention = { keep_weekly = 6 }",
        "retention = { keep_within = \"2 weeks\" }",
        "/etc/thinarc/t.toml:33:13: copy to /mnt/offline/thinarc: retention: invalid duration \"2 weeks\": use numbers with units y, m, w, d, h (e.g. 7d, 1y6m, 36h)",
    );
    bad(
        "retention = { keep_weekly = 6 }",
        "retention = { max_chain_length = 3 }",
        "/etc/thinarc/t.toml:33:13: copy to /mnt/offline/thinarc: retention: the policy keeps nothing but the newest point: give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within",
    );
    bad(
        "threads = 2",
        "threads = 0",
        "/etc/thinarc/t.toml:6:11: threads must be at least 1",
    );
    bad(
        "low_priority = true",
        "low_priority = \"yes\"",
        "/etc/thinarc/t.toml:7:16: invalid type: string \"yes\", expected a boolean",
    );
    bad(
        "[[copies]]",
        "[[copies]",
        "/etc/thinarc/t.toml:28:10: unclosed array table, expected `]`",
    );
}

#[test]
fn no_volumes_and_no_repository() {
    assert_eq!(
        parse("[repositories.r]\nlocation = \"/r\"\n").unwrap_err(),
        "/etc/thinarc/t.toml:1:1: no volumes configured (add a [[volumes]] table with name and source, or a source pattern)"
    );
    assert_eq!(
        parse("[[volumes]]\nname = \"a\"\nsource = \"/dev/sda\"\n").unwrap_err(),
        "/etc/thinarc/t.toml:1:1: volume a: no repository defined (add a [repositories.NAME] table)"
    );
}

#[test]
fn the_example_config_is_valid() {
    let c = parse(include_str!("../../examples/thinarc.toml")).unwrap();
    assert_eq!(c.volumes.len(), 4);
    assert_eq!(c.volumes[2].label(), "lvm:vg0/pool/*");
    assert_eq!(c.repositories.len(), 2);
    assert_eq!(
        c.keys["offsite"].password_file.as_deref(),
        Some(std::path::Path::new("/etc/thinarc/offsite.pass"))
    );
    assert!(!c.keys.contains_key("local"));
    assert_eq!(c.copies[0].volumes.len(), 2);
    assert!(c.on_failure.as_deref().unwrap().starts_with("mail "));
}

#[test]
fn hooks_and_freeze() {
    let text = GOOD.replacen(
        "max_pool_data = 85",
        "max_pool_data = 85\npre_snapshot = \"mysql -e 'FLUSH TABLES'\"\npost_snapshot = \"true\"\nhook_timeout = 60\nfreeze = \"fs:/var/lib/mysql\"\nfreeze_required = false",
        1,
    );
    let c = parse(&text).unwrap();
    let web = &c.volumes[0];
    assert_eq!(web.hooks.pre.as_deref(), Some("mysql -e 'FLUSH TABLES'"));
    assert_eq!(web.hooks.post.as_deref(), Some("true"));
    assert_eq!(web.hooks.timeout, Duration::from_secs(60));
    let f = web.freeze.as_ref().unwrap();
    assert_eq!(f.target, FreezeTarget::Fs("/var/lib/mysql".into()));
    assert_eq!((f.timeout, f.required), (DEFAULT_FREEZE_TIMEOUT, false));
    let db = &c.volumes[1];
    assert_eq!(db.hooks, Hooks::default());
    assert_eq!(db.freeze, None);

    bad(
        "max_pool_data = 85",
        "freeze = \"zfs:tank\"",
        "/etc/thinarc/t.toml:20:10: volume vg0/web: freeze: \"zfs:tank\" is not `fs:/MOUNT/POINT` or `libvirt:DOMAIN`",
    );
    bad(
        "max_pool_data = 85",
        "hook_timeout = 0",
        "/etc/thinarc/t.toml:20:16: volume vg0/web: hook_timeout = 0: give the limit in seconds, at least 1",
    );
    bad(
        "repository = \"main\"\n\n[[copies]]",
        "repository = \"main\"\nfreeze = \"libvirt:db\"\n\n[[copies]]",
        "/etc/thinarc/t.toml:27:10: volume images/db: freeze applies to lvm:VG/LV sources only (it covers the snapshot; a file or device source has none: use pre_snapshot and post_snapshot)",
    );
}

#[test]
fn pattern_sources() {
    let text = "[repositories.r]\nlocation = \"/srv/r\"\n[[volumes]]\nname = \"vg0/db\"\nsource = \"lvm:vg0/db\"\n[[volumes]]\nsource = \"lvm:vg0/pool/*\"\nexclude = [\"scratch-*\", \"vg0/tmp?\"]\npre_snapshot = \"sync\"\n[[volumes]]\nsource = \"lvm:pve/vm-*-disk-*\"\n[[copies]]\nto = \"/mnt/x\"\n[[copies]]\nto = \"/mnt/y\"\nvolumes = [\"pve/vm-100-disk-0\", \"vg0/db\"]\n";
    let c = parse(text).unwrap();
    assert_eq!(c.volumes.len(), 3);
    let Select::Pattern(d) = &c.volumes[1].select else {
        panic!("{:?}", c.volumes[1]);
    };
    assert_eq!(d.source(), "lvm:vg0/pool/*");
    assert_eq!(d.pattern.pool.as_deref(), Some("pool"));
    let ex: Vec<&str> = d.exclude.iter().map(LvGlob::as_str).collect();
    assert_eq!(ex, ["scratch-*", "tmp?"]);
    assert_eq!(c.volumes[1].hooks.pre.as_deref(), Some("sync"));
    assert_eq!(c.volumes[2].label(), "lvm:pve/vm-*-disk-*");
    // A copy naming no volumes takes the named ones now and the discovered ones at
    // run time; a discovered volume may be named when a pattern can select it.
    assert_eq!(c.copies[0].volumes.len(), 1);
    assert!(c.copies[0].discovered);
    assert_eq!(c.copies[1].volumes.len(), 2);
    assert!(!c.copies[1].discovered);

    let bad = |from: &str, to: &str, error: &str| {
        assert!(text.contains(from), "{from}");
        assert_eq!(
            parse(&text.replacen(from, to, 1)).unwrap_err(),
            error,
            "{to}"
        );
    };
    bad(
        "source = \"lvm:vg0/pool/*\"",
        "source = \"lvm:vg0/pool/vm-[1-3]*\"",
        "/etc/thinarc/t.toml:7:10: source \"lvm:vg0/pool/vm-[1-3]*\": LV pattern \"vm-[1-3]*\" contains '[': use letters, digits, + _ . - and the wildcards * and ?",
    );
    bad(
        "source = \"lvm:vg0/pool/*\"",
        "source = \"lvm:vg*/pool/*\"",
        "/etc/thinarc/t.toml:7:10: source \"lvm:vg*/pool/*\": VG name \"vg*\" contains '*': only letters, digits and + _ . - are allowed (lvm(8), VALID NAMES)",
    );
    bad(
        "source = \"lvm:vg0/pool/*\"",
        "source = \"lvm:vg0/a/b/*\"",
        "/etc/thinarc/t.toml:7:10: source \"lvm:vg0/a/b/*\": \"vg0/a/b/*\" is not VG/LV-PATTERN or VG/POOL/LV-PATTERN",
    );
    bad(
        "\"vg0/tmp?\"",
        "\"vg1/tmp?\"",
        "/etc/thinarc/t.toml:8:25: volume lvm:vg0/pool/*: exclude \"vg1/tmp?\": not in VG vg0 (exclude LV names of the pattern's VG, as GLOB or vg0/GLOB)",
    );
    bad(
        "\"scratch-*\"",
        "\"scratch/*\"",
        "/etc/thinarc/t.toml:8:12: volume lvm:vg0/pool/*: exclude \"scratch/*\": not in VG vg0 (exclude LV names of the pattern's VG, as GLOB or vg0/GLOB)",
    );
    bad(
        "\"scratch-*\"",
        "\"scr@tch\"",
        "/etc/thinarc/t.toml:8:12: volume lvm:vg0/pool/*: exclude \"scr@tch\": LV pattern \"scr@tch\" contains '@': use letters, digits, + _ . - and the wildcards * and ?",
    );
    bad(
        "[[volumes]]\nsource = \"lvm:pve",
        "[[volumes]]\nname = \"x\"\nsource = \"lvm:pve",
        "/etc/thinarc/t.toml:11:8: volume lvm:pve/vm-*-disk-*: a pattern source names each volume by its LV's VG/LV: remove name",
    );
    bad(
        "name = \"vg0/db\"\n",
        "",
        "/etc/thinarc/t.toml:4:10: volume with source \"lvm:vg0/db\": give it a name (only a pattern source, lvm:VG/LV-PATTERN or lvm:VG/POOL/LV-PATTERN, names its volumes itself)",
    );
    bad(
        "source = \"lvm:vg0/db\"\n",
        "source = \"lvm:vg0/db\"\nexclude = [\"a\"]\n",
        "/etc/thinarc/t.toml:6:11: volume vg0/db: exclude applies to a pattern source (lvm:VG/LV-PATTERN or lvm:VG/POOL/LV-PATTERN) only",
    );
    bad(
        "pre_snapshot = \"sync\"",
        "freeze = \"fs:/srv\"",
        "/etc/thinarc/t.toml:9:10: volume lvm:vg0/pool/*: freeze names the file system or guest of one LV, and a pattern selects many: give each such LV its own [[volumes]] entry (its name then wins over the pattern), or quiesce with pre_snapshot and post_snapshot ($THINARC_VOLUME says which LV)",
    );
    bad(
        "\"pve/vm-100-disk-0\"",
        "\"pve/base-100-disk-0\"",
        "/etc/thinarc/t.toml:16:12: copy to /mnt/y: volume pve/base-100-disk-0 is not configured for repository r (by name or by a source pattern)",
    );
}
