"""psycopg 3 against `weir serve`'s PostgreSQL protocol (tests/integration/wire.rs).

Both protocols: client-side binding (`ClientCursor`: the simple query
protocol) and psycopg's default, server-side binding (the extended query
protocol: Parse / Bind / Describe / Execute, `$n` parameters, prepared
statements, binary parameters and results). Prints one JSON object: what
came back.
Usage: psycopg_types.py PORT TENANT TOKEN [ROWS]
"""
import datetime
import decimal
import json
import sys

import psycopg

port, tenant, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = {}


def connect(**kw):
    return psycopg.connect(host="127.0.0.1", port=port, user=tenant, password=token,
                           dbname="weir", **kw)


with connect(cursor_factory=psycopg.ClientCursor) as conn:
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
    # Beyond the HTTP endpoint's 10 000 rows: streamed, every row.
    cur = conn.execute("SELECT x FROM generate_series(1, 20000) AS t(x)")
    out["many"] = sum(1 for _ in cur)


def plain(v):
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()
    if isinstance(v, (bytes, memoryview)):
        return bytes(v).hex()
    if isinstance(v, decimal.Decimal):
        return str(v)
    return v


with connect() as conn:
    # Parameters of every type, sent by psycopg with their types (text
    # format), typed by the statement where it can (`x > $7`).
    cur = conn.execute(
        "SELECT double(CAST(%s AS BIGINT)) AS d, %s AS s, %s AS f, %s AS b, %s AS day, "
        "%s AS y, %s AS t, x FROM (VALUES (1), (2), (3)) AS v(x) WHERE x > %s ORDER BY x",
        (21, "it's", 1.5, True, datetime.date(2026, 1, 2), b"\x01\x02",
         datetime.datetime(2026, 1, 1, 10, 0, 0), 1))
    out["ext_types"] = [c.type_code for c in cur.description]
    out["ext_rows"] = [[plain(v) for v in r] for r in cur.fetchall()]
    # Binary results (and binary parameters: `%b`), every type weir returns.
    cur = conn.cursor(binary=True)
    cur.execute(
        "SELECT CAST(%b AS BIGINT) + 1 AS n, 'ä' AS s, CAST(1.5 AS DOUBLE) AS f, "
        "CAST(2.5 AS REAL) AS r, true AS b, CAST(7 AS INT) AS i, CAST(3 AS SMALLINT) AS h, "
        "CAST('2026-01-02' AS DATE) AS day, CAST('2026-01-01T10:00:00' AS TIMESTAMP) AS t, "
        "CAST(X'0102' AS BYTEA) AS y, CAST(-12.345 AS DECIMAL(10,3)) AS m, "
        "CAST(NULL AS BIGINT) AS nothing",
        (41,))
    out["binary_types"] = [c.type_code for c in cur.description]
    out["binary_row"] = [plain(v) for v in cur.fetchone()]
    # A prepared statement, run several times with new values.
    out["prepared"] = [
        conn.execute("SELECT double(CAST(%s AS BIGINT)) AS d", (i,), prepare=True).fetchone()[0]
        for i in range(3)
    ]
    # Errors at Parse (planned there) with their SQLSTATE; a value the
    # statement cannot take, naming its placeholder.
    try:
        conn.execute("SELECT nope(%s)", (1,))
    except psycopg.Error as e:
        out["ext_error"] = [type(e).__name__, e.sqlstate]
    conn.rollback()
    try:
        conn.execute("SELECT x FROM (VALUES (1)) AS v(x) WHERE x > %s", ("many",))
    except psycopg.Error as e:
        out["bad_value"] = [type(e).__name__, e.sqlstate, "$1" in str(e)]
    # A large result (ROWS rows of 1000 bytes), read as it streams: the
    # server holds a batch or two (wire.rs watches its memory meanwhile).
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if rows:
        conn.rollback()
        cur = conn.execute(
            f"SELECT x, repeat('x', 1000) AS pad FROM generate_series(1, {rows}) AS t(x)")
        out["large"] = [sum(1 for _ in cur), cur.rowcount]
print(json.dumps(out))
