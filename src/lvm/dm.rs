//! `dmsetup status` of a thin pool, and device-mapper names.

use super::LvmError;

/// The device-mapper name of `VG/LV` (`-` doubled in each part, joined by `-`).
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// The pool's I/O mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// Normal.
    ReadWrite,
    /// Metadata switched to read-only (after an error).
    ReadOnly,
    /// Data space exhausted: writes queue or fail.
    OutOfDataSpace,
}

/// The parts of a thin pool's `dmsetup status` line that thinarc checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    /// The pool failed (`Fail`): nothing else is reported.
    pub failed: bool,
    /// I/O mode.
    pub mode: PoolMode,
    /// Root block of a reserved metadata snapshot (field 7), `None` for `-`.
    pub held_metadata_root: Option<u64>,
    /// The metadata needs `thin_check` before the pool is used again.
    pub needs_check: bool,
}

/// Parses `dmsetup status VG-POOL-tpool`:
/// `0 LEN thin-pool TRANSACTION META_USED/META_TOTAL DATA_USED/DATA_TOTAL HELD_ROOT
/// ro|rw|out_of_data_space [no_]discard_passdown error|queue_if_no_space
/// needs_check|- [METADATA_LOW_WATERMARK]`, or `0 LEN thin-pool Fail`.
///
/// # Errors
/// [`LvmError::Parse`] for any other line.
pub fn parse_pool_status(line: &str) -> Result<PoolStatus, LvmError> {
    let what = "dmsetup status";
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.get(2) != Some(&"thin-pool") {
        return Err(LvmError::parse(
            what,
            format!("not a thin-pool status: {line:?}"),
        ));
    }
    if matches!(f.get(3), Some(&"Fail") | Some(&"Error")) {
        return Ok(PoolStatus {
            failed: true,
            mode: PoolMode::ReadOnly,
            held_metadata_root: None,
            needs_check: false,
        });
    }
    if f.len() < 11 {
        return Err(LvmError::parse(
            what,
            format!("{} fields, expected at least 11: {line:?}", f.len()),
        ));
    }
    let held_metadata_root = match f[6] {
        "-" => None,
        n => Some(n.parse().map_err(|_| {
            LvmError::parse(what, format!("held metadata root {n:?} is not a number"))
        })?),
    };
    let mode = match f[7] {
        "rw" => PoolMode::ReadWrite,
        "ro" => PoolMode::ReadOnly,
        "out_of_data_space" => PoolMode::OutOfDataSpace,
        m => return Err(LvmError::parse(what, format!("unknown pool mode {m:?}"))),
    };
    Ok(PoolStatus {
        failed: false,
        mode,
        held_metadata_root,
        needs_check: f[10] == "needs_check",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_names_double_dashes() {
        assert_eq!(dm_name("vg", "pool-tpool"), "vg-pool--tpool");
        assert_eq!(dm_name("my-vg", "thin_1"), "my--vg-thin_1");
    }

    #[test]
    fn parses_pool_status() {
        // As printed by Debian 12's kernel 6.1 in the VM, before and after
        // reserve_metadata_snap.
        let ok = parse_pool_status(
            "0 1048576 thin-pool 2 112/1024 32/8192 - rw discard_passdown queue_if_no_space - 256 ",
        )
        .unwrap();
        assert_eq!(
            ok,
            PoolStatus {
                failed: false,
                mode: PoolMode::ReadWrite,
                held_metadata_root: None,
                needs_check: false
            }
        );
        let held = parse_pool_status("0 1048576 thin-pool 2 113/1024 32/8192 26 rw discard_passdown queue_if_no_space - 256 ").unwrap();
        assert_eq!(held.held_metadata_root, Some(26));
        let bad = parse_pool_status("0 1048576 thin-pool 3 12/4096 40/8192 - out_of_data_space discard_passdown error_if_no_space needs_check 1024").unwrap();
        assert_eq!(bad.mode, PoolMode::OutOfDataSpace);
        assert!(bad.needs_check);
        assert!(
            parse_pool_status("0 1048576 thin-pool Fail")
                .unwrap()
                .failed
        );
        assert_eq!(
            parse_pool_status("0 2048 linear").unwrap_err().to_string(),
            "cannot parse the output of dmsetup status: not a thin-pool status: \"0 2048 linear\""
        );
        assert!(parse_pool_status("0 1 thin-pool 1 1/2 1/2 - weird a b -").is_err());
    }
}
