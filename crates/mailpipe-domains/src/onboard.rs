//! Adding, rotating, retiring and removing sending domains. A key pair is
//! made (or brought along), its private half sealed and stored, and the
//! records to publish are returned.

use mailpipe_core::{DkimAlgorithm, Domain, KeyState, Selector, TenantId};
use mailpipe_store::{Added, Owner, SendingDomain, Store, StoredKey};
use secrecy::ExposeSecret;

use crate::keys::{self, KeyPairParts};
use crate::records::{self, Record};
use crate::seal::{self, Sealer};
use crate::{DomainError, DomainSettings};

/// Where a domain's key comes from.
pub enum KeySource<'a> {
    /// Made now.
    Generate(DkimAlgorithm),
    /// Brought along: a PEM private key already published under `selector`.
    Pem { algorithm: DkimAlgorithm, selector: Selector, pem: &'a [u8] },
}

fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

/// The key pair and selector of `source`, sealed for `domain`. Making an
/// RSA key takes a while, so it is made off the async threads.
async fn stored_key(
    sealer: &Sealer,
    domain: &Domain,
    source: KeySource<'_>,
    state: KeyState,
) -> Result<StoredKey, DomainError> {
    let (parts, selector): (KeyPairParts, Selector) = match source {
        KeySource::Generate(algorithm) => {
            // At most two at a time: many requests at once wait here rather
            // than fill the blocking pool with RSA key generation.
            static MAKING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
            let _turn = MAKING.acquire().await.map_err(|e| keys::KeyError::Generate(e.to_string()))?;
            let made = tokio::task::spawn_blocking(move || keys::generate(algorithm))
                .await
                .map_err(|e| keys::KeyError::Generate(e.to_string()))??;
            (made, keys::new_selector(today()))
        }
        KeySource::Pem { algorithm, selector, pem } => (keys::from_pem(algorithm, pem)?, selector),
    };
    let sealed_key =
        sealer.seal(parts.private_pkcs8.expose_secret(), &seal::aad(domain.as_str(), selector.as_str()))?;
    Ok(StoredKey {
        selector,
        algorithm: parts.algorithm,
        state,
        public_key: parts.public_b64,
        sealed_key,
        created_at: mailpipe_core::now_ms(),
    })
}

/// Adds `domain`, held by `owner` (a tenant, or the platform for
/// `platform_tenants`), with a key from `source`, and returns the records to
/// publish. Adding it again for the same owner changes nothing and returns
/// its records; a domain another owner holds is refused, unless it is a
/// tenant's claim that never verified within `claim_expiry`. `attested` (a
/// platform domain the operator vouches for) starts it `verified`.
#[allow(clippy::too_many_arguments)]
pub async fn add(
    store: &Store,
    sealer: &Sealer,
    settings: &DomainSettings,
    domain: &Domain,
    owner: &Owner,
    platform_tenants: &[TenantId],
    attested: bool,
    source: KeySource<'_>,
) -> Result<Vec<Record>, DomainError> {
    let tenants = match owner {
        Owner::Tenant(_) if attested => return Err(DomainError::AttestedNeedsPlatform),
        Owner::Tenant(t) => vec![t.clone()],
        Owner::Platform => platform_tenants.to_vec(),
    };
    let stale_before = mailpipe_core::now_ms() - settings.claim_expiry.as_millis() as i64;
    if let Some(existing) = store.sending_domain(domain).await? {
        // Same owner: nothing to make. Another's: refused before any key is
        // made, unless it is a tenant's claim that expired unproven.
        if &existing.owner == owner {
            if *owner == Owner::Platform {
                store.set_domain_tenants(domain, &tenants).await?;
            }
            return Ok(to_publish(&existing, settings));
        }
        let expired = matches!(existing.owner, Owner::Tenant(_))
            && existing.status == mailpipe_core::DomainStatus::Pending
            && existing.created_at < stale_before;
        if !expired {
            return Err(DomainError::HeldByAnother(domain.clone()));
        }
    }
    if let Owner::Tenant(t) = owner {
        let held = store.sending_domains(Some(t)).await?.iter().filter(|d| &d.owner == owner).count();
        if held >= settings.tenant_domain_limit {
            return Err(DomainError::TooMany(settings.tenant_domain_limit));
        }
    }
    let key = stored_key(sealer, domain, source, KeyState::Active).await?;
    // A tenant's new domain has no reputation yet; a platform domain is the
    // operator's to warm up (`mailpipe warmup start`).
    let warm_up = settings.warm_up && matches!(owner, Owner::Tenant(_));
    match store.add_sending_domain(domain, owner, &tenants, attested, &key, stale_before, warm_up).await? {
        Added::New | Added::Exists => {}
        Added::HeldByAnother => return Err(DomainError::HeldByAnother(domain.clone())),
    }
    let added = store.sending_domain(domain).await?.ok_or_else(|| DomainError::NotFound(domain.clone()))?;
    Ok(to_publish(&added, settings))
}

