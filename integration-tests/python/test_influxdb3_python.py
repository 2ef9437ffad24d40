"""influxdb3-python (InfluxDBClient3) against a real `weir serve`: writes over HTTP, queries
over Flight with the InfluxDB JSON ticket."""

import time

import pandas as pd
import pyarrow as pa
import pytest
from influxdb_client_3 import InfluxDBClient3, Point, WritePrecision
from influxdb_client_3.exceptions import InfluxDBError

T0 = 1_700_000_000_000_000_000  # ns


def client(weir, database="py3", token=None):
    return InfluxDBClient3(host=weir.url, token=token or weir.token, database=database)


def test_points_round_trip_with_types(weir):
    with client(weir) as c:
        points = [
            Point("cpu")
            .tag("host", f"h{i % 3}")
            .tag("region", "eu")
            .field("usage", i * 0.5)
            .field("count", i)
            .field("ok", i % 2 == 0)
            .field("note", f"n{i}")
            .time(T0 + i * 1_000_000_000, WritePrecision.NS)
            for i in range(10)
        ]
        c.write(record=points)

        table = c.query("SELECT * FROM cpu ORDER BY time", mode="all")
        assert isinstance(table, pa.Table)
        assert table.num_rows == 10
        types = {f.name: f.type for f in table.schema}
        assert types["usage"] == pa.float64()
        assert types["count"] == pa.int64()
        assert types["ok"] == pa.bool_()
        assert types["note"] == pa.string()
        assert types["host"] == pa.string()
        assert types["time"] == pa.timestamp("ns")
        assert table.column("usage").to_pylist() == [i * 0.5 for i in range(10)]
        assert table.column("count").to_pylist() == list(range(10))
        assert table.column("host").to_pylist() == [f"h{i % 3}" for i in range(10)]
        assert table.column("time").cast(pa.int64()).to_pylist() == [T0 + i * 1_000_000_000 for i in range(10)]

        df = c.query("SELECT host, sum(usage) AS total FROM cpu GROUP BY host ORDER BY host", mode="pandas")
        assert list(df["host"]) == ["h0", "h1", "h2"]
        assert list(df["total"]) == [0.0 + 1.5 + 3.0 + 4.5, 0.5 + 2.0 + 3.5, 1.0 + 2.5 + 4.0]


def test_dataframe_write_and_query_parameters(weir):
    df = pd.DataFrame(
        {
            "time": pd.to_datetime([T0 + i * 1_000_000 for i in range(100)], unit="ns"),
            "sensor": [f"s{i % 4}" for i in range(100)],
            "temp": [20.0 + i / 10 for i in range(100)],
        }
    )
    with client(weir) as c:
        c.write(
            record=df,
            data_frame_measurement_name="weather",
            data_frame_tag_columns=["sensor"],
            data_frame_timestamp_column="time",
        )
        out = c.query(
            "SELECT count(*) AS n, max(temp) AS hottest FROM weather WHERE sensor = $sensor",
            mode="pandas",
            query_parameters={"sensor": "s3"},
        )
        assert out["n"].iloc[0] == 25
        assert out["hottest"].iloc[0] == pytest.approx(20.0 + 99 / 10)

        # Chunked reading streams record batches.
        reader = c.query("SELECT temp FROM weather ORDER BY time", mode="reader")
        total = sum(batch.num_rows for batch in reader)
        assert total == 100


def test_wrong_token_is_a_clean_error(weir):
    bad = "apiv3_" + "0" * 32
    with client(weir, token=bad) as c:
        started = time.monotonic()
        with pytest.raises(Exception) as err:
            c.query("SELECT 1")
        assert "unauthenticated" in str(err.value).lower() and "invalid token" in str(err.value)
        with pytest.raises(InfluxDBError) as err:
            c.write(record="cpu usage=1")
        assert "401" in str(err.value) or "nauthorized" in str(err.value)
        assert time.monotonic() - started < 30


def test_unknown_database_is_a_clean_error(weir):
    with client(weir, database="no_such_db") as c:
        started = time.monotonic()
        with pytest.raises(Exception) as err:
            c.query("SELECT 1")
        assert "not found" in str(err.value) and "no_such_db" in str(err.value)
        assert time.monotonic() - started < 30
