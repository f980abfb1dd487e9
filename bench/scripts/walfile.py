"""Reading an SQLite WAL file, for bench/scripts/wal-frames and
bench/scripts/wal-frames-model: the pages each commit wrote, and which
B-tree owns each page."""
import collections
import struct


def commits(path):
    """The page numbers of each commit's frames, oldest first, from the
    frames of the WAL's current pass (frames whose salt differs are left
    from an earlier pass and are not read)."""
    wal = open(path, "rb").read()
    if len(wal) < 32:
        raise ValueError(f"{path} holds no WAL header ({len(wal)} bytes)")
    page_size = struct.unpack(">I", wal[8:12])[0]
    salt, found, frames, offset = wal[16:24], [], [], 32
    while offset + 24 + page_size <= len(wal) and wal[offset + 8:offset + 16] == salt:
        page, db_size_after_commit = struct.unpack(">II", wal[offset:offset + 8])
        frames.append(page)
        if db_size_after_commit:
            found.append(frames)
            frames = []
        offset += 24 + page_size
    return found


def frames_by_tree(db, counted):
    """Frames per commit, in all and by owning table or index (SQLite's
    dbstat, on the open connection `db`), over the commits `counted`."""
    owner = dict((page, name) for name, page in db.execute("SELECT name, pageno FROM dbstat"))
    by_tree = collections.Counter(owner.get(page, "?") for commit in counted for page in commit)
    total = sum(len(commit) for commit in counted) / len(counted)
    return total, [(name, n / len(counted)) for name, n in by_tree.most_common()]
