#![no_main]
//! Startup packets (`protocol::decode_startup`): StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest.
//!
//! Properties: a decoded packet is exactly its declared length (8..=10 000) and is consumed
//! whole; re-encoding it with pgvane's encoders gives the same bytes (SSLRequest,
//! CancelRequest, and a 3.0 StartupMessage); parameter names are never empty; an incomplete
//! packet leaves the buffer untouched.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgvane::protocol::messages::{encode_cancel, encode_ssl_request, encode_startup};
use pgvane::protocol::{decode_startup, Startup, MAX_STARTUP_PACKET_BYTES};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let declared = data.get(..4).map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
    match decode_startup(&mut buf) {
        Ok(Some(startup)) => {
            let len = declared.expect("a packet has a length");
            assert!((8..=MAX_STARTUP_PACKET_BYTES).contains(&len));
            let packet = &data[..len];
            assert_eq!(&buf[..], &data[len..], "exactly the packet is consumed");
            let mut again = BytesMut::new();
            match &startup {
                Startup::SslRequest => {
                    encode_ssl_request(&mut again);
                    assert_eq!(&again[..], packet);
                }
                Startup::Cancel { pid, secret } => {
                    encode_cancel(*pid, *secret, &mut again);
                    assert_eq!(&again[..], packet);
                }
                Startup::GssEncRequest => assert_eq!(len, 8),
                Startup::Startup { major, minor, params } => {
                    for (name, value) in params.iter() {
                        assert!(!name.is_empty());
                        assert!(!name.contains('\0') && !value.contains('\0'));
                        assert_eq!(params.get(name).is_some(), true);
                    }
                    if (*major, *minor) == (3, 0) {
                        encode_startup(params.iter(), &mut again);
                        assert_eq!(&again[..], packet, "StartupMessage round trip");
                    }
                }
            }
        }
        Ok(None) => {
            assert_eq!(&buf[..], data);
            if let Some(len) = declared {
                assert!((8..=MAX_STARTUP_PACKET_BYTES).contains(&len) && data.len() < len);
            }
        }
        Err(_) => assert!(declared.is_some()),
    }
});
