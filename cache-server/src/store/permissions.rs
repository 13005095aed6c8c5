//! Who may read a data dir: only the server's own user.
//!
//! The index names every tenant's entries and holds token hashes; the blobs are their images. The
//! binary sets its umask to `077`, so everything it creates is `0600`/`0700`; [`secure`] then
//! tightens what older versions left readable (the database and its WAL, the `blobs/`, `tmp/` and
//! `quarantine/` dirs, below which nothing is reachable without passing through them) and warns
//! about a data dir others may enter, which is the operator's to change, not the server's.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::error::ServerError;

/// Mode bits for group and others.
const SHARED_BITS: u32 = 0o077;

/// Creates `data_dir` (0700) when missing, tightens the server's own files and dirs in it, and
/// warns when `data_dir` itself is open to other users.
pub fn secure(data_dir: &Path) -> Result<(), ServerError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(|e| ServerError::io("creating data dir", data_dir, e))?;
    let mode = mode_of(data_dir).map_err(|e| ServerError::io("reading", data_dir, e))?;
    if let Some(mode) = mode.filter(|m| m & SHARED_BITS != 0) {
        tracing::warn!(
            data_dir = %data_dir.display(),
            "the data dir has mode {mode:04o}: other users may read cached images and the index; \
             run `chmod 700 {}`",
            data_dir.display()
        );
    }
    let own = [
        ("layercache.db", 0o600),
        ("layercache.db-wal", 0o600),
        ("layercache.db-shm", 0o600),
        ("blobs", 0o700),
        ("tmp", 0o700),
        ("quarantine", 0o700),
    ];
    for (name, wanted) in own {
        let path = data_dir.join(name);
        match mode_of(&path) {
            Ok(Some(m)) if m & SHARED_BITS != 0 => {
                fs::set_permissions(&path, fs::Permissions::from_mode(wanted))
                    .map_err(|e| ServerError::io("restricting permissions of", &path, e))?;
                tracing::info!(path = %path.display(), "was mode {m:04o}, now {wanted:04o}");
            }
            Ok(_) => {}
            Err(e) => return Err(ServerError::io("reading", &path, e)),
        }
    }
    Ok(())
}

/// The permission bits of `path`, `None` when it does not exist.
fn mode_of(path: &Path) -> io::Result<Option<u32>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m.permissions().mode() & 0o7777)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_files_of_ours_are_tightened_and_a_new_data_dir_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        secure(&dir).unwrap();
        assert_eq!(mode_of(&dir).unwrap(), Some(0o700));

        fs::write(dir.join("layercache.db"), b"").unwrap();
        fs::set_permissions(dir.join("layercache.db"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir(dir.join("blobs")).unwrap();
        fs::set_permissions(dir.join("blobs"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        secure(&dir).unwrap();
        assert_eq!(mode_of(&dir.join("layercache.db")).unwrap(), Some(0o600));
        assert_eq!(mode_of(&dir.join("blobs")).unwrap(), Some(0o700));
        // The data dir is the operator's: warned about, left as it is.
        assert_eq!(mode_of(&dir).unwrap(), Some(0o777));
    }
}
