//! The SQL that real InfluxDB 3 plugins run (docs/COMPATIBILITY.md §3a.9), and query-side behaviour.

use crate::{storage::Storage, test_util::TestDb};

async fn db() -> TestDb {
    let db = TestDb::open(&Storage::in_memory()).await.unwrap();
    // 2024-01-01T00:00:00Z and five minutes later, two hosts.
    db.write(
        "cpu,host=a,region=eu usage=10,n=1i,u=5u,ok=true,msg=\"x\" 1704067200000000000\n\
         cpu,host=a,region=eu usage=20,n=2i 1704067500000000000\n\
         cpu,host=b usage=30,n=3i 1704067500000000000",
    )
    .await;
    db
}

fn rows(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("| ")).skip(1).collect()
}

#[tokio::test]
async fn show_tables_rows_match_influxdb() {
    let db = db().await;
    let out = db.sql("SHOW TABLES").await;
    let rows: Vec<Vec<&str>> =
        out.lines().map(|l| l.split('|').map(str::trim).filter(|c| !c.is_empty()).collect()).collect();
    for want in [
        ["public", "iox", "cpu", "BASE TABLE"],
        ["public", "system", "queries", "BASE TABLE"],
        ["public", "system", "processing_engine_logs", "BASE TABLE"],
    ] {
        assert!(rows.iter().any(|r| r[..] == want[..]), "{want:?} missing in\n{out}");
    }
}

#[tokio::test]
async fn information_schema_types_are_arrow_display_names() {
    let db = db().await;
    let out = db
        .sql("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'cpu' ORDER BY column_name")
        .await;
    assert_eq!(
        rows(&out),
        [
            "| host        | Dictionary(Int32, Utf8) |",
            "| msg         | Utf8                    |",
            "| n           | Int64                   |",
            "| ok          | Boolean                 |",
            "| region      | Dictionary(Int32, Utf8) |",
            "| time        | Timestamp(ns)           |",
            "| u           | UInt64                  |",
            "| usage       | Float64                 |",
        ]
    );
    // Plugins match these strings literally in WHERE clauses.
    let out = db
        .sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'cpu' AND data_type = 'Dictionary(Int32, Utf8)' ORDER BY 1")
        .await;
    assert_eq!(rows(&out), ["| host        |", "| region      |"]);
}

#[tokio::test]
async fn time_literals_in_several_iso_forms_compare_with_time() {
    let db = db().await;
    for lit in ["2024-01-01T00:05:00Z", "2024-01-01T00:05:00.000000Z", "2024-01-01 00:05:00+00:00"] {
        let out = db.sql(&format!("SELECT count(*) AS n FROM cpu WHERE time >= '{lit}'")).await;
        assert_eq!(rows(&out), ["| 2 |"], "{lit}");
    }
}

#[tokio::test]
async fn plugin_functions() {
    let db = db().await;
    let out = db
        .sql(
            "SELECT DATE_BIN(INTERVAL '5 minutes', time, '1970-01-01T00:00:00Z') AS bin, count(*) AS n \
             FROM cpu GROUP BY 1 ORDER BY 1",
        )
        .await;
    assert_eq!(rows(&out), ["| 2024-01-01T00:00:00 | 1 |", "| 2024-01-01T00:05:00 | 2 |"]);
    let out = db
        .sql(
            "SELECT first_value(usage ORDER BY time) AS f, last_value(usage ORDER BY time) AS l, \
             median(usage) AS m, approx_median(usage) AS am, stddev(usage) AS sd FROM cpu WHERE host = 'a'",
        )
        .await;
    assert_eq!(rows(&out), ["| 10.0 | 20.0 | 15.0 | 15.0 | 7.0710678118654755 |"]);
    let out = db.sql("SELECT count(*) AS n FROM cpu WHERE time > now() - INTERVAL '5 minutes'").await;
    assert_eq!(rows(&out), ["| 0 |"]);
}

#[tokio::test]
async fn single_quoted_table_names_work() {
    let db = db().await;
    let out = db.sql("SELECT count(*) AS n FROM 'cpu'").await;
    assert_eq!(rows(&out), ["| 3 |"]);
}

#[tokio::test]
async fn writes_to_a_missing_database_create_it() {
    let db = TestDb::open(&Storage::in_memory()).await.unwrap();
    assert!(db.buffer.catalog().db("db").is_none());
    db.write("m v=1 1").await;
    assert!(db.buffer.catalog().db("db").is_some());
}

#[tokio::test]
async fn system_tables() {
    let db = db().await;
    let out = db.sql("SELECT database_name, table_count FROM system.databases").await;
    assert_eq!(rows(&out), ["| db            | 1           |"]);
    let out = db.sql("SELECT table_name, column_count FROM system.tables").await;
    assert_eq!(rows(&out), ["| cpu        | 8            |"]);
    let out = db
        .sql("SELECT query_text, success, running FROM system.queries WHERE query_text LIKE 'SELECT table_name%'")
        .await;
    assert_eq!(rows(&out).len(), 1, "{out}");
}

#[tokio::test]
async fn ddl_and_dml_are_refused() {
    let db = db().await;
    for sql in [
        "CREATE TABLE t (a INT)",
        "INSERT INTO cpu SELECT * FROM cpu",
        "DROP TABLE cpu",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let e = db.try_sql(sql).await.unwrap_err();
        assert!(e.contains("not supported"), "{sql}: {e}");
    }
}

/// A query past `--query-timeout` is cancelled with an error naming the limit, also one
/// that produces nothing until it ends.
#[tokio::test]
async fn queries_past_the_timeout_are_cancelled() {
    let limits = crate::query::QueryLimits { timeout: Some(std::time::Duration::from_millis(300)), memory: None };
    let db = TestDb::open_with(&Storage::in_memory(), limits).await.unwrap();
    db.write("m v=1i 1").await;
    // (An answer instead of this error would mean the count ran to its end.)
    let e = db.try_sql("SELECT count(*) FROM range(100000000000)").await.unwrap_err();
    assert!(e.contains("--query-timeout (300ms)"), "{e}");
}

/// A query that needs more memory than `--query-memory-limit` fails with an error naming
/// the limit (or spills where it can); the server goes on.
#[tokio::test]
async fn queries_past_the_memory_limit_fail_clearly() {
    let limits = crate::query::QueryLimits { timeout: None, memory: Some(4 << 20) };
    let db = TestDb::open_with(&Storage::in_memory(), limits).await.unwrap();
    db.write("m v=1i 1").await;
    let e = db.try_sql("SELECT array_agg(value) FROM range(5000000)").await.unwrap_err();
    assert!(e.contains("--query-memory-limit of 4194304 bytes"), "{e}");
    // Small queries still run.
    assert!(db.sql("SELECT count(*) AS n FROM range(1000)").await.contains("1000"));
}

/// The answer stream stops executing as soon as its consumer goes away, even while the
/// query has produced nothing yet.
#[tokio::test]
async fn an_abandoned_query_stops_at_once() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Flag(Arc::clone(&dropped));
    let schema = Arc::new(arrow::datatypes::Schema::empty());
    let never = futures::stream::pending::<datafusion::error::Result<arrow::record_batch::RecordBatch>>();
    let never = futures::StreamExt::map(never, move |b| {
        let _keep = &flag;
        b
    });
    let stream = Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, never));
    let bridged = crate::test_util::test_runtime().bridge(stream, None, None);
    drop(bridged);
    for _ in 0..600 {
        if dropped.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the query kept running after its consumer went away");
}
