//! `sluice.v1.Consumer` with `Subscribe` answered past tonic's encoder, so the stored batches
//! reach HTTP/2 as shared `Bytes` instead of being copied into one buffer per message
//! (issue 18, `sluice_protocol::subscribe_frames`). Every other method, and the request side
//! of `Subscribe`, is tonic's as generated.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::Frame;
use sluice_protocol::MESSAGE_BYTES_MAX;
use sluice_protocol::subscribe_frames;
use sluice_protocol::v1::consumer_server::{Consumer, ConsumerServer};
use sluice_protocol::v1::{SubscribeRequest, SubscribeResponse};
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::service::consumer::ConsumerService;

/// The path tonic routes `Subscribe` on.
const SUBSCRIBE_PATH: &str = "/sluice.v1.Consumer/Subscribe";

/// What a handler answers: an HTTP response whose body is gRPC frames.
type HttpResponse = http::Response<Body>;

/// The Consumer service as the gRPC server mounts it.
#[derive(Clone)]
pub struct ConsumerRoutes {
    generated: ConsumerServer<ConsumerService>,
    service: Arc<ConsumerService>,
}

impl ConsumerRoutes {
    /// Routes for `service`; tonic's generated server takes every method but `Subscribe`.
    pub fn new(service: ConsumerService) -> Self {
        let service = Arc::new(service);
        let generated = ConsumerServer::from_arc(Arc::clone(&service))
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        Self { generated, service }
    }
}

impl NamedService for ConsumerRoutes {
    const NAME: &'static str = <ConsumerServer<ConsumerService> as NamedService>::NAME;
}

impl tower::Service<http::Request<Body>> for ConsumerRoutes {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<http::Request<Body>>::poll_ready(&mut self.generated, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() == SUBSCRIBE_PATH {
            let service = Arc::clone(&self.service);
            Box::pin(async move { Ok(subscribe(&service, request).await) })
        } else {
            Box::pin(tower::Service::<http::Request<Body>>::call(
                &mut self.generated,
                request,
            ))
        }
    }
}

/// Decodes the request stream as tonic would, runs the service's `subscribe`, and streams
/// its responses as shared-batch frames.
async fn subscribe(service: &ConsumerService, request: http::Request<Body>) -> HttpResponse {
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        let message = format!(
            "compression {} is not supported",
            String::from_utf8_lossy(encoding.as_bytes())
        );
        return Status::new(Code::Unimplemented, message).into_http();
    }
    let mut codec = tonic_prost::ProstCodec::<SubscribeResponse, SubscribeRequest>::default();
    let (parts, body) = request.into_parts();
    let requests = Streaming::new_request(codec.decoder(), body, None, Some(MESSAGE_BYTES_MAX));
    let request = tonic::Request::from_http(http::Request::from_parts(parts, requests));
    match service.subscribe(request).await {
        Ok(response) => {
            let (metadata, responses, extensions) = response.into_parts();
            let mut http = http::Response::new(Body::new(SubscribeBody {
                responses,
                chunks: VecDeque::new(),
                ended: false,
            }));
            *http.headers_mut() = metadata.into_headers();
            http.headers_mut().insert(
                http::header::CONTENT_TYPE,
                tonic::metadata::GRPC_CONTENT_TYPE,
            );
            *http.extensions_mut() = extensions;
            http
        }
        Err(status) => status.into_http(),
    }
}

/// The responses of one subscription as gRPC frames, then the status as trailers.
struct SubscribeBody {
    responses: <ConsumerService as Consumer>::SubscribeStream,
    /// Encoded and not yet handed to HTTP/2.
    chunks: VecDeque<Bytes>,
    /// The trailers went out.
    ended: bool,
}

impl SubscribeBody {
    /// The final frame: `status` as gRPC trailers.
    fn trailers(&mut self, status: &Status) -> Frame<Bytes> {
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // A message that cannot be a header value: keep the code, drop the words.
            trailers.clear();
            let plain = Status::new(status.code(), "");
            let _ = plain.add_header(&mut trailers);
        }
        Frame::trailers(trailers)
    }
}

impl http_body::Body for SubscribeBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match ready!(self.responses.as_mut().poll_next(cx)) {
            Some(Ok(response)) => {
                match subscribe_frames::encode(response, MESSAGE_BYTES_MAX, &mut self.chunks) {
                    Ok(()) => match self.chunks.pop_front() {
                        Some(chunk) => return Poll::Ready(Some(Ok(Frame::data(chunk)))),
                        None => Status::internal("an encoded response had no bytes"),
                    },
                    Err(e) => Status::internal(e.to_string()),
                }
            }
            Some(Err(status)) => status,
            None => Status::new(Code::Ok, ""),
        };
        Poll::Ready(Some(Ok(self.trailers(&status))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.chunks.is_empty()
    }
}
