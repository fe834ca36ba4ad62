//! What a policy is told about a statement.

/// Which protocol message carried the SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// A simple-protocol Query message. Its SQL may hold several statements separated by
    /// semicolons (see [`crate::sql::statements`]).
    SimpleQuery,
    /// An extended-protocol Parse message: exactly one statement, which may use parameters
    /// `$1`, `$2`, … A rewrite must keep using the same parameters.
    Parse {
        /// The prepared statement's name; empty for the unnamed statement.
        statement: String,
    },
}

/// What pgvane knows about the client and the SQL when it asks for a verdict.
///
/// Natively (in unit tests) build one with [`Context::query`] or [`Context::parse`] and the
/// `with_*` methods; every field not set is empty, `false` or zero.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Context {
    /// The user the client authenticated as.
    pub user: String,
    /// The database the client connected to: a `[databases]` entry.
    pub database: String,
    /// The `application_name` the client sent at startup, empty if none.
    pub application_name: String,
    /// The client's IP address in text form, without the port (`192.0.2.7`, `2001:db8::1`).
    pub client_addr: String,
    /// pgvane's process ID for the client connection (its BackendKeyData PID, the `pid` column
    /// of SHOW CLIENTS): the same for every statement of one client connection.
    pub session_id: u32,
    /// The SQL text, as sent by the client or rewritten by an earlier plugin in the chain.
    pub sql: String,
    /// True when the client is inside a transaction block (its last ReadyForQuery said "in
    /// transaction" or "failed transaction"). The statement then runs where the transaction
    /// runs: a route that differs is ignored.
    pub in_transaction: bool,
    /// Which message carried [`Context::sql`].
    pub message: Message,
}

impl Context {
    /// A context for a simple-protocol Query carrying `sql`; everything else empty.
    pub fn query(sql: impl Into<String>) -> Self {
        Context {
            user: String::new(),
            database: String::new(),
            application_name: String::new(),
            client_addr: String::new(),
            session_id: 0,
            sql: sql.into(),
            in_transaction: false,
            message: Message::SimpleQuery,
        }
    }

    /// A context for a Parse of the prepared statement `statement` (empty for the unnamed one)
    /// carrying `sql`; everything else empty.
    pub fn parse(statement: impl Into<String>, sql: impl Into<String>) -> Self {
        Context { message: Message::Parse { statement: statement.into() }, ..Context::query(sql) }
    }

    /// Sets [`Context::user`].
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Sets [`Context::database`].
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = database.into();
        self
    }

    /// Sets [`Context::application_name`].
    pub fn with_application_name(mut self, application_name: impl Into<String>) -> Self {
        self.application_name = application_name.into();
        self
    }

    /// Sets [`Context::client_addr`].
    pub fn with_client_addr(mut self, client_addr: impl Into<String>) -> Self {
        self.client_addr = client_addr.into();
        self
    }

    /// Sets [`Context::session_id`].
    pub fn with_session_id(mut self, session_id: u32) -> Self {
        self.session_id = session_id;
        self
    }

    /// Sets [`Context::in_transaction`].
    pub fn in_transaction(mut self, in_transaction: bool) -> Self {
        self.in_transaction = in_transaction;
        self
    }

    /// True for a Parse message.
    pub fn is_parse(&self) -> bool {
        matches!(self.message, Message::Parse { .. })
    }
}
