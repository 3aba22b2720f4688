//! A partition's records on their way from its subscription to the consumer's stream, a
//! stored batch's records at a time.
//!
//! Handing records over one by one through a channel was a quarter of a catching-up
//! consumer's CPU (sends, permits, wake-ups per 1 KiB record; docs/benchmarks.md, "Consume
//! path, second round"). The bound stays in records: at most `buffer_records` wait, and one
//! batch beyond when a single batch holds more.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::consumer::{ConsumerRecord, RecordSink};
use crate::error::ClientError;

/// Records sent together, and the room they take until the stream has handed them all out.
type Chunk = (
    Result<Vec<ConsumerRecord>, ClientError>,
    OwnedSemaphorePermit,
);

/// A sending end and a receiving end with room for `buffer_records` records.
pub(crate) fn channel(buffer_records: usize) -> (BatchSender, RecordReceiver) {
    let most = buffer_records.clamp(1, Semaphore::MAX_PERMITS);
    let room = Arc::new(Semaphore::new(most));
    let (tx, rx) = mpsc::unbounded_channel();
    (
        BatchSender {
            tx,
            room: Arc::clone(&room),
            most,
        },
        RecordReceiver {
            rx,
            room,
            current: None,
        },
    )
}

/// The subscription's end.
pub(crate) struct BatchSender {
    tx: mpsc::UnboundedSender<Chunk>,
    room: Arc<Semaphore>,
    /// The room in all: a larger batch waits for all of it, not for more.
    most: usize,
}

impl BatchSender {
    /// Waits for room, then sends; false once the stream is gone.
    async fn send_chunk(&self, chunk: Result<Vec<ConsumerRecord>, ClientError>) -> bool {
        let wanted = chunk.as_ref().map_or(1, Vec::len).clamp(1, self.most);
        let Ok(wanted) = u32::try_from(wanted) else {
            return false;
        };
        match Arc::clone(&self.room).acquire_many_owned(wanted).await {
            Ok(permit) => self.tx.send((chunk, permit)).is_ok(),
            // Closed: the stream was dropped.
            Err(_) => false,
        }
    }
}

impl RecordSink for BatchSender {
    async fn send(&self, item: Result<ConsumerRecord, ClientError>) -> bool {
        self.send_chunk(item.map(|record| vec![record])).await
    }

    async fn send_batch(&self, records: Vec<ConsumerRecord>) -> bool {
        self.send_chunk(Ok(records)).await
    }
}

/// The stream's end: records one at a time, in the order sent.
pub(crate) struct RecordReceiver {
    rx: mpsc::UnboundedReceiver<Chunk>,
    room: Arc<Semaphore>,
    /// The chunk being handed out; its room is freed when it is done.
    current: Option<(std::vec::IntoIter<ConsumerRecord>, OwnedSemaphorePermit)>,
}

impl Stream for RecordReceiver {
    type Item = Result<ConsumerRecord, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some((records, _room)) = self.current.as_mut() {
                let next = records.next();
                if records.len() == 0 {
                    // The room is free as soon as the last record is out, not at the next poll.
                    self.current = None;
                }
                if let Some(record) = next {
                    return Poll::Ready(Some(Ok(record)));
                }
            }
            match ready!(self.rx.poll_recv(cx)) {
                None => return Poll::Ready(None),
                Some((Ok(records), room)) => self.current = Some((records.into_iter(), room)),
                Some((Err(e), _room)) => return Poll::Ready(Some(Err(e))),
            }
        }
    }
}

impl Drop for RecordReceiver {
    fn drop(&mut self) {
        // A sender waiting for room learns that nobody reads any more.
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn record(offset: u64) -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("t"),
            partition: 0,
            offset,
            timestamp: 0,
            key: None,
            value: None,
            headers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn records_come_out_one_at_a_time_in_order_and_room_is_bounded() {
        let (tx, mut rx) = channel(4);
        assert!(tx.send_batch((0..3).map(record).collect()).await);
        // One record of room left: a batch of two waits for the stream.
        let waiting = tokio::spawn(async move {
            let sent = tx.send_batch((3..5).map(record).collect()).await;
            (sent, tx)
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room for two more");
        for expected in 0..5 {
            let got = rx.next().await.expect("a record").expect("ok");
            assert_eq!(got.offset, expected);
        }
        let (sent, tx) = waiting.await.expect("sender");
        assert!(sent);
        // A batch larger than all the room still goes, once all of it is free.
        assert!(tx.send_batch((5..15).map(record).collect()).await);
        let rest: Vec<u64> = rx
            .by_ref()
            .take(10)
            .map(|r| r.expect("ok").offset)
            .collect()
            .await;
        assert_eq!(rest, (5..15).collect::<Vec<_>>());
        assert!(tx.send(Err(ClientError::Closed)).await);
        assert!(rx.next().await.expect("the error").is_err());
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_learns_the_stream_is_gone() {
        let (tx, rx) = channel(1);
        assert!(tx.send_batch(vec![record(0)]).await);
        let waiting = tokio::spawn(async move { tx.send_batch(vec![record(1)]).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(!waiting.await.expect("sender"), "false once nobody reads");
    }
}
