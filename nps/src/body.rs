//! Streaming body wrappers: frames pass through one at a time (nothing is buffered whole), while
//! the bytes are counted, the request size limit is enforced, and the request is logged when the
//! response body is done.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
///
/// Until a frame of it has been read, it can be taken back with a [`Replay`] handle, to send
/// the request again on another connection (see [`crate::pool`]).
pub struct RequestBody {
    slot: Arc<Mutex<Slot>>,
    count: Arc<AtomicU64>,
    seen: u64,
    limit: u64,
}

/// The client's body, shared between the [`RequestBody`] a connection reads and the [`Replay`]
/// handle of the pool.
struct Slot {
    /// `None` once a [`Replay`] took it back.
    body: Option<Incoming>,
    /// A frame (or the end, or an error) was read from it: it cannot be sent again.
    touched: bool,
}

impl RequestBody {
    /// Wraps the client's body: every data byte is added to `count` (the request's bytes in);
    /// past `limit` bytes (0: no limit) the body fails with [`BodyTooLarge`].
    pub fn new(inner: Incoming, limit: u64, count: Arc<AtomicU64>) -> RequestBody {
        RequestBody { slot: Arc::new(Mutex::new(Slot { body: Some(inner), touched: false })), count, seen: 0, limit }
    }

    /// A handle that can take the body back while none of it has been read.
    pub fn replay(&self) -> Replay {
        Replay { slot: self.slot.clone(), count: self.count.clone(), limit: self.limit }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = {
            let mut slot = self.slot();
            // Taken back: the connection this body was sent on is being dropped, and gets
            // nothing more of it.
            let Some(body) = slot.body.as_mut() else { return Poll::Pending };
            let frame = ready!(Pin::new(body).poll_frame(cx));
            slot.touched = true;
            frame
        };
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
        self.slot().body.as_ref().is_some_and(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.slot().body.as_ref().map(Incoming::size_hint).unwrap_or_default()
    }
}

/// Takes a [`RequestBody`] back from the connection it was given to, as long as not a frame
/// of it has been read (so not a byte of it was sent).
pub struct Replay {
    slot: Arc<Mutex<Slot>>,
    count: Arc<AtomicU64>,
    limit: u64,
}

impl Replay {
    /// The body, whole, for another connection; the [`RequestBody`] it came from then yields
    /// nothing more. `None` if a frame of it was read already, or if `with_content` and the
    /// body is empty (it ended before its first frame).
    pub fn take_unread(&self, with_content: bool) -> Option<RequestBody> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.touched || with_content && slot.body.as_ref().is_none_or(Incoming::is_end_stream) {
            return None;
        }
        let body = slot.body.take()?;
        Some(RequestBody::new(body, self.limit, self.count.clone()))
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
