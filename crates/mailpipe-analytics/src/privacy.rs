//! The privacy promises' workflows: erasure on request, and deletion past
//! retention (docs/privacy.md).

use std::time::Duration;

use mailpipe_core::{EmailAddress, Scope};
use mailpipe_store::{ErasureReport, Retention, Store, StoreError};
use mailpipe_token::RecipientHasher;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Removes a recipient's personal data within `scope`, keeping only a keyed
/// hash in the suppression list so that they are never mailed again there.
pub async fn erase(
    store: &Store,
    hasher: &RecipientHasher,
    address: &EmailAddress,
    scope: &Scope,
) -> Result<ErasureReport, StoreError> {
    store.erase(address, hasher.hash(&address.canonical()), scope).await
}

/// Purges what is past `retention` now, then every
/// `retention.purge_interval_hours`, until `shutdown`. Zero hours: never
/// (only `mailpipe purge`).
pub async fn purge_on_schedule(store: Store, retention: Retention, shutdown: CancellationToken) {
    if retention.purge_interval_hours == 0 {
        return;
    }
    let every = Duration::from_secs(retention.purge_interval_hours * 3600);
    loop {
        match store.purge(mailpipe_core::now_ms(), retention).await {
            Ok(rep) => info!(?rep, "retention purge"),
            Err(e) => warn!(error = %e, "retention purge failed; next run as scheduled"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
