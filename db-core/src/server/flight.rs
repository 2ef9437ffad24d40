//! Arrow Flight SQL, plus the InfluxDB 3 JSON ticket, on the shared port.
//!
//! Two ways in:
//! - **Flight SQL** (ADBC, JDBC, `arrow-flight` clients): statement queries, prepared
//!   statements with bound parameters, and the catalog commands (`GetCatalogs`,
//!   `GetDbSchemas`, `GetTables`, `GetTableTypes`, `GetSqlInfo`). The database comes from
//!   the `database` gRPC header (`bucket`, `bucket-name` and `iox-namespace-name` are
//!   accepted too, as InfluxDB does).
//! - **The InfluxDB 3 ticket** (influxdb3-python, the Go/Java InfluxDB 3 clients): `DoGet`
//!   whose ticket is JSON `{"database", "sql_query", "query_type", "params"?}`.
//!
//! Every call is authenticated by [`FlightFront`] before it reaches a handler, with the
//! same tokens as HTTP (`authorization: Bearer <token>`). Answers stream: each record
//! batch is encoded and sent as the query produces it, and the query runtime's bounded
//! channel holds the query back when the client reads slowly.

use std::{
    collections::BTreeMap,
    pin::Pin,
    sync::{Arc, LazyLock},
};

use arrow::{
    datatypes::{DataType, Field, FieldRef, Schema},
    ipc::writer::IpcWriteOptions,
    record_batch::RecordBatch,
};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, PollInfo, SchemaAsIpc, SchemaResult, Ticket,
    decode::FlightRecordBatchStream,
    encode::FlightDataEncoderBuilder,
    error::FlightError,
    flight_service_server::{FlightService, FlightServiceServer},
    sql::{
        ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
        CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
        CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
        CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, SqlSupportedTransaction,
        TicketStatementQuery,
        metadata::{SqlInfoData, SqlInfoDataBuilder},
        server::{FlightSqlService, PeekableFlightDataStream},
    },
};
use datafusion::{common::ScalarValue, execution::SendableRecordBatchStream};
use futures::{Stream, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap};

use super::{
    SharedState,
    admin::{IntoStatus, metadata_token},
};
use crate::{
    auth::{Action as Access, Principal},
    query::{self, CATALOG_NAME, QueryParams, SYSTEM_SCHEMA, USER_SCHEMA},
};

/// gRPC headers that name the database, in the order they are consulted.
const DATABASE_HEADERS: [&str; 4] = ["database", "bucket", "bucket-name", "iox-namespace-name"];

/// Prepared statements kept per server, and the bytes their SQL and bound values may
/// take together; beyond either, the least recently used are dropped.
const MAX_PREPARED: usize = 10_000;
const MAX_PREPARED_BYTES: usize = 64 * 1024 * 1024;

/// Table types `GetTables` reports (DataFusion's names, as in `information_schema`).
const TABLE_TYPES: [&str; 3] = ["BASE TABLE", "VIEW", "LOCAL TEMPORARY"];

const READ_ONLY: &str = "Weir's SQL is read-only: write line protocol to /api/v3/write_lp instead";

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// Build the tonic service.
pub fn service(state: SharedState) -> FlightServiceServer<FlightFront> {
    FlightServiceServer::new(FlightFront {
        sql: WeirFlightSql { state, prepared: Mutex::new(PreparedStatements::default()) },
    })
    .max_decoding_message_size(64 * 1024 * 1024)
    .max_encoding_message_size(64 * 1024 * 1024)
}

/// The Flight service as clients see it: authenticates every call, answers the InfluxDB
/// JSON ticket, and hands everything else to the Flight SQL dispatcher.
#[derive(Debug)]
pub struct FlightFront {
    sql: WeirFlightSql,
}

/// The Flight SQL handlers.
#[derive(Debug)]
pub struct WeirFlightSql {
    state: SharedState,
    prepared: Mutex<PreparedStatements>,
}

fn database_header(md: &MetadataMap) -> Option<String> {
    DATABASE_HEADERS.iter().filter_map(|h| md.get(*h)?.to_str().ok()).find(|v| !v.is_empty()).map(str::to_string)
}

/// Who is calling: attached by [`FlightFront`] to every call it lets through.
fn principal<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("this call reached Flight SQL without authentication"))
}

fn require_database(md: &MetadataMap) -> Result<String, Status> {
    database_header(md).ok_or_else(|| {
        Status::invalid_argument(
            "no database given: set the `database` gRPC header \
             (ADBC: adbc.flight.sql.rpc.call_header.database)",
        )
    })
}

