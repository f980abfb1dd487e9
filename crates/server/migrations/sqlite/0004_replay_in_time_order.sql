-- writ's SQLite schema, version 4: replay records in time order.
--
-- A replay record's key was (issuer, jti). A jti is random, so every
-- exchange wrote into a random leaf of that index: one 4 KiB page per
-- exchange in the WAL, most of what each commit wrote, copied again by
-- every checkpoint; purging expired records touched random pages too.
--
-- The key is now (expires_at, issuer, jti): inserts land on the last pages
-- and purging deletes from the front. The uniqueness of (issuer, jti) is
-- checked by the exchange writer, the one writer of this table, against
-- an index it keeps in memory and loads from this table (see
-- src/storage/sqlite/group.rs); the table is what survives a restart.
CREATE TABLE used_jtis_v4 (
    issuer      TEXT    NOT NULL,
    jti         TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (expires_at, issuer, jti)
) STRICT, WITHOUT ROWID;
INSERT INTO used_jtis_v4 (issuer, jti, expires_at) SELECT issuer, jti, expires_at FROM used_jtis;
DROP TABLE used_jtis;
ALTER TABLE used_jtis_v4 RENAME TO used_jtis;
