//! The Postgres wire door (psql, Power BI, Excel through ODBC, DBeaver, psycopg), on
//! `pgwire`, with `arrow-pg` turning Arrow batches into rows.
//!
//! Login: any user name, a JWT or personal access token as the password (verified by
//! [`AppState::authenticate`], as at every door), the database name as the purpose. A
//! statement is either something clients send on their own, answered here without
//! touching data (`SET` of a client setting, `SHOW`, `BEGIN`/`COMMIT`/`ROLLBACK`,
//! `DISCARD ALL`, `DEALLOCATE`), or a question for the query service, which plans it
//! under the caller's agreements and records its one audit event (door `pg`), exactly as
//! for HTTP; a client's catalog lookups (`\dt`, `\d`, `information_schema`) are answered
//! by the service from the caller's own datasets. Refusals carry the same message as
//! over HTTP. Extended protocol: `Describe` of a statement plans only (the service's
//! `describe`); `Describe` of a bound portal starts the query, which `Execute` then
//! streams, so one question is one audit event.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use concordat_core::{Caller, ErrorKind, Purpose};
use concordat_query::{Dialect, QueryError, QueryRequest, QueryRun, ScalarValue};
use datafusion::sql::sqlparser;
use futures::{Sink, SinkExt, StreamExt, stream};
use pgwire::api::auth::{
    DefaultServerParameterProvider, LoginInfo, StartupHandler, finish_authentication,
    protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, ConnectionManager, PgWireConnectionState,
    PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;

use crate::config::DoorSettings;
use crate::state::{AppState, StartError};

/// The door's name in audit events.
const DOOR: &str = "pg";
/// Connections one door holds at once; beyond, a new one is told so and closed (each
/// connection costs a task and buffers whether or not it asks anything).
const MAX_CONNECTIONS: usize = 1024;
/// What `SHOW server_version` and the startup parameters say.
const SERVER_VERSION: &str = "16.6";

/// Who is connected, settled at login.
struct Session {
    caller: Caller,
    purpose: String,
    /// Queries started by `Describe` of a portal, taken by its `Execute`.
    started: Mutex<HashMap<String, QueryRun>>,
}

/// The door: one per server, shared by every connection.
#[derive(Clone)]
pub struct PgDoor(Arc<Shared>);

struct Shared {
    state: Arc<AppState>,
    connections: Arc<ConnectionManager>,
    parameters: DefaultServerParameterProvider,
    /// Plaintext connections are refused (a certificate is configured and the door
    /// listens beyond loopback).
    require_tls: bool,
}

impl PgDoor {
    /// A door onto the server's services; with `require_tls`, a client that does not
    /// ask for TLS is refused at startup.
    pub fn new(state: Arc<AppState>, require_tls: bool) -> PgDoor {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_owned();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        PgDoor(Arc::new(Shared {
            state,
            connections: Arc::new(ConnectionManager::new()),
            parameters,
            require_tls,
        }))
    }
}

/// The door's socket, bound before the server reports that it is ready.
pub struct PgListener {
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl PgListener {
    /// Binds `settings.addr` and reads the certificate, if any.
    pub async fn bind(settings: &DoorSettings) -> Result<PgListener, StartError> {
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::Pem::read(cert, key)?.acceptor()),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(settings.addr)
            .await
            .map_err(|e| StartError::new(&format!("pg: listen on {}", settings.addr), e))?;
        Ok(PgListener { listener, tls })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, StartError> {
        self.listener
            .local_addr()
            .map_err(|e| StartError::new("pg: listen", e))
    }

    /// Serves connections until `shutdown` completes.
    pub async fn serve(
        self,
        state: Arc<AppState>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let beyond_loopback = self
            .listener
            .local_addr()
            .map_or(true, |a| !a.ip().is_loopback());
        let door = PgDoor::new(state, self.tls.is_some() && beyond_loopback);
        let connections = tokio_util::task::TaskTracker::new();
        let room = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                a = self.listener.accept() => a,
            };
            let (socket, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "pg: accept failed");
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let Ok(place) = room.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "pg: connection refused: {MAX_CONNECTIONS} already open");
                connections.spawn(too_many(socket));
                continue;
            };
            let door = door.clone();
            let tls = self.tls.clone();
            connections.spawn(async move {
                let _place = place;
                if let Err(e) = pgwire::tokio::process_socket(socket, tls, door).await {
                    tracing::debug!(%peer, error = %e, "pg: connection ended with an error");
                }
            });
        }
        connections.close();
        // A connection in a query finishes it (each query has its deadline); idle ones
        // end with the process.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), connections.wait()).await;
    }
}