fn internal(context: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{context}: {e}"))
}

/// The schema clients receive: the encoder sends dictionary columns (tags, and dictionaries
/// nested in lists, structs and maps) as plain values.
fn wire_schema(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema.fields().iter().map(|f| wire_field(f)).collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

fn wire_field(f: &Field) -> Field {
    f.clone().with_data_type(wire_type(f.data_type()))
}

fn wire_type(t: &DataType) -> DataType {
    let field = |f: &FieldRef| Arc::new(wire_field(f));
    match t {
        DataType::Dictionary(_, value) => wire_type(value),
        DataType::List(f) => DataType::List(field(f)),
        DataType::LargeList(f) => DataType::LargeList(field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(field(f), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(field).collect()),
        DataType::Map(f, sorted) => DataType::Map(field(f), *sorted),
        other => other.clone(),
    }
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) =
        SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into().map_err(|e| internal("encoding schema", e))?;
    Ok(bytes)
}

/// Stream a query's answer as Flight data, batch by batch.
fn stream_response(stream: SendableRecordBatchStream) -> Response<DoGetStream> {
    let schema = stream.schema();
    let batches = stream.map_err(|e| FlightError::Tonic(Box::new(query::Error::from(e).into_status())));
    let data = FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from);
    Response::new(Box::pin(data))
}

/// Send one ready-made batch (catalog answers).
fn batch_response(batch: RecordBatch) -> Response<DoGetStream> {
    let data = FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(futures::stream::iter([Ok(batch)]))
        .map_err(Status::from);
    Response::new(Box::pin(data))
}

/// A FlightInfo whose single endpoint is `ticket`, served by this same server.
fn flight_info(schema: &Schema, ticket: Vec<u8>, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| internal("encoding schema", e))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_ordered(true))
}

/// FlightInfo for a command whose ticket is the command itself (catalog commands,
/// prepared statements).
fn command_info<M: ProstMessageExt>(
    schema: &Schema,
    command: &M,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    Ok(Response::new(flight_info(schema, command.as_any().encode_to_vec(), request.into_inner())?))
}

/// The InfluxDB 3 `DoGet` ticket.
#[derive(Debug, Deserialize)]
struct InfluxTicket {
    #[serde(default)]
    database: Option<String>,
    sql_query: String,
    #[serde(default)]
    query_type: Option<String>,
    #[serde(default)]
    params: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What `TicketStatementQuery.statement_handle` carries: the statement itself, so `DoGet`
/// needs no server-side state.
#[derive(Debug, Serialize, Deserialize)]
struct StatementHandle {
    database: String,
    sql: String,
}

#[derive(Debug)]
struct Prepared {
    nonce: u64,
    database: String,
    sql: String,
    params: Vec<ScalarValue>,
    /// Position in `recency` (larger = used more recently).
    used: u64,
}

impl Prepared {
    fn bytes(&self) -> usize {
        self.database.len() + self.sql.len() + self.params.iter().map(ScalarValue::size).sum::<usize>()
    }
}

/// Open prepared statements by id, with least-recently-used eviction.
#[derive(Debug, Default)]
struct PreparedStatements {
    next_id: u64,
    clock: u64,
    open: BTreeMap<u64, Prepared>,
    /// `used` → id.
    recency: BTreeMap<u64, u64>,
    bytes: usize,
}

impl PreparedStatements {
    fn touch(&mut self, id: u64) {
        self.clock += 1;
        if let Some(p) = self.open.get_mut(&id) {
            self.recency.remove(&p.used);
            p.used = self.clock;
            self.recency.insert(self.clock, id);
        }
    }

    /// Drop least recently used statements until `count` more statements and `bytes` more
    /// bytes fit. Statements taken out of `recency` are never dropped.
    fn make_room(&mut self, count: usize, bytes: usize) {
        while self.open.len() + count > MAX_PREPARED || self.bytes + bytes > MAX_PREPARED_BYTES {
            let Some((_, id)) = self.recency.pop_first() else { break };
            if let Some(p) = self.open.remove(&id) {
                self.bytes -= p.bytes();
            }
        }
    }

