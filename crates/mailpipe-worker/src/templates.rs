//! Registered templates, compiled once per (tenant, campaign, template) and
//! version, and kept in a small bounded cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mailpipe_render::{CompiledTemplates, RenderError, TemplateLimits, TemplateSet};
use mailpipe_store::{Store, StoreError};

type Key = (String, String, String);

pub(crate) struct TemplateCache {
    limits: TemplateLimits,
    capacity: usize,
    // A std mutex: held only to look up or insert, never across an await.
    map: Mutex<HashMap<Key, Arc<CompiledTemplates>>>,
}

pub(crate) enum Lookup {
    Found(Arc<CompiledTemplates>),
    Unknown,
    Invalid(RenderError),
}

impl TemplateCache {
    pub(crate) fn new(limits: TemplateLimits, capacity: usize) -> Self {
        Self { limits, capacity, map: Mutex::new(HashMap::new()) }
    }

    pub(crate) async fn get(
        &self,
        store: &Store,
        tenant: &str,
        campaign: &str,
        template: &str,
    ) -> Result<Lookup, StoreError> {
        let key = (tenant.to_owned(), campaign.to_owned(), template.to_owned());
        if let Some(t) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(Lookup::Found(t.clone()));
        }
        let Some(stored) = store.template(tenant, campaign, template).await? else {
            return Ok(Lookup::Unknown);
        };
        let set = TemplateSet { subject: stored.subject, html: stored.html, text: stored.text };
        let compiled = match CompiledTemplates::compile(&set, &self.limits) {
            Ok(c) => Arc::new(c),
            Err(e) => return Ok(Lookup::Invalid(e)),
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            // Campaign templates are few and hot; a full cache is rare enough
            // that starting over beats tracking recency.
            map.clear();
        }
        map.insert(key, compiled.clone());
        Ok(Lookup::Found(compiled))
    }
}
