//! Sending domains and their DKIM keys (migration 0007). A domain has one
//! owner, a tenant or the platform; `sending_domain_tenants` says who may
//! send as it. Private keys are stored only sealed: this module never sees
//! them in the clear.

use mailpipe_core::{DkimAlgorithm, Domain, DomainStatus, KeyState, Selector, TenantId, now_ms};

use crate::{Result, Store, StoreError};

/// Who holds a sending domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A tenant's own domain: it alone may send as it.
    Tenant(TenantId),
    /// The platform's (an operator's shared domain, the demo's): the tenants
    /// listed may send as it.
    Platform,
}

impl Owner {
    /// The stored form: the tenant id, or empty for the platform.
    fn key(&self) -> &str {
        match self {
            Owner::Tenant(t) => t.as_str(),
            Owner::Platform => "",
        }
    }

    fn from_key(key: &str) -> Result<Self> {
        if key.is_empty() {
            return Ok(Owner::Platform);
        }
        TenantId::parse(key).map(Owner::Tenant).map_err(|e| StoreError::BadRow(format!("owner {key:?}: {e}")))
    }
}

/// A DKIM key as stored: the public half as published, the private half
/// sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub selector: Selector,
    pub algorithm: DkimAlgorithm,
    pub state: KeyState,
    /// Base64, as in the DNS record's `p=`.
    pub public_key: String,
    /// The PKCS#8 private key, sealed with a key-encryption key. Empty when
    /// read for a tenant (the API role cannot read the column).
    pub sealed_key: Vec<u8>,
    pub created_at: i64,
}

/// A sending domain with its tenants and keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendingDomain {
    pub domain: Domain,
    pub owner: Owner,
    pub status: DomainStatus,
    /// A platform domain the operator vouches for: checks record findings
    /// but never change its status.
    pub attested: bool,
    /// The last check's findings, as JSON.
    pub findings: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub checked_at: Option<i64>,
    /// When it last turned `failing`; its grace period counts from here.
    pub failing_since: Option<i64>,
    /// When its warm-up began; `None` for an established domain, which has
    /// no ramp (docs/deliverability.md, "Warm-up").
    pub warmup_from: Option<i64>,
    /// Who may send as it.
    pub tenants: Vec<TenantId>,
    pub keys: Vec<StoredKey>,
}

impl SendingDomain {
    /// The key that signs now.
    pub fn active_key(&self) -> Option<&StoredKey> {
        self.keys.iter().find(|k| k.state == KeyState::Active)
    }
}

/// What adding a domain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// The domain and its first key were stored.
    New,
    /// The same owner holds it already; nothing changed.
    Exists,
    /// Another owner holds it; nothing changed.
    HeldByAnother,
}

/// The result of a check, to record. It is recorded only on the claim that
/// was checked: the same owner and `created_at` (a domain removed and added
/// again, or taken over, is another claim).
#[derive(Debug, Clone)]
pub struct CheckRecord<'a> {
    pub owner: &'a Owner,
    pub created_at: i64,
    pub status: DomainStatus,
    pub findings: &'a str,
    pub checked_at: i64,
    pub failing_since: Option<i64>,
}

type DomainRow =
    (String, String, String, bool, Option<String>, i64, i64, Option<i64>, Option<i64>, Option<i64>);
type KeyRow = (String, String, String, String, String, Vec<u8>, i64);

fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::BadRow(format!("{what}: {e}"))
}

fn parse_key(row: KeyRow) -> Result<(String, StoredKey)> {
    let (domain, selector, algorithm, state, public_key, sealed_key, created_at) = row;
    let key = StoredKey {
        selector: Selector::parse(&selector).map_err(|e| bad("selector", e))?,
        algorithm: algorithm.parse().map_err(|e| bad("algorithm", e))?,
        state: state.parse().map_err(|e| bad("key state", e))?,
        public_key,
        sealed_key,
        created_at,
    };
    Ok((domain, key))
}

