//! Writing a record: on the revision this agent last wrote, or (first
//! write, or someone wrote since) on the key's latest once this owner may
//! take it.

use baker_adapter_nats::async_nats::jetstream::context::PublishErrorKind;
use baker_directory_api::{ClientError, InstanceRecord};

use crate::bucket::{self, Bucket};
use crate::{owner, KvDirectory, CALL_TIMEOUT};

/// How a write of a key went wrong.
pub(crate) enum Written {
    /// The key is not at the revision the write was made on.
    Stale,
    /// Another owner's lease is live.
    Owned,
    /// The bucket failed or refused it.
    Failed(ClientError),
}

impl KvDirectory {
    /// Writes `record` at `key` on revision `known`, or (with none) on the
    /// revision the key's last write has, if this owner may take it.
    pub(crate) async fn write(
        &self,
        bucket: &Bucket,
        record: &InstanceRecord,
        key: &str,
        known: Option<u64>,
    ) -> Result<(), Written> {
        let prefix = bucket.store.put_prefix.as_ref();
        let subject = format!("{}{key}", prefix.unwrap_or(&bucket.store.prefix));
        let revision = match known {
            Some(revision) => revision,
            None => match owner::claim(bucket, &subject, &self.inner.owner).await {
                Ok(owner::Claim::Revision(revision)) => revision,
                Ok(owner::Claim::Owned) => return Err(Written::Owned),
                Err(reason) => return Err(Written::Failed(self.unreachable(reason))),
            },
        };
        let value = serde_json::to_vec(record).map_err(|e| Written::Failed(self.unreachable(e)))?;
        let mut headers = owner::write_headers(&self.inner.owner, revision);
        if bucket.ttl_headers {
            headers.insert("Nats-TTL", record.ttl_secs.to_string().as_str());
        }
        let write = async {
            bucket
                .js
                .publish_with_headers(subject, headers, value.into())
                .await?
                .await
        };
        match tokio::time::timeout(CALL_TIMEOUT, write).await {
            Ok(Ok(ack)) => {
                self.inner
                    .lock_revisions()
                    .insert(key.to_owned(), ack.sequence);
                Ok(())
            }
            Ok(Err(error)) if error.kind() == PublishErrorKind::WrongLastSequence => {
                Err(Written::Stale)
            }
            Ok(Err(error)) => {
                // Agents without a router follow no bucket: a bucket deleted
                // or replaced under them is noticed here.
                tokio::spawn(bucket::heal_after_refused_write(
                    self.inner.clone(),
                    bucket.clone(),
                ));
                Err(Written::Failed(self.unreachable(error)))
            }
            Err(_) => Err(Written::Failed(
                self.unreachable("no acknowledgement from the bucket"),
            )),
        }
    }
}
