-- writ's PostgreSQL schema, version 1: the same data as SQLite's 0001 and
-- 0002 (migrations/sqlite), for clusters of `writ serve` replicas. Times
-- are seconds since the Unix epoch. Never edit a released file; every
-- change is a new one. `writ serve` applies pending files at start-up
-- under sqlx's advisory lock, so replicas starting together migrate once.

-- Every version of every org's trust policy; the latest is the live one.
CREATE TABLE policies (
    org         TEXT    NOT NULL,
    version     BIGINT  NOT NULL CHECK (version >= 1),
    source      TEXT    NOT NULL,
    format      TEXT    NOT NULL CHECK (format IN ('toml', 'json')),
    managed_by  TEXT    NOT NULL CHECK (managed_by IN ('file', 'api')),
    author      TEXT,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (org, version)
);

-- Orgs created through `POST /v1/orgs`. An org also exists while it has a
-- policy (file-managed orgs).
CREATE TABLE orgs (
    org         TEXT    NOT NULL PRIMARY KEY,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT
);

-- Consumed subject-token jtis (replay protection). The primary key is
-- what makes a jti single-use across every replica: two replicas
-- inserting the same (issuer, jti) serialize on it, and the second fails
-- with a unique violation. Kept until expires_at, the token's exp plus
-- the retention leeway (JTI_RETENTION_LEEWAY_SECS in src/storage/mod.rs).
CREATE TABLE used_jtis (
    issuer      TEXT    NOT NULL,
    jti         TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX used_jtis_expires_at ON used_jtis (expires_at);

-- Names pinned to immutable ids on first use (names lowercased).
CREATE TABLE pins (
    issuer      TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('owner', 'repository', 'project', 'namespace')),
    name        TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (issuer, kind, name)
);

-- Every decision, granted or denied. id is a UUIDv7, so ordering by id
-- orders by time. A NULL granted_apps / granted_machines means "not
-- limited".
CREATE TABLE audit (
    id                    UUID    NOT NULL PRIMARY KEY,
    time                  BIGINT  NOT NULL,
    request_id            TEXT    NOT NULL,
    org                   TEXT    NOT NULL,
    outcome               TEXT    NOT NULL CHECK (outcome IN ('granted', 'denied')),
    error                 TEXT,
    rule                  TEXT,
    issuer                TEXT,
    subject               TEXT,
    subject_jti           TEXT,
    repository            TEXT,
    repository_id         TEXT,
    ref                   TEXT,
    environment           TEXT,
    workflow_ref          TEXT,
    run_id                TEXT,
    actor                 TEXT,
    requested_permissions JSONB   NOT NULL,
    requested_apps        JSONB   NOT NULL,
    requested_machines    JSONB   NOT NULL,
    granted_permissions   JSONB   NOT NULL,
    granted_apps          JSONB,
    granted_machines      JSONB,
    token_jti             TEXT,
    token_expires_at      BIGINT,
    explanation           JSONB,
    client_addr           TEXT
);
CREATE INDEX audit_org_id ON audit (org, id);

-- Tokens writ issued, for revocation per token, repository, run or rule.
-- parent_jti links a narrowed token to the token it was narrowed from.
CREATE TABLE issued_tokens (
    jti         TEXT    NOT NULL PRIMARY KEY,
    org         TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    repository  TEXT,
    run_id      TEXT,
    rule        TEXT    NOT NULL,
    issued_at   BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    parent_jti  TEXT
);
CREATE INDEX issued_tokens_org_repository ON issued_tokens (org, lower(repository));
CREATE INDEX issued_tokens_org_run ON issued_tokens (org, run_id);
CREATE INDEX issued_tokens_org_rule ON issued_tokens (org, rule);
CREATE INDEX issued_tokens_expires_at ON issued_tokens (expires_at);
CREATE INDEX issued_tokens_parent ON issued_tokens (parent_jti) WHERE parent_jti IS NOT NULL;

-- Revoked writ tokens. seq orders the public revocation feed. Sequence
-- values are handed out when a row is inserted, not when its transaction
-- commits, so two concurrent revocations could become visible out of
-- order and a verifier polling with a cursor would skip the earlier one
-- for good. Every revocation therefore holds an exclusive transaction
-- advisory lock while it inserts and commits (REVOCATION_LOCK in
-- src/storage/postgres.rs): seq values become visible in order.
CREATE TABLE revocations (
    seq         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    jti         TEXT    NOT NULL UNIQUE,
    org         TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL,
    revoked_at  BIGINT  NOT NULL,
    reason      TEXT    NOT NULL,
    revoked_by  TEXT
);
CREATE INDEX revocations_expires_at ON revocations (expires_at);

-- writ's own signing keys. The private key is never stored in the clear:
-- private_key_sealed is AES-256-GCM (12-byte nonce, then ciphertext and
-- tag) under the operator's key-encryption key, with the kid as
-- associated data, so a row copied under another kid does not open.
-- kek_id names the key-encryption key (a hash of it), so a replica
-- configured with the wrong one says so instead of failing to decrypt.
CREATE TABLE signing_keys (
    kid                 TEXT    NOT NULL PRIMARY KEY,
    algorithm           TEXT    NOT NULL,
    private_key_sealed  BYTEA   NOT NULL,
    kek_id              TEXT    NOT NULL,
    public_key          BYTEA   NOT NULL,
    created_at          BIGINT  NOT NULL,
    activates_at        BIGINT  NOT NULL CHECK (activates_at >= created_at)
);
