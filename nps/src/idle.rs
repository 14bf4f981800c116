//! Idle timeouts: a client's HTTP connection with no request in progress (`idle_timeout_ms`;
//! HTTP/1.1 keep-alive and HTTP/2 alike), and a relayed byte stream, WebSocket or TLS
//! passthrough, on which nothing moves either way (`tunnel_idle_timeout_ms`), are closed, so
//! that idle clients do not hold connections (and file descriptors) forever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When something last happened on a connection, and how many requests are in progress on it.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// Milliseconds from `base` to the last activity.
    last: AtomicU64,
    busy: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { base: Instant::now(), last: AtomicU64::new(0), busy: AtomicUsize::new(0) }
    }
}

impl Activity {
    /// Something happened now.
    pub fn touch(&self) {
        let ms = Instant::now().duration_since(self.base).as_millis() as u64;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// A request starts; the connection is not idle until the returned guard is dropped (when
    /// the response body is done).
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    /// Resolves once no request has been in progress, and nothing happened, for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            if self.busy.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(timeout).await;
                continue;
            }
            let due = self.base + Duration::from_millis(self.last.load(Ordering::Relaxed)) + timeout;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// A request in progress on a connection (see [`Activity::begin`]).
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// How a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed (or one closed and the other finished).
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
    /// Reading or writing failed (a reset, most often).
    Failed(io::Error),
}

/// What a relay carried, and how it ended.
#[derive(Debug)]
pub struct Relayed {
    /// Bytes read from the first side (and written to the second).
    pub a_to_b: u64,
    /// Bytes read from the second side (and written to the first).
    pub b_to_a: u64,
    /// Why it stopped.
    pub end: End,
}

/// Copies bytes both ways between `a` and `b` until both are done, one fails, or no byte moves
/// for `idle`.
pub async fn relay<A, B>(a: &mut A, b: &mut B, idle: Duration) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let activity = Activity::default();
    let mut a = Watched { inner: a, read: 0, activity: &activity };
    let mut b = Watched { inner: b, read: 0, activity: &activity };
    let end = {
        let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
        tokio::select! {
            r = copy => match r {
                Ok(_) => End::Closed,
                Err(e) => End::Failed(e),
            },
            _ = activity.idle(idle) => End::Idle,
        }
    };
    Relayed { a_to_b: a.read, b_to_a: b.read, end }
}

/// A stream that counts the bytes read from it and marks each read as activity.
struct Watched<'a, S: ?Sized> {
    inner: &'a mut S,
    read: u64,
    activity: &'a Activity,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Watched<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Watched<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_relay_ends_when_nothing_moves() {
        let (mut a, mut a_far) = tokio::io::duplex(1024);
        let (mut b, mut b_far) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { relay(&mut a, &mut b, Duration::from_millis(200)).await });
        // Traffic keeps it open past the timeout.
        for _ in 0..4 {
            a_far.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            b_far.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let started = Instant::now();
        let r = relay.await.unwrap();
        assert!(matches!(r.end, End::Idle), "{r:?}");
        assert_eq!((r.a_to_b, r.b_to_a), (16, 0));
        assert!(started.elapsed() < Duration::from_millis(400));
    }

    #[tokio::test]
    async fn busy_connections_are_not_idle() {
        let activity = Arc::new(Activity::default());
        let busy = activity.begin();
        let idle = tokio::time::timeout(Duration::from_millis(150), activity.idle(Duration::from_millis(50))).await;
        assert!(idle.is_err(), "idle while a request is in progress");
        drop(busy);
        let started = Instant::now();
        activity.idle(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(45));
    }
}
