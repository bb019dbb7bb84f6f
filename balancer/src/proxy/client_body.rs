//! What the proxy holds of a client's request body between attempts: a
//! small body of known length is buffered in memory, a bigger one (up to
//! `buffer_body_file` more) in memory and a file ([`super::buffering`]), so
//! it can be sent again to another backend and no backend waits on a slow
//! upload; anything else streams, once. Either way the body is
//! [`Limited`]: its size, its deadline and its rate (`[limits]`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::buffering::{self, Files, Replay, Spooled, Spooling};
use super::ProxyError;
use crate::upstream::{AttemptBody, BodyLimit, RequestBody, StreamBody, UploadProgress};
use crate::BoxError;

/// A client's request body held to `[limits]`: at most
/// `max_request_body` bytes, done within `upload_timeout`, and after
/// [`config::limits::UPLOAD_GRACE`] never slower on average than
/// `upload_min_rate`. A body that breaks one ends with a [`BodyLimit`]
/// error. A stalled body is caught by a timer set for the moment its
/// average rate would fall below the minimum, so a client sending a few
/// bytes a second cannot hold a backend connection for long.
#[derive(Debug)]
pub struct Limited<B> {
    inner: B,
    max: u64,
    seen: u64,
    start: Instant,
    deadline: Duration,
    min_rate: u64,
    /// Made on the first wait (bodies that arrive whole never need one).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Limited<B> {
    pub fn new(inner: B, limits: &config::Limits) -> Self {
        Self {
            inner,
            max: limits.max_request_body,
            seen: 0,
            start: Instant::now(),
            deadline: limits.upload_timeout,
            min_rate: limits.upload_min_rate,
            timer: None,
        }
    }

    /// The limit broken at `now`, if any.
    fn broken(&self, now: Instant) -> Option<BodyLimit> {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= self.deadline {
            return Some(BodyLimit::Deadline(self.deadline));
        }
        (self.min_rate > 0
            && elapsed >= config::limits::UPLOAD_GRACE
            && (self.seen as f64) < self.min_rate as f64 * elapsed.as_secs_f64())
        .then_some(BodyLimit::TooSlow(self.min_rate))
    }

