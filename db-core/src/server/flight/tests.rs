//! Flight SQL through a real socket with `arrow-flight`'s own clients: statements,
//! prepared statements, catalog commands, the InfluxDB JSON ticket, auth and error codes.

use std::sync::Arc;

use arrow::{
    array::{Array, AsArray, Int64Array, RecordBatch, StringArray},
    datatypes::{DataType, Float64Type, Int64Type, Schema},
    ipc::convert::try_schema_from_ipc_buffer,
};
use arrow_flight::{
    FlightClient, FlightInfo, Ticket,
    sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo, client::FlightSqlServiceClient},
};
use futures::TryStreamExt;
use tonic::{Code, transport::Channel};

use crate::{server::SharedState, storage::Storage, test_util::TestDb};

const TOKEN: &str = "apiv3_flight-test";

struct Fixture {
    addr: std::net::SocketAddr,
    state: SharedState,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A server with database `db` holding `cpu` (3 rows) and an admin token.
async fn start(auth: bool) -> Fixture {
    let db = TestDb::open(&Storage::in_memory()).await.unwrap();
    db.write("cpu,host=a,region=eu usage=1.5,n=1i 1000\ncpu,host=b,region=us usage=2.5,n=2i 2000\ncpu,host=a,region=eu usage=3.5,n=3i 3000")
        .await;
    let state: SharedState = db.into_server(auth, Some(TOKEN), 1 << 20).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(crate::server::serve(listener, Arc::clone(&state), Default::default(), async {
        let _ = rx.await;
    }));
    Fixture { addr, state, _stop: tx }
}

async fn channel(f: &Fixture) -> Channel {
    Channel::from_shared(format!("http://{}", f.addr)).unwrap().connect().await.unwrap()
}

async fn sql_client(f: &Fixture, token: Option<&str>, database: Option<&str>) -> FlightSqlServiceClient<Channel> {
    let mut c = FlightSqlServiceClient::new(channel(f).await);
    if let Some(t) = token {
        c.set_token(t.to_string());
    }
    if let Some(d) = database {
        c.set_header("database", d);
    }
    c
}

/// Fetch every endpoint of `info` and concatenate the batches.
async fn fetch(c: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for ep in info.endpoint {
        let stream = c.do_get(ep.ticket.unwrap()).await.unwrap();
        out.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    out
}

fn strings(batches: &[RecordBatch], col: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(col).unwrap();
            let a = arrow::compute::cast(a, &DataType::Utf8).unwrap();
            let a = a.as_any().downcast_ref::<StringArray>().unwrap().clone();
            (0..a.len()).map(move |i| a.value(i).to_string()).collect::<Vec<_>>()
        })
        .collect()
}

fn code<T: std::fmt::Debug>(r: Result<T, arrow_flight::error::FlightError>) -> (Code, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(arrow_flight::error::FlightError::Tonic(s)) => (s.code(), s.message().to_string()),
        Err(e) => panic!("expected a gRPC status, got {e}"),
    }
}

#[tokio::test]
async fn statement_query_streams_rows_with_the_advertised_schema() {
    let f = start(true).await;
    let mut c = sql_client(&f, Some(TOKEN), Some("db")).await;
    let info = c.execute("SELECT host, region, usage, n FROM cpu ORDER BY time".into(), None).await.unwrap();
    let advertised: Schema = info.clone().try_decode_schema().unwrap();
    let batches = fetch(&mut c, info).await;
    assert_eq!(batches[0].schema().as_ref(), &advertised);
    // Tags arrive as plain strings, not dictionaries.
    assert_eq!(advertised.field_with_name("host").unwrap().data_type(), &DataType::Utf8);
    assert_eq!(strings(&batches, "host"), ["a", "b", "a"]);
    let usage: Vec<f64> = batches
        .iter()
        .flat_map(|b| b.column_by_name("usage").unwrap().as_primitive::<Float64Type>().values().to_vec())
        .collect();
    assert_eq!(usage, [1.5, 2.5, 3.5]);
}

