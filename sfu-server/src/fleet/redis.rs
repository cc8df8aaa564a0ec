//! The fleet's state in Redis: node records with a TTL, channel leases
//! claimed, renewed and released by scripts (atomic in Redis), and the
//! task that keeps a node's record fresh.
//!
//! Keys (under a prefix, `sfu:` by default, so that several fleets or tests
//! share one Redis):
//!
//! | key | value | expiry |
//! |---|---|---|
//! | `node:{id}` | the node's [`NodeRecord`] (JSON) | the registry's TTL, refreshed more often |
//! | `lease:{channel}` | the channel's core, `node:epoch` | `lease_ttl`, renewed by its holder |
//! | `epoch:{channel}` | the channel's last epoch (a counter) | a day after the last claim |
//! | `fanout:{channel}` | `1`: the channel is big enough for edges | `lease_ttl`, set again by its core |
//!
//! Every call has a deadline ([`RedisFleet::connect`]'s `timeout`): an
//! unreachable Redis is an error after it, never a hang; the connection
//! comes back by itself when Redis does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio::task::AbortHandle;

use super::record::{Lease, NodeRecord};

/// How long a channel's epoch counter outlives its last claim. A lease is
/// seconds long: the counter only has to outlive every lease of its
/// channel and every node's memory of one.
const EPOCH_TTL: Duration = Duration::from_secs(24 * 3600);

/// Node records read at once, and leases renewed in one script call.
const SCAN_BATCH: usize = 256;

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A call for many keys failed, or was answered with the wrong shape.
    #[error("redis: {0}")]
    Batch(String),
    /// Redis holds a lease that is not `node:epoch`.
    #[error("{0}")]
    BadLease(#[from] super::record::LeaseError),
}

/// The keys of one fleet.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (`"sfu:"`).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// Node `id`'s record.
    pub fn node(&self, id: u16) -> String {
        format!("{}node:{id}", self.prefix)
    }

    /// A channel's lease.
    pub fn lease(&self, channel: &str) -> String {
        format!("{}lease:{channel}", self.prefix)
    }

    /// A channel's epoch counter.
    pub fn epoch(&self, channel: &str) -> String {
        format!("{}epoch:{channel}", self.prefix)
    }

    /// A channel's mark: big enough that members of other regions go to
    /// edges.
    pub fn fanout(&self, channel: &str) -> String {
        format!("{}fanout:{channel}", self.prefix)
    }

    /// The SCAN pattern of every key of `kind` (`node:`, `lease:`).
    fn pattern(&self, kind: &str) -> String {
        // The prefix is the operator's: glob characters in it are escaped.
        let mut p = String::with_capacity(self.prefix.len() + kind.len() + 1);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push_str(kind);
        p.push('*');
        p
    }
}

/// One node's connection to the fleet's Redis.
pub struct RedisFleet {
    conn: ConnectionManager,
    keys: Keys,
    timeout: Duration,
    claim: Script,
    renew: Script,
    renew_many: Script,
    release: Script,
    /// Records and leases found in Redis that did not parse.
    skipped: AtomicU64,
}

