//! Following the bucket: a watch of the keys of the services followed (of
//! the whole bucket, for a reader of everything) feeds the reader's
//! view; a complete read replaces the view at once; leases that run out end
//! once the bucket confirms them; the watch is made again when it fails and
//! every [`RELOAD`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use baker_adapter_api::Backoff;
use baker_adapter_nats::async_nats::jetstream::kv;
use futures::StreamExt;

use crate::bucket::{recreate_if_deleted, Bucket};
use crate::view::{in_filter, written_at, Filter, Lease, View};
use crate::{BucketError, Inner, CALL_TIMEOUT, RELOAD, STALLED_HISTORY};

/// Keeps the view in step with the bucket for as long as the process runs.
pub(crate) async fn follow_bucket(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    // Creation time (ns since the epoch) of the bucket's stream at the last
    // read: a different one means the bucket was deleted and created again,
    // by this process or another.
    let mut created_ns = None;
    loop {
        let mut opened = inner.bucket.subscribe();
        let bucket = opened
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|bucket| bucket.clone());
        let Some(bucket) = bucket else { return };
        match read_bucket(&inner, &bucket, &mut created_ns).await {
            Ok(()) => backoff.reset(),
            Err(_) if recreate_if_deleted(inner.clone(), bucket).await => {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => {
                tracing::warn!(url = %inner.url, bucket = %inner.settings.bucket, %error,
                    "directory bucket watch failed; reading it again");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// One watch of the whole bucket: reads every key, then follows changes
/// until the watch fails or [`RELOAD`] passes.
async fn read_bucket(
    inner: &Inner,
    bucket: &Bucket,
    created_ns: &mut Option<i128>,
) -> Result<(), BucketError> {
    // Only the keys of the services followed: a renewal of another service
    // never reaches this reader.
    let mut filters = inner.filter.subscribe();
    let filter = filters.borrow_and_update().clone();
    let mut watch = match &filter {
        None => Some(bucket.store.watch_with_history(">").await),
        Some(services) if services.is_empty() => None,
        Some(services) => {
            let keys = services.iter().map(|service| format!("{service}.>"));
            Some(bucket.store.watch_many_with_history(keys).await)
        }
    }
    .transpose()
    .map_err(|e| BucketError::nats("watching the bucket", e))?;
    // Until the history is read, changes go to a fresh view; it replaces the
    // live one once complete, so readers never see half a bucket.
    let mut fresh: Option<View> = Some(View::default());
    let mut stream = bucket.store.stream.clone();
    let info = (stream.info().await).map_err(|e| BucketError::nats("reading the bucket", e))?;
    let created = info.created.unix_timestamp_nanos();
    let previous = created_ns.replace(created);
    // The first complete read of a new bucket starts a new epoch.
    let new_bucket = previous.is_some_and(|previous| previous != created);
    if new_bucket {
        tracing::warn!(url = %inner.url, bucket = %inner.settings.bucket,
            "the directory bucket is a new one (it was deleted); keeping the records it lacks for one lease");
    }
    if no_entries(bucket, &filter, info.state.messages).await? {
        adopt(
            inner,
            fresh.take().expect("not adopted yet"),
            new_bucket,
            &filter,
        );
    }
    let reload_at = tokio::time::Instant::now() + RELOAD;
    let mut reported_bad_keys = false;
    // When the next lease of the live view may run out: never later than
    // the true one (a renewal only moves a lease later), so it is worked
    // out again in full only when it passes or the view is replaced, not
    // once per entry, which would cost every lease held for each renewal.
    let mut next_expiry = inner.lock_view().next_expiry();
    loop {
        let expiry_in = next_expiry.map_or(RELOAD, |t| {
            t.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            Some(entry) = next_entry(&mut watch) => {
                let entry = match entry {
                    Ok(Some(entry)) => entry,
                    Err(error) => return Err(BucketError::nats("watching the bucket", error)),
                    Ok(None) => return Err(BucketError::WatchEnded),
                };
                let now = SystemTime::now();
                let lease = match entry.operation {
                    kv::Operation::Put => match Lease::parse(&entry.value, written_at(&entry)) {
                        Ok(lease) => Some(lease),
                        Err(error) => {
                            if !reported_bad_keys {
                                tracing::warn!(bucket = %inner.settings.bucket, key = %entry.key, %error,
                                    "bucket entry is not an instance record; ignoring it (and others like it)");
                                reported_bad_keys = true;
                            }
                            None
                        }
                    },
                    kv::Operation::Delete | kv::Operation::Purge => None,
                };
                match fresh.as_mut() {
                    Some(view) => {
                        view.apply(&entry.key, lease, now);
                        if entry.delta == 0 {
                            adopt(inner, fresh.take().expect("checked"), new_bucket, &filter);
                            next_expiry = inner.lock_view().next_expiry();
                        }
                    }
                    None => {
                        if let Some(expires) = lease.as_ref().map(|l| l.expires) {
                            next_expiry = Some(next_expiry.map_or(expires, |t| t.min(expires)));
                        }
                        let mut view = inner.lock_view();
                        if view.apply(&entry.key, lease, now) {
                            inner.bump(&mut view);
                        }
                    }
                }
            }
            _ = tokio::time::sleep(expiry_in), if next_expiry.is_some() => {
                end_leases(inner, bucket).await?;
                next_expiry = inner.lock_view().next_expiry();
            }
            // Keys present when the watch began can leave before it
            // delivers them; then no entry ends the history.
            _ = tokio::time::sleep(STALLED_HISTORY), if fresh.is_some() => {
                let info = stream.info().await;
                let messages = info.map_err(|e| BucketError::nats("reading the bucket", e))?.state.messages;
                if no_entries(bucket, &filter, messages).await? {
                    adopt(inner, fresh.take().expect("checked"), new_bucket, &filter);
                    next_expiry = inner.lock_view().next_expiry();
                }
            }
            _ = tokio::time::sleep_until(reload_at) => return Ok(()),
            // Other services to follow: read them from the start.
            _ = filters.changed() => return Ok(()),
        }
    }
}

/// Ends the leases that ran out, once the bucket confirms each: the watch
/// can be behind it (a server lost under a watch is noticed only after
/// missed heartbeats), and renewals it missed must not end a lease. A
/// renewal found this way means the watch is behind: the error makes it
/// read the bucket again. While the bucket does not answer, a lease stays
/// (the last known view) and is asked about again a second later.
async fn end_leases(inner: &Inner, bucket: &Bucket) -> Result<(), BucketError> {
    let due = inner.lock_view().due(SystemTime::now());
    for key in due {
        let latest = tokio::time::timeout(CALL_TIMEOUT, bucket.store.entry(key.clone())).await;
        let now = SystemTime::now();
        let renewed = match latest {
            Ok(Ok(Some(entry))) if entry.operation == kv::Operation::Put => {
                Lease::parse(&entry.value, written_at(&entry))
                    .ok()
                    .filter(|lease| lease.expires > now)
            }
            Ok(Ok(_)) => None,
            Ok(Err(_)) | Err(_) => {
                if let Some(lease) = inner.lock_view().leases.get_mut(&key) {
                    lease.expires = now + Duration::from_secs(1);
                }
                continue;
            }
        };
        let behind = renewed.is_some();
        let mut view = inner.lock_view();
        if view.apply(&key, renewed, now) {
            inner.bump(&mut view);
        }
        if behind {
            return Err(BucketError::Behind(key));
        }
    }
    Ok(())
}

/// The next entry of `watch`; never, without one (nothing to follow).
async fn next_entry(
    watch: &mut Option<kv::Watch>,
) -> Option<Result<Option<kv::Entry>, kv::WatcherError>> {
    match watch {
        Some(watch) => Some(watch.next().await.transpose()),
        None => std::future::pending().await,
    }
}

/// Whether the bucket holds no entry of `filter`'s services (`messages`:
/// the bucket's message count), so that a read of their history would
/// deliver nothing.
async fn no_entries(bucket: &Bucket, filter: &Filter, messages: u64) -> Result<bool, BucketError> {
    let Some(services) = filter else {
        return Ok(messages == 0);
    };
    if messages == 0 {
        return Ok(true);
    }
    for service in services.iter() {
        let subjects = format!("{}{service}.>", bucket.store.prefix);
        let mut found = (bucket.store.stream.info_with_subjects(subjects).await)
            .map_err(|e| BucketError::nats("reading the bucket", e))?;
        if found.next().await.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Replaces the live view with a complete read of the bucket (of
/// `filter`'s services).
fn adopt(inner: &Inner, mut fresh: View, new_bucket: bool, filter: &Filter) {
    let now = SystemTime::now();
    fresh.expire(now);
    let mut view = inner.lock_view();
    if view.loaded && !new_bucket {
        // A read again that lacks a record whose lease still runs (a replica
        // behind after a node loss answered it) does not end that lease: a
        // lease ends only once the bucket confirms it (`end_leases`, when it
        // runs out). A deregistration the watch saw is gone already.
        for (key, lease) in &view.leases {
            let kept = lease.expires > now && in_filter(key, filter);
            if kept && !fresh.leases.contains_key(key) {
                fresh.leases.insert(key.clone(), lease.clone());
            }
        }
    }
    let changed =
        new_bucket || !view.loaded || view.filter != *filter || view.leases != fresh.leases;
    view.filter = filter.clone();
    if new_bucket {
        view.recreations += 1;
    }
    view.leases = fresh.leases;
    view.loaded = true;
    if changed {
        inner.bump(&mut view);
        view.forget_changes();
    }
}
