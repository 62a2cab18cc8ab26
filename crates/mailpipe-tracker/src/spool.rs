//! The tracker's write-ahead spool: every event is on local disk (written
//! and fdatasynced, in batches) before its request is answered, and is
//! shipped to the store and Kafka from there. An outage of either only makes
//! the spool grow; it is replayed when they return, and after a restart.
//!
//! The spool is a sequence of append-only segment files, `{seq:020}.seg`.
//! Each batch is one record, `[len: u32 LE][crc32: u32 LE][len bytes of
//! JSON lines]`, written at the segment's end and made durable with one
//! `fdatasync`: no file is created, renamed or deleted per batch, so the
//! request path pays for one data sync and nothing else. With
//! `sync_every`, batches are only written, and a timer syncs the tail
//! (and any segment closed since) without holding the writer's lock. A
//! process crash can leave only a torn last record, which fails its length
//! or CRC check and is cut off at the next open; its requests were never
//! answered. With `sync_every`, a power loss can also tear or lose
//! segments closed since the last sync: reading skips bad records and
//! missing segments.
//!
//! A segment is closed when it reaches `segment_bytes`, or when everything
//! in it has been shipped and it is older than [`IDLE_ROLL`], so shipped
//! events do not linger on disk. Shipping reads records from a position
//! (segment, offset) up to the durable end, and [`Spool::commit`] deletes
//! segments that are wholly shipped and notes the position in a `shipped`
//! file. That note is not synced: after a system crash the shipper may start
//! from an older position and ship some events again, which the store and
//! Kafka consumers deduplicate by `event_id`.
//!
//! The spool is bounded by `max_bytes` (the size of its segments): when
//! full, the writer stops taking events, requests wait, and `/readyz` says
//! so (backpressure, not loss).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailpipe_core::{EncodedEvent, Event};
use tracing::warn;

/// A segment is closed once it holds this much.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// A wholly shipped segment older than this is closed and deleted.
pub const IDLE_ROLL: Duration = Duration::from_secs(30);
const HEADER: u64 = 8;
/// No batch comes near this; a larger length is a torn or foreign record.
const MAX_RECORD: u32 = 256 << 20;

/// A batch as stored: one JSON event per line.
pub fn encode(events: &[Event]) -> Vec<u8> {
    join_lines(events.iter().map(|e| e.to_json()))
}

/// Joins encoded events into a batch.
pub fn join_lines<B: AsRef<[u8]>>(lines: impl IntoIterator<Item = B>) -> Vec<u8> {
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(l.as_ref());
        buf.push(b'\n');
    }
    buf
}

/// How a spool is laid out and synced.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// The bound: when the segments hold this much, the spool is full.
    pub max_bytes: u64,
    /// A segment is closed once it holds this much.
    pub segment_bytes: u64,
    /// A wholly shipped segment older than this is closed and deleted.
    pub idle_roll: Duration,
    /// `None`: each batch is fdatasynced before
    /// [`Spool::append`] returns, so an answered request's event survives
    /// a power loss. `Some(t)`: a batch is written (it survives the
    /// tracker's crash, not the machine's) and [`Spool::sync`] is called
    /// every `t`, so a power loss can lose up to `t` of answered events.
    pub sync_every: Option<Duration>,
}

impl SpoolOptions {
    /// `max_bytes` and `sync_every` as configured (`tracker.spool_max_mb`,
    /// `tracker.spool_sync_ms`); segment size and idle roll are the spool's own.
    pub fn new(max_bytes: u64, sync_every: Option<Duration>) -> Self {
        Self { max_bytes, segment_bytes: SEGMENT_BYTES, idle_roll: IDLE_ROLL, sync_every }
    }
}

/// A place in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

/// The segment being written.
struct Tail {
    seq: u64,
    /// Shared with [`Spool::sync`], which syncs it without holding the lock.
    file: Arc<File>,
    /// Where the next record goes; everything before it is written (and
    /// synced, unless the spool syncs on a timer).
    end: u64,
    opened: Instant,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    idle_roll: Duration,
    sync_every: Option<Duration>,
    /// Written since the last sync (with `sync_every` only).
    unsynced: AtomicBool,
    /// Segments closed since the last sync, with `sync_every`: the next
    /// [`Spool::sync`] syncs them and the directory, so that a roll does
    /// not stall the writer (or a request) for three syncs.
    rolled: Mutex<Vec<Arc<File>>>,
    /// Held through each [`Spool::sync`]: a sync that returns has waited
    /// for one already running (an unsubscribe's and the timer's).
    syncing: Mutex<()>,
    /// Bytes in all segments, shipped or not.
    bytes: AtomicU64,
    tail: Mutex<Tail>,
    /// The end the shipper may read to, published after each append (read
    /// without waiting for a write in progress).
    durable: Mutex<Position>,
    /// Where shipping resumes after a restart (best effort, see above).
    shipped: Mutex<File>,
    start: Position,
}

