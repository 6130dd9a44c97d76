//! The floors of `src/`: imports point down. Every top-level module has a floor and the
//! list of crate modules it may import ([`ROOMS`]); the same list opens its `mod.rs`
//! (or `NAME.rs`). These tests read `src/**/*.rs` (comments and string literals left
//! out), collect each module's `crate::X` references (`thinarc::X` in the binary) and
//! fail, naming file and line, when a module imports one it must not, when a module has
//! no floor, when the table itself points up or goes round in a circle, when the library
//! names `clap` or `crate::cli`, or when a module's opening comment and the table
//! disagree. `farm-studio look` draws the same graph file by file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What a module may import from the crate.
enum May {
    /// These modules, and no other.
    Only(&'static [&'static str]),
    /// Any module on a lower floor (the top of the house: it assembles the rest).
    AnyBelow,
}
use May::{AnyBelow, Only};

/// A top-level module of `src/`, its floor (0 is the ground) and what it may import.
struct Room {
    name: &'static str,
    floor: u8,
    may: May,
}

const fn room(name: &'static str, floor: u8, may: May) -> Room {
    Room { name, floor, may }
}

/// The floor of the commands: none of them imports another.
const COMMANDS: u8 = 4;

/// The floors, from the ground up. A module on a floor may import only what its list
/// names: modules below it and, where listed, a neighbour on its own floor (never a
/// command). Change a list together with the module's opening comment.
const ROOMS: &[Room] = &[
    // Ground: no I/O of the repository, nothing above them.
    room("format", 0, Only(&["quote"])),
    room("quote", 0, Only(&[])),
    room("size", 0, Only(&["quote"])),
    room("cleanup", 0, Only(&[])),
    room("logging", 0, Only(&[])),
    room("progress", 0, Only(&[])),
    room("nbd", 0, Only(&[])),
    room("buffers", 0, Only(&[])),
    // Tools: the LVM commands, rate limits.
    room("lvm", 1, Only(&["cleanup", "quote"])),
    room("throttle", 1, Only(&["quote", "size"])),
    room("hook", 1, Only(&["cleanup", "quote"])),
    // The nouns: where archives live, where blocks come from, where they go.
    room("repo", 2, Only(&["format", "quote", "throttle"])),
    room(
        "source",
        2,
        Only(&[
            "buffers", "cleanup", "format", "hook", "lvm", "progress", "quote", "throttle",
        ]),
    ),
    room("target", 2, Only(&["cleanup", "lvm", "repo", "source"])),
    // Reading and rebuilding a point: what every reader of points shares.
    room("point", 3, Only(&["buffers", "format", "repo"])),
    // The commands.
    room(
        "backup",
        COMMANDS,
        Only(&["format", "lvm", "progress", "repo", "source", "throttle"]),
    ),
    room(
        "restore",
        COMMANDS,
        Only(&[
            "format", "lvm", "point", "progress", "repo", "source", "target",
        ]),
    ),
    room("prune", COMMANDS, Only(&["format", "point", "repo"])),
    room(
        "verify",
        COMMANDS,
        Only(&["format", "lvm", "point", "progress", "repo", "source"]),
    ),
    room(
        "copy",
        COMMANDS,
        Only(&["format", "point", "progress", "repo"]),
    ),
    room("serve", COMMANDS, Only(&["nbd", "point", "repo"])),
    room(
        "status",
        COMMANDS,
        Only(&["format", "lvm", "repo", "source"]),
    ),
    // What the nightly job is told to do.
    room(
        "config",
        5,
        Only(&[
            "format", "lvm", "prune", "quote", "repo", "size", "source", "throttle",
        ]),
    ),
    // The nightly job (to come from `src/cli/run.rs`), then the binary.
    room("nightly", 6, AnyBelow),
    room("cli", 7, AnyBelow),
    room("main", 8, AnyBelow),
];

/// Modules of the binary: they name the library as `thinarc::X`.
const BINARY: &[&str] = &["main", "cli"];

impl Room {
    fn may_import(&self, to: &Room) -> bool {
        match self.may {
            Only(names) => names.contains(&to.name),
            AnyBelow => to.floor < self.floor,
        }
    }

