//! A circuit breaker per endpoint: once a request could not get an answer after all its
//! attempts, the endpoint counts as unreachable and further requests fail at once, instead
//! of each waiting out its own timeouts, until a background probe gets an answer again.
//! So while S3 is down, cached files keep opening at local speed and everything else
//! fails fast; when it is back, the mount notices by itself.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{debug, info, warn};

/// How often an unreachable endpoint is asked again.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe waits for its answer.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Breaker {
    /// For the log: the endpoint URL, or "AWS S3".
    endpoint: String,
    /// The store is the shared cache tier, whose own breaker (`cache/shared`) tells the
    /// user what it means: this one only logs at debug.
    quiet: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Since when the endpoint is unreachable; `None` while it answers.
    down_since: Option<Instant>,
}

impl Breaker {
    pub(crate) fn new(endpoint: &str) -> Breaker {
        Breaker {
            endpoint: endpoint.to_string(),
            quiet: false,
            state: Mutex::new(State::default()),
        }
    }

    /// A breaker that logs only at debug (see `quiet`).
    pub(crate) fn quiet(endpoint: &str) -> Breaker {
        Breaker {
            quiet: true,
            ..Breaker::new(endpoint)
        }
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state.lock().down_since.is_some()
    }

    /// The endpoint answered (whatever it said).
    pub(crate) fn answered(&self) {
        let was = self.state.lock().down_since.take();
        if let Some(since) = was {
            if self.quiet {
                debug!(endpoint = %self.endpoint, "reachable again");
                return;
            }
            info!(
                endpoint = %self.endpoint,
                down_for_s = since.elapsed().as_secs(),
                "S3 is reachable again"
            );
        }
    }

    /// A request got no answer after all its attempts. Returns true when this opened the
    /// breaker (the caller starts the probe).
    pub(crate) fn unreachable(&self, why: &str) -> bool {
        let mut st = self.state.lock();
        if st.down_since.is_some() {
            return false;
        }
        st.down_since = Some(Instant::now());
        drop(st);
        if self.quiet {
            debug!(endpoint = %self.endpoint, error = %why, "unreachable");
            return true;
        }
        warn!(
            endpoint = %self.endpoint,
            error = %why,
            "S3 is unreachable: serving cached files and the last listings, failing other \
             reads at once; checking again every {}s",
            PROBE_INTERVAL.as_secs()
        );
        true
    }

    /// What a request refused while the breaker is open fails with.
    pub(crate) fn refusal(&self, what: &str) -> String {
        let secs = self
            .state
            .lock()
            .down_since
            .map_or(0, |t| t.elapsed().as_secs());
        format!(
            "{what}: {} has been unreachable for {secs}s (checked every {}s)",
            self.endpoint,
            PROBE_INTERVAL.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_once_and_closes_on_an_answer() {
        let b = Breaker::new("http://x");
        assert!(!b.is_open());
        b.answered();
        assert!(b.unreachable("refused"));
        assert!(b.is_open());
        assert!(!b.unreachable("refused again"), "already open");
        assert!(
            b.refusal("GET s3://b/k")
                .contains("http://x has been unreachable")
        );
        b.answered();
        assert!(!b.is_open());
        assert!(b.unreachable("down again"));
    }
}
