//! The router's last known view on disk, so that a router started while the
//! directory is unreachable still knows where to send.
//!
//! Written after every change of the view (off the message path, replaced
//! atomically by a rename), read once at start.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::record::Catalog;

/// File name of the snapshot in the state directory.
pub const FILE_NAME: &str = "view.json";

#[derive(Serialize, Deserialize)]
struct Stored {
    /// Milliseconds since the Unix epoch when the view was saved.
    saved_at_ms: u64,
    catalog: Catalog,
}

/// A saved view and when it was saved.
#[derive(Debug, Clone)]
pub struct SavedView {
    /// The view.
    pub catalog: Catalog,
    /// When it was saved.
    pub saved_at: SystemTime,
}

/// The snapshot file in one state directory.
#[derive(Debug, Clone)]
pub struct Snapshot {
    path: PathBuf,
}

impl Snapshot {
    /// The snapshot kept in `state_dir`.
    pub fn in_dir(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved view, if there is a readable one.
    pub fn load(&self) -> Option<SavedView> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot read the saved view");
                return None;
            }
        };
        match serde_json::from_slice::<Stored>(&text) {
            Ok(stored) => Some(SavedView {
                catalog: stored.catalog,
                saved_at: UNIX_EPOCH + Duration::from_millis(stored.saved_at_ms),
            }),
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "ignoring a saved view that does not parse");
                None
            }
        }
    }

    /// Saves `catalog`, replacing the previous snapshot atomically.
    pub async fn save(&self, catalog: &Catalog) -> std::io::Result<()> {
        let stored = Stored {
            saved_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            catalog: catalog.clone(),
        };
        let text = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let partial = self.path.with_extension("json.partial");
        tokio::fs::write(&partial, text).await?;
        tokio::fs::rename(&partial, &self.path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baker_directory_api::testing::record;

    #[tokio::test]
    async fn a_saved_view_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = Snapshot::in_dir(&dir.path().join("state"));
        assert!(snapshot.load().is_none());
        let catalog = Catalog {
            epoch: 7,
            index: 3,
            instances: vec![record("s", "a", 10)],
        };
        snapshot.save(&catalog).await.unwrap();
        let saved = snapshot.load().unwrap();
        assert_eq!(saved.catalog, catalog);
        assert!(saved.saved_at.elapsed().unwrap() < Duration::from_secs(60));
        std::fs::write(snapshot.path(), b"{not json").unwrap();
        assert!(snapshot.load().is_none(), "a damaged file is ignored");
    }
}
