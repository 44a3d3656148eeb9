//! A small tmpfs for tests of a full disk (root, `mount`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the test; unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`8m`); `None` where mounting is impossible.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if ok { Some(Tmpfs { dir }) } else { None }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Tmpfs {
    /// [`Tmpfs::mount`], or a printed skip; fails instead when `GURUCONNECT_REQUIRE_TMPFS`
    /// is set (CI runs as root and must not skip).
    pub fn mount_or_skip(size: &str) -> Option<Tmpfs> {
        let tmpfs = Tmpfs::mount(size);
        if tmpfs.is_none() {
            assert!(
                std::env::var_os("GURUCONNECT_REQUIRE_TMPFS").is_none(),
                "GURUCONNECT_REQUIRE_TMPFS is set but a tmpfs could not be mounted"
            );
            println!("skipped: cannot mount a tmpfs here (needs root)");
        }
        tmpfs
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a panicking test's server may still hold the database open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem under `dir` until a write fails; returns the filler's path.
#[allow(dead_code)] // not every test that mounts one fills it
pub fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let block = vec![0x5a_u8; 64 * 1024];
    while file.write_all(&block).and_then(|()| file.flush()).is_ok() {}
    // Byte-sized leftovers too, so no page of the database can grow.
    while file.write_all(&[0x5a]).is_ok() {}
    let _ = file.sync_all();
    path
}
