//! An in-memory filter in front of the suppression table.
//!
//! Most recipients are not suppressed, so most lookups can be answered
//! without a database round trip: a Bloom filter over the recipient hashes of
//! every suppression says "certainly not suppressed" or "maybe", and only
//! "maybe" goes to the exact lookup ([`crate::Store::suppression`]), which
//! also decides scope and category. A false positive costs one lookup; there
//! are no false negatives for entries the filter has seen.
//!
//! The filter is loaded in the background at start-up (lookups go to the
//! database until it is ready) and then follows the table by a cursor the
//! database assigns in commit order ([`Store::scan_suppressions`]), never by
//! `created_at`: a row stamped by a lagging clock, or committed long after
//! it was stamped (an import), is still read by the first poll after its
//! commit. Entries are never removed from a Bloom filter, so the filter is
//! rebuilt in full now and then (`worker.suppression_rebuild_secs`): a
//! removed suppression costs an exact lookup until then, and a rebuild
//! also makes good anything a poll could have missed.
//!
//! Memory: about 1.2 bytes per suppression at a 1% false-positive rate
//! (10 million entries: 12 MB).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mailpipe_core::RecipientRef;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Result, Store, SuppressionCursor};

/// A fixed-size Bloom filter over 128-bit keyed hashes, safe to read while
/// another thread inserts. The keys are HMAC outputs, so their own bits serve
/// as the hash functions (double hashing).
pub struct Bloom {
    words: Box<[AtomicU64]>,
    /// Number of bits, a power of two.
    bits: u64,
    k: u32,
}

impl Bloom {
    /// Sized for `capacity` entries at a 1% false-positive rate.
    pub fn with_capacity(capacity: u64) -> Self {
        // m = n * ln(1/p) / ln(2)^2 ≈ 9.59 n for p = 1%; k = 7.
        let want = (capacity.max(1024) as f64 * 9.6) as u64;
        let bits = want.next_power_of_two();
        let words = (0..bits / 64).map(|_| AtomicU64::new(0)).collect();
        Self { words, bits, k: 7 }
    }

