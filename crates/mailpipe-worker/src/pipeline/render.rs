//! Stage 3: the message. A registered template is looked up (compiled once
//! per version), then the job is composed: personalised, links tracked,
//! headers set, DKIM-signed with the key admission gave. A job that cannot
//! render is dead-lettered.

use std::ops::ControlFlow;

use mailpipe_core::{Content, SendJob};
use mailpipe_render::{Composed, DkimKey};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Pipeline, Record, Step, durably, ended};
use crate::templates::Lookup;

impl Pipeline {
    pub(super) async fn render(
        &self,
        rec: &Record<'_>,
        job: &SendJob,
        signer: &DkimKey,
        shutdown: &CancellationToken,
    ) -> Step<Composed> {
        let compiled = match &job.content {
            Content::Inline { .. } => None,
            Content::Registered(t) => {
                let lookup = durably("template", shutdown, || async {
                    Ok(self
                        .templates
                        .get(&self.store, job.tenant_id.as_str(), job.campaign_id.as_str(), t.as_str())
                        .await?)
                })
                .await?;
                match lookup {
                    Lookup::Found(c) => Some(c),
                    Lookup::Unknown => {
                        let detail = format!("template {t} is not registered for this campaign");
                        return ended(
                            self.reject(rec, Some(job), "unknown_template", &detail, shutdown).await?,
                        );
                    }
                    Lookup::Invalid(e) => {
                        return ended(
                            self.reject(rec, Some(job), e.reason(), &e.to_string(), shutdown).await?,
                        );
                    }
                }
            }
        };
        match self.composer.compose(job, compiled.as_deref(), OffsetDateTime::now_utc(), Some(signer)) {
            Ok(c) => ControlFlow::Continue(c),
            Err(e) => ended(self.reject(rec, Some(job), e.reason(), &e.to_string(), shutdown).await?),
        }
    }
}
