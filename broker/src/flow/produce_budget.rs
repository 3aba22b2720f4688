//! The in-flight produce budget: bytes of produce requests admitted but not yet answered,
//! per broker and per partition. Admission waits for budget; a unary request that cannot
//! get it before its deadline is THROTTLED, and a stream simply stops being read, so HTTP/2
//! flow control pushes back on the client. Memory stays bounded whatever producers do.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A byte budget. Cloning shares it.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    semaphore: Arc<Semaphore>,
    total: u64,
}

/// Why admission failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    /// The budget stayed exhausted for the whole wait.
    Throttled,
    /// The budget was closed (shutdown).
    Closed,
}

impl ByteBudget {
    /// A budget of `total` bytes.
    pub fn new(total: u64) -> Self {
        let permits = usize::try_from(total)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(permits)),
            total,
        }
    }

    /// Bytes admitted and not yet released.
    pub fn in_use(&self) -> u64 {
        self.total.saturating_sub(self.available() as u64)
    }

    /// Bytes available now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    async fn acquire(&self, len: usize) -> Result<OwnedSemaphorePermit, AdmitError> {
        // A request larger than the whole budget takes all of it, so any request can pass.
        let permits = u32::try_from((len as u64).min(self.total).max(1)).unwrap_or(u32::MAX);
        Arc::clone(&self.semaphore)
            .acquire_many_owned(permits)
            .await
            .map_err(|_| AdmitError::Closed)
    }
}

/// Takes `len` bytes from every budget in order (broker first, then partition: one order
/// everywhere, so two requests never wait on each other), waiting at most `wait`
/// (`None`: as long as it takes). The permits return when dropped.
pub async fn admit(
    budgets: &[&ByteBudget],
    len: usize,
    wait: Option<Duration>,
) -> Result<Vec<OwnedSemaphorePermit>, AdmitError> {
    let take = async {
        let mut permits = Vec::with_capacity(budgets.len());
        for budget in budgets {
            permits.push(budget.acquire(len).await?);
        }
        Ok(permits)
    };
    match wait {
        Some(wait) => tokio::time::timeout(wait, take)
            .await
            .map_err(|_| AdmitError::Throttled)?,
        None => take.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exhausted_budget_throttles_until_bytes_are_answered() {
        let broker = ByteBudget::new(1024);
        let partition = ByteBudget::new(512);
        let held = admit(&[&broker, &partition], 400, Some(Duration::from_millis(10)))
            .await
            .expect("fits");
        assert_eq!(partition.available(), 112);
        let throttled = admit(&[&broker, &partition], 400, Some(Duration::from_millis(20))).await;
        assert_eq!(throttled.err(), Some(AdmitError::Throttled));
        assert_eq!(broker.available(), 624, "a throttled request holds nothing");
        drop(held);
        admit(&[&broker, &partition], 400, Some(Duration::from_millis(10)))
            .await
            .expect("fits again");
    }

    #[tokio::test]
    async fn a_request_larger_than_the_budget_takes_all_of_it() {
        let budget = ByteBudget::new(100);
        let all = admit(&[&budget], 10_000, Some(Duration::from_millis(10)))
            .await
            .expect("admitted alone");
        assert_eq!(budget.available(), 0);
        drop(all);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn a_stream_waits_instead_of_failing() {
        let budget = ByteBudget::new(10);
        let held = admit(&[&budget], 10, None).await.expect("first");
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { admit(&[&budget], 10, None).await.map(|p| p.len()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(waiting.await.expect("task"), Ok(1));
    }
}
