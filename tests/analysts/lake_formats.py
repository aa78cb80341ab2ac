"""Times DuckDB over the candidate Parquet formats that the lake's ignored test
`parquet_file::tests::write_format_candidates` writes (docs/lake.md, "Format").

Usage: lake_formats.py DIR

For each file: its size, and the best of five runs of three queries an analyst runs: a count,
sums by merchant over everything, and one merchant's rows for one hour.
"""
import glob
import os
import sys
import time

import duckdb

QUERIES = {
    "count": "SELECT count(*) FROM read_parquet('{f}')",
    "by merchant": "SELECT merchant_id, count(*), sum(amount_minor) FROM read_parquet('{f}') GROUP BY 1",
    "one merchant, one hour": "SELECT transaction_id, terminal_id, amount_minor, card_last4 FROM read_parquet('{f}') WHERE merchant_id = 'M0042' "
    "AND transaction_time BETWEEN TIMESTAMPTZ '2025-12-01 10:00:00+00' AND TIMESTAMPTZ '2025-12-01 11:00:00+00'",
}
con = duckdb.connect()
con.execute("SET threads = 2")
print(f"{'file':<28} {'MB':>6}  " + "  ".join(f"{q:>22}" for q in QUERIES))
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.parquet"))):
    cells = []
    for q in QUERIES.values():
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            con.execute(q.format(f=f)).fetchall()
            best = min(best, time.perf_counter() - t)
        cells.append(f"{best * 1000:>19.1f} ms")
    print(f"{os.path.basename(f):<28} {os.path.getsize(f) / 1e6:>6.1f}  " + "  ".join(cells))
