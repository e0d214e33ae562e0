"""psycopg 3 against `weir serve`'s PostgreSQL protocol (tests/integration/wire.rs).

Client-side binding (`ClientCursor`: the simple query protocol; weir has no
extended protocol yet). Prints one JSON object: what came back.
Usage: psycopg_types.py PORT TENANT TOKEN
"""
import json
import sys

import psycopg

port, tenant, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = {}
with psycopg.connect(host="127.0.0.1", port=port, user=tenant, password=token,
                     dbname="weir", cursor_factory=psycopg.ClientCursor) as conn:
    # psycopg opens a transaction (BEGIN) before the first statement.
    cur = conn.execute(
        "SELECT double(CAST(%s AS BIGINT)) AS d, %s AS s, %s AS f, %s AS b, "
        "CAST('2026-01-01T10:00:00' AS TIMESTAMP) AS t, CAST('2026-01-02' AS DATE) AS day, "
        "CAST(X'0102' AS BYTEA) AS y, CAST(NULL AS BIGINT) AS n",
        (21, "it's", 1.5, True))
    row = cur.fetchone()
    out["types"] = [c.type_code for c in cur.description]
    out["row"] = [row[0], row[1], row[2], row[3], row[4].isoformat(), row[5].isoformat(),
                  row[6].hex(), row[7]]
    cur = conn.execute("SELECT x FROM generate_series(1, 5000) AS t(x)")
    out["rows"] = len(cur.fetchall())
    try:
        conn.execute("SELECT nope(1)")
    except psycopg.Error as e:
        out["error"] = [type(e).__name__, e.sqlstate]
    try:
        conn.execute("SELECT x FROM generate_series(1, 20000) AS t(x)")
    except psycopg.Error as e:
        out["too_many"] = [type(e).__name__, e.sqlstate]
print(json.dumps(out))
