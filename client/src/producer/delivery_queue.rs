//! Records sent and not yet answered, oldest first: a bulk sender keeps thousands in flight
//! without a future (or a wakeup) per record, and reads answers in send order.

use std::collections::VecDeque;
use std::time::Instant;

use super::{Delivery, RecordMetadata};
use crate::error::ClientError;

/// A record's answer, taken from a [`DeliveryQueue`].
#[derive(Debug)]
pub struct Answered<T> {
    /// Where the record was stored, or why it was not.
    pub result: Result<RecordMetadata, ClientError>,
    /// When the client received the answer (not when it was read from the queue).
    pub answered_at: Instant,
    /// What the caller stored with the record.
    pub tag: T,
}

/// Deliveries in send order, each with a caller's tag (a send time, an input line number).
#[derive(Debug)]
pub struct DeliveryQueue<T> {
    pending: VecDeque<(Delivery, T)>,
}

impl<T> Default for DeliveryQueue<T> {
    fn default() -> Self {
        Self {
            pending: VecDeque::new(),
        }
    }
}

impl<T> DeliveryQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the newest delivery.
    pub fn push(&mut self, delivery: Delivery, tag: T) {
        self.pending.push_back((delivery, tag));
    }

    /// Deliveries not yet taken.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no delivery is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The oldest delivery's answer if it has arrived; never waits.
    pub fn pop_answered(&mut self) -> Option<Answered<T>> {
        let (result, answered_at) = self.pending.front()?.0.try_wait()?;
        let (_, tag) = self.pending.pop_front()?;
        Some(Answered {
            result,
            answered_at,
            tag,
        })
    }

    /// Waits for the oldest delivery's answer; `None` when the queue is empty.
    pub async fn pop_oldest(&mut self) -> Option<Answered<T>> {
        let (delivery, _) = self.pending.front()?;
        // The answer itself is read below, with the time it arrived.
        let _ = delivery.wait().await;
        self.pop_answered()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::producer::outcome::BatchOutcome;

    fn delivery(outcome: &Arc<BatchOutcome>, index: u32) -> Delivery {
        Delivery {
            outcome: Arc::clone(outcome),
            partition: 0,
            index,
        }
    }

    #[tokio::test]
    async fn answers_come_out_in_send_order_only() {
        let (first, second) = (BatchOutcome::new(), BatchOutcome::new());
        let mut queue = DeliveryQueue::new();
        queue.push(delivery(&first, 0), "a");
        queue.push(delivery(&first, 1), "b");
        queue.push(delivery(&second, 0), "c");
        second.settle(Ok(100));
        assert!(
            queue.pop_answered().is_none(),
            "the oldest is not answered yet"
        );
        first.settle(Ok(10));
        let offsets: Vec<(u64, &str)> = std::iter::from_fn(|| queue.pop_answered())
            .map(|a| (a.result.map(|m| m.offset).unwrap_or(u64::MAX), a.tag))
            .collect();
        assert_eq!(offsets, [(10, "a"), (11, "b"), (100, "c")]);
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn pop_oldest_waits_for_the_answer() {
        let outcome = BatchOutcome::new();
        let mut queue = DeliveryQueue::new();
        queue.push(delivery(&outcome, 0), ());
        let settle = {
            let outcome = Arc::clone(&outcome);
            tokio::spawn(async move { outcome.settle(Err(ClientError::Closed)) })
        };
        let answered = queue.pop_oldest().await.expect("an answer");
        assert!(matches!(answered.result, Err(ClientError::Closed)));
        assert!(queue.pop_oldest().await.is_none());
        settle.await.expect("settled");
    }
}
