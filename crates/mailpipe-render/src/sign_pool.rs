//! DKIM signing on threads of its own, one per core (issue 16, item 3).
//! A signature is the one CPU-heavy step of a send (about 0.3 ms for
//! RSA-2048 on this machine's cores); on the async runtime's threads it
//! would hold up every connection's I/O that shares the thread meanwhile.
//!
//! Bounded: a caller waits for room in the queue (backpressure), never
//! grows it. The threads end when the pool is dropped.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::dkim::{DkimError, DkimKey};

/// Messages waiting per signing thread, at most.
const QUEUE_PER_THREAD: usize = 64;

struct Task {
    key: Arc<DkimKey>,
    message: Vec<u8>,
    done: oneshot::Sender<(Vec<u8>, Result<String, DkimError>)>,
}

pub(crate) struct SignPool {
    queue: mpsc::Sender<Task>,
    /// Each thread holds the queue's receiving end until it ends.
    #[cfg(test)]
    receiver: std::sync::Weak<Mutex<mpsc::Receiver<Task>>>,
}

impl SignPool {
    /// A pool of one thread per core the process may use.
    pub(crate) fn per_core() -> std::io::Result<Self> {
        let pool = Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()));
        if let Err(e) = &pool {
            tracing::warn!(error = %e, "no signing threads; signing on the runtime's threads instead");
        }
        pool
    }

    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (queue, rx) = mpsc::channel::<Task>(threads * QUEUE_PER_THREAD);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new().name(format!("mailpipe-sign-{i}")).spawn(move || {
                loop {
                    // One thread waits on the queue at a time; the others on
                    // the lock, and each takes the next task in turn. A
                    // poisoned lock is taken all the same: the receiver has
                    // no state a panic could leave half-changed.
                    let next = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).blocking_recv();
                    // The pool is gone: nothing more will come.
                    let Some(Task { key, message, done }) = next else { return };
                    // A caller that went away (its job abandoned at
                    // shutdown) wants no signature.
                    if done.is_closed() {
                        continue;
                    }
                    // A panicking signer fails its message, not the thread.
                    let header = std::panic::catch_unwind(AssertUnwindSafe(|| key.sign(&message)))
                        .unwrap_or_else(|_| Err(DkimError::Sign("the signer panicked".into())));
                    let _ = done.send((message, header));
                }
            })?;
        }
        Ok(Self {
            queue,
            #[cfg(test)]
            receiver: Arc::downgrade(&rx),
        })
    }

    /// The `DKIM-Signature` header for `message`, made on a signing
    /// thread; the message comes back with it.
    pub(crate) async fn sign(
        &self,
        key: Arc<DkimKey>,
        message: Vec<u8>,
    ) -> (Vec<u8>, Result<String, DkimError>) {
        let (done, answer) = oneshot::channel();
        if let Err(refused) = self.queue.send(Task { key, message, done }).await {
            return (refused.0.message, Err(stopped()));
        }
        match answer.await {
            Ok(signed) => signed,
            // Unreachable: a thread ends only when the pool is dropped, and
            // answers every task it takes whose caller still waits.
            Err(_) => (Vec::new(), Err(stopped())),
        }
    }
}

fn stopped() -> DkimError {
    DkimError::Sign("the signing threads have stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::DkimAlgorithm;

    fn key() -> Arc<DkimKey> {
        let pem = include_bytes!("../tests/fixtures/ed25519.pem");
        Arc::new(DkimKey::from_pem("example.com", "s1", DkimAlgorithm::Ed25519Sha256, pem).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signs_many_at_once_on_few_threads_and_gives_each_its_own() {
        tokio::time::timeout(std::time::Duration::from_secs(30), many_at_once())
            .await
            .expect("the pool answers");
    }

    async fn many_at_once() {
        let pool = Arc::new(SignPool::new(2).unwrap());
        let key = key();
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let (pool, key) = (Arc::clone(&pool), Arc::clone(&key));
                tokio::spawn(async move {
                    let msg = format!("From: a@example.com\r\nSubject: {i}\r\n\r\nbody {i}\r\n").into_bytes();
                    let (back, header) = pool.sign(Arc::clone(&key), msg.clone()).await;
                    assert_eq!(back, msg, "the message comes back as it went");
                    (header.unwrap(), key.sign(&msg).unwrap())
                })
            })
            .collect();
        for t in tasks {
            let (pooled, inline) = t.await.unwrap();
            assert!(pooled.starts_with("DKIM-Signature:"), "{pooled}");
            // Ed25519 is deterministic, but the header carries a time:
            // compare the body hash, which depends on the message alone.
            let bh = |h: &str| h.split("bh=").nth(1).and_then(|s| s.split(';').next()).map(str::to_owned);
            assert_eq!(bh(&pooled), bh(&inline));
        }
    }
}

#[cfg(test)]
mod shutdown {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_pool_ends_its_threads() {
        let pool = SignPool::new(3).unwrap();
        let receiver = pool.receiver.clone();
        assert!(receiver.strong_count() >= 1, "the threads hold the queue");
        drop(pool);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while receiver.strong_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "the threads end once the pool is dropped");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
