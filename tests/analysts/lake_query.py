"""Queries posflow-lake's Parquet files the way an analyst does: DuckDB over a glob, nothing of
posflow's involved (docs/lake.md).

Usage: lake_query.py ROOT

Prints one JSON object: per table, the rows, the distinct record ids, the distinct Kafka
positions, the rows whose date= directory is not their event's date, and per merchant the rows
and the sum of amount_minor (of score, for fraud alerts).
"""
import json
import sys

import duckdb

root = sys.argv[1]
TABLES = {
    "validated": ("pos.transactions.validated", "transaction_id", "transaction_time", "amount_minor"),
    "rejected": ("pos.transactions.rejected", "transaction_id", "transaction_time", "amount_minor"),
    "fraud_alerts": ("pos.fraud.alerts", "alert_id", "detected_at", "score"),
}
con = duckdb.connect()
out = {}
for name, (topic, key, when, amount) in TABLES.items():
    # Topics may carry a deployment's prefix: match the directory whose name ends in the topic.
    glob = f"{root}/*{topic}/*/*.parquet"
    src = f"read_parquet('{glob}', hive_partitioning = true, hive_types = {{'date': DATE}}, union_by_name = true)"
    try:
        rows, ids, positions, misdated = con.execute(
            f"""SELECT count(*), count(DISTINCT {key}),
                       count(DISTINCT (kafka_partition, kafka_offset)),
                       count(*) FILTER (WHERE epoch_ms({when}) // 86400000 != date - DATE '1970-01-01')
                FROM {src}"""
        ).fetchone()
        merchants = {
            m: [n, s]
            for m, n, s in con.execute(
                f"SELECT merchant_id, count(*), sum({amount}) FROM {src} GROUP BY 1 ORDER BY 1"
            ).fetchall()
        }
    except duckdb.IOException:  # no file yet
        rows, ids, positions, misdated, merchants = 0, 0, 0, 0, {}
    out[name] = {
        "rows": rows,
        "distinct_ids": ids,
        "distinct_positions": positions,
        "misdated": misdated,
        "by_merchant": merchants,
    }
print(json.dumps(out, sort_keys=True))
