//! Where a server listens when nobody says: one socket per user, in a
//! directory only that user can enter.
//!
//! ```text
//! $ARROWPOOL_SOCKET                          if set: exactly that path
//! $XDG_RUNTIME_DIR/arrowpool/arrowpool.sock  if XDG_RUNTIME_DIR names a directory (systemd makes it per user, 0700)
//! /tmp/arrowpool-<uid>/arrowpool.sock        otherwise
//! ```
//! The directory is created with mode 0700 when missing, and refused unless it
//! is a real directory (not a symlink) owned by this user that no one else
//! may enter: a predictable name in world-writable `/tmp` could otherwise be
//! made first by another user, who would then own every client's socket.
//! The Python client (`arrowpool.default_socket`) follows the same rule.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Environment variable naming the socket path outright.
pub const SOCKET_ENV: &str = "ARROWPOOL_SOCKET";
/// The socket's file name in the per-user directory.
pub const SOCKET_NAME: &str = "arrowpool.sock";

/// The default socket path (see the module doc); creates and checks the
/// per-user directory.
pub fn default_socket() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    Ok(private_dir()?.join(SOCKET_NAME))
}

/// The per-user directory of the default socket, created if missing.
pub fn private_dir() -> io::Result<PathBuf> {
    let uid = rustix::process::geteuid().as_raw();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(x) if x.is_absolute() && x.is_dir() => x.join("arrowpool"),
        _ => std::env::temp_dir().join(format!("arrowpool-{uid}")),
    };
    ensure_private(&dir, uid)?;
    Ok(dir)
}

/// Creates `dir` (mode 0700) if missing; then it must be a directory, not a
/// symlink, owned by `uid`, with no permissions for group or others.
pub fn ensure_private(dir: &Path, uid: u32) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", dir.display()),
            ))
        }
    }
    let m = std::fs::symlink_metadata(dir)?;
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing {} for the socket: {why}; remove it, or set {SOCKET_ENV} to a path of your own",
                dir.display()
            ),
        ))
    };
    if !m.file_type().is_dir() {
        return refuse("it is not a directory".into());
    }
    if m.uid() != uid {
        return refuse(format!("it belongs to uid {}, not {uid}", m.uid()));
    }
    if m.mode() & 0o077 != 0 {
        return refuse(format!(
            "mode {:o} lets others in (want 700)",
            m.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_directory_is_made_and_checked() {
        let uid = rustix::process::geteuid().as_raw();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("arrowpool-test");
        ensure_private(&dir, uid).unwrap();
        let m = std::fs::metadata(&dir).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        // Again: it exists and is fine.
        ensure_private(&dir, uid).unwrap();
        // Open to others: refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = ensure_private(&dir, uid).unwrap_err();
        assert!(e.to_string().contains("lets others in"), "{e}");
        // Someone else's: refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = ensure_private(&dir, uid + 1).unwrap_err();
        assert!(e.to_string().contains("belongs to uid"), "{e}");
        // A symlink to a good directory: refused.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = ensure_private(&link, uid).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
