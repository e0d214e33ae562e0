"""ADBC's Flight SQL driver against `weir serve` (run by tests/integration/wire.rs).

Usage: adbc_flight.py PORT TENANT TOKEN OTHER_TENANT OTHER_TOKEN

Prints one JSON object: the rows of a query with the tenant's UDF as a
pyarrow Table, its Arrow schema, a prepared statement's two runs, the
server's description and objects (ADBC's get_info, get_objects,
get_table_types), and what a wrong token, a syntax error and another
tenant's use of the UDF raise.
"""

import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions

port, tenant, token, other, other_token = sys.argv[1:6]
uri = f"grpc://127.0.0.1:{port}"


def connect(user, password):
    return flight_sql.connect(uri, db_kwargs={"username": user, "password": password})


def error_of(user, password, sql):
    try:
        with connect(user, password) as conn, conn.cursor() as cur:
            cur.execute(sql)
            cur.fetch_arrow_table()
    except Exception as e:  # the driver's error class and message
        return [type(e).__name__, str(e)]
    return None


out = {}
with connect(tenant, token) as conn, conn.cursor() as cur:
    cur.execute(
        "SELECT x, double(x) AS d FROM (VALUES (CAST(1 AS BIGINT)), (2), (NULL)) AS t(x) ORDER BY x"
    )
    table = cur.fetch_arrow_table()
    out["rows"] = table.to_pylist()
    out["schema"] = [f"{f.name}:{f.type}" for f in table.schema]
    cur.execute("SELECT x FROM generate_series(1, 200000) AS t(x)")
    out["many"] = cur.fetch_arrow_table().num_rows

# A prepared statement (what JDBC's Flight SQL driver sends for every
# query), run twice.
with connect(tenant, token) as conn, conn.cursor() as cur:
    prepared = "SELECT double(x) AS d FROM generate_series(1, 3) AS t(x)"
    # (Answers the parameters' schema: none.)
    out["parameters"] = cur.adbc_prepare(prepared)
    runs = []
    for _ in range(2):
        cur.execute(prepared)
        table = cur.fetch_arrow_table()
        runs.append(table.to_pylist())
    out["prepared_schema"] = [f"{f.name}:{f.type}" for f in table.schema]
    out["prepared"] = runs

# Parameters (bound by the driver with DoPut; the server answers a handle
# carrying them): typed by the statement (double takes BIGINT) or by the
# value; a value that does not fit its placeholder is refused.
with connect(tenant, token) as conn, conn.cursor() as cur:
    runs = []
    for x in (21, 5):
        cur.execute("SELECT double($1) AS d, $2 AS s", parameters=(x, "as bound"))
        runs.append(cur.fetch_arrow_table().to_pylist())
    out["params"] = runs
    try:
        cur.execute("SELECT double($1) AS d", parameters=("not a number",))
        cur.fetch_arrow_table()
        out["bad_param"] = None
    except Exception as e:
        out["bad_param"] = [type(e).__name__, str(e)]

# A bearer token sent from the start, without the handshake.
with flight_sql.connect(
    uri,
    db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"},
) as conn, conn.cursor() as cur:
    cur.execute("SELECT double(CAST(21 AS BIGINT)) AS d")
    out["bearer"] = cur.fetch_arrow_table().to_pylist()

# What a client asks before it queries: the server's description and its
# objects (GetSqlInfo, GetCatalogs, GetDbSchemas, GetTables,
# GetTableTypes).
with connect(tenant, token) as conn:
    info = conn.adbc_get_info()
    out["info"] = {
        k: info.get(k) for k in ("vendor_name", "vendor_version", "vendor_arrow_version")
    }
    out["table_types"] = conn.adbc_get_table_types()
    out["objects"] = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    out["objects_filtered"] = (
        conn.adbc_get_objects(depth="db_schemas", db_schema_filter="nothing%").read_all().to_pylist()
    )

try:
    with connect(tenant, "wrong") as conn:
        conn.adbc_get_objects(depth="catalogs").read_all()
    out["objects_wrong_token"] = None
except Exception as e:
    out["objects_wrong_token"] = [type(e).__name__, str(e)]
out["wrong_token"] = error_of(tenant, "wrong", "SELECT 1")
out["bad_tenant"] = error_of("no/such tenant", token, "SELECT 1")
out["syntax"] = error_of(tenant, token, "SELEC 1")
out["other_tenant"] = error_of(other, other_token, "SELECT double(CAST(1 AS BIGINT))")
print(json.dumps(out))