/// Where the shipper is: it reads from `pos`, and keeps the segment open.
pub struct Reader {
    pos: Position,
    file: Option<(u64, File)>,
}

impl Reader {
    pub fn position(&self) -> Position {
        self.pos
    }
}

/// What the shipper read: the events of whole records, and the position
/// after them, to [`Spool::commit`] once they are shipped.
pub struct Batch {
    pub events: Vec<EncodedEvent>,
    pub next: Position,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A record's header: its body's length and CRC-32, little-endian. The
/// one place that knows the record format.
struct Header {
    len: u32,
    crc: u32,
}

impl Header {
    /// The header for `body`, if a record can hold it.
    fn of(body: &[u8]) -> Option<Self> {
        let len = u32::try_from(body.len()).ok().filter(|&l| l > 0 && l <= MAX_RECORD)?;
        Some(Self { len, crc: crc32fast::hash(body) })
    }

    fn to_bytes(&self) -> [u8; HEADER as usize] {
        let mut b = [0u8; HEADER as usize];
        b[..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// `None` for a length no writer produces (0, or over the limit): the
    /// start of a torn record, or not a record at all.
    fn parse(b: &[u8]) -> Option<Self> {
        let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
        let crc = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
        (len > 0 && len <= MAX_RECORD).then_some(Self { len, crc })
    }

    fn matches(&self, body: &[u8]) -> bool {
        crc32fast::hash(body) == self.crc
    }
}

/// The records in `buf` that check out, and where they end.
fn valid_prefix(buf: &[u8]) -> u64 {
    let mut at = 0usize;
    while let Some(h) = buf.get(at..at + HEADER as usize).and_then(Header::parse) {
        let body_at = at + HEADER as usize;
        let Some(body) = buf.get(body_at..body_at + h.len as usize) else { break };
        if !h.matches(body) {
            break;
        }
        at = body_at + h.len as usize;
    }
    at as u64
}

impl Spool {
    /// Opens (creating) the spool directory: cuts a torn last record off,
    /// picks up unshipped segments from an earlier run, and takes in batch
    /// files left by the earlier one-file-per-batch spool.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        Self::open_with(dir, SpoolOptions::new(max_bytes, None))
    }

    /// Same, with options other than the defaults.
    pub fn open_with(dir: &Path, options: SpoolOptions) -> std::io::Result<Self> {
        let SpoolOptions { max_bytes, segment_bytes, idle_roll, sync_every } = options;
        std::fs::create_dir_all(dir)?;
        let mut segs = Vec::new();
        let mut legacy = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(e.path())?;
            } else if let Some(seq) = name.strip_suffix(".seg").and_then(|s| s.parse::<u64>().ok()) {
                segs.push(seq);
            } else if name.ends_with(".jsonl") {
                legacy.push(e.path());
            }
        }
        segs.sort_unstable();
        legacy.sort();

        // Where shipping left off, if the note names a segment still here.
        let mut shipped = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("shipped"))?;
        let mut note = String::new();
        let _ = shipped.read_to_string(&mut note);
        let noted = note.split_once(' ').and_then(|(s, o)| {
            Some(Position { seq: s.trim().parse().ok()?, offset: o.trim().parse().ok()? })
        });
        let start = match noted {
            Some(p) if segs.contains(&p.seq) => p,
            _ => Position { seq: segs.first().copied().unwrap_or(0), offset: 0 },
        };
        for &seq in segs.iter().filter(|&&s| s < start.seq) {
            std::fs::remove_file(seg_path(dir, seq))?;
        }
        segs.retain(|&s| s >= start.seq);

