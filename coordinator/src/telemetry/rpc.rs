//! A tower layer around the gRPC services: one `tracing` span per RPC (named by its method,
//! with its gRPC status when the call ends), and the request and response body bytes counted
//! by method. The span lasts as long as the response body, so a streaming call's span covers
//! the whole stream. The binary turns `tracing` spans into OpenTelemetry spans.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tracing::Instrument;

/// Adds [`RpcTelemetryService`] around a service (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcTelemetry;

impl<S> tower::Layer<S> for RpcTelemetry {
    type Service = RpcTelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetryService { inner }
    }
}

/// A gRPC service with a span per call and its bytes counted.
#[derive(Clone, Debug)]
pub struct RpcTelemetryService<S> {
    inner: S,
}

/// The request path as a label: one of the RPCs served, or `"other"`.
fn method_label(path: &str) -> &'static str {
    conclave_proto::METHODS
        .iter()
        .find(|m| **m == path)
        .copied()
        .unwrap_or("other")
}

impl<S, ResBody> tower::Service<http::Request<tonic::body::Body>> for RpcTelemetryService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
{
    type Response = http::Response<Counted<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let method = method_label(req.uri().path());
        let (service, name) = method
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", method));
        let span = tracing::info_span!(
            "rpc",
            otel.name = method.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = name,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let req = req.map(|body| {
            tonic::body::Body::new(Counted {
                inner: body,
                method,
                received: true,
                span: None,
            })
        });
        // The service that was polled ready answers; a fresh clone waits for the next call.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(async move {
            let response = inner.call(req).instrument(span.clone()).await?;
            // An immediate refusal carries its status in the headers (trailers-only).
            if let Some(code) = response.headers().get("grpc-status") {
                record_status(&span, code.as_bytes());
            }
            Ok(response.map(|body| Counted {
                inner: body,
                method,
                received: false,
                span: Some(span),
            }))
        })
    }
}

fn record_status(span: &tracing::Span, code: &[u8]) {
    let Some(code) = std::str::from_utf8(code)
        .ok()
        .and_then(|c| c.parse::<i64>().ok())
    else {
        return;
    };
    span.record("rpc.grpc.status_code", code);
    if code != 0 {
        span.record("otel.status_code", "ERROR");
    }
}

/// A body whose data bytes are counted as they pass; a response body also holds its call's
/// span until the last frame (and records the status its trailers carry).
pub struct Counted<B> {
    inner: B,
    method: &'static str,
    received: bool,
    span: Option<tracing::Span>,
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                super::bytes(self.method, self.received, data.len() as u64);
            } else if let (Some(trailers), Some(span)) = (frame.trailers_ref(), &self.span)
                && let Some(code) = trailers.get("grpc-status")
            {
                record_status(span, code.as_bytes());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_become_labels() {
        assert_eq!(
            method_label("/conclave.v1.Rounds/UploadUpdate"),
            "/conclave.v1.Rounds/UploadUpdate"
        );
        assert_eq!(method_label("/conclave.v1.Rounds/Anything"), "other");
        assert_eq!(method_label(&"/x".repeat(1000)), "other");
    }
}