    fn probes(&self, key: &[u8; 16]) -> impl Iterator<Item = u64> + use<> {
        let (a, b) = key.split_at(8);
        let h1 = u64::from_le_bytes(a.try_into().unwrap_or_default());
        let h2 = u64::from_le_bytes(b.try_into().unwrap_or_default()) | 1;
        let mask = self.bits - 1;
        (0..u64::from(self.k)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) & mask)
    }

    pub fn insert(&self, key: &[u8; 16]) {
        for bit in self.probes(key) {
            self.words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    /// False means certainly absent.
    pub fn may_contain(&self, key: &[u8; 16]) -> bool {
        self.probes(key)
            .all(|bit| self.words[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0)
    }

    /// Memory held by the bit array.
    pub fn size_bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// The suppression table's filter, kept current by [`SuppressionFilter::follow`].
pub struct SuppressionFilter {
    capacity: u64,
    /// Swapped whole by a rebuild; read under the lock only to clone.
    bloom: RwLock<Arc<Bloom>>,
    ready: AtomicBool,
    /// Where the next poll reads from; `None` before the first load. Held
    /// across a poll, so polls and rebuilds take turns.
    cursor: tokio::sync::Mutex<Option<SuppressionCursor>>,
    entries: AtomicU64,
    /// When a poll last succeeded (ms since `epoch`). A filter that has not
    /// heard from the table for [`STALE_AFTER`] sends every check to the
    /// database.
    last_ok_ms: AtomicU64,
    epoch: std::time::Instant,
    /// Entries a poll has timed already (`mailpipe_suppression_propagation_seconds`).
    propagated: std::sync::Mutex<std::collections::HashSet<(RecipientRef, i64)>>,
}

/// How long a filter may go without a successful poll before it stops
/// answering "absent".
const STALE_AFTER: Duration = Duration::from_secs(10);

/// What the filter says about a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not in the table: no lookup needed.
    Absent,
    /// Maybe in the table, or the filter is still loading: look it up.
    Lookup,
}

impl SuppressionFilter {
    pub fn new(capacity: u64) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            bloom: RwLock::new(Arc::new(Bloom::with_capacity(capacity))),
            ready: AtomicBool::new(false),
            cursor: tokio::sync::Mutex::new(None),
            entries: AtomicU64::new(0),
            last_ok_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            propagated: std::sync::Mutex::new(std::collections::HashSet::new()),
        })
    }

    fn bloom(&self) -> Arc<Bloom> {
        self.bloom.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn fresh(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_ok_ms.load(Ordering::Relaxed)) <= STALE_AFTER.as_millis() as u64
    }

    fn heard_from_table(&self) {
        self.last_ok_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn check(&self, recipient: &RecipientRef) -> Verdict {
        if self.ready.load(Ordering::Acquire) && self.fresh() && !self.bloom().may_contain(&recipient.0) {
            metrics::counter!("mailpipe_suppression_checks_total", "path" => "filter").increment(1);
            Verdict::Absent
        } else {
            metrics::counter!("mailpipe_suppression_checks_total", "path" => "lookup").increment(1);
            Verdict::Lookup
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Entries added since the last full load (with repeats from polls
    /// that read a row again).
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn size_bytes(&self) -> usize {
        self.bloom().size_bytes()
    }

    /// Adds the entries written since the last poll; the first call loads
    /// the whole table and makes the filter ready. Returns the rows read.
    pub async fn poll(&self, store: &Store) -> Result<u64> {
        let mut cursor = self.cursor.lock().await;
        if cursor.is_none() {
            drop(cursor);
            return self.rebuild(store).await;
        }
        let bloom = self.bloom();
        let mut n = 0u64;
        let mut read: Vec<(RecipientRef, i64)> = Vec::new();
        let next = store
            .scan_suppressions(*cursor, |recipient, created_at| {
                bloom.insert(&recipient.0);
                n += 1;
                read.push((recipient, created_at));
            })
            .await?;
        // How long from an entry (an unsubscribe's POST, a bounce, a
        // complaint) until this worker stops sending to it: once per entry,
        // though the cursor may pass a row again.
        let now = mailpipe_core::now_ms();
        let mut seen = self.propagated.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 100_000 {
            seen.clear();
        }
        for (recipient, created_at) in read {
            if seen.insert((recipient, created_at)) {
                let secs = (now - created_at).max(0) as f64 / 1000.0;
                metrics::histogram!("mailpipe_suppression_propagation_seconds").record(secs);
            }
        }
        drop(seen);
        *cursor = Some(next);
        self.heard_from_table();
        self.entries.fetch_add(n, Ordering::Relaxed);
        metrics::gauge!("mailpipe_suppression_filter_entries").set(self.entries() as f64);
        Ok(n)
    }

    /// Builds a fresh filter from the whole table and puts it in place of
    /// the old one. Polls go on into the old filter meanwhile (the scan
    /// holds no lock); before the swap, the fresh one catches up from the
    /// scan's own cursor, so nothing written during the scan is lost with
    /// the old filter. Returns the rows read.
    pub async fn rebuild(&self, store: &Store) -> Result<u64> {
        let fresh = Bloom::with_capacity(self.capacity);
        let mut n = 0u64;
        let scanned = store
            .scan_suppressions(None, |recipient, _| {
                fresh.insert(&recipient.0);
                n += 1;
            })
            .await?;
        let mut cursor = self.cursor.lock().await;
        let caught_up =
            store.scan_suppressions(Some(scanned), |recipient, _| fresh.insert(&recipient.0)).await?;
        *self.bloom.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        *cursor = Some(caught_up);
        self.heard_from_table();
        self.entries.store(n, Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
        metrics::gauge!("mailpipe_suppression_filter_entries").set(n as f64);
        Ok(n)
    }

    /// Loads the filter, then polls every `every` and rebuilds it every
    /// `rebuild_every`, until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        store: Store,
        every: Duration,
        rebuild_every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut loaded = false;
        let mut last_build = std::time::Instant::now();
        loop {
            let started = std::time::Instant::now();
            let rebuild = loaded && last_build.elapsed() >= rebuild_every;
            if rebuild {
                // Rebuilding does not stop polling: it runs beside the polls.
                last_build = std::time::Instant::now();
                let (me, store) = (self.clone(), store.clone());
                tokio::spawn(async move {
                    match me.rebuild(&store).await {
                        Ok(n) => info!(
                            entries = n,
                            ms = started.elapsed().as_millis() as u64,
                            "suppression filter rebuilt"
                        ),
                        // The filter in place keeps being polled; the next
                        // rebuild is due a period later.
                        Err(e) => {
                            warn!(error = %e, "suppression filter rebuild failed; the current filter stays")
                        }
                    }
                });
            }
            match self.poll(&store).await {
                Ok(n) if !loaded => {
                    loaded = true;
                    last_build = std::time::Instant::now();
                    info!(
                        entries = n,
                        ms = started.elapsed().as_millis() as u64,
                        bytes = self.size_bytes(),
                        "suppression filter loaded"
                    );
                }
                Ok(_) => {}
                Err(e) if self.is_ready() => {
                    warn!(error = %e, "suppression filter poll failed; after 10 s without one, every check goes to the database")
                }
                Err(e) => {
                    warn!(error = %e, "suppression filter load failed; lookups go to the database until it loads")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> [u8; 16] {
        // Spread like an HMAC output would be.
        let a = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0xDEAD_BEEF;
        let b = a.wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ i;
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&a.to_le_bytes());
        k[8..].copy_from_slice(&b.to_le_bytes());
        k
    }

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let bloom = Bloom::with_capacity(100_000);
        for i in 0..100_000 {
            bloom.insert(&key(i));
        }
        assert!((0..100_000).all(|i| bloom.may_contain(&key(i))), "every inserted key is found");
        let fp = (1_000_000..1_100_000).filter(|&i| bloom.may_contain(&key(i))).count();
        assert!(fp < 2_000, "false-positive rate {}% over 2%", fp as f64 / 1_000.0);
    }
}