        // Only the last segment can end in a torn record after a process
        // crash (after a power loss, see `read` for the others).
        let tail = match segs.last() {
            Some(&seq) => {
                let path = seg_path(dir, seq);
                let buf = std::fs::read(&path)?;
                let end = valid_prefix(&buf);
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                if end < buf.len() as u64 {
                    warn!(cut = buf.len() as u64 - end, "the spool's last record was torn; cutting it off");
                    file.set_len(end)?;
                    file.sync_all()?;
                }
                Tail { seq, file: Arc::new(file), end, opened: Instant::now() }
            }
            None => {
                let seq = start.seq;
                let file =
                    OpenOptions::new().read(true).write(true).create_new(true).open(seg_path(dir, seq))?;
                sync_dir(dir)?;
                Tail { seq, file: Arc::new(file), end: 0, opened: Instant::now() }
            }
        };
        let mut bytes = 0;
        for &seq in &segs {
            bytes += std::fs::metadata(seg_path(dir, seq))?.len();
        }
        let start = if start.seq == tail.seq {
            Position { offset: start.offset.min(tail.end), ..start }
        } else {
            start
        };
        let durable = Position { seq: tail.seq, offset: tail.end };
        let spool = Self {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            idle_roll,
            sync_every,
            unsynced: AtomicBool::new(false),
            rolled: Mutex::new(Vec::new()),
            syncing: Mutex::new(()),
            bytes: AtomicU64::new(bytes),
            tail: Mutex::new(tail),
            durable: Mutex::new(durable),
            shipped: Mutex::new(shipped),
            start,
        };
        for path in legacy {
            spool.append_encoded(&std::fs::read(&path)?)?;
            std::fs::remove_file(&path)?;
        }
        Ok(spool)
    }

    pub fn is_full(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= self.max_bytes
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Writes one batch durably. Blocking: call from `spawn_blocking`.
    pub fn append(&self, events: &[Event]) -> std::io::Result<()> {
        self.append_encoded(&encode(events))
    }

    /// Same, for a batch already encoded (JSON lines). On an error nothing
    /// counts as written, and a retry writes the same place again.
    pub fn append_encoded(&self, buf: &[u8]) -> std::io::Result<()> {
        let header = Header::of(buf).ok_or_else(|| {
            std::io::Error::new(ErrorKind::InvalidInput, format!("a spool batch of {} bytes", buf.len()))
        })?;
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.end >= self.segment_bytes {
            self.roll(&mut tail)?;
        }
        let mut record = Vec::with_capacity(buf.len() + HEADER as usize);
        record.extend_from_slice(&header.to_bytes());
        record.extend_from_slice(buf);
        tail.file.write_all_at(&record, tail.end)?;
        if self.sync_every.is_some() {
            self.unsynced.store(true, Ordering::Relaxed);
        } else {
            tail.file.sync_data()?;
        }
        tail.end += record.len() as u64;
        self.bytes.fetch_add(record.len() as u64, Ordering::Relaxed);
        *self.durable.lock().unwrap_or_else(|p| p.into_inner()) =
            Position { seq: tail.seq, offset: tail.end };
        Ok(())
    }

    /// How often [`Spool::sync`] must be called, if batches are not synced
    /// as they are written.
    pub fn sync_every(&self) -> Option<Duration> {
        self.sync_every
    }

    /// Whether batches were written since the last [`Spool::sync`].
    pub fn pending_sync(&self) -> bool {
        self.unsynced.load(Ordering::Relaxed)
    }

    /// Makes every written batch durable (with `sync_every`; a no-op
    /// otherwise, or when nothing was written since). Blocking.
    ///
    /// The tail's lock is held only to find the file: appends go on while
    /// the disk syncs. A record written meanwhile sets the flag again, so
    /// the next sync covers it if this one did not.
    pub fn sync(&self) -> std::io::Result<()> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if self.unsynced.swap(false, Ordering::Relaxed) {
            // Under the tail's lock, so that no roll falls between the two.
            let (rolled, file) = {
                let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
                let rolled = std::mem::take(&mut *self.rolled.lock().unwrap_or_else(|p| p.into_inner()));
                (rolled, tail.file.clone())
            };
            let synced = (|| {
                for f in &rolled {
                    f.sync_all()?;
                }
                if !rolled.is_empty() {
                    // The segments created by those rolls.
                    sync_dir(&self.dir)?;
                }
                file.sync_data()
            })();
            if let Err(e) = synced {
                self.rolled.lock().unwrap_or_else(|p| p.into_inner()).extend(rolled);
                self.unsynced.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Closes the tail segment and starts the next one.
    fn roll(&self, tail: &mut Tail) -> std::io::Result<()> {
        // A failed write may have left bytes past the end; they must not
        // be read as the start of a record.
        tail.file.set_len(tail.end)?;
        if self.sync_every.is_none() {
            tail.file.sync_all()?;
        }
        let seq = tail.seq + 1;
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(seg_path(&self.dir, seq))?;
        if self.sync_every.is_some() {
            // Synced on the timer with the rest (see `rolled`).
            self.rolled.lock().unwrap_or_else(|p| p.into_inner()).push(tail.file.clone());
            self.unsynced.store(true, Ordering::Relaxed);
        } else {
            sync_dir(&self.dir)?;
        }
        *tail = Tail { seq, file: Arc::new(file), end: 0, opened: Instant::now() };
        *self.durable.lock().unwrap_or_else(|p| p.into_inner()) = Position { seq, offset: 0 };
        Ok(())
    }

    /// The shipper's reader, starting where shipping left off.
    pub fn reader(&self) -> Reader {
        Reader { pos: self.start, file: None }
    }

    fn durable(&self) -> Position {
        *self.durable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads whole records from the reader's position until about
    /// `max_events` events or the durable end. Lines that do not parse are
    /// counted and skipped (they cannot have come from this writer).
    /// Blocking: call from `spawn_blocking`.
    pub fn read(&self, r: &mut Reader, max_events: usize) -> std::io::Result<Batch> {
        let durable = self.durable();
        let mut pos = r.pos;
        let mut events = Vec::new();
        while pos < durable && events.len() < max_events {
            if r.file.as_ref().map(|(s, _)| *s) != Some(pos.seq) {
                match File::open(seg_path(&self.dir, pos.seq)) {
                    Ok(f) => r.file = Some((pos.seq, f)),
                    // A segment closed but not yet synced when the power
                    // went (timed sync only): its events are lost, not the
                    // ones after it.
                    Err(e) if e.kind() == ErrorKind::NotFound && pos.seq < durable.seq => {
                        warn!(segment = pos.seq, "a spool segment is missing; skipping it");
                        metrics::counter!("mailpipe_tracker_spool_bad_lines_total").increment(1);
                        pos = Position { seq: pos.seq + 1, offset: 0 };
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some((_, file)) = &r.file else { unreachable!() };
            let end = if pos.seq == durable.seq { durable.offset } else { file.metadata()?.len() };
            let record = if pos.offset + HEADER <= end {
                let mut bytes = [0u8; HEADER as usize];
                file.read_exact_at(&mut bytes, pos.offset)?;
                Header::parse(&bytes)
                    .map(|h| (pos.offset + HEADER + u64::from(h.len), h))
                    .filter(|(body_end, _)| *body_end <= end)
            } else {
                None
            };
            let Some((body_end, header)) = record else {
                if pos.seq == durable.seq {
                    break;
                }
                if pos.offset < end {
                    warn!(
                        segment = pos.seq,
                        offset = pos.offset,
                        "unreadable bytes at the end of a spool segment"
                    );
                    metrics::counter!("mailpipe_tracker_spool_bad_lines_total").increment(1);
                }
                pos = Position { seq: pos.seq + 1, offset: 0 };
                continue;
            };
            let mut body = vec![0u8; header.len as usize];
            file.read_exact_at(&mut body, pos.offset + HEADER)?;
            if !header.matches(&body) {
                warn!(
                    segment = pos.seq,
                    offset = pos.offset,
                    "a spool record fails its checksum; skipping it"
                );
                metrics::counter!("mailpipe_tracker_spool_bad_lines_total").increment(1);
            } else {
                events.extend(body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).filter_map(|l| {
                    EncodedEvent::decode(l)
                        .inspect_err(|_| {
                            metrics::counter!("mailpipe_tracker_spool_bad_lines_total").increment(1)
                        })
                        .ok()
                }));
            }
            pos.offset = body_end;
        }
        Ok(Batch { events, next: pos })
    }

    /// Notes that everything before `to` is shipped: deletes the segments
    /// wholly before it, and closes the tail when it is wholly shipped and
    /// older than the idle time (so shipped events do not stay on disk).
    /// Call it with the reader's own position to do only the latter.
    /// Blocking.
    pub fn commit(&self, r: &mut Reader, to: Position) -> std::io::Result<()> {
        let from = r.pos.seq;
        if to.seq != from {
            r.file = None;
        }
        r.pos = to;
        {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            let all_shipped = to == Position { seq: tail.seq, offset: tail.end };
            if all_shipped && tail.end > 0 && tail.opened.elapsed() >= self.idle_roll {
                self.roll(&mut tail)?;
                r.pos = Position { seq: tail.seq, offset: 0 };
                r.file = None;
            }
        }
        // Segment numbers are consecutive, and those before `from` are gone.
        for seq in from..r.pos.seq {
            let path = seg_path(&self.dir, seq);
            let size = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            std::fs::remove_file(&path)?;
            self.bytes.fetch_sub(size.min(self.bytes()), Ordering::Relaxed);
        }
        let note = format!("{:020} {:020}\n", r.pos.seq, r.pos.offset);
        self.shipped.lock().unwrap_or_else(|p| p.into_inner()).write_all_at(note.as_bytes(), 0)?;
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

    fn ids(b: &Batch) -> Vec<String> {
        b.events.iter().map(|e| e.event().event_id.clone()).collect()
    }

    fn want(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
        range.map(|i| ev(i).event_id).collect()
    }

    fn fresh(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn seg_count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
            .count()
    }

    #[test]
    fn batches_survive_a_reopen_in_order_and_shipping_resumes_where_it_left_off() {
        let dir = fresh("reopen");
        let s = Spool::open(&dir, 1 << 20).unwrap();
        s.append(&[ev(1), ev(2)]).unwrap();
        s.append(&[ev(3)]).unwrap();
        let mut r = s.reader();
        let b = s.read(&mut r, 1).unwrap();
        assert_eq!(ids(&b), want(1..=2), "whole records, even past max_events");
        s.commit(&mut r, b.next).unwrap();
        drop(s);

        let s = Spool::open(&dir, 1 << 20).unwrap();
        let mut r = s.reader();
        s.append(&[ev(4)]).unwrap();
        let b = s.read(&mut r, 100).unwrap();
        assert_eq!(ids(&b), want(3..=4), "shipped batches are not read again; new ones follow old ones");
        s.commit(&mut r, b.next).unwrap();
        assert!(s.read(&mut r, 100).unwrap().events.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_writing_goes_on_after_the_good_ones() {
        let dir = fresh("torn");
        let s = Spool::open(&dir, 1 << 20).unwrap();
        s.append(&[ev(1)]).unwrap();
        s.append(&[ev(2), ev(3)]).unwrap();
        drop(s);
        // A crash in the middle of the third batch's write.
        let path = seg_path(&dir, 0);
        let good = std::fs::metadata(&path).unwrap().len();
        let mut torn = 500u32.to_le_bytes().to_vec();
        torn.extend_from_slice(&[0xAB; 4]);
        torn.extend_from_slice(b"{\"event_id\":\"half");
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all_at(&torn, good).unwrap();
        std::fs::write(dir.join("00000000000000000099.tmp"), b"left by the old spool").unwrap();

        let s = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good, "the torn record is cut off");
        assert!(!dir.join("00000000000000000099.tmp").exists());
        s.append(&[ev(4)]).unwrap();
        let mut r = s.reader();
        assert_eq!(ids(&s.read(&mut r, 100).unwrap()), want(1..=4));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_with_a_bad_checksum_is_never_shipped() {
        let dir = fresh("crc");
        let s = Spool::open(&dir, 1 << 20).unwrap();
        s.append(&[ev(1)]).unwrap();
        drop(s);
        let path = seg_path(&dir, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 0x20; // one flipped bit in the body
        std::fs::write(&path, &bytes).unwrap();
        let s = Spool::open(&dir, 1 << 20).unwrap();
        let mut r = s.reader();
        assert!(s.read(&mut r, 100).unwrap().events.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn full_segments_roll_and_are_deleted_once_shipped() {
        let dir = fresh("roll");
        // Segments of about one record each.
        let open = || {
            Spool::open_with(&dir, SpoolOptions { segment_bytes: 100, ..SpoolOptions::new(1 << 20, None) })
                .unwrap()
        };
        let s = open();
        for i in 1..=5 {
            s.append(&[ev(i)]).unwrap();
        }
        assert_eq!(seg_count(&dir), 5);
        let mut r = s.reader();
        let b = s.read(&mut r, 3).unwrap();
        assert_eq!(ids(&b), want(1..=3), "reading crosses segments");
        let before = s.bytes();
        s.commit(&mut r, b.next).unwrap();
        assert_eq!(seg_count(&dir), 3, "the two wholly shipped segments are gone");
        assert!(s.bytes() < before);
        drop(s);
        let s = open();
        let mut r = s.reader();
        assert_eq!(ids(&s.read(&mut r, 100).unwrap()), want(4..=5));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_wholly_shipped_segment_is_deleted_once_idle() {
        let dir = fresh("idle");
        let s = Spool::open_with(
            &dir,
            SpoolOptions { idle_roll: Duration::from_millis(50), ..SpoolOptions::new(1 << 30, None) },
        )
        .unwrap();
        s.append(&[ev(1)]).unwrap();
        let mut r = s.reader();
        let b = s.read(&mut r, 100).unwrap();
        s.commit(&mut r, b.next).unwrap();
        assert!(s.bytes() > 0, "still young: kept, so that busy spools do not roll per batch");
        std::thread::sleep(Duration::from_millis(60));
        let at = r.position();
        s.commit(&mut r, at).unwrap();
        assert_eq!(s.bytes(), 0, "no shipped event stays on disk");
        assert_eq!(seg_count(&dir), 1, "only the new, empty tail");
        s.append(&[ev(2)]).unwrap();
        assert_eq!(ids(&s.read(&mut r, 100).unwrap()), want(2..=2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn batch_files_of_the_earlier_spool_are_taken_in() {
        let dir = fresh("legacy");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("00000000000000000000.jsonl"), encode(&[ev(1), ev(2)])).unwrap();
        std::fs::write(dir.join("00000000000000000001.jsonl"), encode(&[ev(3)])).unwrap();
        let s = Spool::open(&dir, 1 << 20).unwrap();
        assert!(!dir.join("00000000000000000000.jsonl").exists());
        let mut r = s.reader();
        assert_eq!(ids(&s.read(&mut r, 100).unwrap()), want(1..=3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn with_sync_every_a_batch_is_written_at_once_and_synced_later() {
        let dir = fresh("interval");
        let options = SpoolOptions::new(1 << 30, Some(Duration::from_millis(100)));
        let s = Spool::open_with(&dir, options).unwrap();
        s.append(&[ev(1)]).unwrap();
        assert!(s.pending_sync(), "written, not yet synced");
        let mut r = s.reader();
        assert_eq!(ids(&s.read(&mut r, 100).unwrap()), want(1..=1), "readable before the sync");
        s.sync().unwrap();
        assert!(!s.pending_sync());
        drop(s);
        let s = Spool::open(&dir, 1 << 20).unwrap();
        s.append(&[ev(2)]).unwrap();
        assert!(!s.pending_sync(), "the default syncs each batch as it is written");
        let mut r = s.reader();
        assert_eq!(ids(&s.read(&mut r, 100).unwrap()), want(1..=2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn with_sync_every_a_rolled_segment_is_synced_by_the_next_sync() {
        let dir = fresh("interval-roll");
        let options =
            SpoolOptions { segment_bytes: 1, ..SpoolOptions::new(1 << 30, Some(Duration::from_millis(100))) };
        let s = Spool::open_with(&dir, options.clone()).unwrap();
        for i in 1..=3 {
            s.append(&[ev(i)]).unwrap();
        }
        assert_eq!(seg_count(&dir), 3, "each record past the first rolled a segment");
        assert_eq!(s.rolled.lock().unwrap().len(), 2, "the closed segments wait for the timer");
        s.sync().unwrap();
        assert!(s.rolled.lock().unwrap().is_empty());
        assert!(!s.pending_sync());
        drop(s);
        let s = Spool::open_with(&dir, options.clone()).unwrap();
        let mut r = s.reader();
        assert_eq!(ids(&s.read(&mut r, 100).unwrap()), want(1..=3));
        drop(s);
        // A segment lost to a power loss before its sync: the events after
        // it are still shipped.
        let first = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                e.unwrap().file_name().to_string_lossy().strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .min()
            .unwrap();
        std::fs::remove_file(seg_path(&dir, first + 1)).unwrap();
        let s = Spool::open_with(&dir, options).unwrap();
        let mut r = s.reader();
        let mut got = ids(&s.read(&mut r, 100).unwrap());
        got.sort();
        let mut expected = [want(1..=1), want(3..=3)].concat();
        expected.sort();
        assert_eq!(got, expected);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_spool_says_so() {
        let dir = fresh("full");
        let s = Spool::open(&dir, 10).unwrap();
        assert!(!s.is_full());
        s.append(&[ev(1)]).unwrap();
        assert!(s.is_full());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
