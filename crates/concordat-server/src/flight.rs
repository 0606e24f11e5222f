//! The Arrow Flight SQL door (ADBC from pandas and polars, the Flight SQL JDBC driver),
//! on `arrow-flight`'s `FlightSqlService`.
//!
//! Credentials: a handshake with Basic credentials whose password is a JWT or personal
//! access token (answered with that token as the bearer), or `authorization: Bearer ...`
//! on every call; the purpose is the `concordat-purpose` header of every call. Every
//! call goes through the query service: `GetFlightInfo` plans only (the service's
//! `describe`) and answers with a ticket, signed and expiring, that carries the SQL and
//! purpose (never results), so any replica sharing the record key can run it; `DoGet`
//! checks the ticket against the caller and runs it with one audit event. Catalog calls
//! list only what the caller may query under the purpose.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine;
use concordat_core::{Caller, ErrorKind};
use concordat_query::{Dialect, QueryError, QueryRequest, QueryRun};
use futures::{Stream, StreamExt, stream};
use hmac::{Hmac, Mac};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::config::DoorSettings;
use crate::state::{AppState, StartError};

/// The door's name in audit events.
const DOOR: &str = "flight";
/// The call header that carries the purpose.
pub const PURPOSE_HEADER: &str = "concordat-purpose";
/// How long a ticket or prepared statement handle may be used.
const TICKET_SECONDS: i64 = 3600;
/// The catalog and schema names clients see (the purpose is the catalog, as the database
/// is over Postgres).
const SCHEMA_NAME: &str = "public";

type Stream2<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

static SQL_INFO: LazyLock<Option<SqlInfoData>> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Concordat");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.build().ok()
});

/// What a ticket (or prepared statement handle) holds: the question and who may ask it,
/// until when. Signed with a key derived from the record key, so every replica can check
/// it; it never holds results.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct TicketBody {
    sql: String,
    purpose: String,
    partner: String,
    subject: String,
    expires: i64,
}

/// The door.
#[derive(Clone)]
pub struct FlightDoor {
    state: Arc<AppState>,
    key: Arc<[u8; 32]>,
}

impl FlightDoor {
    /// A door onto the server's services.
    pub fn new(state: Arc<AppState>) -> FlightDoor {
        let key = state.query.record_key().derive("flight ticket");
        FlightDoor {
            state,
            key: Arc::new(key),
        }
    }

    fn mac(&self) -> Result<Hmac<sha2::Sha256>, Status> {
        Hmac::<sha2::Sha256>::new_from_slice(self.key.as_slice())
            .map_err(|_| Status::internal("internal error"))
    }

    /// `body` as `mac (32 bytes) || JSON`.
    fn sign(&self, body: &TicketBody) -> Result<bytes::Bytes, Status> {
        let json = serde_json::to_vec(body).map_err(|_| Status::internal("internal error"))?;
        let mut mac = self.mac()?;
        mac.update(&json);
        let mut out = mac.finalize().into_bytes().to_vec();
        out.extend_from_slice(&json);
        Ok(out.into())
    }

    /// The body of a ticket this door signed, unexpired, issued to this caller.
    fn open(&self, ticket: &[u8], caller: &Caller) -> Result<TicketBody, Status> {
        let refused = || Status::permission_denied("the ticket is not valid for this caller");
        if ticket.len() < 32 {
            return Err(refused());
        }
        let (tag, json) = ticket.split_at(32);
        let mut mac = self.mac()?;
        mac.update(json);
        mac.verify_slice(tag).map_err(|_| refused())?;
        let body: TicketBody = serde_json::from_slice(json).map_err(|_| refused())?;
        if body.expires < chrono::Utc::now().timestamp() {
            return Err(Status::permission_denied(
                "the ticket has expired; ask for the query again",
            ));
        }
        if body.partner != caller.partner.id.as_str() || body.subject != caller.subject {
            return Err(refused());
        }
        Ok(body)
    }