#[tokio::test]
async fn prepared_statements_bind_positional_parameters() {
    let f = start(true).await;
    let mut c = sql_client(&f, Some(TOKEN), Some("db")).await;

    let mut ps = c.prepare("SELECT n FROM cpu WHERE host = ? AND n >= ? ORDER BY n".into(), None).await.unwrap();
    assert_eq!(ps.dataset_schema().unwrap().field(0).name(), "n");
    assert_eq!(ps.parameter_schema().unwrap().fields().len(), 2);

    let params = RecordBatch::try_from_iter([
        ("p1", Arc::new(StringArray::from(vec!["a"])) as _),
        ("p2", Arc::new(Int64Array::from(vec![2])) as _),
    ])
    .unwrap();
    ps.set_parameters(params).unwrap();
    let info = ps.execute().await.unwrap();
    let batches = fetch(&mut c, info).await;
    let n: Vec<i64> = batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
    assert_eq!(n, [3]);

    // Rebinding replaces the values.
    let params = RecordBatch::try_from_iter([
        ("p1", Arc::new(StringArray::from(vec!["a"])) as _),
        ("p2", Arc::new(Int64Array::from(vec![0])) as _),
    ])
    .unwrap();
    ps.set_parameters(params).unwrap();
    let info = ps.execute().await.unwrap();
    let n: Vec<i64> = fetch(&mut c, info)
        .await
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(n, [1, 3]);
    ps.close().await.unwrap();

    // Too many values, and a value that cannot be compared with the column.
    let mut ps = c.prepare("SELECT n FROM cpu WHERE time >= ?".into(), None).await.unwrap();
    let two = RecordBatch::try_from_iter([
        ("a", Arc::new(StringArray::from(vec!["1970-01-01T00:00:00Z"])) as _),
        ("b", Arc::new(StringArray::from(vec!["x"])) as _),
    ])
    .unwrap();
    ps.set_parameters(two).unwrap();
    let info = ps.execute().await.unwrap();
    let (code_, msg) = code(c.do_get(info.endpoint[0].ticket.clone().unwrap()).await.map(|_| ()));
    assert_eq!(code_, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("1 parameter(s) but 2 were bound"), "{msg}");
    let garbage = RecordBatch::try_from_iter([("a", Arc::new(StringArray::from(vec!["not a time"])) as _)]).unwrap();
    ps.set_parameters(garbage).unwrap();
    let info = ps.execute().await.unwrap();
    let result = match c.do_get(info.endpoint[0].ticket.clone().unwrap()).await {
        Ok(stream) => stream.try_collect::<Vec<_>>().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let (code_, msg) = code(result);
    assert_eq!(code_, Code::InvalidArgument, "{msg}");

    // Executing without binding names the missing placeholder.
    let mut unbound = c.prepare("SELECT n FROM cpu WHERE host = $1".into(), None).await.unwrap();
    let info = unbound.execute().await.unwrap();
    let err = c.do_get(info.endpoint[0].ticket.clone().unwrap()).await.map(|_| ());
    let (code, msg) = code(err);
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("$1"), "{msg}");
}

#[tokio::test]
async fn catalog_commands_describe_the_database() {
    let f = start(true).await;
    let mut c = sql_client(&f, Some(TOKEN), Some("db")).await;

    let info = c.get_catalogs().await.unwrap();
    assert_eq!(strings(&fetch(&mut c, info).await, "catalog_name"), ["public"]);

    let info = c
        .get_db_schemas(CommandGetDbSchemas { catalog: None, db_schema_filter_pattern: Some("i%".into()) })
        .await
        .unwrap();
    assert_eq!(strings(&fetch(&mut c, info).await, "db_schema_name"), ["information_schema", "iox"]);

    let info = c
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: Some("iox".into()),
            table_name_filter_pattern: None,
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let batches = fetch(&mut c, info).await;
    assert_eq!(strings(&batches, "table_name"), ["cpu"]);
    assert_eq!(strings(&batches, "table_type"), ["BASE TABLE"]);
    let schema_bytes = batches[0].column_by_name("table_schema").unwrap().as_binary::<i32>().value(0).to_vec();
    let schema = try_schema_from_ipc_buffer(&schema_bytes).unwrap();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["host", "region", "n", "usage", "time"]);

    let info = c
        .get_tables(CommandGetTables {
            catalog: Some("public".into()),
            db_schema_filter_pattern: Some("system".into()),
            table_name_filter_pattern: Some("quer%".into()),
            table_types: vec![],
            include_schema: false,
        })
        .await
        .unwrap();
    assert_eq!(strings(&fetch(&mut c, info).await, "table_name"), ["queries"]);

    let info = c.get_table_types().await.unwrap();
    assert_eq!(strings(&fetch(&mut c, info).await, "table_type"), ["BASE TABLE", "LOCAL TEMPORARY", "VIEW"]);

    let info = c.get_sql_info(vec![SqlInfo::FlightSqlServerName, SqlInfo::FlightSqlServerReadOnly]).await.unwrap();
    let batches = fetch(&mut c, info).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    let values = batches[0].column_by_name("value").unwrap().as_union();
    let name = values.value(0);
    assert_eq!(name.as_string::<i32>().value(0), "Weir");
}

