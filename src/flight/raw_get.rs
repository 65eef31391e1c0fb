//! `do_get` without copying the bodies again: the gRPC frames are written
//! here, each a small head (frame prefix, the `FlightData` fields before the
//! body, the body's tag and length) and the body itself, which hyper hands to
//! the socket as it is: a slice of the arena for a whole table without
//! dictionaries, else the buffer arrow's encoder wrote.
//!
//! Why: tonic encodes every message into a buffer of its own (prost copies
//! `data_body` into it), one more copy of the table than pyarrow's gRPC C++
//! server makes. Measured on the 2-core VM before this path: that copy and
//! the page faults of its fresh buffers were 38% of the server's CPU in a
//! `do_get` of 10M x 12 (1.29 GB), which took 0.76x pyarrow's server's time
//! (`python/bench/bench_flight.py`).
//!
//! ```text
//!  request /arrow.flight.protocol.FlightService/DoGet
//!    -> RawDoGet: the ticket read, then Service::get_stream (role, ticket, lease)
//!         each message -> [head][body] frames, then trailers: grpc-status 0, or
//!         the error's status if the stream fails midway
//!         a refusal before the stream -> its status; a compressed request -> tonic
//!  every other method -> FlightServiceServer, untouched
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow_flight::{FlightData, Ticket};
use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use prost::Message;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;
use tower_service::Service as TowerService;

use super::service::{BoxStream, Outgoing, Service};

const DO_GET: &str = "/arrow.flight.protocol.FlightService/DoGet";
/// Largest do_get request read here (a ticket is a name, a version and a
/// column list); a larger one goes to tonic, which has its own limit.
const REQUEST_MAX: usize = 1 << 20;
/// gRPC's length-prefixed message: compressed flag u8, length u32 (big-endian).
const GRPC_PREFIX: usize = 5;

/// `FlightServiceServer` with `do_get` of whole tables answered by `call`.
#[derive(Clone)]
pub struct RawDoGet<S> {
    inner: S,
    service: Arc<Service>,
}

impl<S> RawDoGet<S> {
    pub fn new(inner: S, service: Arc<Service>) -> RawDoGet<S> {
        RawDoGet { inner, service }
    }
}