    /// When to look again if no more bytes come: the deadline, or the
    /// moment the average rate would drop below the minimum.
    fn next_check(&self) -> Instant {
        let deadline = self.start + self.deadline;
        if self.min_rate == 0 {
            return deadline;
        }
        let slow_at = Duration::from_secs_f64(self.seen as f64 / self.min_rate as f64)
            .max(config::limits::UPLOAD_GRACE);
        deadline.min(self.start + slow_at + Duration::from_millis(1))
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.max > 0 && this.seen > this.max {
                        return Poll::Ready(Some(Err(BodyLimit::TooLarge(this.max).into())));
                    }
                }
                if !this.inner.is_end_stream() {
                    if let Some(broken) = this.broken(Instant::now()) {
                        return Poll::Ready(Some(Err(broken.into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                let now = Instant::now();
                if let Some(broken) = this.broken(now) {
                    return Poll::Ready(Some(Err(broken.into())));
                }
                let at = this.next_check();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a failed client body ends with, as the client is told it.
fn body_failed(e: BoxError) -> ProxyError {
    match e.downcast_ref::<BodyLimit>() {
        Some(limit) => ProxyError::BodyLimit(*limit),
        None => ProxyError::ClientBody(e.to_string()),
    }
}

/// See the module doc.
#[derive(Debug)]
pub enum ClientBody {
    Empty,
    Full(Bytes),
    /// Read whole into memory and a file.
    Spooled(Arc<Spooled>),
    /// Taken by the first attempt.
    Stream(Option<StreamBody>),
}

/// How a pool buffers request bodies (`buffer_body`, `buffer_body_file`).
#[derive(Debug)]
pub struct BodyBuffering<'a> {
    pub memory: u64,
    pub file: u64,
    /// `buffer_dir`, the process's file budget and `limits.buffer_files_total`,
    /// lent: a [`Files`] is made only for a body that goes to a file.
    pub dir: &'a Arc<std::path::Path>,
    pub budget: &'a Arc<buffering::FileBudget>,
    pub total: u64,
    /// `balancer_buffer_files_total` and `..._refused_total` for requests.
    pub counters: Option<(&'a prometheus::IntCounter, &'a prometheus::IntCounter)>,
}

impl ClientBody {
    /// Buffers `body` in memory when it has a known length of at most
    /// `plan.memory` (`pool.buffer_body`), or of at most
    /// `retry.max_body` with retries on, reading it within `limit`. A
    /// bigger body, or one of unknown length, of at most `memory + file`
    /// bytes is read whole too, past `memory` into a file; a body over
    /// that (or one the budget has no room for) streams, once, after what
    /// was read of it.
    pub async fn read<B>(
        body: B,
        retry: &config::RetryConfig,
        plan: BodyBuffering<'_>,
        limit: Duration,
    ) -> Result<Self, ProxyError>
    where
        B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Ok(Self::Empty);
        }
        let for_retries = if retry.attempts > 0 {
            retry.max_body
        } else {
            0
        };
        let exact = body.size_hint().exact();
        if let Some(n) = exact {
            if n <= plan.memory.max(for_retries) {
                return match tokio::time::timeout(limit, body.collect()).await {
                    Ok(Ok(c)) => Ok(Self::Full(c.to_bytes())),
                    Ok(Err(e)) => Err(body_failed(e.into())),
                    Err(_) => Err(ProxyError::ClientTimeout(limit)),
                };
            }
        }
        let max = plan.memory.saturating_add(plan.file);
        let fits = exact.is_none_or(|n| n <= max);
        let room = plan.total > 0 && plan.budget.used() < plan.total;
        if plan.file == 0 || !fits {
            return Ok(Self::Stream(Some(body.map_err(Into::into).boxed())));
        }
        if !room {
            if let Some((_, refused)) = plan.counters {
                refused.inc();
            }
            return Ok(Self::Stream(Some(body.map_err(Into::into).boxed())));
        }
        // `Limited` holds the upload to its deadline and rate meanwhile.
        let files = Files {
            dir: Arc::clone(plan.dir),
            budget: Arc::clone(plan.budget),
            total: plan.total,
        };
        let spooled = buffering::spool_request(body, plan.memory, max, &files)
            .await
            .map_err(body_failed)?;
        let (Spooling::Whole(s) | Spooling::Partial(s, _)) = &spooled;
        if s.in_file() {
            if let Some((to_file, _)) = plan.counters {
                to_file.inc();
            }
        }
        Ok(match spooled {
            Spooling::Whole(s) => Self::Spooled(Arc::new(s)),
            Spooling::Partial(s, rest) => Self::Stream(Some(
                buffering::Chain::new(s, rest.map_err(Into::into)).boxed(),
            )),
        })
    }

    /// Whether another attempt can send this body again.
    pub fn replayable(&self) -> bool {
        !matches!(self, Self::Stream(_))
    }

    /// The body for one attempt and a handle on how its upload goes;
    /// `None` when a streamed body was already sent.
    pub fn attempt(&mut self) -> Option<(RequestBody, Arc<UploadProgress>)> {
        let body = match self {
            Self::Empty => AttemptBody::Empty,
            Self::Full(b) => AttemptBody::Full(b.clone()),
            Self::Spooled(s) => AttemptBody::Stream(Replay::new(Arc::clone(s)).boxed()),
            Self::Stream(s) => AttemptBody::Stream(s.take()?),
        };
        Some(RequestBody::new(body))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    /// A body fed by hand: each `tx.send` is one data frame.
    fn fed() -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>,
        impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        (tx, StreamBody::new(Box::pin(frames)))
    }

    fn limits(max: u64, deadline: u64, rate: u64) -> config::Limits {
        config::Limits {
            max_request_body: max,
            upload_timeout: Duration::from_secs(deadline),
            upload_min_rate: rate,
            ..config::Limits::default()
        }
    }

    async fn outcome<B>(body: Limited<B>) -> Result<usize, BodyLimit>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        match body.collect().await {
            Ok(c) => Ok(c.to_bytes().len()),
            Err(e) => Err(*e.downcast_ref::<BodyLimit>().expect("a limit")),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_over_the_size_limit_fails_at_the_byte_that_breaks_it() {
        let (tx, body) = fed();
        let limited = Limited::new(body, &limits(10, 300, 0));
        tx.send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        assert_eq!(outcome(limited).await, Err(BodyLimit::TooLarge(10)));
        let (tx, body) = fed();
        let limited = Limited::new(body, &limits(10, 300, 0));
        tx.send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(outcome(limited).await, Ok(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_when_its_average_falls_below_the_minimum() {
        let (tx, body) = fed();
        let start = Instant::now();
        let limited = Limited::new(body, &limits(0, 300, 100));
        // 2,000 bytes at once, then nothing: the average falls below 100
        // bytes/s at 20 s (after the 10 s grace).
        tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 2000]))))
            .await
            .unwrap();
        assert_eq!(outcome(limited).await, Err(BodyLimit::TooSlow(100)));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(20) && waited < Duration::from_secs(21),
            "{waited:?}"
        );
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_and_a_steady_upload_passes() {
        // 10 bytes a second against a minimum of 100: cut off after the grace.
        let (tx, body) = fed();
        let start = Instant::now();
        let trickle = tokio::spawn(async move {
            for _ in 0..60 {
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        assert_eq!(
            outcome(Limited::new(body, &limits(0, 300, 100))).await,
            Err(BodyLimit::TooSlow(100))
        );
        assert!(
            start.elapsed() <= Duration::from_secs(11),
            "{:?}",
            start.elapsed()
        );
        trickle.abort();

        // 1,000 bytes a second for 30 s: well above the minimum, done.
        let (tx, body) = fed();
        tokio::spawn(async move {
            for _ in 0..30 {
                tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 1000]))))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        assert_eq!(
            outcome(Limited::new(body, &limits(0, 300, 100))).await,
            Ok(30_000)
        );

        // The deadline holds whatever the rate.
        let (tx, body) = fed();
        tokio::spawn(async move {
            for _ in 0..30 {
                if tx
                    .send(Ok(Frame::data(Bytes::from(vec![b'a'; 1000]))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        assert_eq!(
            outcome(Limited::new(body, &limits(0, 5, 0))).await,
            Err(BodyLimit::Deadline(Duration::from_secs(5)))
        );
    }
}
