//! The stream adapter: tenant bytes in, the host's archive out, with
//! backpressure all the way (nothing is read ahead of what the consumer
//! takes, and gzip is inflated a little at a time so a bomb cannot fill
//! memory between two polls).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::oneshot;

use super::compression::{self, Compression, PEEK};
use super::gzip::{GzipDecoder, GzipFailure};
use super::parser::Parser;
use super::{ArchiveError, ArchiveLimits, ArchiveSummary};

/// Input chunks handled in one poll without producing output before the
/// stream yields to the executor.
const STEPS_PER_POLL: usize = 64;
/// Compressed bytes inflated per step: at most about 1 MiB of output
/// (deflate's ratio is bounded near 1032:1) waits for the consumer.
const GZIP_STEP: usize = 1024;

/// How the input is decoded.
enum Decode {
    /// Collecting the first bytes, to see what Docker would make of them.
    Sniffing(Vec<Bytes>, usize),
    Plain,
    Gzip(Box<GzipDecoder>),
}

/// The stream returned by [`canonicalize`].
pub struct Canonicalized<S> {
    /// Dropped as soon as it ended or failed, releasing the source early.
    input: Option<Pin<Box<S>>>,
    decode: Decode,
    /// Received but not yet parsed.
    pending: Bytes,
    parser: Parser,
    input_bytes: u64,
    summary_tx: Option<oneshot::Sender<ArchiveSummary>>,
    error: Option<ArchiveError>,
    finished: bool,
    ended: bool,
}

/// Wraps a tenant's `docker save` archive (plain or gzip): yields the
/// archive the host sends to `docker load` instead (module doc), or an
/// `Err` item at the first thing that is refused, after which it ends.
///
/// The receiver gets an [`ArchiveSummary`] once every check passed (before
/// the last bytes are yielded); it reports a closed channel when the
/// archive was refused.
pub fn canonicalize<S, E>(input: S, limits: ArchiveLimits) -> (Canonicalized<S>, oneshot::Receiver<ArchiveSummary>)
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let (tx, rx) = oneshot::channel();
    let stream = Canonicalized {
        input: Some(Box::pin(input)),
        decode: Decode::Sniffing(Vec::new(), 0),
        pending: Bytes::new(),
        parser: Parser::new(limits),
        input_bytes: 0,
        summary_tx: Some(tx),
        error: None,
        finished: false,
        ended: false,
    };
    (stream, rx)
}

impl<S, E> Stream for Canonicalized<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Bytes, ArchiveError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        for _ in 0..STEPS_PER_POLL {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(bytes) = this.parser.pop() {
                return Poll::Ready(Some(Ok(bytes)));
            }
            if let Some(error) = this.error.take() {
                this.ended = true;
                return Poll::Ready(Some(Err(error)));
            }
            if !this.pending.is_empty() {
                if let Err(e) = this.step() {
                    this.fail(e);
                }
                continue;
            }
            if this.finished {
                this.ended = true;
                return Poll::Ready(None);
            }
            let Some(input) = this.input.as_mut() else {
                this.ended = true;
                return Poll::Ready(None);
            };
            match input.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    this.input_bytes += chunk.len() as u64;
                    if let Err(e) = this.receive(chunk) {
                        this.fail(e);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    let error: Box<dyn std::error::Error + Send + Sync> = error.into();
                    this.fail(ArchiveError::Input { message: error.to_string() });
                }
                Poll::Ready(None) => {
                    this.input = None;
                    if let Err(e) = this.end() {
                        this.fail(e);
                    }
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S> Canonicalized<S> {
    /// A chunk arrived: decide the decoding once enough is known.
    fn receive(&mut self, chunk: Bytes) -> Result<(), ArchiveError> {
        let Decode::Sniffing(held, len) = &mut self.decode else {
            self.pending = chunk;
            return Ok(());
        };
        *len += chunk.len();
        held.push(chunk);
        if *len < PEEK {
            return Ok(());
        }
        self.decide()
    }

    /// Chooses plain or gzip from the first bytes (Docker's table).
    fn decide(&mut self) -> Result<(), ArchiveError> {
        let Decode::Sniffing(held, _) = std::mem::replace(&mut self.decode, Decode::Plain) else {
            return Ok(());
        };
        let mut first = Vec::with_capacity(held.iter().map(Bytes::len).sum());
        for b in &held {
            first.extend_from_slice(b);
        }
        match compression::detect(&first[..first.len().min(PEEK)]) {
            None => {}
            Some(Compression::Gzip) => self.decode = Decode::Gzip(Box::new(GzipDecoder::new())),
            Some(format) => return Err(ArchiveError::Compressed { format }),
        }
        self.pending = if held.len() == 1 { held.into_iter().next().unwrap_or_default() } else { Bytes::from(first) };
        Ok(())
    }

    /// Parses (part of) the pending input.
    fn step(&mut self) -> Result<(), ArchiveError> {
        match &mut self.decode {
            Decode::Sniffing(..) => Ok(()),
            Decode::Plain => self.parser.feed(std::mem::take(&mut self.pending)),
            Decode::Gzip(gz) => {
                let n = self.pending.len().min(GZIP_STEP);
                let piece = self.pending.split_to(n);
                let parser = &mut self.parser;
                gz.feed(&piece, &mut |out: &[u8]| parser.feed(Bytes::copy_from_slice(out))).map_err(|e| match e {
                    GzipFailure::Corrupt(reason) => ArchiveError::Gzip { reason },
                    GzipFailure::Sink(e) => e,
                })
            }
        }
    }

    /// The input ended.
    fn end(&mut self) -> Result<(), ArchiveError> {
        if let Decode::Sniffing(..) = self.decode {
            self.decide()?;
        }
        while !self.pending.is_empty() {
            self.step()?;
        }
        let compression = match &self.decode {
            Decode::Gzip(gz) => {
                gz.finish().map_err(|reason| ArchiveError::Gzip { reason })?;
                Some(Compression::Gzip)
            }
            _ => None,
        };
        let summary = self.parser.finish(self.input_bytes, compression)?;
        self.finished = true;
        if let Some(tx) = self.summary_tx.take() {
            // The caller may not care about the summary.
            let _ = tx.send(summary);
        }
        Ok(())
    }

    /// Records the error to yield; nothing more is read or sent.
    fn fail(&mut self, error: ArchiveError) {
        self.input = None;
        self.summary_tx = None;
        self.pending = Bytes::new();
        self.parser.discard_output();
        self.error = Some(error);
    }
}