/// Everything a domain should publish now: the DKIM records of its keys
/// (active, then a rotation's pending one, then replaced ones, which stay
/// published until they are retired, for mail still on its way), then SPF,
/// DMARC and the return path.
pub fn to_publish(d: &SendingDomain, settings: &DomainSettings) -> Vec<Record> {
    let mut keys: Vec<&StoredKey> = d.keys.iter().collect();
    keys.sort_by_key(|k| match k.state {
        KeyState::Active => 0,
        KeyState::Pending => 1,
        KeyState::Previous => 2,
    });
    let Some((first, rest)) = keys.split_first() else {
        return Vec::new();
    };
    let mut out =
        records::to_publish(&d.domain, &first.selector, first.algorithm, &first.public_key, settings);
    for (i, k) in rest.iter().enumerate() {
        out.insert(
            1 + i,
            Record {
                purpose: records::Purpose::Dkim,
                name: records::dkim_name(&k.selector, &d.domain),
                kind: "TXT",
                value: records::dkim_value(k.algorithm, &k.public_key),
            },
        );
    }
    out
}

/// Starts a rotation: a new key, `pending` until a check sees its record,
/// then it signs and the old one becomes `previous` (still published until
/// it is retired). Returns the new key's DKIM record.
pub async fn rotate(
    store: &Store,
    sealer: &Sealer,
    domain: &Domain,
    algorithm: DkimAlgorithm,
) -> Result<Record, DomainError> {
    let d = store.sending_domain(domain).await?.ok_or_else(|| DomainError::NotFound(domain.clone()))?;
    if let Some(p) = d.keys.iter().find(|k| k.state == KeyState::Pending) {
        return Err(DomainError::RotationInProgress(p.selector.clone()));
    }
    let key = stored_key(sealer, domain, KeySource::Generate(algorithm), KeyState::Pending).await?;
    store.add_dkim_key(domain, &key).await?;
    Ok(Record {
        purpose: records::Purpose::Dkim,
        name: records::dkim_name(&key.selector, domain),
        kind: "TXT",
        value: records::dkim_value(key.algorithm, &key.public_key),
    })
}

/// Deletes a replaced key. Its DNS record can go once the mail it signed
/// has been delivered (a few days).
pub async fn retire(store: &Store, domain: &Domain, selector: &Selector) -> Result<(), DomainError> {
    let d = store.sending_domain(domain).await?.ok_or_else(|| DomainError::NotFound(domain.clone()))?;
    if !d.keys.iter().any(|k| &k.selector == selector && k.state == KeyState::Previous) {
        return Err(DomainError::NotPrevious(selector.clone()));
    }
    store.delete_dkim_key(domain, selector).await?;
    Ok(())
}

/// Moves every key to the active key-encryption key; returns how many moved.
pub async fn reseal_all(store: &Store, sealer: &Sealer) -> Result<usize, DomainError> {
    let mut moved = 0;
    for d in store.sending_domains(None).await? {
        for k in &d.keys {
            let aad = seal::aad(d.domain.as_str(), k.selector.as_str());
            // Only if it is still what was read (a key retired meanwhile
            // stays retired).
            if let Some(sealed) = sealer.reseal(&k.sealed_key, &aad)?
                && store.reseal_dkim_key(&d.domain, &k.selector, &k.sealed_key, &sealed).await?
            {
                moved += 1;
            }
        }
    }
    Ok(moved)
}