#[tokio::test]
async fn influxdb_json_ticket_with_named_parameters() {
    let f = start(true).await;
    let mut client = FlightClient::new(channel(&f).await);
    client.add_header("authorization", &format!("Bearer {TOKEN}")).unwrap();
    let ticket = serde_json::json!({
        "database": "db",
        "sql_query": "SELECT usage FROM cpu WHERE host = $h ORDER BY time",
        "query_type": "sql",
        "params": {"h": "a"},
    });
    let batches: Vec<RecordBatch> =
        client.do_get(Ticket::new(ticket.to_string())).await.unwrap().try_collect().await.unwrap();
    let usage: Vec<f64> =
        batches.iter().flat_map(|b| b.column(0).as_primitive::<Float64Type>().values().to_vec()).collect();
    assert_eq!(usage, [1.5, 3.5]);

    // The database may come from a header instead.
    client.add_header("bucket", "db").unwrap();
    let ticket = serde_json::json!({"sql_query": "SELECT count(*) AS c FROM cpu", "query_type": "sql"});
    let batches: Vec<RecordBatch> =
        client.do_get(Ticket::new(ticket.to_string())).await.unwrap().try_collect().await.unwrap();
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 3);
}

async fn json_ticket_error(f: &Fixture, token: Option<&str>, ticket: &str) -> tonic::Status {
    let mut client = FlightClient::new(channel(f).await);
    if let Some(t) = token {
        client.add_header("authorization", &format!("Bearer {t}")).unwrap();
    }
    let result = match client.do_get(Ticket::new(ticket.to_string())).await {
        Ok(stream) => stream.try_collect::<Vec<_>>().await.map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Err(arrow_flight::error::FlightError::Tonic(s)) => *s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn errors_map_to_grpc_codes() {
    let f = start(true).await;
    let q =
        |db: &str, sql: &str| serde_json::json!({"database": db, "sql_query": sql, "query_type": "sql"}).to_string();

    let s = json_ticket_error(&f, None, &q("db", "SELECT 1")).await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = json_ticket_error(&f, Some("apiv3_wrong"), &q("db", "SELECT 1")).await;
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    let s = json_ticket_error(&f, Some(TOKEN), &q("nope", "SELECT 1")).await;
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert!(s.message().contains("nope"), "{s:?}");

    let s = json_ticket_error(&f, Some(TOKEN), &q("db", "SELEC oops")).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let s = json_ticket_error(&f, Some(TOKEN), &q("db", "SELECT * FROM missing_table")).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("missing_table"), "{s:?}");
    let s = json_ticket_error(&f, Some(TOKEN), &q("db", "DROP TABLE cpu")).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    let s =
        json_ticket_error(&f, Some(TOKEN), r#"{"database":"db","sql_query":"SELECT 1","query_type":"influxql"}"#).await;
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
    let s = json_ticket_error(&f, Some(TOKEN), r#"{"database":"db""#).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let s = json_ticket_error(&f, Some(TOKEN), r#"{"sql_query":"SELECT 1"}"#).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("database"), "{s:?}");
    // Bytes that are neither JSON nor a Flight SQL command.
    let s = json_ticket_error(&f, Some(TOKEN), "\u{1}\u{2}garbage").await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // Flight SQL without a database header, with an unknown one, and a write attempt.
    let mut c = sql_client(&f, Some(TOKEN), None).await;
    let (code_, msg) = code(c.execute("SELECT 1".into(), None).await);
    assert_eq!(code_, Code::InvalidArgument, "{msg}");
    let mut c = sql_client(&f, Some(TOKEN), Some("nope")).await;
    let (code_, msg) = code(c.execute("SELECT 1".into(), None).await);
    assert_eq!(code_, Code::NotFound, "{msg}");
    let mut c = sql_client(&f, Some(TOKEN), Some("db")).await;
    let (code_, msg) = code(c.execute_update("DELETE FROM cpu".into(), None).await);
    assert_eq!(code_, Code::Unimplemented, "{msg}");
    assert!(msg.contains("read-only"), "{msg}");
}

#[tokio::test]
async fn without_auth_needs_no_token() {
    let f = start(false).await;
    let mut c = sql_client(&f, None, Some("db")).await;
    let info = c.execute("SELECT count(*) AS c FROM cpu".into(), None).await.unwrap();
    let batches = fetch(&mut c, info).await;
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 3);
    // Clients configured with an empty token send `Bearer ` (influxdb3-python with
    // token=""): ignored like any other header when auth is off.
    let mut c = sql_client(&f, Some(""), Some("db")).await;
    let info = c.execute("SELECT 1".into(), None).await.unwrap();
    assert_eq!(fetch(&mut c, info).await[0].num_rows(), 1);
}

#[test]
fn question_marks_are_numbered_outside_quotes_and_comments() {
    let n = |s| crate::query::number_question_marks(s).unwrap().into_owned();
    assert_eq!(n("SELECT 1"), "SELECT 1");
    assert_eq!(n("a = ? AND b = ?"), "a = $1 AND b = $2");
    assert_eq!(n("a = '?' AND \"c?\" = ? -- why?\n AND d = ?"), "a = '?' AND \"c?\" = $1 -- why?\n AND d = $2");
    assert_eq!(n("/* ? */ x = ? AND y = 'it''s?'"), "/* ? */ x = $1 AND y = 'it''s?'");
    assert_eq!(n("`a?` = ?"), "`a?` = $1");
    // Both styles in one statement would be numbered ambiguously.
    assert!(crate::query::number_question_marks("a = $1 AND b = ?").is_err());
    assert_eq!(n("a = '$1' AND b = ?"), "a = '$1' AND b = $1");
}

#[test]
fn prepared_statements_evict_the_least_recently_used() {
    use super::{MAX_PREPARED, PreparedStatements};
    let mut open = PreparedStatements::default();
    let first = open.insert("db".into(), "SELECT 1".into());
    let second = open.insert("db".into(), "SELECT 2".into());
    // Using the first keeps it; the second becomes the oldest.
    open.get(&first).unwrap();
    for i in 2..MAX_PREPARED {
        open.insert("db".into(), format!("SELECT {i}"));
    }
    assert_eq!(open.open.len(), MAX_PREPARED);
    let newest = open.insert("db".into(), "SELECT newest".into());
    assert_eq!(open.open.len(), MAX_PREPARED);
    assert_eq!(open.get(&second).unwrap_err().code(), Code::NotFound);
    assert_eq!(open.get(&first).unwrap().1, "SELECT 1");
    assert_eq!(open.get(&newest).unwrap().1, "SELECT newest");
    // Binding accounts bytes; closing gives them back.
    let before = open.bytes;
    open.bind(&newest, vec![datafusion::common::ScalarValue::Utf8(Some("x".repeat(1000)))]).unwrap();
    assert!(open.bytes >= before + 1000);
    open.remove(&newest);
    assert!(open.bytes < before);
    // A forged handle (right id, wrong nonce) is unknown.
    let mut forged = first.clone();
    forged[15] ^= 1;
    assert_eq!(open.get(&forged).unwrap_err().code(), Code::NotFound);
}

/// A resource token reads only the databases it names, whichever way the database
/// arrives: header, JSON ticket, a statement ticket made for another token, a prepared
/// statement, or the table listing.
#[tokio::test]
async fn resource_tokens_read_only_their_databases() {
    let f = start(true).await;
    f.state.buffer.write_lp("other", "m v=1 1", crate::lp::Precision::Nanosecond, true, false).await.unwrap();
    let token = |perm: &'static str| {
        let auth = f.state.auth.clone();
        async move {
            auth.create_token(crate::auth::NewToken {
                name: perm.to_string(),
                permissions: vec![perm.parse().unwrap()],
                ..Default::default()
            })
            .await
            .unwrap()
            .1
        }
    };
    let reader = token("db:other:read").await;
    let writer = token("db:db:write").await;

    // Allowed: its own database.
    let mut c = sql_client(&f, Some(&reader), Some("other")).await;
    let info = c.execute("SELECT v FROM m".into(), None).await.unwrap();
    assert_eq!(fetch(&mut c, info).await[0].num_rows(), 1);

    for (t, db) in [(&reader, "db"), (&writer, "db")] {
        let mut c = sql_client(&f, Some(t), Some(db)).await;
        let (code_, msg) = code(c.execute("SELECT * FROM cpu".into(), None).await);
        assert_eq!(code_, Code::PermissionDenied, "{msg}");
        assert!(msg.contains("read database \"db\""), "{msg}");
        let (code_, msg) = code(c.prepare("SELECT * FROM cpu".into(), None).await);
        assert_eq!(code_, Code::PermissionDenied, "{msg}");
        let (code_, msg) = code(c.get_tables(CommandGetTables { include_schema: false, ..Default::default() }).await);
        assert_eq!(code_, Code::PermissionDenied, "{msg}");
        let q = serde_json::json!({"database": "db", "sql_query": "SELECT 1", "query_type": "sql"}).to_string();
        let s = json_ticket_error(&f, Some(t), &q).await;
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    }

    // A statement ticket obtained by the admin does not carry the admin's rights.
    let mut admin = sql_client(&f, Some(TOKEN), Some("db")).await;
    let info = admin.execute("SELECT * FROM cpu".into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut c = sql_client(&f, Some(&reader), Some("other")).await;
    let (code_, msg) = code(c.do_get(ticket).await);
    assert_eq!(code_, Code::PermissionDenied, "{msg}");

    // Nor does a table-listing ticket: DoGet checks the caller's database again.
    let info = admin.get_tables(CommandGetTables { include_schema: false, ..Default::default() }).await.unwrap();
    let mut c = sql_client(&f, Some(&reader), Some("db")).await;
    let (code_, msg) = code(c.do_get(info.endpoint[0].ticket.clone().unwrap()).await);
    assert_eq!(code_, Code::PermissionDenied, "{msg}");
}
