//! What pgvane reads of a server's messages during a session, decoded once per frame.
//!
//! Only the messages that change pgvane's view of the session are decoded; every other one
//! (rows, descriptions, COPY data, notices) is [`BackendMessage::Other`] and forwarded as it
//! came. A DataRow's values are read only when pgvane asked for the row itself.

use super::messages::{parse_command_complete, parse_data_row, parse_parameter_status, parse_ready_for_query, tag};
use super::messages::{ErrorResponse, TransactionStatus};
use super::{Frame, ProtocolError};

/// One server message as the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    /// `S`: a run-time parameter's value.
    ParameterStatus {
        /// Parameter name.
        name: &'a str,
        /// Its value.
        value: &'a str,
    },
    /// `Z`: the server is ready for the next query.
    ReadyForQuery(TransactionStatus),
    /// `C`: a statement completed, with its command tag.
    CommandComplete(&'a str),
    /// `E`: an error (fields parsed: errors are rare and always inspected).
    ErrorResponse(ErrorResponse),
    /// `D`: a row; [`BackendMessage::row_values`] reads it when wanted.
    DataRow(&'a [u8]),
    /// Anything else, by its type byte.
    Other(u8),
}

impl<'a> BackendMessage<'a> {
    /// Decodes a server frame.
    pub fn decode(frame: &'a Frame) -> Result<Self, ProtocolError> {
        let body = frame.body();
        Ok(match frame.tag() {
            tag::PARAMETER_STATUS => {
                let (name, value) = parse_parameter_status(body)?;
                BackendMessage::ParameterStatus { name, value }
            }
            tag::READY_FOR_QUERY => BackendMessage::ReadyForQuery(parse_ready_for_query(body)?),
            tag::COMMAND_COMPLETE => BackendMessage::CommandComplete(parse_command_complete(body)?),
            tag::ERROR_RESPONSE => BackendMessage::ErrorResponse(ErrorResponse::parse(body)?),
            tag::DATA_ROW => BackendMessage::DataRow(body),
            other => BackendMessage::Other(other),
        })
    }

    /// The values of a DataRow (`None` for NULL); empty for any other message.
    pub fn row_values(&self) -> Result<Vec<Option<&'a [u8]>>, ProtocolError> {
        match self {
            BackendMessage::DataRow(body) => parse_data_row(body),
            _ => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::super::decode_frame;
    use super::super::messages::{encode_command_complete, encode_data_row, encode_parameter_status};
    use super::super::messages::{encode_empty, encode_ready_for_query};
    use super::*;

    fn frame(encode: impl FnOnce(&mut BytesMut)) -> Frame {
        let mut buf = BytesMut::new();
        encode(&mut buf);
        decode_frame(&mut buf, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn what_the_session_reads_decodes() {
        let f = frame(|b| encode_parameter_status("TimeZone", "UTC", b));
        assert_eq!(
            BackendMessage::decode(&f).unwrap(),
            BackendMessage::ParameterStatus { name: "TimeZone", value: "UTC" }
        );
        let f = frame(|b| encode_ready_for_query(TransactionStatus::InTransaction, b));
        assert_eq!(
            BackendMessage::decode(&f).unwrap(),
            BackendMessage::ReadyForQuery(TransactionStatus::InTransaction)
        );
        let f = frame(|b| encode_command_complete("SELECT 1", b));
        assert_eq!(BackendMessage::decode(&f).unwrap(), BackendMessage::CommandComplete("SELECT 1"));
        let f = frame(|b| ErrorResponse::error("42P01", "no such table").encode(b));
        let BackendMessage::ErrorResponse(e) = BackendMessage::decode(&f).unwrap() else { panic!("not an error") };
        assert_eq!((e.code(), e.message()), ("42P01", "no such table"));
        let f = frame(|b| encode_data_row(&[Some(b"on"), None], b));
        let row = BackendMessage::decode(&f).unwrap();
        assert_eq!(row.row_values().unwrap(), vec![Some(&b"on"[..]), None]);
        let f = frame(|b| encode_empty(tag::PARSE_COMPLETE, b));
        assert_eq!(BackendMessage::decode(&f).unwrap(), BackendMessage::Other(tag::PARSE_COMPLETE));
    }

    #[test]
    fn malformed_server_messages_are_errors() {
        let f = frame(|b| {
            encode_empty(tag::READY_FOR_QUERY, b);
        });
        assert!(BackendMessage::decode(&f).is_err(), "ReadyForQuery without a status");
        let f = frame(|b| encode_empty(tag::COMMAND_COMPLETE, b));
        assert!(BackendMessage::decode(&f).is_err(), "CommandComplete without a tag");
    }
}
