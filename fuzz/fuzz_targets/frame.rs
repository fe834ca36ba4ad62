#![no_main]
//! Frames (`protocol::decode_frame`): a byte stream split into typed messages under a limit.
//!
//! Input: two bytes of limit (big-endian, 0..=65535), then the stream. Properties: every frame
//! is exactly the next `1 + declared length` bytes of the stream, within the limit; an
//! incomplete frame leaves the buffer's bytes untouched; an error names the length that broke
//! the rule.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgvane::protocol::{decode_frame, reserve_for_partial, Frame, ProtocolError};

fuzz_target!(|data: &[u8]| {
    let [a, b, stream @ ..] = data else { return };
    let limit = usize::from(u16::from_be_bytes([*a, *b]));
    let mut buf = BytesMut::from(stream);
    let mut consumed = 0;
    loop {
        let rest = &stream[consumed..];
        let declared = rest.get(1..5).map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
        match decode_frame(&mut buf, limit) {
            Ok(Some(frame)) => {
                let declared = declared.expect("a frame has a header");
                let raw = frame.raw();
                assert!((4..=limit).contains(&declared), "declared {declared}, limit {limit}");
                assert_eq!(raw.len(), declared + 1);
                assert_eq!(&raw[..], &rest[..raw.len()]);
                assert_eq!(frame.tag(), raw[0]);
                assert_eq!(frame.body(), &raw[Frame::HEADER_LEN..]);
                consumed += raw.len();
                assert_eq!(&buf[..], &stream[consumed..]);
            }
            Ok(None) => {
                assert_eq!(&buf[..], rest, "an incomplete frame is left as it was");
                if let Some(declared) = declared {
                    assert!((4..=limit).contains(&declared) && rest.len() < declared + 1);
                } else {
                    assert!(rest.len() < Frame::HEADER_LEN);
                }
                reserve_for_partial(&mut buf);
                assert_eq!(&buf[..], rest);
                break;
            }
            Err(ProtocolError::LengthTooSmall(n)) => {
                assert_eq!(Some(n), declared.map(|d| d as i64));
                assert!(n < 4);
                break;
            }
            Err(ProtocolError::LengthTooLarge { len, limit: l }) => {
                assert_eq!((Some(len), l), (declared.map(|d| d as u64), limit as u64));
                assert!(len > l);
                break;
            }
            Err(e) => panic!("unexpected error from the framer: {e}"),
        }
    }
});
