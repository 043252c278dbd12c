//! The gRPC codec of every `conclave.v1` service: prost's, except that a message that does not
//! decode is INVALID_ARGUMENT naming its type (prost's codec says INTERNAL, which reads as the
//! receiver's fault, and names nothing).

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// [`tonic_prost::ProstCodec`] with decode failures reported as INVALID_ARGUMENT.
#[derive(Debug, Clone, Copy)]
pub struct ConclaveCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ConclaveCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ConclaveCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ConclaveDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ConclaveDecoder(PhantomData)
    }
}

/// Decodes `U`, naming it when the bytes are not one.
#[derive(Debug, Clone, Copy)]
pub struct ConclaveDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for ConclaveDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| malformed::<U>(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The protobuf name of a generated message type, e.g. `conclave.v1.JoinRequest`.
pub fn message_name<U>() -> String {
    let rust = std::any::type_name::<U>();
    format!("conclave.v1.{}", rust.rsplit("::").next().unwrap_or(rust))
}

fn malformed<U>(e: &prost::DecodeError) -> Status {
    Status::invalid_argument(format!(
        "malformed {}: it does not decode as protobuf ({e})",
        message_name::<U>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::JoinRequest;

    #[test]
    fn names_generated_messages_as_protobuf_does() {
        assert_eq!(message_name::<JoinRequest>(), "conclave.v1.JoinRequest");
        let e = JoinRequest::decode(&[0x0a, 0x05, b'a'][..]).unwrap_err();
        let status = malformed::<JoinRequest>(&e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("malformed conclave.v1.JoinRequest")
        );
    }
}