    /// The caller of a call: the bearer credential, verified as at every door.
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("a bearer token is required"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("a bearer token is required"))?;
        self.state
            .authenticate(token)
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// The caller and the purpose the call declares.
    fn asker<T>(&self, req: &Request<T>) -> Result<(Caller, String), Status> {
        let caller = self.caller(req)?;
        let purpose = req
            .metadata()
            .get(PURPOSE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "the {PURPOSE_HEADER} call header is required: the purpose the data is used for"
                ))
            })?;
        Ok((caller, purpose))
    }

    fn request<'a>(&self, caller: &'a Caller, purpose: &'a str, sql: &'a str) -> QueryRequest<'a> {
        QueryRequest {
            caller,
            purpose,
            sql,
            door: DOOR,
            today: self.state.today(),
            params: &[],
            dialect: Dialect::Standard,
            fresh: false,
        }
    }

    /// Plans a question and answers with its schema and a ticket for it.
    async fn plan(
        &self,
        caller: &Caller,
        purpose: &str,
        sql: &str,
    ) -> Result<(SchemaRef, bytes::Bytes), Status> {
        let described = self
            .state
            .query
            .describe(self.request(caller, purpose, sql))
            .await
            .map_err(|e| status(&e))?;
        let body = TicketBody {
            sql: sql.to_owned(),
            purpose: purpose.to_owned(),
            partner: caller.partner.id.as_str().to_owned(),
            subject: caller.subject.clone(),
            expires: chrono::Utc::now().timestamp() + TICKET_SECONDS,
        };
        Ok((described.schema, self.sign(&body)?))
    }

    /// Runs a ticket's question and streams the answer.
    async fn run(
        &self,
        req: &Request<Ticket>,
        handle: &[u8],
    ) -> Result<Response<Stream2<FlightData>>, Status> {
        let (caller, purpose) = self.asker(req)?;
        let body = self.open(handle, &caller)?;
        if body.purpose != purpose {
            return Err(Status::permission_denied(
                "the ticket was issued for another purpose",
            ));
        }
        let asked = self
            .state
            .query
            .query(self.request(&caller, &purpose, &body.sql))
            .await;
        let run = match asked {
            Ok(run) => {
                self.state.metrics.queries_ok.inc();
                self.state.metrics.plan_used(&run);
                run
            }
            Err(e) => {
                self.state.metrics.queries_refused.inc();
                return Err(status(&e));
            }
        };
        let schema = run.schema.clone();
        let encoded = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches(run))
            .map(|r| r.map_err(flight_status));
        Ok(Response::new(Box::pin(encoded)))
    }

    /// Lists the caller's tables through the query service.
    async fn tables(
        &self,
        caller: &Caller,
        purpose: &str,
        call: &str,
    ) -> Result<Vec<(String, SchemaRef)>, Status> {
        self.state
            .query
            .tables(self.request(caller, purpose, call))
            .await
            .map_err(|e| status(&e))
    }
}

/// The batches of a running query; its audit event is recorded (and durable) before the
/// stream ends, or as refused when the query fails part-way. Dropping the stream (the
/// client went away) records it as cancelled.
fn batches(run: QueryRun) -> impl Stream<Item = Result<RecordBatch, FlightError>> + Send {
    stream::unfold(Some((run, 0u64)), |state| async move {
        let (mut run, rows) = state?;
        match run.batches.recv().await {
            Some(Ok(batch)) => {
                let rows = rows + batch.num_rows() as u64;
                Some((Ok(batch), Some((run, rows))))
            }
            Some(Err(e)) => {
                if let Err(a) = run.close().refused(e.kind(), e.code()).await {
                    tracing::error!(error = %a, "audit event not recorded");
                }
                Some((Err(FlightError::Tonic(Box::new(status(&e)))), None))
            }
            None => {
                run.event().rows = Some(rows);
                match run.close().ok(200).await {
                    Ok(()) => None,
                    Err(a) => {
                        tracing::error!(error = %a, "audit event not recorded");
                        Some((
                            Err(FlightError::Tonic(Box::new(Status::internal(
                                "internal error",
                            )))),
                            None,
                        ))
                    }
                }
            }
        }
    })
}