    fn insert(&mut self, database: String, sql: String) -> Vec<u8> {
        self.make_room(1, database.len() + sql.len());
        self.next_id += 1;
        let mut nonce = [0u8; 8];
        // A random nonce makes handles unguessable; fall back to the id if the OS says no.
        let nonce = match getrandom::fill(&mut nonce) {
            Ok(()) => u64::from_le_bytes(nonce),
            Err(_) => self.next_id.rotate_left(32),
        };
        let id = self.next_id;
        let p = Prepared { nonce, database, sql, params: Vec::new(), used: 0 };
        self.bytes += p.bytes();
        self.open.insert(id, p);
        self.touch(id);
        let mut handle = id.to_be_bytes().to_vec();
        handle.extend_from_slice(&nonce.to_be_bytes());
        handle
    }

    fn id(&self, handle: &[u8]) -> Result<u64, Status> {
        let unknown =
            || Status::not_found("unknown prepared statement handle (closed, evicted, or from before a restart)");
        let (id, nonce) = decode_handle(handle).ok_or_else(unknown)?;
        match self.open.get(&id) {
            Some(p) if p.nonce == nonce => Ok(id),
            _ => Err(unknown()),
        }
    }

    /// The statement's database, SQL and bound values.
    fn get(&mut self, handle: &[u8]) -> Result<(String, String, Vec<ScalarValue>), Status> {
        let id = self.id(handle)?;
        self.touch(id);
        let p = &self.open[&id];
        Ok((p.database.clone(), p.sql.clone(), p.params.clone()))
    }

    fn bind(&mut self, handle: &[u8], params: Vec<ScalarValue>) -> Result<(), Status> {
        let id = self.id(handle)?;
        let new_bytes: usize = params.iter().map(ScalarValue::size).sum();
        if new_bytes > MAX_PREPARED_BYTES / 4 {
            return Err(Status::invalid_argument(format!(
                "bound parameters take {new_bytes} bytes; the limit is {}",
                MAX_PREPARED_BYTES / 4
            )));
        }
        let p = self.open.get_mut(&id).expect("id() checked it");
        let old = p.bytes();
        p.params = params;
        let grown = p.bytes().saturating_sub(old);
        self.bytes = self.bytes - old + p.bytes() - grown;
        // Make room for the growth without evicting this statement itself.
        let used = p.used;
        self.recency.remove(&used);
        self.make_room(0, grown);
        self.bytes += grown;
        self.recency.insert(used, id);
        self.touch(id);
        Ok(())
    }

    fn remove(&mut self, handle: &[u8]) {
        if let Ok(id) = self.id(handle)
            && let Some(p) = self.open.remove(&id)
        {
            self.recency.remove(&p.used);
            self.bytes -= p.bytes();
        }
    }
}

fn decode_handle(handle: &[u8]) -> Option<(u64, u64)> {
    let id = u64::from_be_bytes(handle.get(..8)?.try_into().ok()?);
    let nonce = u64::from_be_bytes(handle.get(8..16)?.try_into().ok()?);
    (handle.len() == 16).then_some((id, nonce))
}

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Weir");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlTransactionsSupported, false);
    // The builder only fails on duplicate or mistyped entries, which the list above has not.
    b.build().expect("static SqlInfo table is valid")
});

impl FlightFront {
    /// Authenticate a call and attach who is calling ([`Principal`]) to it, for the
    /// handlers' database checks; also returns the token presented.
    fn authorize<T>(&self, request: &mut Request<T>) -> Result<Option<String>, Status> {
        let auth = &self.sql.state.auth;
        if !auth.enabled() {
            // Like HTTP: with auth off, whatever `authorization` holds (even an empty
            // `Bearer `) is ignored.
            request.extensions_mut().insert(Principal::Open);
            return Ok(None);
        }
        let token = metadata_token(request.metadata()).map_err(IntoStatus::into_status)?;
        let principal = auth.authenticate(token.as_deref()).map_err(IntoStatus::into_status)?;
        request.extensions_mut().insert(principal);
        Ok(token)
    }

    /// `DoGet` with the InfluxDB 3 JSON ticket.
    async fn influx_ticket(&self, request: Request<Ticket>) -> Result<Response<DoGetStream>, Status> {
        let ticket: InfluxTicket = serde_json::from_slice(&request.get_ref().ticket)
            .map_err(|e| Status::invalid_argument(format!("invalid JSON ticket: {e}")))?;
        match ticket.query_type.as_deref().unwrap_or("sql") {
            "sql" => {}
            "influxql" => {
                return Err(Status::unimplemented("InfluxQL is not supported by Weir yet; send query_type \"sql\""));
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown query_type {other:?}: expected \"sql\" or \"influxql\""
                )));
            }
        }
        let database = match ticket.database.filter(|d| !d.is_empty()) {
            Some(d) => d,
            None => require_database(request.metadata())?,
        };
        let params = QueryParams::from_json(ticket.params.unwrap_or_default()).map_err(Status::invalid_argument)?;
        self.sql.run(principal(&request)?, &database, &ticket.sql_query, params).await
    }
}

