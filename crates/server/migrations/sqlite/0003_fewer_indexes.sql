-- writ's SQLite schema, version 3: fewer B-trees written per exchange.
--
-- Every exchange inserts one audit row and one issued token, and each
-- commit rewrites whole pages of every B-tree it touched (the last page of
-- each, at least). Version 2 kept audit in a rowid table with a separate
-- unique index on id plus an (org, id) index (3 B-trees), and issued tokens
-- in a rowid table with a unique index on jti and four more indexes
-- (6 B-trees). Version 3 writes 3 B-trees for both:
--
-- - audit is keyed by (org, id) itself (WITHOUT ROWID): every query reads
--   one org's records by id (UUIDv7, so time order), and nothing looks a
--   record up by id alone;
-- - issued_tokens is keyed by jti itself (WITHOUT ROWID; UUIDv7 too), and
--   one (org, expires_at) index replaces (org, repository), (org, run_id),
--   (org, rule) and (expires_at). The revocation statement selects an org's
--   unexpired tokens and only ever used those indexes for their org prefix
--   (`repository` is compared NOCASE, which a BINARY index cannot serve);
--   (org, expires_at) narrows the same statement to unexpired tokens.

CREATE TABLE audit_v3 (
    id                    TEXT    NOT NULL,
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
    client_addr           TEXT,
    PRIMARY KEY (org, id)
) STRICT, WITHOUT ROWID;
INSERT INTO audit_v3 SELECT
    id, time, request_id, org, outcome, error, rule, issuer, subject, subject_jti, repository,
    repository_id, ref, environment, workflow_ref, run_id, actor, requested_permissions,
    requested_apps, requested_machines, granted_permissions, granted_apps, granted_machines,
    token_jti, token_expires_at, explanation, client_addr
FROM audit;
DROP TABLE audit;
ALTER TABLE audit_v3 RENAME TO audit;

CREATE TABLE issued_tokens_v3 (
    jti         TEXT    NOT NULL PRIMARY KEY,
    org         TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    repository  TEXT,
    run_id      TEXT,
    rule        TEXT    NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    parent_jti  TEXT
) STRICT, WITHOUT ROWID;
INSERT INTO issued_tokens_v3 SELECT
    jti, org, subject, repository, run_id, rule, issued_at, expires_at, parent_jti
FROM issued_tokens;
DROP TABLE issued_tokens;
ALTER TABLE issued_tokens_v3 RENAME TO issued_tokens;
CREATE INDEX issued_tokens_org_expires_at ON issued_tokens (org, expires_at);
CREATE INDEX issued_tokens_parent ON issued_tokens (parent_jti) WHERE parent_jti IS NOT NULL;