/// The gRPC status for a refusal, with the message HTTP gives.
pub fn status(e: &QueryError) -> Status {
    let message = e.to_string();
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::Rejected | ErrorKind::UnsupportedMedia => {
            Status::invalid_argument(message)
        }
        ErrorKind::Unauthenticated => Status::unauthenticated(message),
        ErrorKind::Forbidden => Status::permission_denied(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::TooLarge | ErrorKind::Busy | ErrorKind::Limit => {
            Status::resource_exhausted(message)
        }
        ErrorKind::Unavailable => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

fn flight_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => {
            tracing::warn!(error = %other, "flight: encoding an answer failed");
            Status::internal("internal error")
        }
    }
}

fn one_batch<E: std::fmt::Display>(
    batch: Result<RecordBatch, E>,
) -> Result<Stream2<FlightData>, Status> {
    let batch = batch.map_err(|e| {
        tracing::warn!(error = %e, "flight: building a catalog answer failed");
        Status::internal("internal error")
    })?;
    let encoded = FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(stream::iter([Ok(batch)]))
        .map(|r| r.map_err(flight_status));
    Ok(Box::pin(encoded))
}

/// The FlightInfo of a catalog or metadata call: its ticket is the command itself.
fn listing<M: ProstMessageExt>(
    command: &M,
    schema: &Schema,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = Ticket::new(command.as_any().encode_to_vec());
    Ok(Response::new(info(schema, ticket, request.into_inner())?))
}

fn info(
    schema: &Schema,
    ticket: Ticket,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|_| Status::internal("internal error"))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor))
}

