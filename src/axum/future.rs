//! The response future of [`ApiKeyService`](super::ApiKeyService), without an allocation for
//! the requests decided in `call`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Response};

/// A verification that waits (a store read, a counter engine across the network), boxed: it
/// holds the request, the inner service and the verification's own future.
pub(super) type Waiting<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

pin_project_lite::pin_project! {
    /// The response future of [`ApiKeyService`](super::ApiKeyService): a refusal, ready at
    /// once; the inner service's future, for a request whose key was decided in `call` (a
    /// cached key with its limits kept in process: most requests), with the usage-limit
    /// fields to add to its response; or, for a verification that must wait, a boxed future.
    /// Like any future it must not be polled after it completed: a refusal or a waiting
    /// verification then panics (as an `async` block does); an accepted request passes the
    /// poll to the inner service's future.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Refused { response: Option<Response<B>> },
        Accepted {
            #[pin]
            future: F,
            fields: Option<(HeaderValue, HeaderValue)>,
        },
        Waiting { future: Waiting<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(super) fn refused(response: Response<B>) -> Self {
        ResponseFuture {
            state: State::Refused {
                response: Some(response),
            },
        }
    }

    pub(super) fn accepted(future: F, fields: Option<(HeaderValue, HeaderValue)>) -> Self {
        ResponseFuture {
            state: State::Accepted { future, fields },
        }
    }

    pub(super) fn waiting(future: Waiting<B, E>) -> Self {
        ResponseFuture {
            state: State::Waiting { future },
        }
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Refused { .. } => "refused",
            State::Accepted { .. } => "accepted",
            State::Waiting { .. } => "waiting",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => panic!("`ResponseFuture` polled after completion"),
            },
            StateProj::Accepted { future, fields } => {
                let mut resp = match future.poll(cx) {
                    Poll::Ready(Ok(resp)) => resp,
                    other => return other,
                };
                if let Some(f) = fields.take() {
                    super::rate_headers::insert(resp.headers_mut(), f);
                }
                Poll::Ready(Ok(resp))
            }
            StateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}
