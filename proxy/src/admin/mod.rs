//! The admin console: the virtual database `pgvane`, for users in `admin_users`.

use crate::listener::Shared;
use crate::protocol::messages::ErrorResponse;
use crate::session::registry::ClientHandle;
use crate::session::{ClientConn, SessionError};

/// Serves an authenticated admin client until it leaves. AuthenticationOk has not been sent.
pub async fn serve(
    _client: &mut ClientConn,
    _handle: &ClientHandle,
    _shared: &Shared,
    _user: &str,
) -> Result<(), SessionError> {
    Err(SessionError::Refused(ErrorResponse::fatal("0A000", "the admin console is not implemented yet")))
}