#[tonic::async_trait]
impl FlightSqlService for FlightDoor {
    type FlightService = FlightDoor;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Stream2<HandshakeResponse>>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("credentials are required"))?;
        let credential = if let Some(basic) = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(basic.trim())
                .map_err(|_| Status::invalid_argument("Basic credentials are not base64"))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| Status::invalid_argument("Basic credentials are not text"))?;
            let (_user, password) = text
                .split_once(':')
                .ok_or_else(|| Status::invalid_argument("Basic credentials are user:password"))?;
            password.to_owned()
        } else if let Some(bearer) = header.strip_prefix("Bearer ") {
            bearer.to_owned()
        } else {
            return Err(Status::unauthenticated(
                "Basic or Bearer credentials are required",
            ));
        };
        self.state
            .authenticate(&credential)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: credential.clone().into_bytes().into(),
        };
        let mut response: Response<Stream2<HandshakeResponse>> =
            Response::new(Box::pin(stream::iter([Ok(answer)])));
        let bearer = MetadataValue::try_from(format!("Bearer {credential}"))
            .map_err(|_| Status::invalid_argument("the credential is not a header value"))?;
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (caller, purpose) = self.asker(&request)?;
        let (schema, handle) = self.plan(&caller, &purpose, &query.query).await?;
        let ticket = Ticket::new(
            TicketStatementQuery {
                statement_handle: handle,
            }
            .as_any()
            .encode_to_vec(),
        );
        Ok(Response::new(info(&schema, ticket, request.into_inner())?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<Stream2<FlightData>>, Status> {
        self.run(&request, &ticket.statement_handle).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (caller, purpose) = self.asker(&request)?;
        let (schema, handle) = self.plan(&caller, &purpose, &query.query).await?;
        let IpcMessage(dataset_schema) =
            SchemaAsIpc::new(&schema, &arrow::ipc::writer::IpcWriteOptions::default())
                .try_into()
                .map_err(|_: arrow::error::ArrowError| Status::internal("internal error"))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle,
            dataset_schema,
            parameter_schema: bytes::Bytes::new(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // Nothing is held for a prepared statement: its handle is its own record.
        self.caller(&request)?;
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (caller, purpose) = self.asker(&request)?;
        let body = self.open(&cmd.prepared_statement_handle, &caller)?;
        let (schema, _) = self.plan(&caller, &purpose, &body.sql).await?;
        let ticket = Ticket::new(cmd.as_any().encode_to_vec());
        Ok(Response::new(info(&schema, ticket, request.into_inner())?))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<Stream2<FlightData>>, Status> {
        self.run(&request, &cmd.prepared_statement_handle).await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let infos = SQL_INFO
            .as_ref()
            .ok_or_else(|| Status::internal("internal error"))?;
        let schema = query.clone().into_builder(infos).schema();
        listing(&query, &schema, request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<Stream2<FlightData>>, Status> {
        self.caller(&request)?;
        let infos = SQL_INFO
            .as_ref()
            .ok_or_else(|| Status::internal("internal error"))?;
        Ok(Response::new(one_batch(query.into_builder(infos).build())?))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.asker(&request)?;
        let schema = query.into_builder().schema();
        listing(&query, &schema, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<Stream2<FlightData>>, Status> {
        let (caller, purpose) = self.asker(&request)?;
        // Listing what the caller may see is asked of the service, as every catalog call.
        self.tables(&caller, &purpose, "-- flight: GetCatalogs")
            .await?;
        let mut b = query.into_builder();
        b.append(&purpose);
        Ok(Response::new(one_batch(b.build())?))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.asker(&request)?;
        let schema = query.clone().into_builder().schema();
        listing(&query, &schema, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<Stream2<FlightData>>, Status> {
        let (caller, purpose) = self.asker(&request)?;
        self.tables(&caller, &purpose, "-- flight: GetDbSchemas")
            .await?;
        let mut b = query.into_builder();
        b.append(&purpose, SCHEMA_NAME);
        Ok(Response::new(one_batch(b.build())?))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.asker(&request)?;
        let schema = query.clone().into_builder().schema();
        listing(&query, &schema, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<Stream2<FlightData>>, Status> {
        let (caller, purpose) = self.asker(&request)?;
        let tables = self
            .tables(&caller, &purpose, "-- flight: GetTables")
            .await?;
        let mut b = query.into_builder();
        for (name, schema) in tables {
            b.append(&purpose, SCHEMA_NAME, &name, "TABLE", &schema)
                .map_err(|_| Status::internal("internal error"))?;
        }
        Ok(Response::new(one_batch(b.build())?))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request)?;
        let schema = query.into_builder().schema();
        listing(&query, &schema, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<Stream2<FlightData>>, Status> {
        self.caller(&request)?;
        let mut b = query.into_builder();
        b.append("TABLE");
        Ok(Response::new(one_batch(b.build())?))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// The door's socket, bound before the server reports that it is ready.
pub struct FlightListener {
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

impl FlightListener {
    /// Binds `settings.addr` and reads the certificate, if any.
    pub async fn bind(settings: &DoorSettings) -> Result<FlightListener, StartError> {
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => {
                // Read and checked as for the Postgres door, so both name the same errors.
                let pem = crate::tls::Pem::read(cert, key)?;
                Some(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(pem.cert, pem.key)),
                )
            }
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(settings.addr)
            .await
            .map_err(|e| StartError::new(&format!("flight: listen on {}", settings.addr), e))?;
        Ok(FlightListener { listener, tls })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, StartError> {
        self.listener
            .local_addr()
            .map_err(|e| StartError::new("flight: listen", e))
    }

    /// Serves calls until `shutdown` completes.
    pub async fn serve(
        self,
        state: Arc<AppState>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let door = FlightDoor::new(state);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            builder = match builder.tls_config(tls) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "flight: TLS could not be set up");
                    return;
                }
            };
        }
        let incoming =
            tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let served = builder
            .add_service(FlightServiceServer::new(door))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "flight: the door stopped");
        }
    }
}
