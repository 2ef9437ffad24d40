//! Write buffer tests, in process: validation outcomes, point identity, WAL replay,
//! snapshots to Parquet, dedup across sources, and recovery from damaged WAL files.

use super::*;
use crate::test_util::TestDb;

async fn open(storage: &Storage) -> Result<TestDb> {
    TestDb::open(storage).await
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[tokio::test]
async fn later_writes_win_field_by_field_in_the_buffer() {
    let db = open(&Storage::in_memory()).await.unwrap();
    db.write("cpu,host=a usage=1,idle=9 10\ncpu,host=b usage=2 10").await;
    db.write("cpu,host=a usage=5 10\ncpu,host=a usage=6 20").await;
    let out = db.sql("SELECT host, usage, idle, time FROM cpu ORDER BY host, time").await;
    assert_eq!(
        lines(&out),
        [
            "+------+-------+------+-------------------------------+",
            "| host | usage | idle | time                          |",
            "+------+-------+------+-------------------------------+",
            "| a    | 5.0   | 9.0  | 1970-01-01T00:00:00.000000010 |",
            "| a    | 6.0   |      | 1970-01-01T00:00:00.000000020 |",
            "| b    | 2.0   |      | 1970-01-01T00:00:00.000000010 |",
            "+------+-------+------+-------------------------------+",
        ]
    );
}

#[tokio::test]
async fn points_written_again_in_any_time_order_keep_one_row_each() {
    // Against a model: a pseudo-random stream of points over a few series, in and out of
    // time order, many written again; each write sets `v` and sometimes `w`.
    let db = open(&Storage::in_memory()).await.unwrap();
    let mut model: std::collections::BTreeMap<(String, i64), (i64, Option<i64>)> = Default::default();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for write in 0..40 {
        let mut body = String::new();
        for i in 0..25 {
            let r = next();
            let host = format!("h{}", r % 4);
            // Series h0 only ever moves forward in time (some repeats); the others jump around.
            let time = if host == "h0" { (write * 25 + i) as i64 / 3 } else { (r >> 8) as i64 % 60 };
            let v = (r >> 20) as i64 % 1000;
            let w = (r % 3 == 0).then_some((r >> 40) as i64 % 1000);
            let entry = model.entry((host.clone(), time)).or_insert((v, None));
            entry.0 = v;
            if w.is_some() {
                entry.1 = w;
            }
            match w {
                Some(w) => body.push_str(&format!("cpu,host={host} v={v}i,w={w}i {time}\n")),
                None => body.push_str(&format!("cpu,host={host} v={v}i {time}\n")),
            }
        }
        db.write(&body).await;
    }
    let out = db
        .sql(
            "SELECT host || ':' || CAST(CAST(time AS BIGINT) AS VARCHAR) || ':' || CAST(v AS VARCHAR) || ':' \
             || COALESCE(CAST(w AS VARCHAR), '-') AS r FROM cpu ORDER BY host, time",
        )
        .await;
    let got: Vec<&str> = lines(&out)
        .into_iter()
        .skip(3)
        .filter(|l| l.starts_with("| "))
        .map(|l| l.trim_matches(|c| c == '|' || c == ' '))
        .collect();
    let expected: Vec<String> = model
        .iter()
        .map(|((host, time), (v, w))| format!("{host}:{time}:{v}:{}", w.map_or("-".to_string(), |w| w.to_string())))
        .collect();
    assert!(expected.len() > 100 && expected.len() < 1000, "{}", expected.len());
    assert_eq!(got, expected);
}

#[tokio::test]
async fn partial_writes_and_type_conflicts() {
    let db = open(&Storage::in_memory()).await.unwrap();
    let out = db.write("m,t=a v=1 1\nbad\nm,t=a v=\"x\" 2\nm,t=a v=3 3").await;
    assert_eq!(out.accepted_lines, 2);
    let errs: Vec<(usize, &str)> = out.errors.iter().map(|e| (e.line_number, e.original_line.as_str())).collect();
    assert_eq!(errs, [(2, "bad"), (3, "m,t=a v=\"x\" 2")]);
    assert_eq!(
        out.errors[1].message,
        "invalid column type for column 'v', expected iox::column_type::field::float, got iox::column_type::field::string"
    );
    // accept_partial=false: nothing is written.
    let err =
        db.buffer.write_lp("db", "m,t=a v=4 4\nm,t=a v=true 5", Precision::Nanosecond, false, false).await.unwrap_err();
    assert!(matches!(err, Error::Rejected(ref e) if e.len() == 1 && e[0].line_number == 2), "{err}");
    let out = db.sql("SELECT count(*) AS n FROM m").await;
    assert!(out.contains("| 2 |"), "{out}");
}

#[tokio::test]
async fn restart_replays_the_wal() {
    let storage = Storage::in_memory();
    {
        let db = open(&storage).await.unwrap();
        db.write("cpu,host=a usage=1 10\ncpu,host=a usage=2 20").await;
        db.write("cpu,host=a usage=3 10").await;
        db.buffer.shutdown().await;
    }
    let db = open(&storage).await.unwrap();
    assert_eq!(db.buffer.replayed_files(), 2);
    let out = db.sql("SELECT usage FROM cpu ORDER BY time").await;
    assert_eq!(lines(&out)[3..5], ["| 3.0   |", "| 2.0   |"]);
}

#[tokio::test]
async fn snapshot_persists_parquet_retires_wal_and_survives_restart() {
    let storage = Storage::in_memory();
    {
        let db = open(&storage).await.unwrap();
        db.write("cpu,host=a usage=1,idle=5 10\ncpu,host=b usage=2 7200000000000").await;
        db.buffer.snapshot().await.unwrap();
        let files = db.buffer.parquet_files();
        // Two hour partitions.
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(crate::wal::list_files(&storage).await.unwrap().is_empty());
        // Still queryable, now from Parquet.
        let out = db.sql("SELECT host, usage FROM cpu ORDER BY host").await;
        assert!(out.contains("| a    | 1.0   |") && out.contains("| b    | 2.0   |"), "{out}");
        // A later write of the same point in the buffer overrides one field only.
        db.write("cpu,host=a usage=9 10").await;
        let out = db.sql("SELECT host, usage, idle FROM cpu WHERE host = 'a'").await;
        assert!(out.contains("| a    | 9.0   | 5.0  |"), "{out}");
        db.buffer.shutdown().await;
    }
    let db = open(&storage).await.unwrap();
    let out = db.sql("SELECT host, usage, idle FROM cpu ORDER BY host").await;
    assert_eq!(lines(&out)[3..5], ["| a    | 9.0   | 5.0  |", "| b    | 2.0   |      |"], "{out}");
    // Persist the override too: two overlapping Parquet generations, still one row per point.
    db.buffer.snapshot().await.unwrap();
    let out = db.sql("SELECT count(*) AS n, max(usage) AS u FROM cpu WHERE host = 'a'").await;
    assert!(out.contains("| 1 | 9.0 |"), "{out}");
    let out = db.sql("SELECT count(*) FROM system.parquet_files").await;
    assert!(out.contains("| 3 "), "{out}");
}

#[tokio::test]
async fn time_filters_prune_files() {
    let db = open(&Storage::in_memory()).await.unwrap();
    db.write("cpu,host=a usage=1 10\ncpu,host=a usage=2 7200000000000").await;
    db.buffer.snapshot().await.unwrap();
    let data = db.buffer.table_data(1, 1, Some((0, 100)));
    assert_eq!(data.pieces.len(), 1);
    assert!(matches!(data.pieces[0].source, PieceSource::File(_)));
    assert!(data.dedup_groups().is_empty());
    let out = db.sql("SELECT usage FROM cpu WHERE time < '1970-01-01T01:00:00Z'").await;
    assert!(out.contains("1.0") && !out.contains("2.0"), "{out}");
}

async fn corrupt(storage: &Storage, seq: u64, f: impl FnOnce(&mut Vec<u8>)) {
    let p = storage.wal_path(seq);
    let mut b = storage.get(&p).await.unwrap().unwrap().to_vec();
    f(&mut b);
    storage.put(&p, bytes::Bytes::from(b)).await.unwrap();
}

#[tokio::test]
async fn damaged_newest_wal_file_keeps_its_valid_prefix() {
    let storage = Storage::in_memory();
    {
        let db = open(&storage).await.unwrap();
        db.write("m v=1 1").await;
        db.write("m v=2 2").await;
        db.buffer.shutdown().await;
    }
    // Cut into the only frame of the newest file (12-byte end marker + 3 bytes).
    corrupt(&storage, 2, |b| {
        let n = b.len();
        b.truncate(n - 15);
    })
    .await;
    let db = open(&storage).await.unwrap();
    let out = db.sql("SELECT v FROM m ORDER BY time").await;
    assert!(out.contains("1.0") && !out.contains("2.0"), "{out}");
    // After new writes the recovered file is an older file: it must be well-formed now,
    // or the next start would refuse.
    db.write("m v=3 3").await;
    db.buffer.shutdown().await;
    drop(db);
    let db = open(&storage).await.unwrap();
    let out = db.sql("SELECT v FROM m ORDER BY time").await;
    assert!(out.contains("1.0") && out.contains("3.0") && !out.contains("2.0"), "{out}");
}

#[tokio::test]
async fn damage_in_an_older_wal_file_refuses_to_start() {
    let storage = Storage::in_memory();
    {
        let db = open(&storage).await.unwrap();
        db.write("m v=1 1").await;
        db.write("m v=2 2").await;
        db.buffer.shutdown().await;
    }
    corrupt(&storage, 1, |b| {
        let n = b.len();
        b[n - 14] ^= 0xff;
    })
    .await;
    let err = open(&storage).await.unwrap_err().to_string();
    assert!(err.contains("00000000000000000001.wal") && err.contains("checksum mismatch"), "{err}");
    assert!(err.contains("refusing to start"), "{err}");
}

#[tokio::test]
async fn deleted_databases_stay_deleted_after_replay() {
    let storage = Storage::in_memory();
    {
        let db = open(&storage).await.unwrap();
        db.write("m v=1 1").await;
        let id = db.buffer.catalog().delete_db("db").await.unwrap();
        db.buffer.drop_db(id);
        db.buffer.shutdown().await;
    }
    let db = open(&storage).await.unwrap();
    assert!(db.buffer.catalog().db("db").is_none());
}

fn piece(generation: usize, min_time: i64, max_time: i64) -> Piece {
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::empty());
    Piece {
        generation,
        min_time,
        max_time,
        source: PieceSource::Batch(arrow::record_batch::RecordBatch::new_empty(schema)),
    }
}