impl<S: NamedService> NamedService for RawDoGet<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> TowerService<http::Request<Body>> for RawDoGet<S>
where
    S: TowerService<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != DO_GET {
            return Box::pin(self.inner.call(req));
        }
        // The inner service was made ready for this call; a clone serves the
        // fallback later (tower's rule: take the ready one, leave a clone).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let service = self.service.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, REQUEST_MAX).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return Ok(Status::invalid_argument(format!(
                        "do_get: cannot read the request: {e}"
                    ))
                    .into_http())
                }
            };
            let Some(message) = grpc_message(&bytes) else {
                // Compressed, or not one whole message: tonic's way decides.
                let again = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
                return inner.call(again).await;
            };
            let ticket = match Ticket::decode(message) {
                Ok(ticket) => ticket,
                Err(e) => {
                    return Ok(Status::invalid_argument(format!(
                        "do_get: the ticket does not decode: {e}"
                    ))
                    .into_http())
                }
            };
            let mut request = http::Request::new(ticket);
            *request.headers_mut() = parts.headers.clone();
            match service
                .get_stream(&tonic::Request::from_http(request))
                .await
            {
                Ok(messages) => Ok(response(messages)),
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The protobuf of a request that is exactly one uncompressed gRPC message.
fn grpc_message(bytes: &[u8]) -> Option<&[u8]> {
    let (prefix, message) = bytes.split_at_checked(GRPC_PREFIX)?;
    let len = u32::from_be_bytes(prefix[1..].try_into().ok()?) as usize;
    (prefix[0] == 0 && len == message.len()).then_some(message)
}

/// The gRPC response: headers, each message as head + body, then trailers
/// with `grpc-status: 0`, or the status of the error that ended the stream.
fn response(messages: BoxStream<Outgoing>) -> http::Response<Body> {
    let frames = messages
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .scan(false, |failed, item| {
            let frames: Vec<Frame<Bytes>> = match item {
                _ if *failed => return futures::future::ready(None),
                Some(Ok(m)) => match head(&m.fields, m.body_len()) {
                    Ok(head) => std::iter::once(head)
                        .chain(m.body)
                        .filter(|b| !b.is_empty())
                        .map(Frame::data)
                        .collect(),
                    Err(status) => {
                        *failed = true;
                        vec![Frame::trailers(trailers(&status))]
                    }
                },
                Some(Err(status)) => {
                    *failed = true;
                    vec![Frame::trailers(trailers(&status))]
                }
                None => vec![Frame::trailers(trailers(&Status::ok("")))],
            };
            futures::future::ready(Some(futures::stream::iter(
                frames.into_iter().map(Ok::<_, Infallible>),
            )))
        })
        .flatten();
    let mut response = http::Response::new(Body::new(StreamBody::new(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// `grpc-status` and `grpc-message` of `status`.
fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", http::HeaderValue::from_static("13")); // INTERNAL
    }
    map
}

/// Everything of one gRPC message but its body: the length prefix, the
/// fields of `m` (its `data_body` taken out), and `data_body`'s key and
/// length (field 1000), which the `body_len` bytes of the body then follow.
/// A message of 4 GiB or more cannot be framed (gRPC's length is 32 bits).
fn head(m: &FlightData, body_len: usize) -> Result<Bytes, Status> {
    const DATA_BODY: u32 = 1000;
    let mut fields = BytesMut::with_capacity(m.encoded_len() + 16);
    m.encode(&mut fields).expect("BytesMut grows");
    if body_len > 0 {
        prost::encoding::encode_key(
            DATA_BODY,
            prost::encoding::WireType::LengthDelimited,
            &mut fields,
        );
        prost::encoding::encode_varint(body_len as u64, &mut fields);
    }
    let total = u32::try_from(fields.len() + body_len).map_err(|_| {
        Status::resource_exhausted(format!(
            "do_get: a message of {body_len} bytes is more than a gRPC message can hold (4 GiB)"
        ))
    })?;
    let mut out = BytesMut::with_capacity(GRPC_PREFIX + fields.len());
    out.put_u8(0);
    out.put_u32(total);
    out.extend_from_slice(&fields);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    /// A message written as head + body decodes, with prost, to the message.
    #[test]
    fn head_and_body_decode_as_the_message() {
        for body in [
            Bytes::new(),
            Bytes::from(vec![7u8; 300]),
            Bytes::from(vec![1u8; 70_000]),
        ] {
            let m = FlightData::new()
                .with_data_header(Bytes::from_static(b"header bytes"))
                .with_app_metadata(Bytes::from_static(b"meta"))
                .with_data_body(body.clone());
            let mut empty = m.clone();
            empty.data_body = Bytes::new();
            let mut wire = head(&empty, body.len()).unwrap().to_vec();
            wire.extend_from_slice(&body);
            let message = grpc_message(&wire).expect("one whole message");
            assert_eq!(FlightData::decode(message).unwrap(), m);
        }
    }

    /// The frames of a response: the messages, then the status in trailers
    /// (0 at the end, the error's code when the stream fails midway).
    #[test]
    fn a_response_ends_with_its_status_in_trailers() {
        let m = FlightData::new()
            .with_data_header(Bytes::from_static(b"h"))
            .with_data_body(Bytes::from(vec![3u8; 1000]));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (items, code) in [
            (vec![Ok(m.clone()), Ok(m.clone())], "0"),
            (
                vec![Ok(m.clone()), Err(Status::not_found("gone")), Ok(m.clone())],
                "5",
            ),
        ] {
            let n_ok = items.iter().take_while(|i| i.is_ok()).count();
            let stream: BoxStream<Outgoing> =
                Box::pin(futures::stream::iter(items).map_ok(Outgoing::whole));
            let collected = runtime
                .block_on(response(stream).into_body().collect())
                .unwrap();
            let trailers = collected.trailers().cloned().expect("trailers");
            assert_eq!(trailers["grpc-status"], code);
            let mut wire = collected.to_bytes();
            let mut got = Vec::new();
            while !wire.is_empty() {
                let len = u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
                got.push(FlightData::decode(&wire[5..5 + len]).unwrap());
                wire = wire.slice(5 + len..);
            }
            assert_eq!(got, vec![m.clone(); n_ok], "nothing after the error");
        }
    }

    #[test]
    fn a_message_grpc_cannot_frame_is_an_error() {
        let e = head(&FlightData::new(), 1 << 32).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn only_one_whole_uncompressed_message_is_read_here() {
        assert!(grpc_message(&[0, 0, 0, 0, 2, 8, 1]).is_some());
        assert!(grpc_message(&[1, 0, 0, 0, 2, 8, 1]).is_none(), "compressed");
        assert!(grpc_message(&[0, 0, 0, 0, 3, 8, 1]).is_none(), "short");
        assert!(grpc_message(&[0, 0, 0]).is_none());
    }
}
