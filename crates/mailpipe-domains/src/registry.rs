//! What a worker may sign for: (tenant, From domain) → the domain's active
//! key, for every domain that may send (`verified`, or `failing` within its
//! grace). A job whose tenant and From domain are not in it is refused; a
//! key is only ever found under its own domain and the tenants that may
//! send as it, so no tenant's key can sign another tenant's mail.
//!
//! The registry follows the store: it reloads when a domain, its tenants or
//! its keys change, so new, rotated and disabled domains take effect
//! without a restart. A domain that may send but whose key does not open
//! here is neither signed for nor refused: its jobs wait ([`Permit`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mailpipe_core::TenantId;
use mailpipe_render::DkimKey;
use mailpipe_store::{Store, StoreError};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::DomainError;
use crate::seal::{self, Sealer};

/// What the registry says of a tenant sending as a domain.
#[derive(Clone)]
pub enum Permit {
    /// It may: sign with this key, the domain's own.
    Sign(Arc<DkimKey>),
    /// It may not.
    Refused,
    /// It may, but the domain's key does not open on this worker (a
    /// key-encryption key it lacks, an altered row): the job should wait,
    /// not be refused.
    KeyUnavailable,
}

#[derive(Clone)]
enum Slot {
    Key(Arc<DkimKey>),
    Unopenable,
}

#[derive(Default)]
struct Snapshot {
    slots: HashMap<(TenantId, String), Slot>,
    /// The domains on a warm-up ramp.
    warming: HashSet<String>,
}

/// A load that keeps meeting changes gives up after this many tries.
const CONSISTENT_TRIES: usize = 5;

pub struct Senders {
    sealer: Sealer,
    // One reload at a time, so that a slow one cannot overwrite a newer one;
    // it holds how many looks for changes have completed.
    reload: tokio::sync::Mutex<u64>,
    // A std lock: held to swap or clone an Arc, never across an await.
    current: RwLock<Arc<Snapshot>>,
    version: RwLock<Option<i64>>,
}

impl Senders {
    /// Loads the senders now; a worker does this before it reads a job.
    pub async fn load(store: &Store, sealer: Sealer) -> Result<Arc<Self>, DomainError> {
        let senders = Arc::new(Self {
            sealer,
            reload: tokio::sync::Mutex::new(0),
            current: RwLock::new(Arc::default()),
            version: RwLock::new(None),
        });
        senders.refresh(store).await?;
        Ok(senders)
    }

    /// Whether `tenant` may send as `domain`, and the key that signs it.
    pub fn permit(&self, tenant: &TenantId, domain: &str) -> Permit {
        let snapshot = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        match snapshot.slots.get(&(tenant.clone(), domain.to_ascii_lowercase())) {
            Some(Slot::Key(k)) => Permit::Sign(k.clone()),
            Some(Slot::Unopenable) => Permit::KeyUnavailable,
            None => Permit::Refused,
        }
    }

    /// Whether `domain` is warming up (its mail is capped by its ramp).
    pub fn warming(&self, domain: &str) -> bool {
        let snapshot = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        !snapshot.warming.is_empty() && snapshot.warming.contains(&domain.to_ascii_lowercase())
    }

    /// As [`Senders::permit`], but a miss first looks for changes (one
    /// cheap query, a reload only if something changed): a domain verified
    /// a moment ago sends at once instead of after the next refresh. A
    /// store error is returned, so the job waits rather than being refused.
    pub async fn permit_or_refresh(
        &self,
        store: &Store,
        tenant: &TenantId,
        domain: &str,
    ) -> Result<Permit, StoreError> {
        if let Permit::Sign(key) = self.permit(tenant, domain) {
            return Ok(Permit::Sign(key));
        }
        let seen = *self.reload.lock().await;
        let mut looks = self.reload.lock().await;
        // Misses at the same moment (a burst of refused jobs) share one look.
        if *looks == seen {
            self.reload_locked(store, &mut looks).await?;
        }
        drop(looks);
        Ok(self.permit(tenant, domain))
    }

    /// Reloads if anything changed since the last load. Returns whether it did.
    pub async fn refresh(&self, store: &Store) -> Result<bool, StoreError> {
        let mut looks = self.reload.lock().await;
        self.reload_locked(store, &mut looks).await
    }

    async fn reload_locked(&self, store: &Store, looks: &mut u64) -> Result<bool, StoreError> {
        let reloaded = self.reload_consistent(store).await?;
        // Counted only once it succeeded: a miss waiting on a look that
        // failed makes its own.
        *looks += 1;
        Ok(reloaded)
    }

    /// Reloads if the revision moved, from reads that no change came
    /// between (the revision is the same before and after them), so the
    /// domains, their tenants and their keys are of one moment.
    async fn reload_consistent(&self, store: &Store) -> Result<bool, StoreError> {
        let mut version = store.sending_domains_version().await?;
        for _ in 0..CONSISTENT_TRIES {
            if *self.version.read().unwrap_or_else(|p| p.into_inner()) == Some(version) {
                return Ok(false);
            }
            let next = self.open_all(store).await?;
            let after = store.sending_domains_version().await?;
            if after == version {
                metrics::gauge!("mailpipe_senders").set(next.slots.len() as f64);
                metrics::gauge!("mailpipe_domains_warming").set(next.warming.len() as f64);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
                *self.version.write().unwrap_or_else(|p| p.into_inner()) = Some(version);
                return Ok(true);
            }
            version = after;
        }
        warn!(
            "sending domains kept changing while they were loaded; the last ones stay in force until the next look"
        );
        Ok(false)
    }

    async fn open_all(&self, store: &Store) -> Result<Snapshot, StoreError> {
        let mut next = Snapshot::default();
        for d in store.sending_domains(None).await? {
            if !d.status.may_send() {
                continue;
            }
            let Some(k) = d.active_key() else {
                warn!(domain = d.domain.as_str(), "sending domain has no active key; its mail is refused");
                continue;
            };
            let opened = self
                .sealer
                .open(&k.sealed_key, &seal::aad(d.domain.as_str(), k.selector.as_str()))
                .map_err(DomainError::from)
                .and_then(|der| {
                    DkimKey::from_pkcs8_der(
                        d.domain.as_str(),
                        k.selector.as_str(),
                        k.algorithm,
                        der.expose_secret(),
                    )
                    .map_err(DomainError::from)
                });
            let slot = match opened {
                Ok(key) => Slot::Key(Arc::new(key)),
                Err(e) => {
                    metrics::counter!("mailpipe_sender_key_errors_total").increment(1);
                    error!(domain = d.domain.as_str(), selector = %k.selector, error = %e, "cannot open a DKIM key; the domain's mail waits until it opens");
                    Slot::Unopenable
                }
            };
            for t in &d.tenants {
                next.slots.insert((t.clone(), d.domain.as_str().to_owned()), slot.clone());
            }
            if d.warmup_from.is_some() {
                next.warming.insert(d.domain.as_str().to_owned());
            }
        }
        Ok(next)
    }

    /// Refreshes every `every` until `shutdown`. A failed refresh keeps the
    /// senders as they were.
    pub async fn follow(self: Arc<Self>, store: Store, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.refresh(&store).await {
                warn!(error = %e, "cannot reload the sending domains; the last ones stay in force");
            }
        }
    }
}
