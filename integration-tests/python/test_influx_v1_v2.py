"""The InfluxDB v2 client (influxdb-client, batching write API) and the v1 client
(influxdb) write to `weir serve`; the data is read back over Flight."""

import json
import time

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from influxdb import InfluxDBClient as V1Client
from influxdb.exceptions import InfluxDBClientError
from influxdb_client import InfluxDBClient as V2Client
from influxdb_client import Point, WriteOptions
from influxdb_client.client.exceptions import InfluxDBError as V2Error
from influxdb_client.client.write_api import SYNCHRONOUS

T0 = 1_700_000_000_000_000_000


def flight_query(weir, database, sql):
    """Run SQL over Flight with the InfluxDB ticket, as influxdb3-python does."""
    client = flight.FlightClient(weir.grpc_uri)
    options = flight.FlightCallOptions(
        headers=[(b"authorization", f"Bearer {weir.token}".encode())], timeout=30
    )
    ticket = flight.Ticket(json.dumps({"database": database, "sql_query": sql, "query_type": "sql"}).encode())
    return client.do_get(ticket, options).read_all()


def test_v2_batching_writes_are_queryable_over_flight(weir):
    errors = []
    with V2Client(url=weir.url, token=weir.token, org="ignored") as client:
        options = WriteOptions(batch_size=500, flush_interval=200, max_retries=0)
        with client.write_api(
            write_options=options, error_callback=lambda conf, data, exc: errors.append(exc)
        ) as write_api:
            for i in range(2_000):
                write_api.write(
                    bucket="v2db",
                    record=Point("disk")
                    .tag("host", f"h{i % 10}")
                    .field("used", float(i))
                    .time(T0 + i * 1_000_000, "ns"),
                )
        # Closing the write API flushes the last batch.
    assert errors == []
    # The write API has flushed and the server acknowledged every batch, so all rows are
    # visible now.
    table = flight_query(weir, "v2db", "SELECT count(*) AS n, sum(used) AS s FROM disk")
    assert table.column("n")[0].as_py() == 2_000
    assert table.column("s")[0].as_py() == sum(range(2_000))


def test_v2_wrong_token(weir):
    with V2Client(url=weir.url, token="apiv3_" + "2" * 32, org="ignored", timeout=30_000) as client:
        started = time.monotonic()
        with pytest.raises(V2Error) as err:
            client.write_api(write_options=SYNCHRONOUS).write(bucket="v2db", record="disk used=1")
        assert err.value.response.status == 401
        assert time.monotonic() - started < 30


def test_v1_writes_are_queryable_over_flight(weir):
    client = V1Client(host=weir.host, port=weir.port, username="", password=weir.token, database="v1db", timeout=30)
    points = [
        {
            "measurement": "net",
            "tags": {"iface": f"eth{i % 2}"},
            "time": T0 + i * 1_000_000_000,
            "fields": {"rx": i * 10, "err": i % 3 == 0},
        }
        for i in range(300)
    ]
    assert client.write_points(points, time_precision="n", batch_size=100)
    table = flight_query(weir, "v1db", "SELECT iface, count(*) AS n, sum(rx) AS rx FROM net GROUP BY iface ORDER BY iface")
    assert table.column("iface").to_pylist() == ["eth0", "eth1"]
    assert table.column("n").to_pylist() == [150, 150]
    assert table.column("rx").to_pylist() == [sum(i * 10 for i in range(0, 300, 2)), sum(i * 10 for i in range(1, 300, 2))]


def test_v1_wrong_token_and_unknown_database_over_flight(weir):
    client = V1Client(host=weir.host, port=weir.port, username="", password="apiv3_" + "3" * 32, database="v1db", timeout=30)
    with pytest.raises(InfluxDBClientError) as err:
        client.write_points([{"measurement": "net", "fields": {"rx": 1}}])
    assert err.value.code == 401

    # gRPC NOT_FOUND surfaces in pyarrow as ArrowKeyError.
    with pytest.raises(pa.ArrowKeyError) as err:
        flight_query(weir, "never_written", "SELECT 1")
    assert "database not found: never_written" in str(err.value)
