//! `thinarc mount` and `umount`: an export attached to a kernel NBD device
//! (`/dev/nbdN`, through the ioctl interface of `linux/nbd.h`) and its file system
//! mounted, read-only or (with an overlay) read-write.
//!
//! The mount process serves the kernel's requests on one end of a socket pair whose
//! other end it handed to the device (`NBD_SET_SOCK`); a thread sits in `NBD_DO_IT`
//! until the device is disconnected. `umount` (or SIGINT/SIGTERM of the mount process)
//! unmounts, then disconnects the device, which ends the mount process. A mount
//! process that was killed leaves a mount whose device has no server: `umount` of the
//! mountpoint (or of the device, `thinarc umount /dev/nbdN`) still unmounts (lazily if
//! it must) and disconnects; the kernel frees a device whose server died, so the next
//! `mount` finds a free one.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use super::{Export, SECTOR, ServeError, ServeOptions, conn};
use crate::repo::{Repository, VolumeName};

/// `linux/nbd.h`: `_IO(0xab, n)`.
const NBD_SET_SOCK: u64 = 0xab00;
const NBD_SET_BLKSIZE: u64 = 0xab01;
const NBD_SET_SIZE: u64 = 0xab02;
const NBD_DO_IT: u64 = 0xab03;
const NBD_CLEAR_SOCK: u64 = 0xab04;
const NBD_CLEAR_QUE: u64 = 0xab05;
const NBD_DISCONNECT: u64 = 0xab08;
const NBD_SET_FLAGS: u64 = 0xab0a;
/// `linux/fs.h`: `_IO(0x12, 95)`, re-read the partition table.
const BLKRRPART: u64 = 0x125f;

/// Why mounting or unmounting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// Opening the export failed (boxed: it is large, and rare).
    #[error(transparent)]
    Serve(Box<ServeError>),
    /// The mountpoint is missing, not a directory, or already a mountpoint.
    #[error("mountpoint {path}: {detail}")]
    Mountpoint { path: String, detail: String },
    /// No kernel NBD device is available.
    #[error("no free NBD device: {detail}")]
    NoDevice { detail: String },
    /// The image is partitioned and no partition was named, or the named one is
    /// missing.
    #[error("{device}: {detail}")]
    Partition { device: String, detail: String },
    /// `mount` failed: no file system it knows, or a damaged one.
    #[error("cannot mount {device} on {path}: {detail}")]
    Mount {
        device: String,
        path: String,
        detail: String,
    },
    /// `umount` of something that is not a thinarc mount, or that is busy.
    #[error("{path}: {detail}")]
    Umount { path: String, detail: String },
    /// A system call on the device failed.
    #[error("{what} {device}: {source}")]
    Io {
        what: &'static str,
        device: String,
        source: std::io::Error,
    },
}

impl From<ServeError> for MountError {
    fn from(e: ServeError) -> Self {
        MountError::Serve(Box::new(e))
    }
}

/// What `mount` mounts.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The point and the overlay.
    pub serve: ServeOptions,
    /// The partition to mount, of a partitioned image.
    pub partition: Option<u32>,
}

/// A mount in place.
#[derive(Debug, Clone)]
pub struct Mounted {
    /// The NBD device.
    pub device: String,
    /// What was mounted (the device or one of its partitions).
    pub source: String,
    /// The mount options used (`ro`, `ro,noload`, `rw`).
    pub options: String,
}