    fn allowed(&self) -> String {
        match self.may {
            Only([]) => "nothing of the crate".to_owned(),
            Only(names) => names.join(", "),
            AnyBelow => "any module on a lower floor".to_owned(),
        }
    }

    /// The file that opens the module, if it exists yet.
    fn root_file(&self) -> Option<PathBuf> {
        let src = src_dir();
        let candidates = match self.name {
            "main" => vec![src.join("main.rs")],
            name => vec![
                src.join(name).join("mod.rs"),
                src.join(format!("{name}.rs")),
            ],
        };
        candidates.into_iter().find(|p| p.is_file())
    }
}

fn rooms() -> BTreeMap<&'static str, &'static Room> {
    ROOMS.iter().map(|r| (r.name, r)).collect()
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// One `.rs` file of `src/`: its path from `src/`, its module and its code.
struct SourceFile {
    rel: String,
    module: String,
    code: String,
}

/// Every `.rs` file of `src/` but `lib.rs` (the crate root declares the modules).
fn source_files() -> Vec<SourceFile> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = src_dir();
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    paths.sort();
    assert!(
        paths.len() > 20,
        "found only {} files in {}",
        paths.len(),
        src.display()
    );
    paths
        .into_iter()
        .filter_map(|path| {
            let rel = path
                .strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            let first = rel.split('/').next().expect("a component");
            let module = first.strip_suffix(".rs").unwrap_or(first).to_owned();
            (module != "lib").then(|| {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                SourceFile {
                    rel: format!("src/{rel}"),
                    module,
                    code: code_only(&text),
                }
            })
        })
        .collect()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `src` with its comments, string literals and char literals blanked out (newlines
/// kept, so line numbers stay), so that a path in a doc example or a message is not
/// taken for an import.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            Some(i + rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len()))
        } else if rest.starts_with(b"/*") {
            Some(block_comment_end(b, i))
        } else if rest[0] == b'"' {
            Some(string_end(b, i + 1))
        } else if rest[0] == b'\'' {
            char_literal_end(b, i)
        } else {
            raw_string_end(b, i)
        };
        match end {
            Some(end) => {
                out.extend(
                    b[i..end]
                        .iter()
                        .map(|&c| if c == b'\n' { b'\n' } else { b' ' }),
                );
                i = end;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("blanking keeps UTF-8")
}

/// The end of a (nested) block comment starting at `i`.
fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// The end of a string whose contents start at `i` (after its `"`).
fn string_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of a char literal at `i`, or `None` for a lifetime (`'a`).
fn char_literal_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i + 1) == Some(&b'\\') {
        let close = b[i + 3..].iter().position(|&c| c == b'\'')?;
        return Some(i + 3 + close + 1);
    }
    let len = match *b.get(i + 1)? {
        c if c < 0x80 => 1,
        c if c >= 0xF0 => 4,
        c if c >= 0xE0 => 3,
        _ => 2,
    };
    (b.get(i + 1 + len) == Some(&b'\'')).then_some(i + 2 + len)
}

/// The end of a raw string (`r"…"`, `br#"…"#`) starting at `i`, if one does.
fn raw_string_end(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && is_ident(b[i - 1]) {
        return None;
    }
    let mut j = i + usize::from(b[i] == b'b');
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    j += hashes;
    if b.get(j) != Some(&b'"') {
        return None;
    }
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let len = b[j + 1..]
        .windows(close.len())
        .position(|w| w == close.as_slice())?;
    Some(j + 1 + len + close.len())
}