fn parse_domain(
    row: DomainRow,
    tenants: &[(String, String)],
    keys: &mut Vec<(String, StoredKey)>,
) -> Result<SendingDomain> {
    let (
        domain,
        owner,
        status,
        attested,
        findings,
        created_at,
        updated_at,
        checked_at,
        failing_since,
        warmup_from,
    ) = row;
    let tenants = tenants
        .iter()
        .filter(|(d, _)| *d == domain)
        .map(|(_, t)| TenantId::parse(t).map_err(|e| bad("tenant", e)))
        .collect::<Result<Vec<_>>>()?;
    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(keys).into_iter().partition(|(d, _)| *d == domain);
    *keys = rest;
    Ok(SendingDomain {
        domain: Domain::parse(&domain).map_err(|e| bad("domain", e))?,
        owner: Owner::from_key(&owner)?,
        status: status.parse().map_err(|e| bad("domain status", e))?,
        attested,
        findings,
        created_at,
        updated_at,
        checked_at,
        failing_since,
        warmup_from,
        tenants,
        keys: mine.into_iter().map(|(_, k)| k).collect(),
    })
}

/// Moves the revision on; every change the workers must see runs it in its
/// transaction.
pub(crate) const BUMP: &str = "UPDATE sending_domains_revision SET n = n + 1 WHERE id = 1";

/// What goes with a domain (ON DELETE CASCADE, and by hand where foreign
/// keys are not enforced).
const DEPENDENTS: [&str; 3] = [
    "DELETE FROM dkim_keys WHERE domain = $1",
    "DELETE FROM sending_domain_tenants WHERE domain = $1",
    "DELETE FROM warmup WHERE domain = $1",
];

const DOMAIN_COLUMNS: &str = "d.domain, d.owner, d.status, d.attested, d.findings, d.created_at, d.updated_at, d.checked_at, d.failing_since, d.warmup_from";