impl std::fmt::Debug for RedisFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFleet")
            .field("keys", &self.keys)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisFleet {
    /// Connects to `url` (`redis://host:port/db`, `rediss://` not built
    /// in), with `keys`; every call fails after `timeout`.
    pub async fn connect(
        url: &str,
        keys: Keys,
        timeout: Duration,
    ) -> Result<RedisFleet, FleetError> {
        let client = redis::Client::open(url)?;
        // One plain connection and PING first: its error says what is
        // wrong (a refused password, Redis's protected mode…), where the
        // manager's retries would end in a timeout.
        let probe = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        tokio::time::timeout(timeout, probe)
            .await
            .map_err(|_| FleetError::Timeout(timeout))??;
        let conn = tokio::time::timeout(timeout, ConnectionManager::new(client))
            .await
            .map_err(|_| FleetError::Timeout(timeout))??;
        Ok(RedisFleet {
            conn,
            keys,
            timeout,
            claim: Script::new(
                r"
                local held = redis.call('GET', KEYS[1])
                if held then return held end
                local epoch = redis.call('INCR', KEYS[2])
                redis.call('PEXPIRE', KEYS[2], ARGV[3])
                local lease = ARGV[1] .. ':' .. epoch
                redis.call('SET', KEYS[1], lease, 'PX', ARGV[2])
                return lease
                ",
            ),
            renew: Script::new(
                r"
                if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
                end
                return 0
                ",
            ),
            renew_many: Script::new(
                r"
                local ttl = ARGV[#KEYS + 1]
                local renewed = {}
                for i, key in ipairs(KEYS) do
                    if redis.call('GET', key) == ARGV[i] then
                        renewed[i] = redis.call('PEXPIRE', key, ttl)
                    else
                        renewed[i] = 0
                    end
                end
                return renewed
                ",
            ),
            release: Script::new(
                r"
                if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('DEL', KEYS[1])
                end
                return 0
                ",
            ),
            skipped: AtomicU64::new(0),
        })
    }

    /// The keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Records and leases found in Redis that did not parse (skipped).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FleetError> {
        Ok(tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| FleetError::Timeout(self.timeout))??)
    }

    /// Writes `record`, to expire after `ttl` unless written again.
    pub async fn register(&self, record: &NodeRecord, ttl: Duration) -> Result<(), FleetError> {
        let mut c = self.conn.clone();
        let key = self.keys.node(record.id);
        let json = record.to_json();
        let () = self.within(c.pset_ex(key, json, millis(ttl))).await?;
        Ok(())
    }

    /// Removes node `id`'s record (a node leaving the fleet).
    pub async fn deregister(&self, id: u16) -> Result<(), FleetError> {
        let mut c = self.conn.clone();
        let () = self.within(c.del(self.keys.node(id))).await?;
        Ok(())
    }

    /// Every node whose record has not expired, by id; records that do not
    /// parse are skipped and counted ([`skipped`](Self::skipped)).
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, FleetError> {
        let mut nodes = Vec::new();
        for (_, value) in self.scan("node:").await? {
            match NodeRecord::parse(&value) {
                Ok(r) => nodes.push(r),
                Err(e) => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "a node record in redis was skipped");
                }
            }
        }
        nodes.sort_by_key(|n| n.id);
        nodes.dedup_by_key(|n| n.id);
        Ok(nodes)
    }

    /// Every channel that has a core now, with its lease, by name; leases
    /// that do not parse are skipped and counted.
    pub async fn leases(&self) -> Result<Vec<(String, Lease)>, FleetError> {
        let prefix = self.keys.lease("");
        let mut leases = Vec::new();
        for (key, value) in self.scan("lease:").await? {
            match Lease::parse(&value) {
                Ok(l) => leases.push((key.strip_prefix(&prefix).unwrap_or(&key).to_owned(), l)),
                Err(e) => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "a lease in redis was skipped");
                }
            }
        }
        leases.sort();
        Ok(leases)
    }

    /// Every key of `kind` with its value (keys that expired between the
    /// SCAN and the MGET are left out).
    async fn scan(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, FleetError> {
        let mut c = self.conn.clone();
        let pattern = self.keys.pattern(kind);
        let keys: Vec<String> = self
            .within(async {
                let mut iter = c.scan_match::<_, String>(&pattern).await?;
                let mut keys = Vec::new();
                while let Some(k) = iter.next_item().await {
                    keys.push(k?);
                }
                Ok(keys)
            })
            .await?;
        let mut found = Vec::with_capacity(keys.len());
        for batch in keys.chunks(SCAN_BATCH) {
            let mut c = self.conn.clone();
            let values: Vec<Option<Vec<u8>>> = self.within(c.mget(batch)).await?;
            for (key, value) in batch.iter().zip(values) {
                if let Some(v) = value {
                    found.push((key.clone(), v));
                }
            }
        }
        Ok(found)
    }

    /// Claims `channel` for `node` for `ttl`, unless another claim holds
    /// it: answers the lease that holds the channel now (this node's, with
    /// a new epoch, or the holder's).
    pub async fn claim(
        &self,
        channel: &str,
        node: u16,
        ttl: Duration,
    ) -> Result<Lease, FleetError> {
        let mut c = self.conn.clone();
        let mut call = self.claim.prepare_invoke();
        call.key(self.keys.lease(channel))
            .key(self.keys.epoch(channel))
            .arg(node)
            .arg(millis(ttl))
            .arg(millis(EPOCH_TTL));
        let held: Vec<u8> = self.within(call.invoke_async(&mut c)).await?;
        self.lease_of(&held)
    }

    /// The lease that holds `channel` now, if any.
    pub async fn lease(&self, channel: &str) -> Result<Option<Lease>, FleetError> {
        let mut c = self.conn.clone();
        let held: Option<Vec<u8>> = self.within(c.get(self.keys.lease(channel))).await?;
        held.map(|h| self.lease_of(&h)).transpose()
    }

    /// The lease that holds `channel` now, if any, and whether its core
    /// marked it big enough for edges ([`mark_fanout`](Self::mark_fanout)):
    /// one round trip.
    pub async fn lease_and_fanout(
        &self,
        channel: &str,
    ) -> Result<(Option<Lease>, bool), FleetError> {
        let mut c = self.conn.clone();
        let keys = [self.keys.lease(channel), self.keys.fanout(channel)];
        let values: Vec<Option<Vec<u8>>> = self.within(c.mget(&keys)).await?;
        let [lease, fanout] = values.as_slice() else {
            return Err(FleetError::Batch(format!(
                "{} answers for 2 keys",
                values.len()
            )));
        };
        let lease = lease.as_deref().map(|h| self.lease_of(h)).transpose()?;
        Ok((lease, fanout.is_some()))
    }

    /// The leases of `channels`, in order, one round trip per
    /// [`SCAN_BATCH`] (a lease that does not parse is skipped, counted, and
    /// answered as none).
    pub async fn leases_of(&self, channels: &[String]) -> Result<Vec<Option<Lease>>, FleetError> {
        let mut out = Vec::with_capacity(channels.len());
        for batch in channels.chunks(SCAN_BATCH) {
            let mut c = self.conn.clone();
            let keys: Vec<String> = batch.iter().map(|ch| self.keys.lease(ch)).collect();
            let values: Vec<Option<Vec<u8>>> = self.within(c.mget(&keys)).await?;
            if values.len() != batch.len() {
                return Err(FleetError::Batch(format!(
                    "{} answers for {} keys",
                    values.len(),
                    batch.len()
                )));
            }
            out.extend(
                values
                    .into_iter()
                    .map(|v| v.and_then(|h| self.lease_of(&h).ok())),
            );
        }
        Ok(out)
    }

    /// Marks `channels` big enough for edges for `ttl` (their core marks
    /// them again while they are): one round trip.
    pub async fn mark_fanout(&self, channels: &[String], ttl: Duration) -> Result<(), FleetError> {
        if channels.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        for channel in channels {
            pipe.pset_ex(self.keys.fanout(channel), 1, millis(ttl))
                .ignore();
        }
        let () = self.within(pipe.query_async(&mut c)).await?;
        Ok(())
    }

    fn lease_of(&self, held: &[u8]) -> Result<Lease, FleetError> {
        Lease::parse(held).map_err(|e| {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            FleetError::BadLease(e)
        })
    }

    /// Extends `lease` of `channel` by `ttl` from now, if it still holds
    /// the channel; false when it does not (it expired, and maybe another
    /// node claimed the channel since: this node must stop acting as its
    /// core).
    pub async fn renew(
        &self,
        channel: &str,
        lease: Lease,
        ttl: Duration,
    ) -> Result<bool, FleetError> {
        let mut c = self.conn.clone();
        let mut call = self.renew.prepare_invoke();
        call.key(self.keys.lease(channel))
            .arg(lease.to_string())
            .arg(millis(ttl));
        let renewed: i64 = self.within(call.invoke_async(&mut c)).await?;
        Ok(renewed == 1)
    }

    /// [`renew`](Self::renew) for many channels, one round trip per
    /// [`SCAN_BATCH`] of them: for each, in order, whether it was renewed
    /// (an error for each channel of a batch that failed).
    pub async fn renew_many(
        &self,
        leases: &[(String, Lease)],
        ttl: Duration,
    ) -> Vec<Result<bool, FleetError>> {
        let mut out = Vec::with_capacity(leases.len());
        for batch in leases.chunks(SCAN_BATCH) {
            let mut c = self.conn.clone();
            let mut call = self.renew_many.prepare_invoke();
            for (channel, lease) in batch {
                call.key(self.keys.lease(channel)).arg(lease.to_string());
            }
            call.arg(millis(ttl));
            match self.within(call.invoke_async::<Vec<i64>>(&mut c)).await {
                Ok(r) if r.len() == batch.len() => out.extend(r.into_iter().map(|x| Ok(x == 1))),
                Ok(r) => {
                    let why = format!("{} answers for {} renewals", r.len(), batch.len());
                    out.extend(batch.iter().map(|_| Err(FleetError::Batch(why.clone()))));
                }
                Err(e) => {
                    let why = e.to_string();
                    out.extend(batch.iter().map(|_| Err(FleetError::Batch(why.clone()))));
                }
            }
        }
        out
    }

    /// Gives `lease` of `channel` up, if it still holds it (a newer lease
    /// is left alone); true when it did.
    pub async fn release(&self, channel: &str, lease: Lease) -> Result<bool, FleetError> {
        let mut c = self.conn.clone();
        let mut call = self.release.prepare_invoke();
        call.key(self.keys.lease(channel)).arg(lease.to_string());
        let released: i64 = self.within(call.invoke_async(&mut c)).await?;
        Ok(released == 1)
    }
}

