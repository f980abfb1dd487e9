-- writ's SQLite schema, version 1. Times are seconds since the Unix epoch.
-- STRICT tables: SQLite refuses values of the wrong type instead of storing
-- them silently.

-- Every version of every org's trust policy; the latest is the live one.
CREATE TABLE policies (
    org         TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    source      TEXT    NOT NULL,
    format      TEXT    NOT NULL CHECK (format IN ('toml', 'json')),
    managed_by  TEXT    NOT NULL CHECK (managed_by IN ('file', 'api')),
    author      TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (org, version)
) STRICT, WITHOUT ROWID;

-- Consumed subject-token jtis (replay protection). Kept until expires_at,
-- which is the token's exp plus the retention leeway (see
-- JTI_RETENTION_LEEWAY_SECS in src/storage/mod.rs for why).
CREATE TABLE used_jtis (
    issuer      TEXT    NOT NULL,
    jti         TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (issuer, jti)
) STRICT, WITHOUT ROWID;
CREATE INDEX used_jtis_expires_at ON used_jtis (expires_at);

-- Names pinned to immutable ids on first use (names lowercased).
CREATE TABLE pins (
    issuer      TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('owner', 'repository')),
    name        TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (issuer, kind, name)
) STRICT, WITHOUT ROWID;

-- Every decision, granted or denied. id is a UUIDv7 in its hyphenated
-- lowercase text form, so ordering by id orders by time. List columns hold
-- JSON arrays; a NULL granted_apps / granted_machines means "not limited".
CREATE TABLE audit (
    id                    TEXT    NOT NULL PRIMARY KEY,
    time                  INTEGER NOT NULL,
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
    requested_permissions TEXT    NOT NULL,
    requested_apps        TEXT    NOT NULL,
    requested_machines    TEXT    NOT NULL,
    granted_permissions   TEXT    NOT NULL,
    granted_apps          TEXT,
    granted_machines      TEXT,
    token_jti             TEXT,
    token_expires_at      INTEGER,
    explanation           TEXT,
    client_addr           TEXT
) STRICT;
CREATE INDEX audit_org_id ON audit (org, id);

-- Tokens writ issued, for revocation per token, repository or run.
CREATE TABLE issued_tokens (
    jti         TEXT    NOT NULL PRIMARY KEY,
    org         TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    repository  TEXT,
    run_id      TEXT,
    rule        TEXT    NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX issued_tokens_org_repository ON issued_tokens (org, repository);
CREATE INDEX issued_tokens_org_run ON issued_tokens (org, run_id);
CREATE INDEX issued_tokens_expires_at ON issued_tokens (expires_at);

-- writ's own signing keys. private_pkcs8 is the Ed25519 private key in
-- PKCS#8 DER: the database file must be readable by writ only (it is
-- created with mode 0600).
CREATE TABLE signing_keys (
    kid           TEXT    NOT NULL PRIMARY KEY,
    algorithm     TEXT    NOT NULL,
    private_pkcs8 BLOB    NOT NULL,
    public_key    BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    activates_at  INTEGER NOT NULL CHECK (activates_at >= created_at)
) STRICT;
