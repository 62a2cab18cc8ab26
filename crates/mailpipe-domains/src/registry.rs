//! What a worker may sign for: (tenant, From domain) → the domain's active
//! key, for every domain that may send (`verified`, or `failing` within its
//! grace). A job whose tenant and From domain are not in it is refused; a
//! key is only ever found under its own domain and the tenants that may
//! send as it, so no tenant's key can sign another tenant's mail.
//!
//! The registry follows the store: it reloads when a domain, its tenants or
//! its keys change, so new, rotated and disabled domains take effect
//! without a restart.

use std::collections::HashMap;
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

type Snapshot = HashMap<(TenantId, String), Arc<DkimKey>>;

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

    /// The key that signs `tenant`'s mail from `domain`, or `None` if the
    /// tenant may not send as it.
    pub fn permit(&self, tenant: &TenantId, domain: &str) -> Option<Arc<DkimKey>> {
        let snapshot = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        snapshot.get(&(tenant.clone(), domain.to_ascii_lowercase())).cloned()
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
    ) -> Result<Option<Arc<DkimKey>>, StoreError> {
        if let Some(key) = self.permit(tenant, domain) {
            return Ok(Some(key));
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
        *looks += 1;
        let version = store.sending_domains_version().await?;
        if *self.version.read().unwrap_or_else(|p| p.into_inner()) == Some(version) {
            return Ok(false);
        }
        let mut next = Snapshot::new();
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
            match opened {
                Ok(key) => {
                    let key = Arc::new(key);
                    for t in &d.tenants {
                        next.insert((t.clone(), d.domain.as_str().to_owned()), key.clone());
                    }
                }
                Err(e) => {
                    metrics::counter!("mailpipe_sender_key_errors_total").increment(1);
                    error!(domain = d.domain.as_str(), selector = %k.selector, error = %e, "cannot load a DKIM key; the domain's mail is refused");
                }
            }
        }
        metrics::gauge!("mailpipe_senders").set(next.len() as f64);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        *self.version.write().unwrap_or_else(|p| p.into_inner()) = Some(version);
        Ok(true)
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