#[test]
fn dedup_groups_join_only_overlaps_across_generations() {
    let groups = |pieces: Vec<Piece>| TableData { pieces }.dedup_groups();
    // Same generation overlapping: no duplicates possible.
    assert!(groups(vec![piece(0, 0, 10), piece(0, 5, 15)]).is_empty());
    // Different generations, disjoint: nothing to do.
    assert!(groups(vec![piece(0, 0, 10), piece(1, 11, 20)]).is_empty());
    // A chain of same-generation segments joins only where another generation overlaps:
    // pieces 0-3 are the open buffer's segments, 4 a Parquet file overlapping segment 1.
    let g = groups(vec![piece(1, 0, 10), piece(1, 9, 20), piece(1, 19, 30), piece(1, 29, 40), piece(0, 15, 16)]);
    assert_eq!(g, [vec![1, 4]]);
    // Transitive: a file overlapping two segments pulls both into one group, and a second
    // file elsewhere forms its own group.
    let g = groups(vec![piece(2, 0, 10), piece(2, 20, 30), piece(0, 5, 25), piece(1, 100, 110), piece(2, 105, 106)]);
    assert_eq!(g, [vec![0, 1, 2], vec![3, 4]]);
}

#[tokio::test]
async fn overlap_dedup_reads_only_the_overlapping_pieces() {
    let db = open(&Storage::in_memory()).await.unwrap();
    // Hour 0 and hour 2 persisted, then hour 2 rewritten in the buffer.
    db.write("cpu,host=a usage=1 10\ncpu,host=a usage=2 7200000000000").await;
    db.buffer.snapshot().await.unwrap();
    db.write("cpu,host=a usage=3 7200000000000\ncpu,host=b usage=4 7200000000001").await;
    let data = db.buffer.table_data(1, 1, None);
    assert_eq!(data.pieces.len(), 3);
    let groups = data.dedup_groups();
    assert_eq!(groups.len(), 1);
    // The hour-0 file is not part of the group.
    assert!(groups[0].iter().all(|&i| data.pieces[i].min_time >= 7_200_000_000_000));
    let out = db.sql("SELECT host, usage FROM cpu ORDER BY time, host").await;
    assert_eq!(lines(&out)[3..6], ["| a    | 1.0   |", "| a    | 3.0   |", "| b    | 4.0   |"], "{out}");
    let plan = db.sql("EXPLAIN SELECT * FROM cpu").await;
    assert!(plan.contains("DedupExec"), "{plan}");
}