fn ioctl(
    file: &File,
    request: u64,
    arg: u64,
    device: &str,
    what: &'static str,
) -> Result<(), MountError> {
    // SAFETY: the NBD ioctls take an integer argument and touch no user memory.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg as libc::c_ulong) };
    if r < 0 {
        return Err(MountError::Io {
            what,
            device: device.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The mount table entry (source) whose mount point is `path`, from
/// `/proc/self/mountinfo` (the last one: mounts stack).
fn mounted_source(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_str()?;
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mp = fields.get(4)?.replace("\\040", " ");
            let dash = fields.iter().position(|f| *f == "-")?;
            (mp == want).then(|| fields.get(dash + 2).map(|s| s.to_string()))?
        })
        .next_back()
}

/// The sysfs name of an NBD device path (`/dev/nbd3p1` → `nbd3`).
fn nbd_name(source: &str) -> Option<String> {
    let name = source.strip_prefix("/dev/")?;
    let digits = name.strip_prefix("nbd")?;
    let n: String = digits.chars().take_while(char::is_ascii_digit).collect();
    let rest = &digits[n.len()..];
    (!n.is_empty()
        && (rest.is_empty()
            || rest
                .strip_prefix('p')
                .is_some_and(|p| p.parse::<u32>().is_ok())))
    .then(|| format!("nbd{n}"))
}

/// Whether `/sys/block/NAME` has a server attached.
fn connected(name: &str) -> bool {
    Path::new(&format!("/sys/block/{name}/pid")).exists()
}

/// The first NBD device without a server, the module loaded first if needed.
fn free_device() -> Result<String, MountError> {
    if !Path::new("/sys/module/nbd").exists() {
        let _ = Command::new("modprobe").arg("nbd").output();
    }
    let mut n = 0;
    while Path::new(&format!("/sys/block/nbd{n}")).exists() {
        if !connected(&format!("nbd{n}")) {
            return Ok(format!("nbd{n}"));
        }
        n += 1;
    }
    Err(MountError::NoDevice {
        detail: if n == 0 {
            "the kernel has no nbd devices (load the module: modprobe nbd)".into()
        } else {
            format!("all {n} are in use (modprobe nbd nbds_max=N for more)")
        },
    })
}

/// Opens the NBD device at `device` for its ioctls.
fn open_device(device: &str) -> Result<File, MountError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|source| MountError::Io {
            what: "cannot open",
            device: device.to_owned(),
            source,
        })
}

/// Disconnects device `name` and clears its socket.
fn disconnect(name: &str) -> Result<(), MountError> {
    let device = format!("/dev/{name}");
    let f = open_device(&device)?;
    // Either may fail on a device already (half) torn down: what matters is the
    // state afterwards.
    let _ = ioctl(&f, NBD_DISCONNECT, 0, &device, "disconnect");
    let _ = ioctl(&f, NBD_CLEAR_SOCK, 0, &device, "clear socket");
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Unmounts `path` (lazily if it is busy and `lazy`).
fn unmount(path: &Path, lazy: bool) -> Result<(), String> {
    match run(Command::new("umount").arg(path)) {
        Err(_) if lazy => run(Command::new("umount").arg("-l").arg(path)),
        r => r,
    }
}

/// Mounts the point `opts.serve.at` of `volume` on `mountpoint` and serves it until
/// `stop` resolves or the device is disconnected (`thinarc umount`); `mounted` is
/// called once the file system is mounted.
///
/// # Errors
/// [`MountError`]; whatever was set up is undone first.
pub async fn mount(
    repo: &Repository,
    volume: &VolumeName,
    opts: &MountOptions,
    mountpoint: &Path,
    stop: impl Future<Output = ()>,
    mounted: impl FnOnce(&Mounted),
) -> Result<(), MountError> {
    let bad_mp = |detail: &str| MountError::Mountpoint {
        path: mountpoint.display().to_string(),
        detail: detail.to_owned(),
    };
    let mountpoint = std::fs::canonicalize(mountpoint).map_err(|e| bad_mp(&format!("{e}")))?;
    if !mountpoint.is_dir() {
        return Err(bad_mp("is not a directory"));
    }
    if let Some(source) = mounted_source(&mountpoint) {
        return Err(bad_mp(&format!(
            "is in use: {source} is mounted there (unmount it first)"
        )));
    }
    // The device first: without one, no overlay is created.
    let name = free_device()?;
    let device = format!("/dev/{name}");
    let dev = open_device(&device)?;
    let export = Arc::new(Export::open(repo, volume, &opts.serve).await?);
    let (kernel, ours) =
        std::os::unix::net::UnixStream::pair().map_err(|source| MountError::Io {
            what: "cannot make a socket pair for",
            device: device.clone(),
            source,
        })?;
    let flags = u64::from(conn::transmission_flags(&export));
    ioctl(
        &dev,
        NBD_SET_BLKSIZE,
        SECTOR,
        &device,
        "cannot set the block size of",
    )?;
    ioctl(
        &dev,
        NBD_SET_SIZE,
        export.device_size(),
        &device,
        "cannot set the size of",
    )?;
    ioctl(
        &dev,
        NBD_SET_FLAGS,
        flags,
        &device,
        "cannot set the flags of",
    )?;
    ioctl(
        &dev,
        NBD_SET_SOCK,
        kernel.as_raw_fd() as u64,
        &device,
        "cannot attach",
    )?;
    // The kernel holds its own reference to the socket now.
    let kernel_fd = kernel.into_raw_fd();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("{name}-do-it"))
        .spawn(move || {
            // SAFETY: as above; NBD_DO_IT blocks until the device is disconnected.
            let r = unsafe { libc::ioctl(dev.as_raw_fd(), NBD_DO_IT as _, 0 as libc::c_ulong) };
            let _ = r;
            // SAFETY: same descriptor, integer arguments.
            unsafe {
                libc::ioctl(dev.as_raw_fd(), NBD_CLEAR_QUE as _, 0 as libc::c_ulong);
                libc::ioctl(dev.as_raw_fd(), NBD_CLEAR_SOCK as _, 0 as libc::c_ulong);
                libc::close(kernel_fd);
            }
            let _ = done_tx.send(());
        })
        .map_err(|source| MountError::Io {
            what: "cannot start the thread of",
            device: device.clone(),
            source,
        })?;
    ours.set_nonblocking(true)
        .map_err(|source| MountError::Io {
            what: "cannot serve",
            device: device.clone(),
            source,
        })?;
    let stream = tokio::net::UnixStream::from_std(ours).map_err(|source| MountError::Io {
        what: "cannot serve",
        device: device.clone(),
        source,
    })?;
    let served = tokio::spawn(conn::handle_kernel(Box::new(stream), export.clone()));

    let result = async {
        let source = wait_for_source(&name, opts.partition).await?;
        let options = mount_fs(&source, &mountpoint, export.writable())?;
        mounted(&Mounted {
            device: device.clone(),
            source: source.clone(),
            options,
        });
        Ok::<_, MountError>(())
    }
    .await;
    let mut done_rx = done_rx;
    let mut disconnected = false;
    if result.is_ok() {
        tokio::pin!(stop);
        tokio::select! {
            () = &mut stop => {}
            _ = &mut done_rx => disconnected = true,
        }
    }
    // Unmount (the device may be gone already: then lazily), disconnect, wait for the
    // kernel to let go, save the overlay.
    if mounted_source(&mountpoint).is_some()
        && let Err(e) = unmount(&mountpoint, true)
    {
        tracing::warn!("unmounting {}: {e}", mountpoint.display());
    }
    disconnect(&name)?;
    if !disconnected {
        let _ = tokio::time::timeout(Duration::from_secs(10), done_rx).await;
    }
    served.abort();
    export.flush().await.map_err(ServeError::from)?;
    result
}

