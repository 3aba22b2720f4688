//! The answer of one batch, shared by every record in it: a record's `send` waits on its
//! batch's outcome instead of owning a channel of its own.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::Notify;

use crate::error::ClientError;

/// Set once, to the batch's base offset or its error and when it was answered; read by any
/// number of waiters.
#[derive(Debug, Default)]
pub(super) struct BatchOutcome {
    result: OnceLock<(Result<u64, ClientError>, Instant)>,
    settled: Notify,
}

impl BatchOutcome {
    /// An unsettled outcome.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Sets the result; later calls are ignored (the first answer is the batch's answer).
    pub(super) fn settle(&self, result: Result<u64, ClientError>) {
        if self.result.set((result, Instant::now())).is_ok() {
            self.settled.notify_waiters();
        }
    }

    /// Whether the result is set.
    pub(super) fn is_settled(&self) -> bool {
        self.result.get().is_some()
    }

    /// The result and when it was set, if it is.
    pub(super) fn get(&self) -> Option<(&Result<u64, ClientError>, Instant)> {
        self.result.get().map(|(result, at)| (result, *at))
    }

    /// Waits for the result.
    pub(super) async fn wait(&self) -> Result<u64, ClientError> {
        loop {
            // Registered before the check, so a settle between the check and the await
            // still wakes this waiter.
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some((result, _)) = self.result.get() {
                return result.clone();
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_before_and_after_settle_see_the_first_result() {
        let outcome = BatchOutcome::new();
        let early = {
            let outcome = Arc::clone(&outcome);
            tokio::spawn(async move { outcome.wait().await })
        };
        tokio::task::yield_now().await;
        outcome.settle(Ok(42));
        outcome.settle(Err(ClientError::Closed));
        assert!(matches!(early.await, Ok(Ok(42))));
        assert!(matches!(outcome.wait().await, Ok(42)));
    }
}
