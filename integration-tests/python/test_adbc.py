"""ADBC Flight SQL driver (adbc-driver-flightsql) against a real `weir serve`."""

import time

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow as pa
import pytest
import requests

T0 = 1_700_000_000_000_000_000


def connect(weir, database="adbc", token=None):
    return flightsql.connect(
        weir.grpc_uri,
        # Weir's SQL is read-only with no transactions; say so instead of being warned.
        autocommit=True,
        db_kwargs={
            "adbc.flight.sql.authorization_header": f"Bearer {token or weir.token}",
            "adbc.flight.sql.rpc.call_header.database": database,
            "adbc.flight.sql.rpc.timeout_seconds.fetch": "30",
            "adbc.flight.sql.rpc.timeout_seconds.query": "30",
        },
    )


@pytest.fixture(scope="module", autouse=True)
def data(weir):
    lines = "\n".join(
        f"mem,host=h{i % 5},dc=d{i % 2} used={i * 1.25},free={1000 - i}i {T0 + i * 1_000_000_000}"
        for i in range(50)
    )
    r = requests.post(
        f"{weir.url}/api/v3/write_lp?db=adbc&precision=ns",
        data=lines,
        headers={"Authorization": f"Bearer {weir.token}"},
        timeout=30,
    )
    assert r.status_code == 204, r.text


def test_plain_query_into_arrow(weir):
    with connect(weir) as conn, conn.cursor() as cur:
        cur.execute("SELECT host, used, free, time FROM mem ORDER BY time")
        table = cur.fetch_arrow_table()
        assert table.num_rows == 50
        assert table.schema.field("used").type == pa.float64()
        assert table.schema.field("free").type == pa.int64()
        assert table.schema.field("time").type == pa.timestamp("ns")
        assert table.column("used").to_pylist() == [i * 1.25 for i in range(50)]
        assert table.column("host").to_pylist()[:6] == ["h0", "h1", "h2", "h3", "h4", "h0"]

        cur.execute("SELECT count(*) AS n FROM mem WHERE dc = 'd1'")
        assert cur.fetchone() == (25,)


def test_prepared_statement_with_parameters(weir):
    with connect(weir) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n, min(free) AS lo FROM mem WHERE host = ?", parameters=("h3",))
        assert cur.fetchall() == [(10, 1000 - 48)]
        # Same statement, new value: re-bound, not cached.
        cur.execute("SELECT count(*) AS n, min(free) AS lo FROM mem WHERE host = ?", parameters=("h4",))
        assert cur.fetchall() == [(10, 1000 - 49)]
        # Explicit prepare, then two executions with numeric parameters.
        cur.adbc_prepare("SELECT count(*) FROM mem WHERE free > $1 AND used < $2")
        cur.execute("SELECT count(*) FROM mem WHERE free > $1 AND used < $2", parameters=(990, 5.0))
        assert cur.fetchone() == (4,)  # i < 10 and i * 1.25 < 5


def test_get_objects_and_table_schema(weir):
    with connect(weir) as conn:
        objects = conn.adbc_get_objects(depth="all", catalog_filter="public", db_schema_filter="iox").read_all().to_pylist()
        assert [c["catalog_name"] for c in objects] == ["public"]
        schemas = objects[0]["catalog_db_schemas"]
        assert [s["db_schema_name"] for s in schemas] == ["iox"]
        tables = {t["table_name"]: t for t in schemas[0]["db_schema_tables"]}
        assert set(tables) == {"mem"}
        columns = [c["column_name"] for c in tables["mem"]["table_columns"]]
        assert sorted(columns) == ["dc", "free", "host", "time", "used"]

        schema = conn.adbc_get_table_schema("mem", db_schema_filter="iox")
        assert schema.field("used").type == pa.float64()
        assert schema.field("time").type == pa.timestamp("ns")
        assert schema.field("host").type == pa.string()

        assert "BASE TABLE" in conn.adbc_get_table_types()
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "Weir"


def test_wrong_token_is_a_clean_error(weir):
    started = time.monotonic()
    with pytest.raises(adbc_driver_manager.Error) as err:
        with connect(weir, token="apiv3_" + "1" * 32) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert "nauthenticated" in str(err.value) or "invalid token" in str(err.value)
    assert time.monotonic() - started < 30


def test_unknown_database_is_a_clean_error(weir):
    started = time.monotonic()
    with pytest.raises(adbc_driver_manager.Error) as err:
        with connect(weir, database="nowhere") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert "nowhere" in str(err.value)
    assert time.monotonic() - started < 30
