//! Restore target `lvm:VG/LV`: an existing LV (with `--force`), or one created for the
//! restore (`--create`): a thin LV in `--pool`, or a plain LV of `--size`. A created
//! LV is tagged `thinarc-restored` by the `lvcreate` itself, so whole-pool discovery
//! never backs it up as a new volume ([`crate::lvm::RESTORED_TAG`]).
//!
//! A new thin LV reads zero everywhere, so only data blocks are written (writing zeros
//! would allocate pool space). That holds when the pool zeroes newly provisioned
//! chunks, or when every chunk is covered by whole blocks; otherwise, and for plain
//! and existing LVs, zero blocks are zeroed explicitly (`BLKZEROOUT`).

use std::path::PathBuf;

use crate::lvm::{LvName, Lvm, LvmError, RESTORED_TAG, dm_name};

/// How to get the target LV.
#[derive(Debug, Clone, Default)]
pub struct LvTargetOptions {
    /// Create the LV if it does not exist.
    pub create: bool,
    /// Thin pool for a new LV (`POOL` or `VG/POOL`).
    pub pool: Option<String>,
    /// Size of a new plain LV (default: the volume's size).
    pub size: Option<u64>,
    /// Overwrite an existing LV.
    pub force: bool,
}

/// An LV ready to be written.
#[derive(Debug)]
pub struct LvTarget {
    /// Its device node.
    pub path: PathBuf,
    /// Whether it reads zero everywhere (zero blocks need not be written).
    pub fresh: bool,
    created: Option<String>,
}

impl LvTarget {
    /// Finds or creates `name` for a volume of `size` bytes in blocks of `block_size`.
    ///
    /// # Errors
    /// [`LvmError`]: the LV exists without `--force`, is open, is missing without
    /// `--create`, or an LVM command failed.
    pub fn prepare(
        name: &LvName,
        size: u64,
        block_size: u32,
        opts: &LvTargetOptions,
    ) -> Result<Self, LvmError> {
        let refuse = |m: String| Err(LvmError::Unusable(m));
        let path = PathBuf::from(format!("/dev/mapper/{}", dm_name(&name.vg, &name.lv)));
        if let Some(lv) = Lvm.lv(name)? {
            if !opts.force {
                return refuse(format!(
                    "LV {name} exists: pass --force to overwrite it (its contents will be replaced)"
                ));
            }
            if lv.is_open() {
                return refuse(format!(
                    "LV {name} is open (mounted or in use): unmount or close it first"
                ));
            }
            if !lv.is_active() {
                Lvm.run("lvchange", &["-ay", "-K", &name.to_string()])?;
            }
            return Ok(LvTarget {
                path,
                fresh: false,
                created: None,
            });
        }
        if !opts.create {
            return refuse(format!(
                "LV {name} does not exist: pass --create (with --pool POOL for a thin LV, or --size SIZE)"
            ));
        }
        let lv = name.to_string();
        let fresh = match &opts.pool {
            Some(pool) => {
                let pool = match pool.split_once('/') {
                    Some((vg, p)) if vg == name.vg => p.to_string(),
                    Some((vg, _)) => {
                        return refuse(format!(
                            "--pool {pool} is in VG {vg}, the LV {name} in VG {}",
                            name.vg
                        ));
                    }
                    None => pool.clone(),
                };
                let info = Lvm
                    .lv(&LvName {
                        vg: name.vg.clone(),
                        lv: pool.clone(),
                    })?
                    .filter(|p| p.segtype == "thin-pool")
                    .ok_or_else(|| {
                        LvmError::Unusable(format!("{}/{pool} is not a thin pool", name.vg))
                    })?;
                let vsize = format!(
                    "{}b",
                    opts.size.unwrap_or(size).max(size).next_multiple_of(512)
                );
                Lvm.run(
                    "lvcreate",
                    &[
                        "-V",
                        &vsize,
                        "-T",
                        &format!("{}/{pool}", name.vg),
                        "-n",
                        &name.lv,
                        "--addtag",
                        RESTORED_TAG,
                    ],
                )?;
                info.zeroes_new_chunks()
                    || (info.chunk_size > 0 && u64::from(block_size) % info.chunk_size == 0)
            }
            None => {
                let lsize = format!(
                    "{}b",
                    opts.size.unwrap_or(size).max(size).next_multiple_of(512)
                );
                Lvm.run(
                    "lvcreate",
                    &[
                        "-L",
                        &lsize,
                        "-n",
                        &name.lv,
                        "--addtag",
                        RESTORED_TAG,
                        &name.vg,
                    ],
                )?;
                false
            }
        };
        Ok(LvTarget {
            path,
            fresh,
            created: Some(lv),
        })
    }

    /// The restore succeeded: keep a created LV.
    pub fn keep(mut self) {
        self.created = None;
    }
}

impl Drop for LvTarget {
    /// A created LV is removed when the restore fails or is interrupted.
    fn drop(&mut self) {
        let _cleanup = crate::cleanup::guard();
        if let Some(lv) = self.created.take()
            && let Err(e) = Lvm.run("lvremove", &[&lv])
        {
            eprintln!("warning: removing the LV {lv} created for the failed restore failed: {e}");
        }
    }
}