#[tonic::async_trait]
impl FlightService for FlightFront {
    type HandshakeStream = <WeirFlightSql as FlightService>::HandshakeStream;
    type ListFlightsStream = <WeirFlightSql as FlightService>::ListFlightsStream;
    type DoGetStream = DoGetStream;
    type DoPutStream = <WeirFlightSql as FlightService>::DoPutStream;
    type DoActionStream = <WeirFlightSql as FlightService>::DoActionStream;
    type ListActionsStream = <WeirFlightSql as FlightService>::ListActionsStream;
    type DoExchangeStream = <WeirFlightSql as FlightService>::DoExchangeStream;

    /// Token check only: a client that presents a valid token (Bearer, or Basic with the
    /// token as password) gets it back as `authorization: Bearer` for later calls.
    async fn handshake(
        &self,
        mut request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let token = self.authorize(&mut request)?;
        let reply = HandshakeResponse { protocol_version: 0, payload: Default::default() };
        let mut response: Response<Self::HandshakeStream> = Response::new(Box::pin(futures::stream::iter([Ok(reply)])));
        if let Some(token) = token.filter(|t| !t.is_empty())
            && let Ok(v) = format!("Bearer {token}").parse()
        {
            response.metadata_mut().insert("authorization", v);
        }
        Ok(response)
    }

    async fn list_flights(&self, mut request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.authorize(&mut request)?;
        self.sql.list_flights(request).await
    }

    async fn get_flight_info(&self, mut request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&mut request)?;
        self.sql.get_flight_info(request).await
    }

    async fn poll_flight_info(&self, mut request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        self.authorize(&mut request)?;
        self.sql.poll_flight_info(request).await
    }

    async fn get_schema(&self, mut request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        self.authorize(&mut request)?;
        self.sql.get_schema(request).await
    }

    async fn do_get(&self, mut request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        self.authorize(&mut request)?;
        // A protobuf `Any` starts with field 1's tag (0x0a); the InfluxDB ticket is a JSON
        // object (clients send it without leading whitespace).
        if request.get_ref().ticket.first() == Some(&b'{') {
            return self.influx_ticket(request).await;
        }
        self.sql.do_get(request).await
    }

    async fn do_put(&self, mut request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        self.authorize(&mut request)?;
        self.sql.do_put(request).await
    }

    async fn do_exchange(
        &self,
        mut request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.authorize(&mut request)?;
        self.sql.do_exchange(request).await
    }

    async fn do_action(&self, mut request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        self.authorize(&mut request)?;
        self.sql.do_action(request).await
    }

    async fn list_actions(&self, mut request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        self.authorize(&mut request)?;
        self.sql.list_actions(request).await
    }
}

impl WeirFlightSql {
    async fn run(
        &self,
        principal: &Principal,
        database: &str,
        sql: &str,
        params: QueryParams,
    ) -> Result<Response<DoGetStream>, Status> {
        principal.require_db(database, Access::Read).map_err(IntoStatus::into_status)?;
        let stream = self.state.query.query_sql(database, sql, params).await.map_err(IntoStatus::into_status)?;
        Ok(stream_response(stream))
    }

    async fn wire_shape(&self, principal: &Principal, database: &str, sql: &str) -> Result<query::QueryShape, Status> {
        principal.require_db(database, Access::Read).map_err(IntoStatus::into_status)?;
        let mut shape = self.state.query.describe(database, sql).await.map_err(IntoStatus::into_status)?;
        shape.schema = Arc::new(wire_schema(&shape.schema));
        Ok(shape)
    }

    async fn tables_batch<T>(&self, request: &Request<T>, query: CommandGetTables) -> Result<RecordBatch, Status> {
        let database = require_database(request.metadata())?;
        principal(request)?.require_db(&database, Access::Read).map_err(IntoStatus::into_status)?;
        let tables = self.state.query.list_tables(&database).await.map_err(IntoStatus::into_status)?;
        let mut builder = query.into_builder();
        for t in tables {
            builder
                .append(&t.catalog, &t.schema, &t.name, t.table_type, &wire_schema(&t.arrow_schema))
                .map_err(|e| internal("listing tables", e))?;
        }
        builder.build().map_err(|e| internal("listing tables", e))
    }
}

