//! `s3cachefs shared gc`: keeps a shared cache tier within its size and age.

use crate::cache::shared::gc::{self, Limits, Plan};
use crate::store::{ObjectStore, S3Options, S3Store, s3_url};

use super::{AdminError, count, human_bytes};

#[derive(Debug, Clone)]
pub struct GcSettings {
    pub bucket: String,
    pub prefix: String,
    pub limits: Limits,
    pub dry_run: bool,
    /// How to reach the tier's store.
    pub s3: S3Options,
}

/// Lists the tier, deletes what the limits say (unless a dry run) and says what it did.
pub async fn gc(s: &GcSettings) -> Result<String, AdminError> {
    let store = S3Store::new(&s.s3).await;
    let plan = gc::collect(
        &store as &dyn ObjectStore,
        &s.bucket,
        &s.prefix,
        s.limits,
        s.dry_run,
    )
    .await
    .map_err(|e| AdminError::Other(format!("{}: {e}", s3_url(&s.bucket, &s.prefix))))?;
    Ok(render(s, &plan))
}

fn render(s: &GcSettings, p: &Plan) -> String {
    let verb = if s.dry_run { "would delete" } else { "deleted" };
    format!(
        "{}: {verb} {} of {} ({}); {} {} kept ({})\n",
        s3_url(&s.bucket, &s.prefix),
        count(p.delete.len() as u64, "block", "blocks"),
        count(
            p.versions_deleted as u64,
            "object version",
            "object versions"
        ),
        human_bytes(p.bytes_deleted),
        count(p.versions_kept as u64, "object version", "object versions"),
        if p.versions_kept == 1 { "is" } else { "are" },
        human_bytes(p.bytes_kept),
    )
}
