//! The router's member id among the routers of its queue group: what makes
//! a per-consumer name (an MQTT session's client id) unique per sidecar on a
//! host and the same across the sidecar's restarts.
//!
//! In order: made once and kept in the state directory; else derived from
//! the instances the sidecar registers (instance ids are unique, so two
//! sidecars registering different instances get different ids); else made
//! for this run only, which the adapter says at start.

use std::path::Path;

use baker_adapter_api::{Member, MemberKept};
use sha2::{Digest, Sha256};

/// The file in the state directory that holds the member id.
const FILE: &str = "member-id";
/// Hex digits of a member id.
const LEN: usize = 8;

/// The member id of a sidecar with `state_dir` that registers `instances`
/// (service and id of each).
pub fn member(state_dir: Option<&Path>, instances: &[(&str, &str)]) -> std::io::Result<Member> {
    if let Some(dir) = state_dir {
        return Ok(Member {
            id: kept_in(dir)?,
            kept: MemberKept::StateDir,
        });
    }
    if instances.is_empty() {
        return Ok(Member::this_run());
    }
    let mut names: Vec<String> = instances
        .iter()
        .map(|(service, id)| format!("{service}\n{id}\n"))
        .collect();
    names.sort();
    let digest = Sha256::digest(names.concat().as_bytes());
    Ok(Member {
        id: hex::encode(digest)[..LEN].to_owned(),
        kept: MemberKept::Registrations,
    })
}

fn kept_in(dir: &Path) -> std::io::Result<String> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if valid(text.trim()) => Ok(text.trim().to_owned()),
        Ok(_) => save(dir, &path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => save(dir, &path),
        Err(error) => Err(error),
    }
}

fn valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn save(dir: &Path, path: &Path) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let mut bytes = [0u8; LEN / 2];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let id = hex::encode(bytes);
    std::fs::write(path, format!("{id}\n"))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_in_the_state_directory_first_then_derived_from_registrations() {
        let dir = tempfile::tempdir().unwrap();
        let kept = member(Some(dir.path()), &[("orders", "o1")]).unwrap();
        assert_eq!(kept.kept, MemberKept::StateDir);
        assert_eq!(member(Some(dir.path()), &[]).unwrap(), kept, "read back");

        let a = member(None, &[("orders", "o1"), ("audit", "a1")]).unwrap();
        assert_eq!(a.kept, MemberKept::Registrations);
        assert_eq!(a.id.len(), LEN);
        assert_eq!(
            member(None, &[("audit", "a1"), ("orders", "o1")]).unwrap(),
            a,
            "the same instances in another order"
        );
        assert_ne!(member(None, &[("orders", "o2")]).unwrap().id, a.id);
        // "ab"/"c" and "a"/"bc" are different instances.
        assert_ne!(
            member(None, &[("ab", "c")]).unwrap().id,
            member(None, &[("a", "bc")]).unwrap().id
        );

        let once = member(None, &[]).unwrap();
        assert!(!once.is_stable());
        assert_ne!(member(None, &[]).unwrap().id, once.id);
    }
}
