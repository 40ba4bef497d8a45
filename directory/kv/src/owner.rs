//! Who owns a key: each write carries the digest of its agent's owner id in
//! a header, and is made on the revision the agent last saw (revision-checked
//! updates), so a key written by another owner while its lease runs is
//! never overwritten by Baker. As far as the bucket allows: a client with
//! write permission on the key can still write it directly; NATS
//! permissions decide who has that (see docs/security.md).

use std::time::{Duration, SystemTime};

use baker_adapter_nats::async_nats::jetstream::stream::LastRawMessageErrorKind;
use baker_adapter_nats::async_nats::HeaderMap;
use baker_directory_api::InstanceRecord;

use crate::bucket::Bucket;

/// The header of a write that names its owner (a SHA-256 of the owner id,
/// in hex, so the bucket's readers do not learn the id).
pub(crate) const OWNER_HEADER: &str = "Baker-Owner";

/// The header JetStream checks a write's expected revision against.
pub(crate) const EXPECTED_REVISION: &str = "Nats-Expected-Last-Subject-Sequence";

/// What the last write of a key says about taking it.
pub(crate) enum Claim {
    /// Free, or ours: write on this revision (0: the key was never written).
    Revision(u64),
    /// Another owner's live lease.
    Owned,
}

/// Whether `owner` may write `subject`, and on which revision.
pub(crate) async fn claim(bucket: &Bucket, subject: &str, owner: &str) -> Result<Claim, String> {
    let last = match bucket
        .store
        .stream
        .get_last_raw_message_by_subject(subject)
        .await
    {
        Ok(last) => last,
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {
            return Ok(Claim::Revision(0))
        }
        Err(error) => return Err(error.to_string()),
    };
    let header = |name: &str| last.headers.get(name).map(|v| v.as_str().to_owned());
    let marker = header("KV-Operation").is_some() || header("Nats-Marker-Reason").is_some();
    let theirs = header(OWNER_HEADER).is_some_and(|o| o != owner);
    let live = !marker
        && serde_json::from_slice::<InstanceRecord>(&last.payload).is_ok_and(|record| {
            let written: SystemTime = last.time.into();
            written + Duration::from_secs(record.ttl_secs) > SystemTime::now()
        });
    if live && theirs {
        Ok(Claim::Owned)
    } else {
        Ok(Claim::Revision(last.sequence))
    }
}

/// The headers of a write by `owner` on `revision`.
pub(crate) fn write_headers(owner: &str, revision: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(OWNER_HEADER, owner);
    headers.insert(EXPECTED_REVISION, revision.to_string().as_str());
    headers
}
