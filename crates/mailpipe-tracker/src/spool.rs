//! The tracker's write-ahead spool: every event is on local disk (written
//! and fsynced, in batches) before its request is answered, and is shipped
//! to the store and Kafka from there. An outage of either only makes the
//! spool grow; it is replayed when they return, and after a restart.
//!
//! One file per batch, `{seq:020}.jsonl`, written to a temporary name,
//! fsynced and renamed, so a crash leaves whole batches or nothing. The
//! spool is bounded by `max_bytes`: when full, the writer stops taking
//! events, requests wait, and `/readyz` says so (backpressure, not loss).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use mailpipe_core::Event;

/// A batch as stored: one JSON event per line.
pub fn encode(events: &[Event]) -> Vec<u8> {
    encode_iter(events.iter())
}

pub fn encode_iter<'a>(events: impl ExactSizeIterator<Item = &'a Event>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(events.len() * 400);
    for e in events {
        buf.extend_from_slice(&e.to_json());
        buf.push(b'\n');
    }
    buf
}

pub struct Spool {
    dir: PathBuf,
    next_seq: AtomicU64,
    bytes: AtomicU64,
    max_bytes: u64,
}

/// A batch file waiting to be shipped.
#[derive(Debug, Clone)]
pub struct Segment {
    pub path: PathBuf,
    pub size: u64,
}

impl Spool {
    /// Opens (creating) the spool directory, discarding half-written files
    /// and picking up whole ones from an earlier run.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut max_seq = 0;
        let mut bytes = 0;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(e.path())?;
            } else if let Some(seq) = name.strip_suffix(".jsonl").and_then(|s| s.parse::<u64>().ok()) {
                max_seq = max_seq.max(seq + 1);
                bytes += e.metadata()?.len();
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            next_seq: AtomicU64::new(max_seq),
            bytes: AtomicU64::new(bytes),
            max_bytes,
        })
    }

    pub fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Writes one batch durably. Blocking: call from `spawn_blocking`.
    pub fn append(&self, events: &[Event]) -> std::io::Result<()> {
        self.append_encoded(&encode(events))
    }

    /// Same, for a batch already encoded with [`encode`].
    pub fn append_encoded(&self, buf: &[u8]) -> std::io::Result<()> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let path = self.dir.join(format!("{seq:020}.jsonl"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(buf)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &path)?;
        // The rename itself must survive a crash too.
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Batch files in the order they were written.
    pub fn segments(&self) -> std::io::Result<Vec<Segment>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".jsonl") {
                out.push(Segment { path: e.path(), size: e.metadata()?.len() });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Reads a batch file. Lines that do not parse are counted and skipped
    /// (they cannot have come from this writer; a torn file is impossible).
    pub fn read(segment: &Segment) -> std::io::Result<Vec<Event>> {
        let text = std::fs::read(&segment.path)?;
        Ok(text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| match serde_json::from_slice(l) {
                Ok(e) => Some(e),
                Err(_) => {
                    metrics::counter!("mailpipe_tracker_spool_bad_lines_total").increment(1);
                    None
                }
            })
            .collect())
    }

    /// Deletes a shipped batch.
    pub fn remove(&self, segment: &Segment) -> std::io::Result<()> {
        std::fs::remove_file(&segment.path)?;
        self.bytes.fetch_sub(segment.size.min(self.bytes()), Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailpipe_core::{CampaignId, EventType, JobId, TenantId};

    fn ev(i: usize) -> Event {
        Event::for_job(
            EventType::Open,
            &TenantId::parse("acme").unwrap(),
            &CampaignId::parse("c").unwrap(),
            &JobId::parse("j").unwrap(),
            &i.to_string(),
        )
    }

    #[test]
    fn batches_survive_a_reopen_in_order_and_leftovers_are_discarded() {
        let dir = std::env::temp_dir().join(format!("spool-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Spool::open(&dir, 1 << 20).unwrap();
        s.append(&[ev(1), ev(2)]).unwrap();
        s.append(&[ev(3)]).unwrap();
        std::fs::write(dir.join("00000000000000000099.tmp"), b"half a batch").unwrap();
        drop(s);
        let s = Spool::open(&dir, 1 << 20).unwrap();
        let segs = s.segments().unwrap();
        assert_eq!(segs.len(), 2, "the .tmp file is gone");
        let ids: Vec<String> =
            segs.iter().flat_map(|g| Spool::read(g).unwrap()).map(|e| e.event_id).collect();
        assert_eq!(ids, [ev(1), ev(2), ev(3)].map(|e| e.event_id));
        s.append(&[ev(4)]).unwrap();
        assert_eq!(s.segments().unwrap().len(), 3, "new batches do not overwrite old ones");
        for g in s.segments().unwrap() {
            s.remove(&g).unwrap();
        }
        assert_eq!(s.bytes(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_spool_says_so() {
        let dir = std::env::temp_dir().join(format!("spool-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Spool::open(&dir, 10).unwrap();
        assert!(!s.is_full());
        s.append(&[ev(1)]).unwrap();
        assert!(s.is_full());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
