-- ward payments schema. Timestamps are unix milliseconds (BIGINT) and ids are
-- UUID text so that the SQL in store/ops.rs runs unchanged on SQLite and PostgreSQL.
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    email TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'merchant', 'auditor')),
    password_hash TEXT NOT NULL,
    failed_count BIGINT NOT NULL DEFAULT 0,
    first_failed_at BIGINT,
    locked_until BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, email)
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoked_reason TEXT
);
CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE payments (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    description TEXT NOT NULL,
    payer_masked TEXT NOT NULL,
    payer_ciphertext BLOB NOT NULL,
    payer_key_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'cancelled', 'refunded')),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX payments_by_tenant ON payments (tenant_id, created_at, id);

CREATE TABLE idempotency_keys (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status_code BIGINT,
    response_body TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
);

CREATE TABLE webhook_deliveries (
    event_id TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL,
    received_at BIGINT NOT NULL
);

-- Each tenant's trail is a small fixed set of hash chains ("lanes", see audit.rs): concurrent
-- writers of one tenant take different lanes instead of queueing on a single chain head.
CREATE TABLE audit_heads (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    lane BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (tenant_id, lane)
);

CREATE TABLE audit_log (
    pos INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    lane BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    request_id TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (tenant_id, lane, seq)
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, pos);

-- The system tenant owns events that belong to no customer tenant.
INSERT INTO tenants (id, slug, name, created_at) VALUES ('00000000-0000-0000-0000-000000000000', 'system', 'System', 0);
INSERT INTO audit_heads (tenant_id, lane, seq, hash) VALUES
    ('00000000-0000-0000-0000-000000000000', 0, 0, '0000000000000000000000000000000000000000000000000000000000000000'),
    ('00000000-0000-0000-0000-000000000000', 1, 0, '0000000000000000000000000000000000000000000000000000000000000000'),
    ('00000000-0000-0000-0000-000000000000', 2, 0, '0000000000000000000000000000000000000000000000000000000000000000'),
    ('00000000-0000-0000-0000-000000000000', 3, 0, '0000000000000000000000000000000000000000000000000000000000000000'),
    ('00000000-0000-0000-0000-000000000000', 4, 0, '0000000000000000000000000000000000000000000000000000000000000000'),
    ('00000000-0000-0000-0000-000000000000', 5, 0, '0000000000000000000000000000000000000000000000000000000000000000'),
    ('00000000-0000-0000-0000-000000000000', 6, 0, '0000000000000000000000000000000000000000000000000000000000000000'),
    ('00000000-0000-0000-0000-000000000000', 7, 0, '0000000000000000000000000000000000000000000000000000000000000000');