/// Schema limits reject the line that would pass them, with InfluxDB 3's message; the rest
/// of the write goes through; WAL replay is not held to them.
#[tokio::test]
async fn a_line_over_a_schema_limit_is_rejected_alone() {
    let storage = Storage::in_memory();
    let db = open(&storage).await.unwrap();
    db.buffer.catalog().set_limits(crate::catalog::Limits { databases: None, tables: Some(2), columns_per_table: 4 });
    let body = "cpu a=1i,b=2i 10\ncpu c=3i,d=4i 20\ncpu a=5i 30\nmem x=1i 10\ndisk x=1i 10";
    let out = db.write(body).await;
    assert_eq!(out.accepted_lines, 3);
    let errors: Vec<(usize, &str)> = out.errors.iter().map(|e| (e.line_number, e.message.as_str())).collect();
    assert_eq!(
        errors,
        [
            (2, "Update to schema would exceed number of columns per table limit of 4 columns"),
            (5, "Update to schema would exceed number of tables limit of 2 tables"),
        ]
    );
    // The limit applies to writes; a restart replays what was accepted whatever it is now.
    drop(db);
    let db = open(&storage).await.unwrap();
    assert_eq!(lines(&db.sql("SELECT count(*) AS n FROM cpu").await)[3], "| 2 |");
}

