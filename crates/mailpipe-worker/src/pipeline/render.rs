//! Stage 3: the message. A registered template is looked up (compiled once
//! per version), then the job is composed: personalised (in a render
//! sandbox process, so that no template can exhaust the worker's memory),
//! links tracked, headers set, DKIM-signed with the key admission gave. A
//! job that cannot render, or renders too large, is dead-lettered.

use std::ops::ControlFlow;
use std::sync::Arc;

use mailpipe_core::{Content, SendJob};
use mailpipe_render::{ComposeError, Composed, DkimKey};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Pipeline, Record, Step, durably, ended};
use crate::templates::Lookup;

impl Pipeline {
    pub(super) async fn render(
        &self,
        rec: &Record<'_>,
        job: &SendJob,
        signer: &Arc<DkimKey>,
        shutdown: &CancellationToken,
    ) -> Step<Composed> {
        let compiled = match &job.content {
            Content::Inline { .. } => None,
            Content::Registered { id: t, version } => {
                let pinned = version.map(|v| i64::from(v.get()));
                let lookup = durably("template", shutdown, || async {
                    Ok(self
                        .templates
                        .get(
                            &self.store,
                            job.tenant_id.as_str(),
                            job.campaign_id.as_str(),
                            t.as_str(),
                            pinned,
                        )
                        .await?)
                })
                .await?;
                match lookup {
                    Lookup::Found(c) => Some(c),
                    Lookup::Unknown => {
                        let detail = match version {
                            None => format!("template {t} is not registered for this campaign"),
                            Some(v) => format!(
                                "template {t} version {v} is not registered for this campaign (or no longer kept)"
                            ),
                        };
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
        // The sandbox failing to start is ours to fix: the job waits. What
        // the templates did is the job's: a dead letter.
        let composed = durably("render", shutdown, || async {
            match self
                .composer
                .compose_job(job, compiled.as_deref(), OffsetDateTime::now_utc(), Some(signer))
                .await
            {
                Ok(c) => Ok(Ok(c)),
                Err(ComposeError::Job(e)) => Ok(Err(e)),
                Err(ComposeError::Unavailable(e)) => Err(e.into()),
            }
        })
        .await?;
        match composed {
            Ok(c) => ControlFlow::Continue(c),
            Err(e) => ended(self.reject(rec, Some(job), e.reason(), &e.to_string(), shutdown).await?),
        }
    }
}
