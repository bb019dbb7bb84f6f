//! What the proxy holds of a client's request body between attempts: a
//! small body of known length is buffered (so it can be sent again to
//! another backend); anything else streams, once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;

use super::ProxyError;
use crate::socket::LastActivity;
use crate::upstream::{AttemptBody, RequestBody, StreamBody, UploadProgress};
use crate::BoxError;

/// See the module doc.
#[derive(Debug)]
pub enum ClientBody {
    Empty,
    Full(Bytes),
    /// Taken by the first attempt.
    Stream(Option<StreamBody>),
}

impl ClientBody {
    /// Buffers `body` when it has a known length of at most
    /// `retry.max_body` and retries are on (within `limit`), else keeps
    /// the stream.
    pub async fn read<B>(
        body: B,
        retry: &config::RetryConfig,
        limit: Duration,
    ) -> Result<Self, ProxyError>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Ok(Self::Empty);
        }
        match body.size_hint().exact() {
            Some(n) if retry.attempts > 0 && n <= retry.max_body => {
                match tokio::time::timeout(limit, body.collect()).await {
                    Ok(Ok(c)) => Ok(Self::Full(c.to_bytes())),
                    Ok(Err(e)) => Err(ProxyError::ClientBody(e.into().to_string())),
                    Err(_) => Err(ProxyError::ClientTimeout(limit)),
                }
            }
            _ => Ok(Self::Stream(Some(body.map_err(Into::into).boxed()))),
        }
    }

    /// Whether another attempt can send this body again.
    pub fn replayable(&self) -> bool {
        !matches!(self, Self::Stream(_))
    }

    /// The body for one attempt and a handle on how its upload goes;
    /// `None` when a streamed body was already sent.
    pub fn attempt(
        &mut self,
        progress: LastActivity,
    ) -> Option<(RequestBody, Arc<UploadProgress>)> {
        let body = match self {
            Self::Empty => AttemptBody::Empty,
            Self::Full(b) => AttemptBody::Full(b.clone()),
            Self::Stream(s) => AttemptBody::Stream(s.take()?),
        };
        Some(RequestBody::new(body, progress))
    }
}