/// Tells a client over the connection limit why, as Postgres does (`53300`), and closes.
async fn too_many(mut socket: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut fields = Vec::new();
    for (code, text) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (b'M', "sorry, too many clients already"),
    ] {
        fields.push(code);
        fields.extend_from_slice(text.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(&fields);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = socket.write_all(&message).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

impl PgWireServerHandlers for PgDoor {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(Handler {
            door: self.0.clone(),
        })
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(Handler {
            door: self.0.clone(),
        })
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Login {
            door: self.0.clone(),
        })
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.0.connections.clone()))
    }
}

/// Verifies the password as a credential and the database as a purpose.
struct Login {
    door: Arc<Shared>,
}

fn failure(severity: &str, code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_owned(),
        code.to_owned(),
        message,
    )))
}

fn fatal(code: &str, message: String) -> PgWireError {
    failure("FATAL", code, message)
}

#[async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                if self.door.require_tls && !client.is_secure() {
                    return Err(fatal(
                        "28000",
                        "this server accepts only TLS connections: connect with sslmode=require"
                            .to_owned(),
                    ));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let login = LoginInfo::from_client_info(client);
                let database = login.database().unwrap_or_default().to_owned();
                let caller = self.door.state.authenticate(&pwd.password).map_err(|e| {
                    tracing::info!(door = DOOR, error = %e, "login refused");
                    fatal("28P01", format!("password authentication failed: {e}"))
                })?;
                let purpose = Purpose::known(&database).map_err(|_| {
                    fatal(
                        "3D000",
                        format!(
                            "database \"{}\" does not exist: the database name is the purpose (reducing-reoffending, performance-scrutiny, efficiency-comparison, inspection, audit)",
                            database.chars().take(64).collect::<String>()
                        ),
                    )
                })?;
                if !caller.may_declare(&purpose) {
                    return Err(fatal(
                        "28000",
                        format!("this credential may not be used for {purpose}"),
                    ));
                }
                let (pid, secret) = {
                    use pgwire::api::PidSecretKeyGenerator;
                    pgwire::api::RandomPidSecretKeyGenerator::default().generate(client)
                };
                client.set_pid_and_secret_key(pid, secret.clone());
                let (handle, guard) = self.door.connections.register(pid, secret);
                client
                    .session_extensions()
                    .insert::<Arc<ConnectionHandle>>(handle);
                client.session_extensions().insert(guard);
                client.session_extensions().insert(Session {
                    caller,
                    purpose: purpose.to_string(),
                    started: Mutex::new(HashMap::new()),
                });
                finish_authentication(client, &self.door.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A statement as the door sees it.
#[derive(Debug, Clone)]
pub enum Statement {
    /// Answered by the door: something clients send on their own.
    Local(Local),
    /// A question for the query service, as text.
    Ask(String),
}

/// What the door answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// `SET` of a client setting: accepted, changes nothing.
    Set,
    /// `SHOW name`.
    Show(String),
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT` / `END`.
    Commit,
    /// `ROLLBACK`.
    Rollback,
    /// `DISCARD ...`.
    Discard,
    /// `DEALLOCATE ...`.
    Deallocate,
}

/// Splits a query string into statements and sorts them. Text that does not parse as
/// PostgreSQL goes to the query service whole, which names the error as HTTP does.
pub fn classify(sql: &str) -> Vec<Statement> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;
    let Ok(parsed) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return vec![Statement::Ask(sql.to_owned())];
    };
    let single = parsed.len() == 1;
    parsed
        .into_iter()
        .map(|s| match local(&s) {
            Some(l) => Statement::Local(l),
            // The client's own text when it sent one statement, so the audit trail holds
            // what was asked.
            None if single => Statement::Ask(sql.to_owned()),
            None => Statement::Ask(s.to_string()),
        })
        .collect()
}

fn local(s: &sqlparser::ast::Statement) -> Option<Local> {
    use sqlparser::ast::{Set, Statement as S};
    match s {
        S::Set(set) => {
            let names: Vec<String> = match set {
                Set::SingleAssignment { variable, .. } => vec![variable.to_string()],
                Set::ParenthesizedAssignments { variables, .. } => {
                    variables.iter().map(ToString::to_string).collect()
                }
                Set::MultipleAssignments { assignments } => {
                    assignments.iter().map(|a| a.name.to_string()).collect()
                }
                _ => Vec::new(),
            };
            // Engine settings go to the service, which refuses them as over HTTP.
            let engine = names.iter().any(|n| {
                let n = n.to_ascii_lowercase();
                n.starts_with("datafusion.") || n.starts_with("\"datafusion\"")
            });
            (!engine).then_some(Local::Set)
        }
        S::ShowVariable { variable } => Some(Local::Show(
            variable
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
        )),
        S::StartTransaction { .. } => Some(Local::Begin),
        S::Commit { .. } => Some(Local::Commit),
        S::Rollback { .. } => Some(Local::Rollback),
        S::Discard { .. } => Some(Local::Discard),
        S::Deallocate { .. } => Some(Local::Deallocate),
        _ => None,
    }
}

/// A client setting's value, for `SHOW`.
fn setting(name: &str, client: &dyn ClientInfo) -> Option<String> {
    let v = match name {
        "server_version" => SERVER_VERSION,
        "server_encoding" | "client_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "timezone" => "Etc/UTC",
        "intervalstyle" => "postgres",
        "standard_conforming_strings" | "integer_datetimes" => "on",
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "transaction_read_only" | "default_transaction_read_only" => "on",
        "is_superuser" => "off",
        "search_path" => "public",
        "max_identifier_length" => "63",
        "lc_collate" | "lc_ctype" => "C.UTF-8",
        "statement_timeout" | "lock_timeout" => "0",
        "application_name" => {
            return Some(
                client
                    .metadata()
                    .get("application_name")
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        _ => return None,
    };
    Some(v.to_owned())
}

fn show_fields(name: &str) -> Vec<FieldInfo> {
    vec![FieldInfo::new(
        name.to_owned(),
        None,
        None,
        Type::TEXT,
        FieldFormat::Text,
    )]
}

/// Answers what the door answers itself.
fn answer_local(local: &Local, client: &dyn ClientInfo) -> PgWireResult<Response> {
    Ok(match local {
        Local::Set => Response::Execution(Tag::new("SET")),
        Local::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        Local::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
        Local::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
        Local::Discard => Response::Execution(Tag::new("DISCARD ALL")),
        Local::Deallocate => Response::Execution(Tag::new("DEALLOCATE")),
        Local::Show(name) => {
            let value = setting(name, client).ok_or_else(|| {
                failure(
                    "ERROR",
                    "42704",
                    format!(
                        "unrecognized configuration parameter \"{}\"",
                        name.chars().take(64).collect::<String>()
                    ),
                )
            })?;
            let fields = Arc::new(show_fields(name));
            let mut encoder = DataRowEncoder::new(fields.clone());
            encoder.encode_field(&Some(value))?;
            let row = encoder.take_row();
            Response::Query(QueryResponse::new(fields, stream::iter(vec![Ok(row)])))
        }
    })
}

/// The Postgres error for a refusal, with the message HTTP gives.
fn error_info(e: &QueryError) -> ErrorInfo {
    let state = match e.code() {
        "sql" => "42601",
        "not_found" => "42P01",
        "not_allowed" | "forbidden" | "purpose_not_permitted" | "agreement_not_in_force" => "42501",
        "too_large" => "54000",
        "too_many_queries" => "53300",
        "timeout" => "57014",
        "memory_limit" => "53200",
        "query_failed" => "22000",
        _ if e.kind() == ErrorKind::Internal => "XX000",
        _ => "42000",
    };
    ErrorInfo::new("ERROR".to_owned(), state.to_owned(), e.to_string())
}

/// [`error_info`] as the error a handler returns.
pub fn pg_error(e: &QueryError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e)))
}

/// Both query protocols.
struct Handler {
    door: Arc<Shared>,
}

fn session<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Session>> {
    client
        .session_extensions()
        .get::<Session>()
        .ok_or_else(|| fatal("28000", "not logged in".to_owned()))
}

impl Handler {
    /// A question of this connection's caller and purpose.
    fn request<'a>(
        &self,
        session: &'a Session,
        sql: &'a str,
        params: &'a [ScalarValue],
    ) -> QueryRequest<'a> {
        QueryRequest {
            caller: &session.caller,
            purpose: &session.purpose,
            sql,
            door: DOOR,
            today: self.door.state.today(),
            params,
            dialect: Dialect::Postgres,
            fresh: false,
        }
    }

    /// Asks the query service; the answer carries its audit event until it is sent.
    async fn ask(
        &self,
        session: &Session,
        sql: &str,
        params: &[ScalarValue],
    ) -> Result<QueryRun, QueryError> {
        let state = &self.door.state;
        let run = state.query.query(self.request(session, sql, params)).await;
        match &run {
            Ok(run) => {
                state.metrics.queries_ok.inc();
                state.metrics.plan_used(run);
            }
            Err(_) => {
                state.metrics.queries_refused.inc();
            }
        };
        run
    }
}

/// Rows of a running query, encoded as they arrive; the audit event is recorded (and
/// durable) before the last message, and a cancel request stops the work.
fn rows(
    run: QueryRun,
    fields: Arc<Vec<FieldInfo>>,
    cancel: Option<Arc<ConnectionHandle>>,
) -> QueryResponse {
    struct Answering {
        run: Option<QueryRun>,
        rows: u64,
        cancel: Option<Arc<ConnectionHandle>>,
        signal: Option<futures::channel::oneshot::Receiver<()>>,
    }
    enum Next {
        Batch(Option<Result<arrow::array::RecordBatch, QueryError>>),
        Cancelled,
        Unwatched,
    }
    let fields_for_rows = fields.clone();
    let start = Answering {
        run: Some(run),
        rows: 0,
        cancel,
        signal: None,
    };
    let batches = stream::unfold(start, move |mut st| {
        let fields = fields_for_rows.clone();
        async move {
            let mut run = st.run.take()?;
            if let Some(handle) = st.cancel.take() {
                // Watched from the first row on: before that, pgwire watches the start.
                st.signal = Some(handle.start_query().await);
            }
            loop {
                let next = match st.signal.as_mut() {
                    Some(signal) => tokio::select! {
                        b = run.batches.recv() => Next::Batch(b),
                        s = signal => if s.is_ok() { Next::Cancelled } else { Next::Unwatched },
                    },
                    None => Next::Batch(run.batches.recv().await),
                };
                let items: Vec<PgWireResult<pgwire::messages::data::DataRow>> = match next {
                    Next::Unwatched => {
                        st.signal = None;
                        continue;
                    }
                    Next::Batch(Some(Ok(batch))) => {
                        st.rows += batch.num_rows() as u64;
                        let rows = encode_recordbatch(fields, batch).collect();
                        st.run = Some(run);
                        rows
                    }
                    Next::Batch(Some(Err(e))) => {
                        if let Err(a) = run.close().refused(e.kind(), e.code()).await {
                            tracing::error!(error = %a, "audit event not recorded");
                        }
                        vec![Err(pg_error(&e))]
                    }
                    Next::Batch(None) => {
                        run.event().rows = Some(st.rows);
                        match run.close().ok(200).await {
                            Ok(()) => return None,
                            Err(a) => {
                                tracing::error!(error = %a, "audit event not recorded");
                                vec![Err(pg_error(&QueryError::Audit(a.to_string())))]
                            }
                        }
                    }
                    Next::Cancelled => {
                        if let Err(a) = run.close().cancelled(499).await {
                            tracing::error!(error = %a, "audit event not recorded");
                        }
                        vec![Err(PgWireError::QueryCanceled)]
                    }
                };
                return Some((stream::iter(items), st));
            }
        }
    });
    QueryResponse::new(fields, batches.flatten())
}

fn format_options<C: ClientInfo>(client: &C) -> Arc<FormatOptions> {
    Arc::new(FormatOptions::from_client_metadata(client.metadata()))
}

fn fields_of(
    schema: &arrow::datatypes::Schema,
    format: &Format,
    options: Arc<FormatOptions>,
) -> PgWireResult<Vec<FieldInfo>> {
    arrow_schema_to_pg_fields(schema, format, Some(options))
}

#[async_trait]
impl SimpleQueryHandler for Handler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(client)?;
        let mut out = Vec::new();
        for statement in classify(query) {
            match statement {
                Statement::Local(l) => out.push(answer_local(&l, client)?),
                Statement::Ask(sql) => {
                    let run = match self.ask(&session, &sql, &[]).await {
                        Ok(run) => run,
                        Err(e) => {
                            // Later statements are not run, as in Postgres.
                            out.push(Response::Error(Box::new(error_info(&e))));
                            break;
                        }
                    };
                    let fields = Arc::new(fields_of(
                        &run.schema,
                        &Format::UnifiedText,
                        format_options(client),
                    )?);
                    let handle = client.session_extensions().get::<Arc<ConnectionHandle>>();
                    out.push(Response::Query(rows(
                        run,
                        fields,
                        handle.map(|h| (*h).clone()),
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// Parses for the extended protocol: the statement is kept as the door's [`Statement`].
struct Parser;

#[async_trait]
impl QueryParser for Parser {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = classify(sql);
        match statements.len() {
            0 => Ok(None),
            1 => Ok(statements.pop()),
            _ => Err(failure(
                "ERROR",
                "42601",
                "cannot insert multiple commands into a prepared statement".to_owned(),
            )),
        }
    }

    // Both describe calls are answered by `Handler`, which asks the query service; pgwire
    // reaches these two only through the default describe implementations.
    fn get_parameter_types(&self, _stmt: &Statement) -> PgWireResult<Vec<Type>> {
        Ok(Vec::new())
    }

    fn get_result_schema(
        &self,
        _stmt: &Statement,
        _format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(Vec::new())
    }
}

/// The values bound to a portal, as scalars (text when the client sent no type: the
/// query service casts each to the type its place needs).
fn bound(portal: &Portal<Statement>) -> PgWireResult<Vec<ScalarValue>> {
    if portal.parameter_len() == 0 {
        return Ok(Vec::new());
    }
    match arrow_pg::datatypes::df::deserialize_parameters(portal, &[])? {
        datafusion::common::ParamValues::List(values) => {
            Ok(values.into_iter().map(|v| v.value).collect())
        }
        datafusion::common::ParamValues::Map(_) => Ok(Vec::new()),
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handler {
    type Statement = Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::new(Parser)
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        target: &StoredStatement<Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = match &target.statement {
            Statement::Local(Local::Show(name)) => {
                return Ok(DescribeStatementResponse::new(
                    Vec::new(),
                    show_fields(name),
                ));
            }
            Statement::Local(_) => {
                return Ok(DescribeStatementResponse::new(Vec::new(), Vec::new()));
            }
            Statement::Ask(sql) => sql,
        };
        let session = session(client)?;
        let described = self
            .door
            .state
            .query
            .describe(self.request(&session, sql, &[]))
            .await
            .map_err(|e| pg_error(&e))?;
        let mut types = Vec::with_capacity(described.params.len());
        for (i, ty) in described.params.iter().enumerate() {
            let given = target.parameter_types.get(i).cloned().flatten();
            types.push(match (given, ty) {
                (Some(t), _) => t,
                (None, Some(ty)) => into_pg_type(ty)?,
                (None, None) => Type::UNKNOWN,
            });
        }
        let fields = fields_of(
            &described.schema,
            &Format::UnifiedText,
            format_options(client),
        )?;
        Ok(DescribeStatementResponse::new(types, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = match &portal.statement.statement {
            Statement::Local(Local::Show(name)) => {
                return Ok(DescribePortalResponse::new(show_fields(name)));
            }
            Statement::Local(_) => return Ok(DescribePortalResponse::new(Vec::new())),
            Statement::Ask(sql) => sql.clone(),
        };
        let session = session(client)?;
        let params = bound(portal)?;
        let run = self
            .ask(&session, &sql, &params)
            .await
            .map_err(|e| pg_error(&e))?;
        let fields = fields_of(
            &run.schema,
            &portal.result_column_format,
            format_options(client),
        )?;
        session
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(portal.name.clone(), run);
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = match &portal.statement.statement {
            Statement::Local(l) => return answer_local(l, client),
            Statement::Ask(sql) => sql.clone(),
        };
        let session = session(client)?;
        let started = session
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&portal.name);
        let run = match started {
            Some(run) => run,
            None => {
                let params = bound(portal)?;
                self.ask(&session, &sql, &params)
                    .await
                    .map_err(|e| pg_error(&e))?
            }
        };
        let fields = Arc::new(fields_of(
            &run.schema,
            &portal.result_column_format,
            format_options(client),
        )?);
        let handle = client.session_extensions().get::<Arc<ConnectionHandle>>();
        Ok(Response::Query(rows(
            run,
            fields,
            handle.map(|h| (*h).clone()),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_statements_are_answered_by_the_door_and_the_rest_is_asked() {
        let kinds = |sql: &str| -> Vec<String> {
            classify(sql)
                .into_iter()
                .map(|s| match s {
                    Statement::Local(l) => format!("{l:?}"),
                    Statement::Ask(_) => "Ask".to_owned(),
                })
                .collect()
        };
        assert_eq!(
            kinds("SET DateStyle = 'ISO';SET extra_float_digits = 2;show transaction_isolation"),
            ["Set", "Set", "Show(\"transaction_isolation\")"]
        );
        assert_eq!(kinds("SET datafusion.execution.batch_size = 1"), ["Ask"]);
        assert_eq!(kinds("set DATAFUSION.optimizer.max_passes to 1"), ["Ask"]);
        assert_eq!(kinds("BEGIN; SELECT 1; COMMIT"), ["Begin", "Ask", "Commit"]);
        assert_eq!(kinds("DISCARD ALL"), ["Discard"]);
        assert_eq!(kinds("COPY t TO STDOUT"), ["Ask"]);
        assert_eq!(kinds("CREATE TABLE x (a int)"), ["Ask"]);
        assert_eq!(kinds("SELEC nonsense"), ["Ask"]);
        // One statement is asked as the client wrote it.
        match classify("select  1 ;").pop() {
            Some(Statement::Ask(sql)) => assert_eq!(sql, "select  1 ;"),
            other => panic!("{other:?}"),
        }
    }
}