/// One line with many new columns is accepted in one go, and a huge bad line is echoed
/// back cut to a bounded length.
#[tokio::test]
async fn a_wide_line_is_written_and_a_huge_bad_line_is_not_echoed_whole() {
    let db = open(&Storage::in_memory()).await.unwrap();
    let fields: Vec<String> = (0..20_000).map(|i| format!("f{i}={i}i")).collect();
    let wide = format!("wide {} 10", fields.join(","));
    // Past the default limit of 500 columns...
    let out = db.buffer.write_lp("db", &wide, Precision::Nanosecond, true, false).await.unwrap();
    assert_eq!(out.errors[0].message, "Update to schema would exceed number of columns per table limit of 500 columns");
    // ...and accepted in one go without limits.
    db.buffer.catalog().set_limits(crate::catalog::Limits::NONE);
    let out = db.buffer.write_lp("db", &wide, Precision::Nanosecond, true, false).await.unwrap();
    assert_eq!((out.accepted_lines, out.errors.len()), (1, 0));
    assert_eq!(db.buffer.catalog().db("db").unwrap().table("wide").unwrap().columns.len(), 20_001);
    let bad = format!("bad,tag=x value={} 10", "9".repeat(100_000));
    let out = db.write(&format!("ok v=1i 10\n{bad}")).await;
    assert_eq!(out.errors.len(), 1);
    let e = &out.errors[0];
    assert!(e.original_line.len() < 1_100, "{} bytes echoed", e.original_line.len());
    assert!(e.original_line.ends_with(&format!("... ({} bytes in all)", bad.len())), "{}", &e.original_line[1000..]);
}