/// The crate modules `code` names after `prefix` (`crate::` or `thinarc::`), with the
/// line of each: `crate::repo::X` and `use crate::{repo::X, source::Y}` alike.
fn references(code: &str, prefix: &str) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let line_of = |pos: usize| 1 + b[..pos].iter().filter(|&&c| c == b'\n').count();
    let ident_at = |pos: usize| {
        let s = &code[pos..];
        let s = s.trim_start();
        let len = s.bytes().take_while(|&c| is_ident(c)).count();
        s[..len].to_owned()
    };
    let mut out = Vec::new();
    for (pos, _) in code.match_indices(prefix) {
        if pos > 0 && (is_ident(b[pos - 1]) || b[pos - 1] == b':') {
            continue;
        }
        let after = pos + prefix.len();
        let line = line_of(pos);
        if code[after..].trim_start().starts_with('{') {
            let open = after + code[after..].find('{').expect("a brace");
            let mut depth = 0;
            let mut item_start = open + 1;
            for (k, c) in code[open..].char_indices() {
                let k = open + k;
                match c {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        let name = ident_at(item_start);
                        if !name.is_empty() {
                            out.push((line, name));
                        }
                        item_start = k + 1;
                        if c == '}' {
                            break;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
        } else {
            out.push((line, ident_at(after)));
        }
    }
    out
}

/// Every crate module each file imports, once per file, with its first line.
fn imports(file: &SourceFile) -> BTreeMap<String, usize> {
    let prefix = if BINARY.contains(&file.module.as_str()) {
        "thinarc::"
    } else {
        "crate::"
    };
    let mut out = BTreeMap::new();
    for (line, name) in references(&file.code, prefix) {
        if name != file.module {
            out.entry(name).or_insert(line);
        }
    }
    out
}

#[test]
fn reader_sees_only_code() {
    let code = code_only(
        "use crate::{repo::{A, B}, source::C};\n\
         /* crate::backup /* nested */ crate::copy */ let s = \"crate::verify \\\" crate::cli\";\n\
         let r = r#\"crate::prune\"#; let c = '\\''; let q = '\"'; fn f<'a>(x: &'a u8) { crate::lvm::W }\n\
         // crate::status\n\
         let t = $crate::target::X; let u = crate::point::Y; crate::format::Z",
    );
    let found: Vec<(usize, String)> = references(&code, "crate::");
    let expect = [
        (1, "repo"),
        (1, "source"),
        (3, "lvm"),
        (5, "target"),
        (5, "point"),
        (5, "format"),
    ];
    assert_eq!(
        found,
        expect.map(|(l, n)| (l, n.to_owned())).to_vec(),
        "in {code:?}"
    );
}

#[test]
fn imports_point_down() {
    let rooms = rooms();
    let mut problems = Vec::new();
    let mut unplaced = BTreeSet::new();
    let mut seen = 0;
    for file in source_files() {
        let Some(from) = rooms.get(file.module.as_str()) else {
            if unplaced.insert(file.module.clone()) {
                problems.push(format!(
                    "{}: module `{}` has no floor: give it one in ROOMS (tests/it/floors.rs), \
                     with what it may import, and open it with the same sentence",
                    file.rel, file.module
                ));
            }
            continue;
        };
        for (name, line) in imports(&file) {
            seen += 1;
            let rel = &file.rel;
            match rooms.get(name.as_str()) {
                None => problems.push(format!(
                    "{rel}:{line}: `{}` imports `{name}`, which is no module with a floor",
                    from.name
                )),
                Some(to) if !from.may_import(to) => problems.push(format!(
                    "{rel}:{line}: `{}` (floor {}) imports `{name}` (floor {}), which it must \
                     not; it may import {}",
                    from.name,
                    from.floor,
                    to.floor,
                    from.allowed()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        seen > 100,
        "found only {seen} imports in src/: is the reader broken?"
    );
    assert!(
        problems.is_empty(),
        "imports must point down the floors (README, Development). Move what both sides \
         need down to the floor of its noun; if an import belongs, change ROOMS in \
         tests/it/floors.rs and the module's opening comment together.\n{}",
        problems.join("\n")
    );
}

#[test]
fn library_has_no_clap_and_no_cli() {
    let mut problems = Vec::new();
    for file in source_files() {
        if BINARY.contains(&file.module.as_str()) {
            continue;
        }
        for (n, line) in file.code.lines().enumerate() {
            let names_clap = line.match_indices("clap").any(|(pos, _)| {
                let b = line.as_bytes();
                (pos == 0 || !is_ident(b[pos - 1])) && b.get(pos + 4).is_none_or(|&c| !is_ident(c))
            });
            if names_clap {
                problems.push(format!("{}:{}: names `clap`", file.rel, n + 1));
            }
        }
        if let Some(line) = imports(&file).get("cli") {
            problems.push(format!("{}:{line}: imports `crate::cli`", file.rel));
        }
    }
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("src/lib.rs");
    if code_only(&lib)
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0] == "mod" && w[1].trim_end_matches(';') == "cli")
    {
        problems.push("src/lib.rs: declares `mod cli`".to_owned());
    }
    assert!(
        problems.is_empty(),
        "the library must not know the command line: argument parsing and printing live in \
         the binary (src/main.rs, src/cli/)\n{}",
        problems.join("\n")
    );
}

#[test]
fn table_has_no_upward_arrow_and_no_circle() {
    let rooms = rooms();
    assert_eq!(rooms.len(), ROOMS.len(), "a module is in ROOMS twice");
    let mut problems = Vec::new();
    for from in ROOMS {
        let Only(names) = from.may else { continue };
        for name in names {
            match rooms.get(name) {
                None => problems.push(format!(
                    "`{}` may import `{name}`, which has no floor",
                    from.name
                )),
                Some(to) if to.floor > from.floor => problems.push(format!(
                    "`{}` (floor {}) may import `{name}` (floor {}): an upward arrow",
                    from.name, from.floor, to.floor
                )),
                Some(to) if to.floor == from.floor && from.floor == COMMANDS => problems.push(
                    format!("command `{}` may import command `{name}`", from.name),
                ),
                Some(_) => {}
            }
        }
    }
    // Only a neighbour on one's own floor can close a circle: follow those arrows.
    fn circle(
        rooms: &BTreeMap<&'static str, &'static Room>,
        path: &mut Vec<&'static str>,
    ) -> Option<Vec<&'static str>> {
        let from = rooms[path.last().expect("a start")];
        let Only(names) = from.may else { return None };
        for name in names {
            let Some(to) = rooms.get(name) else { continue };
            if to.floor != from.floor {
                continue;
            }
            if path.contains(&to.name) {
                let mut found = path.clone();
                found.push(to.name);
                return Some(found);
            }
            path.push(to.name);
            if let Some(found) = circle(rooms, path) {
                return Some(found);
            }
            path.pop();
        }
        None
    }
    for r in ROOMS {
        if let Some(found) = circle(&rooms, &mut vec![r.name]) {
            problems.push(format!("a circle: {}", found.join(" → ")));
            break;
        }
    }
    assert!(
        problems.is_empty(),
        "ROOMS breaks the floors:\n{}",
        problems.join("\n")
    );
}

/// The crate modules a module's opening comment says it imports: the sentence
/// "Imports only `a`, `b` …" (up to `;` or `.`), "Imports nothing of the crate", or
/// "Imports any module of the library".
fn stated_imports(opening: &str) -> Option<Result<BTreeSet<String>, ()>> {
    if opening.contains("Imports nothing of the crate") {
        return Some(Ok(BTreeSet::new()));
    }
    if opening.contains("Imports any module of the library") {
        return Some(Err(()));
    }
    let (_, rest) = opening.split_once("Imports only ")?;
    let sentence = &rest[..rest.find([';', '.']).unwrap_or(rest.len())];
    Some(Ok(sentence
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()))
}

#[test]
fn module_comments_state_the_floor() {
    let mut problems = Vec::new();
    let mut read = 0;
    for room in ROOMS {
        let Some(path) = room.root_file() else {
            continue;
        };
        read += 1;
        let text = std::fs::read_to_string(&path).expect("module file");
        let opening: Vec<&str> = text
            .lines()
            .map_while(|l| l.strip_prefix("//!"))
            .map(str::trim)
            .collect();
        let opening = opening.join(" ");
        let rel = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .expect("in the crate")
            .display();
        let table = match room.may {
            Only(names) => Ok(names
                .iter()
                .map(|n| (*n).to_owned())
                .collect::<BTreeSet<_>>()),
            AnyBelow => Err(()),
        };
        match stated_imports(&opening) {
            None => problems.push(format!(
                "{rel}: its opening `//!` comment does not say what it imports (\"Imports only \
                 `a`, `b`; …\", \"Imports nothing of the crate\" or \"Imports any module of \
                 the library\")"
            )),
            Some(stated) if stated != table => problems.push(format!(
                "{rel}: its opening comment says it imports {}, ROOMS says {}",
                match stated {
                    Ok(s) => format!("{s:?}"),
                    Err(()) => "any module of the library".to_owned(),
                },
                room.allowed()
            )),
            Some(_) => {}
        }
    }
    assert!(
        read > 20,
        "read the opening comments of only {read} modules"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
