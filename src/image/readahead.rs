//! A bounded read-ahead: a byte stream driven on its own task.
//!
//! Loading a Glance image runs three kinds of work on every byte: the
//! download (TLS, HTTP), the hash check against Glance's `os_hash_value`,
//! and the canonicalizer feeding `docker load`. Polled as one stream they
//! take turns: while the hash runs nothing is sent to Docker, and while
//! Docker's socket is full nothing is downloaded. Driving the download and
//! its hash on a task of their own lets the two halves overlap on a
//! multi-core host.
//!
//! Memory stays bounded: the task is at most `chunks` chunks ahead of the
//! consumer (each chunk is what the HTTP client read at once), and it stops
//! as soon as the consumer drops the stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// One message from the task: a chunk, an error, or the clean end (which
/// tells an end apart from a task that died without finishing).
enum Item {
    Data(Result<Bytes, std::io::Error>),
    End,
}

/// Drives `input` on a new task, at most `chunks` chunks ahead of the
/// consumer. Must be called within a Tokio runtime.
pub fn read_ahead<S>(input: S, chunks: usize) -> ReadAhead
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(chunks.max(1));
    let task = tokio::spawn(async move {
        let mut input = std::pin::pin!(input);
        while let Some(item) = input.next().await {
            let failed = item.is_err();
            if tx.send(Item::Data(item)).await.is_err() || failed {
                return;
            }
        }
        let _ = tx.send(Item::End).await;
    });
    ReadAhead { rx, task: task.abort_handle(), ended: false }
}

/// The stream returned by [`read_ahead`]: the input's items, in order.
pub struct ReadAhead {
    rx: mpsc::Receiver<Item>,
    task: AbortHandle,
    ended: bool,
}

impl Stream for ReadAhead {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Item::Data(item))) => {
                if item.is_err() {
                    self.ended = true;
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(Some(Item::End)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            // The task is gone without saying the input ended (it panicked
            // or was cancelled): the data is incomplete, never a clean end.
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Err(std::io::Error::other("the download task ended before the data did"))))
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn chunks(n: usize) -> Vec<Result<Bytes, std::io::Error>> {
        (0..n).map(|i| Ok(Bytes::from(vec![i as u8; 3]))).collect()
    }

    #[tokio::test]
    async fn items_arrive_in_order_and_the_end_is_clean() {
        let out: Vec<_> = read_ahead(futures::stream::iter(chunks(100)), 4).collect().await;
        assert_eq!(out.len(), 100);
        for (i, item) in out.into_iter().enumerate() {
            assert_eq!(item.unwrap(), Bytes::from(vec![i as u8; 3]));
        }
    }

    #[tokio::test]
    async fn an_error_ends_the_stream() {
        let input = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"a")),
            Err(std::io::Error::other("cut")),
            Ok(Bytes::from_static(b"never")),
        ]);
        let out: Vec<_> = read_ahead(input, 4).collect().await;
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].as_ref().unwrap_err().to_string(), "cut");
    }

    #[tokio::test]
    async fn the_task_stays_a_bounded_number_of_chunks_ahead() {
        let produced = Arc::new(AtomicUsize::new(0));
        let seen = produced.clone();
        let input = futures::stream::iter(chunks(1000)).inspect(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        let mut s = read_ahead(input, 4);
        assert!(s.next().await.is_some());
        // Let the task run as far as it can.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        // 4 queued, one taken, one held by a blocked send.
        assert!(produced.load(Ordering::SeqCst) <= 6, "{}", produced.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_dropped_consumer_stops_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        struct Guard(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Guard {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let guard = Guard(Some(tx));
        // A download that never sends anything.
        let input = futures::stream::pending::<Result<Bytes, std::io::Error>>().inspect(move |_| {
            let _ = &guard;
        });
        drop(read_ahead(input, 4));
        // The task, and the stream it owns, are dropped.
        tokio::time::timeout(std::time::Duration::from_secs(5), rx).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_task_that_dies_is_not_a_clean_end() {
        let input = futures::stream::iter(vec![Ok(Bytes::from_static(b"a"))])
            .chain(futures::stream::poll_fn(|_| -> Poll<Option<Result<Bytes, std::io::Error>>> { panic!("boom") }));
        let out: Vec<_> = read_ahead(input, 4).collect().await;
        assert_eq!(out.len(), 2);
        assert!(out[1].as_ref().unwrap_err().to_string().contains("ended before"));
    }
}