/// A database's retention period: older rows are not queryable (buffer and Parquet), and
/// files wholly older than it are removed from the manifest and the store, for good.
#[tokio::test]
async fn retention_hides_old_rows_and_expires_their_files() {
    const HOUR: i64 = 3_600_000_000_000;
    let storage = Storage::in_memory();
    let now = crate::time::TimeProvider::now_ns(&crate::time::SystemTime);
    {
        let db = open(&storage).await.unwrap();
        db.buffer.catalog().create_db_with_retention("db", Some(HOUR)).await.unwrap();
        db.write(&format!("cpu,host=old usage=1 {}\ncpu,host=new usage=2 {}", now - 2 * HOUR, now - HOUR / 6)).await;
        let out = db.sql("SELECT host FROM cpu").await;
        assert!(out.contains("new") && !out.contains("old"), "{out}");
        db.buffer.snapshot().await.unwrap();
        let files = db.buffer.parquet_files();
        assert_eq!(files.len(), 2, "{files:?}");
        let out = db.sql("SELECT count(*) AS n FROM cpu").await;
        assert!(out.contains("| 1 |"), "{out}");
        assert_eq!(db.buffer.expire_files(now).await.unwrap(), 1);
        let left = db.buffer.parquet_files();
        assert_eq!(left.len(), 1);
        assert!(left[0].max_time >= now - HOUR, "{left:?}");
        let gone = files.iter().find(|f| f.max_time < now - HOUR).unwrap();
        assert!(
            storage.get(&object_store::path::Path::from(gone.path.as_str())).await.unwrap().is_none(),
            "file still stored"
        );
        assert_eq!(db.buffer.expire_files(now).await.unwrap(), 0, "nothing more to expire");
        db.buffer.shutdown().await;
    }
    // The shorter manifest is the one a restart loads.
    let db = open(&storage).await.unwrap();
    assert_eq!(db.buffer.parquet_files().len(), 1);
    let out = db.sql("SELECT host FROM cpu").await;
    assert!(out.contains("new") && !out.contains("old"), "{out}");
    // A deleted database's files go at once with the next expiry (hard delete).
    let id = db.buffer.catalog().delete_db("db").await.unwrap();
    db.buffer.drop_db(id);
    assert_eq!(db.buffer.expire_files(now).await.unwrap(), 1);
    assert!(db.buffer.parquet_files().is_empty());
}

/// A deleted table's rows are gone from the buffer, Parquet and WAL replay; a table
/// created again under the name holds only what is written after.
#[tokio::test]
async fn deleted_tables_stay_deleted_and_the_name_can_be_used_again() {
    let storage = Storage::in_memory();
    {
        let db = open(&storage).await.unwrap();
        db.write("gone,k=a v=1 10\nkept v=1 10").await;
        db.buffer.snapshot().await.unwrap();
        db.write("gone,k=b v=2 20").await; // still in the WAL and the buffer
        let catalog = db.buffer.catalog();
        let db_id = catalog.db("db").unwrap().id;
        let id = catalog.delete_table("db", "gone", db.buffer.last_wal_seq()).await.unwrap();
        db.buffer.drop_table(db_id, id);
        assert!(db.try_sql("SELECT * FROM gone").await.unwrap_err().contains("not found"));
        assert_eq!(db.buffer.expire_files(0).await.unwrap(), 1, "the table's Parquet file");
        let err = catalog.delete_table("db", "gone", 0).await.unwrap_err();
        assert!(err.to_string().contains("table \"gone\" not found"), "{err}");
        // The name again: only the new row.
        db.write("gone,k=c v=3 30").await;
        db.buffer.shutdown().await;
    }
    let db = open(&storage).await.unwrap();
    let out = db.sql("SELECT k FROM gone").await;
    assert!(out.contains("| c |") && !out.contains("| a |") && !out.contains("| b |"), "{out}");
    let out = db.sql("SELECT count(*) AS n FROM kept").await;
    assert!(out.contains("| 1 |"), "{out}");
}
