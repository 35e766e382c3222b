//! The writes the shared cache tier needs: PUT of a whole object (only if absent) and
//! DELETE of many. Reads of the origin never get here.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::S3Store;
use super::errors::map_err;
use crate::store::metrics::Op;
use crate::store::{Put, StoreError, StoreResult, s3_url};

/// DeleteObjects takes at most this many keys per request.
const DELETE_BATCH: usize = 1000;

impl S3Store {
    pub(super) async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        mode: Put,
    ) -> StoreResult<bool> {
        let target = s3_url(bucket, key);
        // The server checks the body against it and keeps it for GETs that ask.
        let sha256 = aws_smithy_types::base64::encode(Sha256::digest(&body));
        let sent = self
            .call(Op::Put, &target, Some(bucket), || async {
                let mut req = self
                    .client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .checksum_sha256(&sha256)
                    .body(ByteStream::from(body.clone()));
                if mode == Put::IfAbsent {
                    req = req.if_none_match("*");
                }
                req.send().await.map_err(|e| map_err(e, &target))
            })
            .await;
        match sent {
            Ok(_) => Ok(true),
            // 412: someone else's PUT of this key came first.
            Err(StoreError::PreconditionFailed(_)) if mode == Put::IfAbsent => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn delete(&self, bucket: &str, keys: &[String]) -> StoreResult<()> {
        let target = format!("s3://{bucket}");
        for batch in keys.chunks(DELETE_BATCH) {
            let ids = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Other(format!("{target}: {e}")))?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| StoreError::Other(format!("{target}: {e}")))?;
            let out = self
                .call(Op::Delete, &target, Some(bucket), || async {
                    self.client
                        .delete_objects()
                        .bucket(bucket)
                        .delete(delete.clone())
                        .send()
                        .await
                        .map_err(|e| map_err(e, &target))
                })
                .await?;
            if let Some(e) = out.errors().first() {
                return Err(StoreError::Other(format!(
                    "{}: {} of {} deletes failed, the first: {}",
                    s3_url(bucket, e.key().unwrap_or("?")),
                    out.errors().len(),
                    batch.len(),
                    e.message().or(e.code()).unwrap_or("no reason given")
                )));
            }
        }
        Ok(())
    }
}
