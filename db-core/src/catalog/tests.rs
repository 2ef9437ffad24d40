//! Catalog tests: name rules, growth, persistence round trip, golden file, tombstones.

use super::*;

fn add(table: &str, column: &str, kind: ColumnKind) -> ColumnAddition {
    ColumnAddition { table: Arc::from(table), column: Arc::from(column), kind }
}

#[test]
fn db_name_rules() {
    for ok in ["a", "db1", "my-db", "my_db", "1db", &"x".repeat(64)] {
        assert!(validate_db_name(ok).is_ok(), "{ok}");
    }
    for (bad, why) in [
        ("", "empty"),
        ("_db", "start with a letter or digit"),
        ("-db", "start with a letter or digit"),
        ("my db", "only ASCII"),
        ("db/x", "only ASCII"),
        ("dé", "only ASCII"),
        (&"x".repeat(65), "longer than 64"),
    ] {
        let e = validate_db_name(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

#[tokio::test]
async fn grows_and_persists() {
    let storage = Storage::in_memory();
    let cat = Catalog::load(storage.clone()).await.unwrap();
    let (db, created) = cat.db_or_create("metrics").unwrap();
    assert!(created);
    let db = cat
        .add_columns(
            db.id,
            &[add("cpu", "host", ColumnKind::Tag), add("cpu", "usage", ColumnKind::Field(FieldType::Float64))],
            Limits::NONE,
        )
        .unwrap();
    let cpu = db.table("cpu").unwrap();
    assert_eq!(cpu.columns.len(), 3);
    assert_eq!(cpu.column("time").unwrap().kind, ColumnKind::Time);
    // Schema order: tags, fields, time.
    let names: Vec<_> = cpu.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["host", "usage", "time"]);
    assert_eq!(cpu.schema().field(0).data_type(), &tag_arrow_type());
    assert!(cat.is_dirty());
    cat.persist().await.unwrap();
    assert!(!cat.is_dirty());

    let again = Catalog::load(storage).await.unwrap();
    assert_eq!(again.snapshot().databases, cat.snapshot().databases);
    let cpu2 = again.db("metrics").unwrap().table("cpu").cloned().unwrap();
    assert_eq!(cpu2.column_id("usage"), Some(2));
    assert_eq!(cpu2.schema(), cpu.schema());
}

#[tokio::test]
async fn create_and_delete_databases() {
    let cat = Catalog::load(Storage::in_memory()).await.unwrap();
    cat.create_db("a").await.unwrap();
    assert!(matches!(cat.create_db("a").await, Err(Error::DbExists(_))));
    assert!(matches!(cat.create_db("bad name").await, Err(Error::InvalidDbName { .. })));
    let id = cat.delete_db("a").await.unwrap();
    assert!(cat.db("a").is_none());
    assert!(cat.db_by_id(id).unwrap().deleted);
    assert!(matches!(cat.delete_db("a").await, Err(Error::DbNotFound(_))));
    // The name is free again, with a new id; the old id stays a tombstone.
    let b = cat.create_db("a").await.unwrap();
    assert_ne!(b.id, id);
    // Replaying WAL data of the deleted id does not resurrect it.
    assert!(cat.db_for_replay(id, "a").unwrap().is_none());
}

#[tokio::test]
async fn replay_recreates_unpersisted_auto_created_databases() {
    let cat = Catalog::load(Storage::in_memory()).await.unwrap();
    let db = cat.db_for_replay(7, "late").unwrap().unwrap();
    assert_eq!(db.id, 7);
    // New databases get ids after it.
    let (next, _) = cat.db_or_create("next").unwrap();
    assert_eq!(next.id, 8);
}

#[tokio::test]
async fn concurrent_additions_keep_the_first_type() {
    let cat = Catalog::load(Storage::in_memory()).await.unwrap();
    let (db, _) = cat.db_or_create("d").unwrap();
    cat.add_columns(db.id, &[add("t", "f", ColumnKind::Field(FieldType::Int64))], Limits::NONE).unwrap();
    let db = cat.add_columns(db.id, &[add("t", "f", ColumnKind::Field(FieldType::String))], Limits::NONE).unwrap();
    assert_eq!(db.table("t").unwrap().column("f").unwrap().kind, ColumnKind::Field(FieldType::Int64));
}

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/golden/catalog-v1.json");

fn golden_state() -> CatalogState {
    let mut cpu = TableDef::new(1, Arc::from("cpu"));
    cpu.columns.push(ColumnDef { name: Arc::from("host"), kind: ColumnKind::Tag });
    cpu.columns.push(ColumnDef { name: Arc::from("usage"), kind: ColumnKind::Field(FieldType::Float64) });
    cpu.columns.push(ColumnDef { name: Arc::from("count"), kind: ColumnKind::Field(FieldType::UInt64) });
    cpu.columns.push(ColumnDef { name: Arc::from("ok"), kind: ColumnKind::Field(FieldType::Boolean) });
    cpu.columns.push(ColumnDef { name: Arc::from("note"), kind: ColumnKind::Field(FieldType::String) });
    cpu.columns.push(ColumnDef { name: Arc::from("n"), kind: ColumnKind::Field(FieldType::Int64) });
    cpu.reindex();
    let mut db = DatabaseSchema::new(1, Arc::from("metrics"));
    db.insert_table(cpu);
    db.next_table_id = 2;
    let mut gone = DatabaseSchema::new(2, Arc::from("old"));
    gone.deleted = true;
    CatalogState {
        format_version: 1,
        sequence: 9,
        next_db_id: 3,
        databases: [(1, Arc::new(db)), (2, Arc::new(gone))].into_iter().collect(),
        tokens: vec![TokenInfo {
            id: 1,
            name: "_admin".into(),
            hash: "ab".repeat(32),
            salt: None,
            created_at: 1_700_000_000_000_000_000,
            admin: true,
            permissions: vec![],
            expires_at: None,
        }],
        next_token_id: 2,
    }
}

/// The v1 catalog format is frozen: the golden file must keep decoding.
#[test]
fn golden_v1_catalog_decodes() {
    if std::env::var_os("WEIR_UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, golden_state().encode()).unwrap();
    }
    let bytes = std::fs::read(GOLDEN).expect("golden file present");
    let state = CatalogState::decode(&bytes, GOLDEN).unwrap();
    assert_eq!(state, golden_state());
    let cpu = state.db("metrics").unwrap().table("cpu").unwrap();
    assert_eq!(cpu.column_id("note"), Some(5));
}

#[test]
fn newer_and_corrupt_catalogs_are_refused() {
    let e = CatalogState::decode(br#"{"format_version": 99}"#, "p").unwrap_err();
    assert!(matches!(e, Error::UnsupportedVersion { found: 99, .. }), "{e}");
    let e = CatalogState::decode(b"{not json", "p").unwrap_err();
    assert!(e.to_string().contains("unreadable"), "{e}");
}

const GOLDEN_TRIGGERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/golden/catalog-v1-triggers.json");

/// Triggers of every specification kind load as typed definitions and save byte for byte
/// as they were written (the specification keeps its exact text).
#[test]
fn golden_v1_triggers_round_trip_byte_identical() {
    let bytes = std::fs::read(GOLDEN_TRIGGERS).expect("golden file present");
    let state = CatalogState::decode(&bytes, GOLDEN_TRIGGERS).unwrap();
    let db = state.db("plant").unwrap();
    let spec = |name: &str| db.triggers[name].specification.clone();
    assert_eq!(spec("hot"), TriggerSpec::Table("temps".into()));
    assert_eq!(spec("all"), TriggerSpec::AllTables);
    assert_eq!(spec("api").request_path(), Some("status"));
    assert_eq!(spec("tick").schedule().map(|s| s.text()), Some("every:1m 30s"));
    assert!(spec("hourly").schedule().is_some());
    assert_eq!(db.triggers["hourly"].max_retries(), 2);
    assert_eq!(state.request_trigger("status").map(|(_, t)| t.name.to_string()), Some("api".to_string()));
    assert_eq!(String::from_utf8(state.encode()).unwrap(), String::from_utf8(bytes).unwrap());
}

/// A stored specification that no longer parses stops the load with the reason; it never
/// silently becomes another kind of trigger.
#[test]
fn unparseable_trigger_spec_fails_the_load() {
    let bytes = std::fs::read_to_string(GOLDEN_TRIGGERS).unwrap().replace("\"table:temps\"", "\"table-temps\"");
    let e = CatalogState::decode(bytes.as_bytes(), "catalog.json").unwrap_err().to_string();
    assert!(e.contains("catalog at catalog.json is unreadable") && e.contains("table-temps"), "{e}");
    let bytes = std::fs::read_to_string(GOLDEN_TRIGGERS).unwrap().replace("every:1m 30s", "every:soon");
    let e = CatalogState::decode(bytes.as_bytes(), "catalog.json").unwrap_err().to_string();
    assert!(e.contains("invalid duration"), "{e}");
}

/// Many columns at once (their cost is measured by `scripts/bench --scenario hostile`), and
/// the limits cutting additions off where InfluxDB 3 would.
#[test]
fn many_columns_at_once_and_the_limits() {
    let cat = futures::executor::block_on(Catalog::load(Storage::in_memory())).unwrap();
    let (db, _) = cat.db_or_create("wide").unwrap();
    let adds: Vec<ColumnAddition> =
        (0..50_000).map(|i| add("t", &format!("f{i}"), ColumnKind::Field(FieldType::Int64))).collect();
    let db = cat.add_columns(db.id, &adds, Limits::NONE).unwrap();
    let table = db.table("t").unwrap();
    assert_eq!(table.columns.len(), 50_001);
    assert_eq!(table.column_id("f49999"), Some(50_000));
    assert_eq!(table.schema().fields().len(), 50_001);

    let limits = Limits { databases: Some(2), tables: Some(3), columns_per_table: 10 };
    let db = cat.add_columns(db.id, &[add("small", "a", ColumnKind::Tag)], limits).unwrap();
    let adds: Vec<ColumnAddition> =
        (0..20).map(|i| add("small", &format!("c{i}"), ColumnKind::Field(FieldType::Int64))).collect();
    let db = cat.add_columns(db.id, &adds, limits).unwrap();
    assert_eq!(db.table("small").unwrap().columns.len(), 10);
    let db = cat.add_columns(db.id, &[add("x", "a", ColumnKind::Tag), add("y", "a", ColumnKind::Tag)], limits).unwrap();
    assert!(db.table("x").is_some() && db.table("y").is_none(), "the third table fills the limit");
    cat.set_limits(limits);
    cat.db_or_create("second").unwrap();
    let e = cat.db_or_create("third").unwrap_err();
    assert_eq!(e.to_string(), "Adding a new database would exceed limit of 2 databases");
}

/// Resource tokens keep their salt, permissions and expiry across a reload.
#[tokio::test]
async fn resource_tokens_round_trip() {
    let storage = Storage::in_memory();
    let cat = Catalog::load(storage.clone()).await.unwrap();
    let info = TokenInfo {
        id: 0,
        name: "reader".into(),
        hash: "cd".repeat(32),
        salt: Some("00ff".into()),
        created_at: 5,
        admin: false,
        permissions: vec!["db:a,b:read".parse().unwrap(), "system:metrics:read".parse().unwrap()],
        expires_at: Some(99),
    };
    let stored = cat.add_token(info.clone()).await.unwrap();
    let again = Catalog::load(storage.clone()).await.unwrap();
    assert_eq!(again.tokens(), vec![stored.clone()]);
    let text = String::from_utf8(again.snapshot().encode()).unwrap();
    assert!(text.contains("\"db:a,b:read\""), "permissions are stored in their text form: {text}");
    again.delete_token("reader").await.unwrap();
    assert!(Catalog::load(storage).await.unwrap().tokens().is_empty());
    assert!(matches!(again.delete_token("reader").await, Err(Error::TokenNotFound(_))));
}