fn schemas_batch(query: CommandGetDbSchemas) -> Result<RecordBatch, Status> {
    let mut builder = query.into_builder();
    for schema in [USER_SCHEMA, SYSTEM_SCHEMA, "information_schema"] {
        builder.append(CATALOG_NAME, schema);
    }
    builder.build().map_err(|e| internal("listing schemas", e))
}

fn catalogs_batch(query: CommandGetCatalogs) -> Result<RecordBatch, Status> {
    let mut builder = query.into_builder();
    builder.append(CATALOG_NAME);
    builder.build().map_err(|e| internal("listing catalogs", e))
}

fn table_types_batch(query: CommandGetTableTypes) -> Result<RecordBatch, Status> {
    let mut builder = query.into_builder();
    for t in TABLE_TYPES {
        builder.append(t);
    }
    builder.build().map_err(|e| internal("listing table types", e))
}

#[tonic::async_trait]
impl FlightSqlService for WeirFlightSql {
    type FlightService = Self;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let database = require_database(request.metadata())?;
        let shape = self.wire_shape(principal(&request)?, &database, &query.query).await?;
        let handle = serde_json::to_vec(&StatementHandle { database, sql: query.query })
            .map_err(|e| internal("encoding statement handle", e))?;
        let ticket = TicketStatementQuery { statement_handle: handle.into() };
        let info = flight_info(&shape.schema, ticket.as_any().encode_to_vec(), request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let handle: StatementHandle = serde_json::from_slice(&ticket.statement_handle)
            .map_err(|e| Status::invalid_argument(format!("invalid statement ticket: {e}")))?;
        self.run(principal(&request)?, &handle.database, &handle.sql, QueryParams::default()).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let database = require_database(request.metadata())?;
        let shape = self.wire_shape(principal(&request)?, &database, &query.query).await?;
        let handle = self.prepared.lock().insert(database, query.query);
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema: schema_bytes(&shape.schema)?,
            parameter_schema: schema_bytes(&Schema::new(shape.params))?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        self.prepared.lock().remove(&query.prepared_statement_handle);
        Ok(())
    }

    /// Bind parameters: one row, one column per placeholder, in order.
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        // Fail fast on a bad handle, before reading the parameters.
        self.prepared.lock().id(&query.prepared_statement_handle)?;
        let data = request.into_inner().map_err(|s| FlightError::Tonic(Box::new(s)));
        let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
        let mut row: Option<Vec<ScalarValue>> = None;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| Status::invalid_argument(format!("reading parameters: {e}")))?;
            if batch.num_rows() == 0 {
                continue;
            }
            if row.is_some() || batch.num_rows() > 1 {
                return Err(Status::invalid_argument(
                    "Weir binds one row of parameters per execution; send a single row",
                ));
            }
            let values = batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, 0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Status::invalid_argument(format!("reading parameters: {e}")))?;
            row = Some(values);
        }
        let handle = query.prepared_statement_handle;
        self.prepared.lock().bind(&handle, row.unwrap_or_default())?;
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle) })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (database, sql, _) = self.prepared.lock().get(&query.prepared_statement_handle)?;
        let shape = self.wire_shape(principal(&request)?, &database, &sql).await?;
        command_info(&shape.schema, &query, request)
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (database, sql, params) = self.prepared.lock().get(&query.prepared_statement_handle)?;
        self.run(principal(&request)?, &database, &sql, QueryParams::Positional(params)).await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(&schema, &query, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(batch_response(catalogs_batch(query)?))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        command_info(&schema, &query, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(batch_response(schemas_batch(query)?))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        // Check the database now so a typo fails here rather than at DoGet.
        let database = require_database(request.metadata())?;
        principal(&request)?.require_db(&database, Access::Read).map_err(IntoStatus::into_status)?;
        if self.state.catalog.db(&database).is_none() {
            return Err(query::Error::DbNotFound(database).into_status());
        }
        let schema = query.clone().into_builder().schema();
        command_info(&schema, &query, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(batch_response(self.tables_batch(&request, query).await?))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        command_info(&schema, &query, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        Ok(batch_response(table_types_batch(query)?))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        command_info(&schema, &query, request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let batch = query.into_builder(&SQL_INFO).build().map_err(|e| internal("building SqlInfo", e))?;
        Ok(batch_response(batch))
    }

    async fn do_put_statement_update(
        &self,
        _query: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Status::unimplemented(READ_ONLY))
    }

    async fn do_put_statement_ingest(
        &self,
        _query: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Status::unimplemented(READ_ONLY))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Status::unimplemented(READ_ONLY))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        None
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests;
