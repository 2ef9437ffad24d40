"""Read a full answer back with the Python clients users run, for weir-bench's scan scenario.

    python read_back.py --url http://127.0.0.1:8181 --db DB --sql "SELECT * FROM cpu" [--token T] [--runs 3]

Prints one JSON object: for each client, the runs as {"rows", "seconds"}.
- influxdb3_python: InfluxDBClient3.query(mode="all"), i.e. Flight DoGet with the JSON ticket
  into a pyarrow Table (what InfluxDB 3's own figures were measured with);
- requests_csv / requests_json: GET /api/v3/query_sql streamed with `requests`, rows counted
  from the body (newlines for CSV, objects for JSON), no parsing.
"""

import argparse
import json
import time

import requests
from influxdb_client_3 import InfluxDBClient3


def timed(fn):
    started = time.perf_counter()
    rows = fn()
    return {"rows": rows, "seconds": time.perf_counter() - started}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--sql", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()

    client = InfluxDBClient3(host=a.url, token=a.token, database=a.db)
    headers = {"Authorization": f"Bearer {a.token}"} if a.token else {}

    def http(fmt):
        def run():
            count = 0
            with requests.get(
                f"{a.url}/api/v3/query_sql",
                params={"db": a.db, "q": a.sql, "format": fmt},
                headers=headers,
                stream=True,
                timeout=600,
            ) as r:
                r.raise_for_status()
                for chunk in r.iter_content(chunk_size=1 << 20):
                    count += chunk.count(b"\n") if fmt == "csv" else chunk.count(b"{")
            return count - 1 if fmt == "csv" else count

        return run

    out = {
        "influxdb3_python": [timed(lambda: client.query(a.sql, mode="all").num_rows) for _ in range(a.runs)],
        "requests_csv": [timed(http("csv")) for _ in range(a.runs)],
        "requests_json": [timed(http("json")) for _ in range(a.runs)],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