/// Milliseconds for Redis (at least 1: `PX 0` is an error).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The task that keeps a node's record in Redis: written every `refresh`
/// with a TTL of `ttl`, from what `record` says at that moment. While Redis
/// cannot be reached the node is *degraded* (it goes on serving what it
/// has); the first write that succeeds ends that. Dropping the registry
/// stops the task (the record then expires).
#[derive(Debug)]
pub struct Registry {
    fleet: Arc<RedisFleet>,
    degraded: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    task: AbortHandle,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registry {
    /// Starts refreshing what `record()` says through `fleet` (`None`: the
    /// node is going away; nothing is written).
    pub fn spawn<F>(
        fleet: Arc<RedisFleet>,
        record: impl Fn() -> F + Send + 'static,
        refresh: Duration,
        ttl: Duration,
    ) -> Registry
    where
        F: std::future::Future<Output = Option<NodeRecord>> + Send,
    {
        let degraded = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let (d, f, writer) = (degraded.clone(), failures.clone(), fleet.clone());
        let task = tokio::spawn(async move {
            let fleet = writer;
            let mut tick = tokio::time::interval(refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(record) = record().await else {
                    continue;
                };
                match fleet.register(&record, ttl).await {
                    Ok(()) => {
                        if d.swap(false, Ordering::Relaxed) {
                            tracing::info!("redis reachable again: the node's record is fresh");
                        }
                    }
                    Err(e) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        if !d.swap(true, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "the node's record could not be written: degraded until redis answers");
                        }
                    }
                }
            }
        });
        Registry {
            fleet,
            degraded,
            failures,
            task: task.abort_handle(),
        }
    }

    /// Stops refreshing (the record expires unless deregistered).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// The fleet it writes to.
    pub fn fleet(&self) -> &Arc<RedisFleet> {
        &self.fleet
    }

    /// The last refresh failed (Redis unreachable).
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Refreshes that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}
