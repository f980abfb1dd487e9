-- writ's SQLite schema, version 7: two fewer index-shaped B-trees in every
-- group commit.
--
-- Each commit of the exchange writer rewrites the last, partly filled
-- leaves of every B-tree it appends to, and an index-shaped B-tree (an
-- index, or a WITHOUT ROWID table) rebalances its last leaf with up to two
-- siblings whenever that leaf fills. At 256 exchanges in flight a commit
-- of about 40 exchanges wrote 21.6 pages to the WAL: audit 11.6,
-- used_jtis 4.9, the audit_tokens index 4.2, the header 1.0
-- (bench/scripts/wal-frames, docs/PERFORMANCE.md session 18).
--
-- 1. Replay records move to a rowid table whose key packs the record's
--    expiry second and its number within that second:
--    key = expires_at * 16777216 + n. Records still sort by expiry, so
--    purging reads and deletes from the front, but an insert at the end of
--    a rowid table starts a new page instead of rebalancing. The exchange
--    writer, this table's one writer, numbers each second's records (see
--    src/storage/sqlite/group.rs); an expiry after the year 19,391 is kept
--    as that year's last second.
CREATE TABLE used_jtis_v7 (
    key     INTEGER NOT NULL PRIMARY KEY,
    issuer  TEXT    NOT NULL,
    jti     TEXT    NOT NULL
) STRICT;
INSERT INTO used_jtis_v7 (key, issuer, jti)
    SELECT second * 16777216 + row_number() OVER (PARTITION BY second ORDER BY seq) - 1, issuer, jti
    FROM (SELECT min(max(expires_at, 0), 549755813887) AS second, seq, issuer, jti FROM used_jtis);
DROP TABLE used_jtis;
ALTER TABLE used_jtis_v7 RENAME TO used_jtis;

-- 2. The partial index audit_tokens (an org's tokens held as grant rows,
--    by expiry) goes. Revocation finds an org's unexpired tokens by its
--    audit key (org, id) instead: a grant's id is its token's jti, a
--    UUIDv7 whose first 48 bits are the milliseconds it was made at, so a
--    token alive at `now` has an id at or after `now - max_secs` seconds,
--    where max_secs is the longest any held token's expiry lay after the
--    time in its id. token_span keeps that number; the exchange writer
--    raises it in the same transaction as any grant that exceeds it.
--    Starting value: the largest such span among the rows already held
--    (the 12 hex digits before the id's second hyphen, read as a number);
--    finding it reads the audit log once, at this upgrade.
CREATE TABLE token_span (
    one       INTEGER NOT NULL PRIMARY KEY CHECK (one = 1),
    max_secs  INTEGER NOT NULL CHECK (max_secs >= 0)
) STRICT;
INSERT INTO token_span (one, max_secs)
    SELECT 1, max(0, coalesce(max(token_expires_at - millis / 1000), 0))
    FROM (
        SELECT token_expires_at,
            (instr('0123456789abcdef', substr(id, 1, 1)) - 1) * 17592186044416
            + (instr('0123456789abcdef', substr(id, 2, 1)) - 1) * 1099511627776
            + (instr('0123456789abcdef', substr(id, 3, 1)) - 1) * 68719476736
            + (instr('0123456789abcdef', substr(id, 4, 1)) - 1) * 4294967296
            + (instr('0123456789abcdef', substr(id, 5, 1)) - 1) * 268435456
            + (instr('0123456789abcdef', substr(id, 6, 1)) - 1) * 16777216
            + (instr('0123456789abcdef', substr(id, 7, 1)) - 1) * 1048576
            + (instr('0123456789abcdef', substr(id, 8, 1)) - 1) * 65536
            + (instr('0123456789abcdef', substr(id, 10, 1)) - 1) * 4096
            + (instr('0123456789abcdef', substr(id, 11, 1)) - 1) * 256
            + (instr('0123456789abcdef', substr(id, 12, 1)) - 1) * 16
            + (instr('0123456789abcdef', substr(id, 13, 1)) - 1) * 1 AS millis
        FROM audit WHERE token_jti = id AND token_expires_at IS NOT NULL
    );
DROP INDEX audit_tokens;
