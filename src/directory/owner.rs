//! The agent's owner id: what makes the leases it registers its own. Kept in
//! the state directory when there is one, so a restarted agent re-takes its
//! instances within their TTL; otherwise new for each process, and a
//! restarted agent waits for its old leases to run out.

use std::path::Path;

/// The file in the state directory that holds the owner id.
const FILE: &str = "owner-id";

/// The owner id kept in `state_dir` (made and saved there the first time),
/// or a new one when there is no state directory.
pub fn owner_id(state_dir: Option<&Path>) -> std::io::Result<String> {
    let Some(dir) = state_dir else {
        return super::auth::new_secret();
    };
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => save(dir, &path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => save(dir, &path),
        Err(error) => Err(error),
    }
}

fn save(dir: &Path, path: &Path) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let id = super::auth::new_secret()?;
    std::fs::write(path, format!("{id}\n"))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_id_is_kept_in_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = owner_id(Some(dir.path())).unwrap();
        assert_eq!(owner_id(Some(dir.path())).unwrap(), first);
        assert_eq!(first.len(), 48);
        assert_ne!(owner_id(None).unwrap(), owner_id(None).unwrap());
    }
}
