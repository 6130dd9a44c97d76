//! Running the external commands.

use std::process::{Command, Stdio};

use super::{LvInfo, LvName, LvmError, parse_lvs};

/// The package that ships `program`, for the "is it installed?" hint.
fn package(program: &str) -> &'static str {
    match program {
        p if p.starts_with("thin_") => "thin-provisioning-tools",
        "dmsetup" => "dmsetup",
        _ => "lvm2",
    }
}

/// The useful part of a tool's stderr: without usage text and lvm's leaked-descriptor
/// warnings, lines joined with "; ".
fn trim_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !(l.is_empty() || l.starts_with("File descriptor") && l.contains("leaked")))
        .collect();
    if lines.is_empty() {
        "no error message".into()
    } else {
        lines.join("; ")
    }
}

/// Builds the error of a failed command.
pub(super) fn failed(
    program: &str,
    args: &[&str],
    status: std::process::ExitStatus,
    stderr: &[u8],
) -> LvmError {
    LvmError::Command {
        argv: std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" "),
        status: status.to_string(),
        stderr: trim_stderr(stderr),
    }
}

/// Starts `program args` with stdout piped and stderr captured.
///
/// # Errors
/// [`LvmError::Spawn`].
pub(super) fn spawn(program: &str, args: &[&str]) -> Result<std::process::Child, LvmError> {
    Command::new(program)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LvmError::Spawn {
            program: program.into(),
            package: package(program),
            source,
        })
}

/// Runs `program args` to completion and returns its stdout.
///
/// # Errors
/// [`LvmError::Spawn`], or [`LvmError::Command`] for a non-zero exit (any non-zero
/// code: thin-provisioning-tools 0.9 exits 1 on error, 1.x exits 64).
pub fn run_tool(program: &str, args: &[&str]) -> Result<String, LvmError> {
    // A signal's forced exit waits for the command (see `crate::cleanup`).
    let _section = crate::cleanup::guard();
    let started = std::time::Instant::now();
    let out = spawn(program, args)?
        .wait_with_output()
        .map_err(|source| LvmError::Spawn {
            program: program.into(),
            package: package(program),
            source,
        })?;
    log_ran(program, args, started);
    if !out.status.success() {
        return Err(failed(program, args, out.status, &out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Logs (at debug level, `-v`) how long a command took: `ran PROGRAM in S s: ARGV`.
/// `bench/lvm.sh` sums these per program for its per-step breakdown.
pub(super) fn log_ran(program: &str, args: &[&str], started: std::time::Instant) {
    tracing::debug!(
        "ran {program} in {:.3} s: {}",
        started.elapsed().as_secs_f64(),
        args.join(" ")
    );
}

/// Configuration passed to the LVM commands that create, change and remove thinarc's
/// own snapshots: no metadata archive under `/etc/lvm/archive` for them. The archive
/// keeps the VG metadata from before each change for `vgcfgrestore`; a snapshot taken
/// and removed by every run would push the operator's own changes out of it (LVM
/// keeps `retain_min` files and `retain_days` days) and grow it by three files per
/// run. The current metadata backup (`/etc/lvm/backup/VG`) is still written.
pub const NO_ARCHIVE: &str = "backup { archive = 0 }";

/// The `lvs` fields thinarc reads.
const LVS_FIELDS: &str = "lv_name,vg_name,lv_uuid,lv_attr,lv_size,segtype,pool_lv,origin,thin_id,lv_tags,data_percent,metadata_percent,lv_health_status,chunk_size";

/// LVM commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lvm;

impl Lvm {
    /// `lvs` of the given LVs or VGs (`VG/LV`, `VG`, `@tag`).
    ///
    /// # Errors
    /// [`LvmError`].
    pub fn lvs(self, what: &[&str]) -> Result<Vec<LvInfo>, LvmError> {
        let mut args = vec![
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-a",
            "-o",
            LVS_FIELDS,
        ];
        args.extend_from_slice(what);
        parse_lvs(&run_tool("lvs", &args)?)
    }

    /// The LV `name`, or `None` if the VG has no such LV.
    ///
    /// # Errors
    /// [`LvmError`] (also when the VG does not exist).
    pub fn lv(self, name: &LvName) -> Result<Option<LvInfo>, LvmError> {
        Ok(self
            .lvs(&[&name.vg])?
            .into_iter()
            .find(|l| l.lv_name == name.lv))
    }

    /// Runs an LVM command (`lvcreate`, `lvchange`, `lvremove`) with `-y`.
    ///
    /// # Errors
    /// [`LvmError`].
    pub fn run(self, command: &str, args: &[&str]) -> Result<(), LvmError> {
        let mut all = vec!["-y"];
        all.extend_from_slice(args);
        run_tool(command, &all).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_trimmed() {
        let e = b"File descriptor 10 (/dev/null) leaked on lvs invocation. Parent PID 1: sh\n  no current metadata snap\nUsage: thin_delta [options]\nOptions:\n";
        assert_eq!(trim_stderr(e), "no current metadata snap");
        assert_eq!(trim_stderr(b"\n"), "no error message");
    }

    #[test]
    fn missing_program_names_the_package() {
        let e = run_tool("thin_no_such_tool", &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot run thin_no_such_tool: No such file or directory"),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("(is thin-provisioning-tools installed?)")
        );
    }
}
