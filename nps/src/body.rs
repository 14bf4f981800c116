//! Streaming body wrappers: frames pass through one at a time (nothing is buffered whole), while
//! the bytes are counted, the request size limit is enforced, and the request is logged when the
//! response body is done.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::errors::{BoxBody, BoxError};

/// The request body grew past `max_request_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The configured `max_request_body`, in bytes.
    pub limit: u64,
}

/// The client's request body on its way to the node: counted, and cut off with
/// [`BodyTooLarge`] past the limit (0: no limit).
pub struct RequestBody {
    inner: Incoming,
    count: Arc<AtomicU64>,
    seen: u64,
    limit: u64,
}

impl RequestBody {
    /// Wraps the client's body: every data byte is added to `count` (the request's bytes in);
    /// past `limit` bytes (0: no limit) the body fails with [`BodyTooLarge`].
    pub fn new(inner: Incoming, limit: u64, count: Arc<AtomicU64>) -> RequestBody {
        RequestBody { inner, count, seen: 0, limit }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                let n = data.len() as u64;
                self.seen += n;
                self.count.fetch_add(n, Ordering::Relaxed);
                if self.limit != 0 && self.seen > self.limit {
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: self.limit }))));
                }
            }
        }
        Poll::Ready(frame.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once with the number of body bytes sent, when the response body is done (or dropped).
pub type OnDone = Box<dyn FnOnce(u64) + Send>;

/// The body of every response to a client: counted, with the request's log entry written when
/// it ends.
pub struct ResponseBody {
    inner: BoxBody,
    sent: u64,
    on_done: Option<OnDone>,
}

impl ResponseBody {
    /// Wraps a response body; `on_done` runs once with the bytes sent, when the body ends or is
    /// dropped.
    pub fn new(inner: BoxBody, on_done: OnDone) -> ResponseBody {
        ResponseBody { inner, sent: 0, on_done: Some(on_done) }
    }

    /// Wraps a response body that nothing waits for: bytes are counted but no callback runs.
    pub fn plain(inner: BoxBody) -> ResponseBody {
        ResponseBody { inner, sent: 0, on_done: None }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(done) = self.on_done.take() {
            done(self.sent);
        }
    }
}
