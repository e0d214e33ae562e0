-- The control plane a cluster of `weir serve` nodes shares.

-- Module bytes, content-addressed: versions of any tenant share a digest's bytes.
CREATE TABLE weir_modules (
    sha256 TEXT PRIMARY KEY,
    bytes BYTEA NOT NULL
);

CREATE TABLE weir_udf_versions (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    sha256 TEXT NOT NULL REFERENCES weir_modules (sha256),
    size BIGINT NOT NULL,
    functions TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    published_by TEXT NOT NULL,
    PRIMARY KEY (tenant, name, version)
);

CREATE TABLE weir_pipelines (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    running BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE weir_tokens (
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE weir_audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    who TEXT NOT NULL,
    tenant TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT,
    status INTEGER NOT NULL,
    node TEXT NOT NULL
);
CREATE INDEX weir_audit_by_tenant ON weir_audit (tenant, id);

-- Each node's heartbeat (the database's clock) and what it runs.
CREATE TABLE weir_nodes (
    node TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    pipelines TEXT NOT NULL
);

-- Who runs a pipeline that cannot be shared (a file source), until when.
CREATE TABLE weir_leases (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    node TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- Request buckets per token (tokens left, last refill): the same rate
-- whichever node answers. Unlogged: a crash refills them, nothing else.
CREATE UNLOGGED TABLE weir_rate_buckets (
    key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    at TIMESTAMPTZ NOT NULL
);

-- Takes one request from `k`'s bucket: 0 when allowed, else the seconds to wait.
CREATE FUNCTION weir_take_request(k TEXT, rate DOUBLE PRECISION, burst DOUBLE PRECISION)
RETURNS DOUBLE PRECISION LANGUAGE plpgsql AS $$
DECLARE
    left_ DOUBLE PRECISION;
BEGIN
    INSERT INTO weir_rate_buckets AS b VALUES (k, burst, clock_timestamp())
    ON CONFLICT (key) DO UPDATE SET
        tokens = LEAST(burst, b.tokens + EXTRACT(EPOCH FROM clock_timestamp() - b.at) * rate),
        at = clock_timestamp()
    RETURNING tokens INTO left_;
    IF left_ >= 1 THEN
        UPDATE weir_rate_buckets SET tokens = tokens - 1 WHERE key = k;
        RETURN 0;
    END IF;
    RETURN (1 - left_) / rate;
END
$$;
