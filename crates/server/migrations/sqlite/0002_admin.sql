-- writ's SQLite schema, version 2: the admin API (org registry, narrowing
-- links, revocations). Never edit 0001; every change is a new file.

-- Orgs created through `POST /v1/orgs`. An org also exists while it has a
-- policy (file-managed orgs); orgs that had a policy before this table
-- existed are registered here.
CREATE TABLE orgs (
    org         TEXT    NOT NULL PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    created_by  TEXT
) STRICT, WITHOUT ROWID;
INSERT INTO orgs (org, created_at, created_by)
    SELECT org, MIN(created_at), NULL FROM policies GROUP BY org;

-- A narrowed token's parent: revoking a token revokes every token narrowed
-- from it, following these links transitively. NULL for tokens obtained by
-- OIDC exchange.
ALTER TABLE issued_tokens ADD COLUMN parent_jti TEXT;
CREATE INDEX issued_tokens_parent ON issued_tokens (parent_jti) WHERE parent_jti IS NOT NULL;
CREATE INDEX issued_tokens_org_rule ON issued_tokens (org, rule);

-- Revoked writ tokens. seq orders the public revocation feed: SQLite has
-- one writer, so seq values become visible in order and a verifier polling
-- with a cursor never misses one. Rows of tokens past expires_at may be
-- purged (an expired token is refused anyway).
CREATE TABLE revocations (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    jti         TEXT    NOT NULL UNIQUE,
    org         TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    revoked_by  TEXT
) STRICT;
CREATE INDEX revocations_expires_at ON revocations (expires_at);

-- 0001 allowed only GitHub pin kinds, so recording a GitLab project or
-- namespace pin failed its CHECK. SQLite cannot alter a CHECK: rebuild.
CREATE TABLE pins_v2 (
    issuer      TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('owner', 'repository', 'project', 'namespace')),
    name        TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (issuer, kind, name)
) STRICT, WITHOUT ROWID;
INSERT INTO pins_v2 (issuer, kind, name, id, created_at)
    SELECT issuer, kind, name, id, created_at FROM pins;
DROP TABLE pins;
ALTER TABLE pins_v2 RENAME TO pins;