/// How long the kernel may take to run a device once it has its socket: seconds on
/// a loaded host or an emulated CPU.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits for the device to start and its partitions to show; the path to mount.
///
/// # Errors
/// [`MountError::Io`] when the device does not run within [`START_TIMEOUT`];
/// [`MountError::Partition`] for a partitioned image and no (or a missing) partition.
async fn wait_for_source(name: &str, partition: Option<u32>) -> Result<String, MountError> {
    let device = format!("/dev/{name}");
    // Until the device runs, its partitions cannot be scanned: looking earlier would
    // take a partitioned image for a file system.
    let asked = std::time::Instant::now();
    while !connected(name) {
        if asked.elapsed() > START_TIMEOUT {
            return Err(MountError::Io {
                what: "the kernel did not start",
                device,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("not running after {} s", START_TIMEOUT.as_secs()),
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Opening the device makes the kernel scan its partition table, but not always
    // on a device reused right after a disconnect: BLKRRPART rescans it, and
    // returns once the partitions are added. It fails while something else (udev's
    // probe) holds the device busy: tried again for a while.
    let rescan = || {
        File::open(&device).is_ok_and(|dev| {
            ioctl(
                &dev,
                BLKRRPART,
                0,
                &device,
                "cannot rescan the partitions of",
            )
            .is_ok()
        })
    };
    for _ in 0..40 {
        if rescan() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let parts = |name: &str| -> Vec<String> {
        let mut p: Vec<String> = std::fs::read_dir(format!("/sys/block/{name}"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|f| f.starts_with(&format!("{name}p")))
            .collect();
        p.sort();
        p
    };
    let mut found = parts(name);
    // A partition named and not there yet: the kernel may still be adding them, or
    // its scan read the device before the export answered (a loaded host): rescanned
    // every second until START_TIMEOUT.
    if let Some(n) = partition {
        let mut tries = 0u32;
        while !found.contains(&format!("{name}p{n}")) && asked.elapsed() < START_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tries += 1;
            if tries.is_multiple_of(20) {
                rescan();
            }
            found = parts(name);
        }
    }
    match (partition, found.is_empty()) {
        (None, true) => Ok(device),
        (None, false) => Err(MountError::Partition {
            device,
            detail: format!(
                "the image is partitioned ({}): name one with --partition N",
                found
                    .iter()
                    .map(|p| {
                        let sectors: u64 =
                            std::fs::read_to_string(format!("/sys/block/{name}/{p}/size"))
                                .ok()
                                .and_then(|s| s.trim().parse().ok())
                                .unwrap_or(0);
                        format!(
                            "{} {} MiB",
                            p.trim_start_matches(name).trim_start_matches('p'),
                            (sectors * 512) >> 20
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
        (Some(n), _) => {
            let p = format!("{name}p{n}");
            if found.contains(&p) {
                Ok(format!("/dev/{p}"))
            } else {
                Err(MountError::Partition {
                    device,
                    detail: format!(
                        "has no partition {n} (it has: {})",
                        if found.is_empty() {
                            "none".into()
                        } else {
                            found.join(" ")
                        }
                    ),
                })
            }
        }
    }
}

/// Mounts `source` on `mountpoint`: read-only (a file system whose journal needs
/// replaying is mounted without replaying it: `noload` for ext3/4, `norecovery` for
/// XFS), or read-write on an overlay. Returns the options used.
fn mount_fs(source: &str, mountpoint: &Path, writable: bool) -> Result<String, MountError> {
    let tries: &[&str] = if writable {
        &["rw"]
    } else {
        &["ro", "ro,noload", "ro,norecovery"]
    };
    let mut first = None;
    for o in tries {
        match run(Command::new("mount")
            .args(["-o", o, source])
            .arg(mountpoint))
        {
            Ok(()) => return Ok((*o).to_owned()),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(MountError::Mount {
        device: source.to_owned(),
        path: mountpoint.display().to_string(),
        detail: format!(
            "{} (does the image hold a file system this kernel knows?)",
            first.unwrap_or_default()
        ),
    })
}

/// Unmounts a thinarc mount and disconnects its device: `target` is the mountpoint,
/// or an NBD device (`/dev/nbdN`) left by a mount that was killed. Returns the device
/// disconnected.
///
/// # Errors
/// [`MountError::Umount`] for a mountpoint that is busy or not a thinarc mount.
pub fn umount(target: &Path) -> Result<String, MountError> {
    let fail = |detail: String| MountError::Umount {
        path: target.display().to_string(),
        detail,
    };
    let canonical = std::fs::canonicalize(target).map_err(|e| fail(e.to_string()))?;
    let text = canonical.display().to_string();
    if let Some(name) = nbd_name(&text) {
        // A device: unmount whatever of it is mounted, then disconnect.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in info.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-");
            let source = dash.and_then(|d| fields.get(d + 2)).copied().unwrap_or("");
            if nbd_name(source).as_deref() == Some(&name) {
                let mp = fields.get(4).copied().unwrap_or("").replace("\\040", " ");
                unmount(Path::new(&mp), true).map_err(fail)?;
            }
        }
        disconnect(&name)?;
        return Ok(format!("/dev/{name}"));
    }
    let Some(source) = mounted_source(&canonical) else {
        return Err(fail(
            "is not mounted (a device left by a killed mount: thinarc umount /dev/nbdN)".into(),
        ));
    };
    let Some(name) = nbd_name(&source) else {
        return Err(fail(format!(
            "{source} is mounted there, not an NBD device of thinarc"
        )));
    };
    unmount(&canonical, !connected(&name))
        .map_err(|e| fail(format!("{e} (close what uses it and try again)")))?;
    disconnect(&name)?;
    Ok(format!("/dev/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbd_device_names() {
        assert_eq!(nbd_name("/dev/nbd0").as_deref(), Some("nbd0"));
        assert_eq!(nbd_name("/dev/nbd12p3").as_deref(), Some("nbd12"));
        assert_eq!(nbd_name("/dev/nbd"), None);
        assert_eq!(nbd_name("/dev/nbd1x"), None);
        assert_eq!(nbd_name("/dev/sda1"), None);
    }

    #[test]
    fn a_path_that_is_no_mountpoint_has_no_source() {
        assert_eq!(mounted_source(Path::new("/nonexistent/thinarc")), None);
        assert!(mounted_source(Path::new("/")).is_some());
    }

    #[test]
    fn ioctl_numbers_are_linux_nbd_h() {
        // _IO(0xab, n) = (0xab << 8) | n
        assert_eq!(
            (NBD_SET_SOCK, NBD_DO_IT, NBD_DISCONNECT, NBD_SET_FLAGS),
            (
                0xab << 8,
                (0xab << 8) | 3,
                (0xab << 8) | 8,
                (0xab << 8) | 10
            )
        );
        assert_eq!(BLKRRPART, (0x12 << 8) | 95);
    }
}
