//! Registered templates, compiled once per (tenant, campaign, template) and
//! version, and kept in a small bounded cache: the latest version for
//! unpinned jobs, each version pinned for the jobs that name one. A cached
//! entry is looked up again once it is `recheck` old: a template registered
//! anew (`mailpipe_store::Store::register_template`, a higher version)
//! reaches the workers within that time, without a restart, and is compiled
//! once; a pinned version never changes, so its lookup only confirms that
//! it is still kept (retention removes superseded versions in time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailpipe_render::{CompiledTemplates, RenderError, TemplateLimits, TemplateSet};
use mailpipe_store::{Store, StoreError};

/// (tenant, campaign, template, the version pinned or `None` for the latest).
type Key = (String, String, String, Option<i64>);

/// A compiled template, its version, and when that version was read.
struct Entry {
    compiled: Arc<CompiledTemplates>,
    version: i64,
    read_at: Instant,
}

pub(crate) struct TemplateCache {
    limits: TemplateLimits,
    capacity: usize,
    recheck: Duration,
    // A std mutex: held only to look up or insert, never across an await.
    map: Mutex<HashMap<Key, Entry>>,
}

pub(crate) enum Lookup {
    Found(Arc<CompiledTemplates>),
    Unknown,
    Invalid(RenderError),
}

impl TemplateCache {
    pub(crate) fn new(limits: TemplateLimits, capacity: usize, recheck: Duration) -> Self {
        Self { limits, capacity, recheck, map: Mutex::new(HashMap::new()) }
    }

    pub(crate) async fn get(
        &self,
        store: &Store,
        tenant: &str,
        campaign: &str,
        template: &str,
        version: Option<i64>,
    ) -> Result<Lookup, StoreError> {
        let key = (tenant.to_owned(), campaign.to_owned(), template.to_owned(), version);
        if let Some(e) = self.lock().get(&key)
            && e.read_at.elapsed() < self.recheck
        {
            return Ok(Lookup::Found(e.compiled.clone()));
        }
        let Some(stored) = store.template(tenant, campaign, template, version).await? else {
            self.lock().remove(&key);
            return Ok(Lookup::Unknown);
        };
        // The same version as cached: read again, not compiled again.
        if let Some(e) = self.lock().get_mut(&key)
            && e.version == stored.version
        {
            e.read_at = Instant::now();
            return Ok(Lookup::Found(e.compiled.clone()));
        }
        let set = TemplateSet { subject: stored.subject, html: stored.html, text: stored.text };
        let compiled = match CompiledTemplates::compile(&set, &self.limits) {
            Ok(c) => Arc::new(c),
            Err(e) => return Ok(Lookup::Invalid(e)),
        };
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            // Campaign templates are few and hot; a full cache is rare enough
            // that starting over beats tracking recency.
            map.clear();
        }
        map.insert(
            key,
            Entry { compiled: compiled.clone(), version: stored.version, read_at: Instant::now() },
        );
        Ok(Lookup::Found(compiled))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}
