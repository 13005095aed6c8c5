//! [`Sized`]: a request body that keeps telling its remaining length.
//!
//! tower-http's `TimeoutBody` (the body timeout every request gets) does not forward
//! `size_hint`, so behind it a body with `Content-Length` looks like one of unknown length. The
//! quota reserves an upload's declared length before reading it (see [`crate::receive`]) and the
//! registry tells an empty `PUT` by it; both read the hint, so it is kept here, counted down as
//! frames pass.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

/// `inner`, reporting the exact length it had when wrapped minus what was read since.
pub struct Sized {
    /// The wrapped body.
    inner: Body,
    /// Bytes still to come when the length was known (`Content-Length`), else `None`.
    remaining: Option<u64>,
}

impl Sized {
    /// Wraps `inner`, whose length was `hint` before any wrapper hid it.
    pub fn new(inner: Body, hint: &SizeHint) -> Sized {
        Sized {
            inner,
            remaining: hint.exact(),
        }
    }
}

impl HttpBody for Sized {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && let Some(left) = self.remaining.as_mut()
        {
            *left = left.saturating_sub(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => self.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_declared_length_survives_a_wrapper_that_hides_it_and_counts_down() {
        let hidden = Body::from_stream(futures::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"de")),
        ]));
        assert_eq!(hidden.size_hint().exact(), None);
        let mut body = Sized::new(hidden, &SizeHint::with_exact(5));
        assert_eq!(body.size_hint().exact(), Some(5));
        let first = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.data_ref().unwrap().len(), 3);
        assert_eq!(body.size_hint().exact(), Some(2));
    }
}