impl Store {
    /// Adds `domain`, held by `owner`, sendable as by `tenants`, with its
    /// first (active) key. Refused, with nothing changed, if another owner
    /// holds it, unless that is another tenant's claim that never verified
    /// and was made before `stale_before` (ms), or that has been disabled
    /// since before then: a claim nobody proved (or nobody proves any more),
    /// so that no tenant can hold a domain it does not control. `attested`: a platform domain the operator vouches for, so it
    /// starts `verified`; any other starts `pending`. `warm_up`: it starts
    /// on the warm-up ramp now.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_sending_domain(
        &self,
        domain: &Domain,
        owner: &Owner,
        tenants: &[TenantId],
        attested: bool,
        key: &StoredKey,
        stale_before: i64,
        warm_up: bool,
    ) -> Result<Added> {
        let now = now_ms();
        let status = if attested { DomainStatus::Verified } else { DomainStatus::Pending };
        let holder = "SELECT owner, status, created_at, updated_at FROM sending_domains WHERE domain = $1";
        let drop_stale = "DELETE FROM sending_domains WHERE domain = $1 AND owner = $2
                          AND ((status = 'pending' AND created_at < $3) OR (status = 'disabled' AND updated_at < $3))";
        let insert = "INSERT INTO sending_domains (domain, owner, status, attested, created_at, updated_at, warmup_from)
                      VALUES ($1, $2, $3, $4, $5, $5, $6) ON CONFLICT (domain) DO NOTHING";
        let warmup_from = warm_up.then_some(now);
        let member =
            "INSERT INTO sending_domain_tenants (domain, tenant_id) VALUES ($1, $2) ON CONFLICT DO NOTHING";
        let mut added = Added::New;
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let held: Option<(String, String, i64, i64)> =
                sqlx::query_as(holder).bind(domain.as_str()).fetch_optional(&mut *tx).await?;
            let stale = match &held {
                Some((o, status, created, updated))
                    if !o.is_empty()
                        && o != owner.key()
                        && ((status == "pending" && *created < stale_before)
                            || (status == "disabled" && *updated < stale_before)) =>
                {
                    let gone = sqlx::query(drop_stale).bind(domain.as_str()).bind(o).bind(stale_before)
                        .execute(&mut *tx).await?.rows_affected() > 0;
                    // Its keys and tenants go with it (ON DELETE CASCADE,
                    // and by hand where foreign keys are not enforced).
                    if gone {
                        for sql in DEPENDENTS {
                            sqlx::query(sql).bind(domain.as_str()).execute(&mut *tx).await?;
                        }
                    }
                    gone
                }
                _ => false,
            };
            match held {
                Some((o, _, _, _)) if o == owner.key() => added = Added::Exists,
                Some(_) if !stale => added = Added::HeldByAnother,
                _ => {
                    let n = sqlx::query(insert)
                        .bind(domain.as_str()).bind(owner.key()).bind(status.as_str()).bind(attested).bind(now)
                        .bind(warmup_from).execute(&mut *tx).await?.rows_affected();
                    // A concurrent add of the same domain won the race:
                    // whose it is now decides.
                    if n == 0 {
                        let now_held: Option<(String, String, i64, i64)> =
                            sqlx::query_as(holder).bind(domain.as_str()).fetch_optional(&mut *tx).await?;
                        added = match now_held {
                            Some((o, _, _, _)) if o == owner.key() => Added::Exists,
                            _ => Added::HeldByAnother,
                        };
                    } else {
                        for t in tenants {
                            sqlx::query(member).bind(domain.as_str()).bind(t.as_str()).execute(&mut *tx).await?;
                        }
                        insert_key_q(domain, key, now).execute(&mut *tx).await?;
                        sqlx::query(BUMP).execute(&mut *tx).await?;
                    }
                }
            }
            tx.commit().await?;
        });
        Ok(added)
    }

    /// One domain, with its tenants and keys (sealed).
    pub async fn sending_domain(&self, domain: &Domain) -> Result<Option<SendingDomain>> {
        let found = self.load_domains(Some(domain.as_str()), None).await?;
        Ok(found.into_iter().next())
    }

    /// Every domain, or (with `tenant`) those the tenant may send as, with
    /// their tenants and keys (sealed). For the operator and the workers.
    pub async fn sending_domains(&self, tenant: Option<&TenantId>) -> Result<Vec<SendingDomain>> {
        self.load_domains(None, tenant.map(TenantId::as_str)).await
    }

    async fn load_domains(&self, domain: Option<&str>, tenant: Option<&str>) -> Result<Vec<SendingDomain>> {
        let filter = "($1 = '' OR d.domain = $1) AND ($2 = '' OR d.domain IN (SELECT domain FROM sending_domain_tenants WHERE tenant_id = $2))";
        let domains_sql =
            format!("SELECT {DOMAIN_COLUMNS} FROM sending_domains d WHERE {filter} ORDER BY d.domain");
        let tenants_sql = format!(
            "SELECT t.domain, t.tenant_id FROM sending_domain_tenants t JOIN sending_domains d ON d.domain = t.domain WHERE {filter} ORDER BY t.tenant_id"
        );
        let keys_sql = format!(
            "SELECT k.domain, k.selector, k.algorithm, k.state, k.public_key, k.sealed_key, k.created_at FROM dkim_keys k JOIN sending_domains d ON d.domain = k.domain WHERE {filter} ORDER BY k.created_at"
        );
        let (d, t) = (domain.unwrap_or(""), tenant.unwrap_or(""));
        let (rows, tenants, keys): (Vec<DomainRow>, Vec<(String, String)>, Vec<KeyRow>) = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let rows = sqlx::query_as(&domains_sql).bind(d).bind(t).fetch_all(&mut *tx).await?;
            let tenants = sqlx::query_as(&tenants_sql).bind(d).bind(t).fetch_all(&mut *tx).await?;
            let keys = sqlx::query_as(&keys_sql).bind(d).bind(t).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            (rows, tenants, keys)
        });
        let mut keys = keys.into_iter().map(parse_key).collect::<Result<Vec<_>>>()?;
        rows.into_iter().map(|r| parse_domain(r, &tenants, &mut keys)).collect()
    }

    /// The domains `tenant` may send as, read as that tenant: on PostgreSQL
    /// under row-level security, as role `mailpipe_api`, which cannot read
    /// a sealed key at all (the keys come back with `sealed_key` empty).
    pub async fn sending_domains_as_tenant(&self, tenant: &TenantId) -> Result<Vec<SendingDomain>> {
        let domains_sql = format!(
            "SELECT {DOMAIN_COLUMNS} FROM sending_domains d JOIN sending_domain_tenants t ON t.domain = d.domain WHERE t.tenant_id = $1 ORDER BY d.domain"
        );
        let tenants_sql = "SELECT domain, tenant_id FROM sending_domain_tenants WHERE tenant_id = $1";
        let keys_sql = "SELECT k.domain, k.selector, k.algorithm, k.state, k.public_key, k.created_at FROM dkim_keys k
                        WHERE k.domain IN (SELECT domain FROM sending_domain_tenants WHERE tenant_id = $1) ORDER BY k.created_at";
        let rows: Vec<DomainRow> = self.as_tenant(tenant, &domains_sql, None).await?;
        let tenants: Vec<(String, String)> = self.as_tenant(tenant, tenants_sql, None).await?;
        let keys: Vec<(String, String, String, String, String, i64)> =
            self.as_tenant(tenant, keys_sql, None).await?;
        let mut keys = keys
            .into_iter()
            .map(|(d, s, a, st, p, c)| parse_key((d, s, a, st, p, Vec::new(), c)))
            .collect::<Result<Vec<_>>>()?;
        rows.into_iter().map(|r| parse_domain(r, &tenants, &mut keys)).collect()
    }

    /// Replaces who may send as a platform domain.
    pub async fn set_domain_tenants(&self, domain: &Domain, tenants: &[TenantId]) -> Result<()> {
        let clear = "DELETE FROM sending_domain_tenants WHERE domain = $1";
        let member =
            "INSERT INTO sending_domain_tenants (domain, tenant_id) VALUES ($1, $2) ON CONFLICT DO NOTHING";
        let touch = "UPDATE sending_domains SET updated_at = $2 WHERE domain = $1";
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(clear).bind(domain.as_str()).execute(&mut *tx).await?;
            for t in tenants {
                sqlx::query(member).bind(domain.as_str()).bind(t.as_str()).execute(&mut *tx).await?;
            }
            sqlx::query(touch).bind(domain.as_str()).bind(now_ms()).execute(&mut *tx).await?;
            sqlx::query(BUMP).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records a check: the status it leads to, and its findings. Returns
    /// false, recording nothing, if the claim checked is no longer the
    /// domain's (removed, or taken over, meanwhile).
    pub async fn record_domain_check(&self, domain: &Domain, check: &CheckRecord<'_>) -> Result<bool> {
        let sql =
            "UPDATE sending_domains SET status = $2, findings = $3, checked_at = $4, failing_since = $5,
                          updated_at = CASE WHEN status = $2 THEN updated_at ELSE $4 END
                   WHERE domain = $1 AND owner = $6 AND created_at = $7";
        // Only a change of status changes what the workers may sign for.
        let bump = "UPDATE sending_domains_revision SET n = n + 1
                    WHERE id = 1 AND EXISTS (SELECT 1 FROM sending_domains
                                             WHERE domain = $1 AND status <> $2 AND owner = $3 AND created_at = $4)";
        let n = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(bump).bind(domain.as_str()).bind(check.status.as_str())
                .bind(check.owner.key()).bind(check.created_at).execute(&mut *tx).await?;
            let n = sqlx::query(sql)
                .bind(domain.as_str()).bind(check.status.as_str()).bind(check.findings)
                .bind(check.checked_at).bind(check.failing_since)
                .bind(check.owner.key()).bind(check.created_at)
                .execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            n
        });
        Ok(n > 0)
    }

    /// Completes a rotation: `selector`, if it is still `pending`, becomes
    /// `active` and the key that was active `previous`, at once. Returns
    /// false, changing nothing, if it was not pending any more (another
    /// check promoted it, or it was retired).
    pub async fn promote_dkim_key(&self, domain: &Domain, selector: &Selector) -> Result<bool> {
        let promote = "UPDATE dkim_keys SET state = 'active', updated_at = $3
                       WHERE domain = $1 AND selector = $2 AND state = 'pending'";
        let demote = "UPDATE dkim_keys SET state = 'previous', updated_at = $3
                      WHERE domain = $1 AND selector <> $2 AND state = 'active'";
        let touch = "UPDATE sending_domains SET updated_at = $2 WHERE domain = $1";
        let now = now_ms();
        let n = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(promote).bind(domain.as_str()).bind(selector.as_str()).bind(now)
                .execute(&mut *tx).await?.rows_affected();
            if n > 0 {
                sqlx::query(demote).bind(domain.as_str()).bind(selector.as_str()).bind(now).execute(&mut *tx).await?;
                sqlx::query(touch).bind(domain.as_str()).bind(now).execute(&mut *tx).await?;
                sqlx::query(BUMP).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            n
        });
        Ok(n > 0)
    }

    /// Adds a key to a domain (a rotation's next key).
    pub async fn add_dkim_key(&self, domain: &Domain, key: &StoredKey) -> Result<()> {
        let touch = "UPDATE sending_domains SET updated_at = $2 WHERE domain = $1";
        let now = now_ms();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            insert_key_q(domain, key, now).execute(&mut *tx).await?;
            sqlx::query(touch).bind(domain.as_str()).bind(now).execute(&mut *tx).await?;
            sqlx::query(BUMP).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes one key of a domain. Returns whether it existed.
    pub async fn delete_dkim_key(&self, domain: &Domain, selector: &Selector) -> Result<bool> {
        let sql = "DELETE FROM dkim_keys WHERE domain = $1 AND selector = $2";
        let touch = "UPDATE sending_domains SET updated_at = $2 WHERE domain = $1";
        let n = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(sql).bind(domain.as_str()).bind(selector.as_str()).execute(&mut *tx).await?.rows_affected();
            sqlx::query(touch).bind(domain.as_str()).bind(now_ms()).execute(&mut *tx).await?;
            sqlx::query(BUMP).execute(&mut *tx).await?;
            tx.commit().await?;
            n
        });
        Ok(n > 0)
    }

    /// Replaces the sealed form of a key (a key-encryption key rotation),
    /// if it is still `old`. Returns whether it did.
    pub async fn reseal_dkim_key(
        &self,
        domain: &Domain,
        selector: &Selector,
        old: &[u8],
        sealed: &[u8],
    ) -> Result<bool> {
        let sql =
            "UPDATE dkim_keys SET sealed_key = $4 WHERE domain = $1 AND selector = $2 AND sealed_key = $3";
        let n = on_pool!(self, p => sqlx::query(sql).bind(domain.as_str()).bind(selector.as_str()).bind(old).bind(sealed)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }

    /// Removes a domain with its keys. Returns whether it existed.
    pub async fn remove_sending_domain(&self, domain: &Domain) -> Result<bool> {
        let n = on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for sql in DEPENDENTS {
                sqlx::query(sql).bind(domain.as_str()).execute(&mut *tx).await?;
            }
            let n = sqlx::query("DELETE FROM sending_domains WHERE domain = $1").bind(domain.as_str())
                .execute(&mut *tx).await?.rows_affected();
            sqlx::query(BUMP).execute(&mut *tx).await?;
            tx.commit().await?;
            n
        });
        Ok(n > 0)
    }

    /// The revision of who may send as what: it moves on with every change
    /// to a domain's status, tenants or keys, so a worker reloads only
    /// when it moved.
    pub async fn sending_domains_version(&self) -> Result<i64> {
        let sql = "SELECT n FROM sending_domains_revision WHERE id = 1";
        Ok(on_pool!(self, p => sqlx::query_scalar(sql).fetch_one(p).await)?)
    }
}

fn insert_key_q<'q, DB: sqlx::Database>(
    domain: &'q Domain,
    key: &'q StoredKey,
    now: i64,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query(
        "INSERT INTO dkim_keys (domain, selector, algorithm, state, public_key, sealed_key, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(domain.as_str())
    .bind(key.selector.as_str())
    .bind(key.algorithm.as_str())
    .bind(key.state.as_str())
    .bind(key.public_key.as_str())
    .bind(key.sealed_key.as_slice())
    .bind(now)
}
