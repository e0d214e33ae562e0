#!/usr/bin/env python3
"""A stand-in for a Confluent-compatible schema registry, for tests only.

No schema-registry server can be installed from the package registries the
test machine reaches (Karapace is not on PyPI; Confluent's is a JVM
download), so the Avro tests run weir's client, and Python's
`confluent_kafka.schema_registry` client, against this implementation of
the documented REST calls both use (Confluent Schema Registry API
reference):

  POST /subjects/{subject}/versions   {"schema": "..."} -> {"id": N}
        (an already registered schema answers its existing id)
  GET  /subjects/{subject}/versions/latest -> {"subject","version","id","schema"}
  GET  /subjects/{subject}/versions/{version}
  GET  /schemas/ids/{id}               -> {"schema": "..."}   (404: error_code 40403)
  GET  /subjects                       -> ["subject", ...]

and, for fault tests: POST /test/outage {"status": 503} makes every other
request answer that status until POST /test/outage {"status": 0}.

Usage: registry.py PORT [USER PASSWORD]  (basic auth required when given).
Query strings are accepted and ignored; schemas are compared as JSON.
"""

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LOCK = threading.Lock()
SCHEMAS = {}   # id -> schema string
SUBJECTS = {}  # subject -> [id, ...] (versions in order)
AUTH = None
OUTAGE = [0]   # a status every request answers (a registry fault), or 0


def canonical(schema):
    try:
        return json.dumps(json.loads(schema), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return schema


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        if AUTH is None:
            return True
        if self.headers.get("Authorization") == AUTH:
            return True
        self.answer(401, {"error_code": 401, "message": "Unauthorized"})
        return False

    def parts(self):
        return [unquote(p) for p in urlparse(self.path).path.strip("/").split("/") if p]

    def down(self):
        if OUTAGE[0]:
            self.answer(OUTAGE[0], {"error_code": OUTAGE[0], "message": "outage"})
            return True
        return False

    def do_GET(self):
        if not self.authorized() or self.down():
            return
        p = self.parts()
        with LOCK:
            if p == ["subjects"]:
                return self.answer(200, sorted(SUBJECTS))
            if len(p) == 3 and p[:2] == ["schemas", "ids"] and p[2].isdigit():
                schema = SCHEMAS.get(int(p[2]))
                if schema is None:
                    return self.answer(404, {"error_code": 40403, "message": "Schema not found"})
                return self.answer(200, {"schema": schema})
            if len(p) == 4 and p[0] == "subjects" and p[2] == "versions":
                ids = SUBJECTS.get(p[1])
                if not ids:
                    return self.answer(404, {"error_code": 40401, "message": "Subject not found"})
                if p[3] == "latest":
                    version = len(ids)
                elif p[3].isdigit() and 1 <= int(p[3]) <= len(ids):
                    version = int(p[3])
                else:
                    return self.answer(404, {"error_code": 40402, "message": "Version not found"})
                sid = ids[version - 1]
                return self.answer(200, {"subject": p[1], "version": version, "id": sid, "schema": SCHEMAS[sid]})
        self.answer(404, {"error_code": 404, "message": "not found"})

    def do_POST(self):
        if not self.authorized():
            return
        p = self.parts()
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self.answer(422, {"error_code": 42201, "message": "Invalid JSON"})
        if p == ["test", "outage"]:
            OUTAGE[0] = int(body.get("status", 0))
            return self.answer(200, {"status": OUTAGE[0]})
        if self.down():
            return
        if len(p) == 3 and p[0] == "subjects" and p[2] == "versions":
            schema = body.get("schema")
            if not isinstance(schema, str):
                return self.answer(422, {"error_code": 42201, "message": "Invalid schema"})
            if body.get("schemaType", "AVRO") != "AVRO":
                return self.answer(422, {"error_code": 42201, "message": "Only AVRO here"})
            with LOCK:
                want = canonical(schema)
                sid = next((i for i, s in SCHEMAS.items() if canonical(s) == want), None)
                if sid is None:
                    sid = len(SCHEMAS) + 1
                    SCHEMAS[sid] = schema
                versions = SUBJECTS.setdefault(p[1], [])
                if sid not in versions:
                    versions.append(sid)
            return self.answer(200, {"id": sid})
        self.answer(404, {"error_code": 404, "message": "not found"})


def main():
    global AUTH
    port = int(sys.argv[1])
    if len(sys.argv) > 3:
        AUTH = "Basic " + base64.b64encode(f"{sys.argv[2]}:{sys.argv[3]}".encode()).decode()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
