//! The private run directory (mode 0700) that holds the backend and control sockets.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// Linux `sockaddr_un.sun_path` holds 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 107;

pub struct RunDir {
    path: PathBuf,
    /// Whether we made the directory (then we remove it whole on drop).
    created: bool,
}

impl RunDir {
    /// Uses `explicit` (created if missing; an existing one must already be private), or makes
    /// a fresh directory under `$XDG_RUNTIME_DIR` or the system temp dir.
    pub fn create(explicit: Option<&Path>) -> anyhow::Result<RunDir> {
        let (path, created) = match explicit {
            Some(p) if p.exists() => {
                let meta = fs::metadata(p).with_context(|| format!("cannot read run dir {}", p.display()))?;
                // SAFETY: geteuid has no preconditions.
                let uid = unsafe { libc::geteuid() };
                if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
                    bail!(
                        "run dir {} must be a directory you own with mode 0700 (chmod 700 it, or pass a new path)",
                        p.display()
                    );
                }
                (p.to_path_buf(), false)
            }
            Some(p) => {
                make_private_dir(p)?;
                (p.to_path_buf(), true)
            }
            None => {
                let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
                let nanos =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
                let p = base.join(format!("neutrino-{}-{nanos:08x}", std::process::id()));
                make_private_dir(&p)?;
                (p, true)
            }
        };
        let dir = RunDir { path, created };
        let longest = dir.socket("control.sock");
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            bail!("run dir path {} is too long for Unix sockets (keep it under ~90 bytes)", dir.path.display());
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `ipc://` endpoint of the workers' backend socket.
    pub fn backend_endpoint(&self) -> String {
        format!("ipc://{}", self.socket("backend.sock").display())
    }
}

/// Creates `p` itself with mode 0700, failing if it already exists (so nobody else's directory
/// is ever taken over); missing parents are created with default permissions.
fn make_private_dir(p: &Path) -> anyhow::Result<()> {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::DirBuilder::new().mode(0o700).create(p).with_context(|| format!("cannot create run dir {}", p.display()))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

impl Drop for RunDir {
    fn drop(&mut self) {
        for name in ["backend.sock", "control.sock"] {
            let _ = fs::remove_file(self.socket(name));
        }
        if self.created {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}
