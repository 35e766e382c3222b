//! SDK errors turned into the store's small [`StoreError`] enum, with messages of one line.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use tracing::debug;

use crate::store::StoreError;

/// One place that turns SDK errors into the store's small enum, with a message of one
/// line: what the server or the network said. The SDK's full error (which can run to a
/// kilobyte of debug output) goes to the debug log only. No request headers reach either,
/// so no credentials or signatures are logged.
pub(super) fn map_err<E, R>(err: SdkError<E, R>, target: &str) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus + Send + Sync + 'static,
{
    debug!(%target, error = %DisplayErrorContext(&err), "S3 request failed");
    let status = err.raw_response().map(|r| r.status_code());
    let msg = format!("{target}: {}", describe(&err, status));
    match (&err, status) {
        (_, Some(404)) => StoreError::NotFound(target.to_string()),
        (_, Some(403)) => StoreError::AccessDenied(msg),
        // 409: a conditional PUT racing another on the same key (S3's
        // ConditionalRequestConflict); like 412, someone else's write came first.
        (_, Some(412) | Some(409)) => StoreError::PreconditionFailed(target.to_string()),
        (_, Some(429)) | (_, Some(503)) => StoreError::Throttled(msg),
        (_, Some(s)) if s >= 500 => StoreError::Transient(msg),
        (SdkError::DispatchFailure(_), _) if credentials_error(&err).is_some() => {
            StoreError::NoCredentials(msg)
        }
        (SdkError::DispatchFailure(d), _) if d.is_user() => StoreError::Other(msg),
        (SdkError::TimeoutError(_), _) | (SdkError::DispatchFailure(_), _) => {
            StoreError::NoAnswer(msg)
        }
        // The server answered something unreadable: only a cut-off body is worth retrying.
        (SdkError::ResponseError(_), _) if io_error(&err) => StoreError::Transient(msg),
        _ => StoreError::Other(msg),
    }
}

/// What went wrong, in one line: the server's error code and message, or the innermost
/// cause of a network failure.
fn describe<E, R>(err: &SdkError<E, R>, status: Option<u16>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(s) => {
            let e = s.err();
            match (e.code(), e.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => match status {
                    Some(st) => format!("HTTP {st}"),
                    None => "the server refused the request".into(),
                },
            }
        }
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(d) => {
            if let Some(c) = credentials_error(err) {
                return format!("no usable credentials: {c}");
            }
            let root = root_cause(err);
            if d.is_timeout() {
                format!("connection timed out ({root})")
            } else if d.is_io() {
                format!("network error: {root}")
            } else {
                root
            }
        }
        SdkError::ResponseError(_) => format!("unreadable response: {}", root_cause(err)),
        _ => root_cause(err),
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn credentials_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

fn io_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<std::io::Error>() {
            return true;
        }
        cur = e.source();
    }
    false
}

pub(super) trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}
