-- writ's SQLite schema, version 5: replay records appended within a second.
--
-- Version 4 keyed replay records by (expires_at, issuer, jti). Expiry has
-- one-second resolution and a jti is random, so the records of one
-- second were ordered by a random key: at 1,000 exchanges a second, one
-- second's records fill about 20 leaf pages, and a group commit of 40
-- exchanges touched nearly all of them. That was half of every commit's
-- WAL frames (measured: 24 of 49 pages a commit at 16,000 exchanges/s).
--
-- The key is now (expires_at, seq): seq is a counter of the exchange
-- writer, the one writer of this table, which continues above the largest
-- seq it finds when it loads its replay index. Within a second, records
-- are in arrival order, so a commit appends to the last page of each
-- second it holds. Uniqueness of (issuer, jti) was already checked by
-- that writer against its in-memory index (version 4), not by this key.
CREATE TABLE used_jtis_v5 (
    expires_at  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    issuer      TEXT    NOT NULL,
    jti         TEXT    NOT NULL,
    PRIMARY KEY (expires_at, seq)
) STRICT, WITHOUT ROWID;
INSERT INTO used_jtis_v5 (expires_at, seq, issuer, jti)
    SELECT expires_at, row_number() OVER (ORDER BY expires_at, issuer, jti), issuer, jti FROM used_jtis;
DROP TABLE used_jtis;
ALTER TABLE used_jtis_v5 RENAME TO used_jtis;
