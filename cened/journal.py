"""The SQLite log: every decision, and the intent journal that makes moves crash-safe.

One table, ``decisions``, holds one row per thing that happened to a file.  A
move is first written as an *intent* (``state='pending'``) and committed with
``synchronous=FULL`` before the file is touched; once the file is where it was
going, the row becomes ``done``.  After a crash, :mod:`cened.recovery` looks
at the pending rows and the disk and finishes or abandons each one, so a photo
is always either where it was or where it was going.

Rows are never rewritten except for their ``state`` (and ``reason`` on
failure): undo and correct add new rows that point back at the one they
reverse via ``ref_id``.  The one row ever deleted is an intent that failed
exactly as its photo's last try did (a full disk, a read-only inbox): the
first failed row stands for the whole episode.  Paths are stored as text
when they are valid UTF-8 and as the raw bytes (a BLOB) when they are not,
so any file name round-trips.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cened.errors import JournalError

APPLICATION_ID = 0x63656E64  # "cend": marks the file as ours, so a foreign database is refused
SCHEMA_VERSION = 5
#: What to do about a database SQLite finds damaged; cened never deletes or rebuilds one itself.
DAMAGED = "the database is damaged: move it aside to start a new one, or restore it from a backup"


class Action(StrEnum):
    """What a row records."""

    MOVED = "moved"  # filed into an album
    REVIEW = "review"  # filed into the review album: the model was unsure
    OTHER = "other"  # filed into the other album: none of the model's classes
    QUARANTINED = "quarantined"  # not a usable image
    DUPLICATE = "duplicate"  # filed apart: the same content is in the library already (ref_id)
    CORRECTED = "corrected"  # moved by cened correct, with a human label
    RELOCATED = "relocated"  # found elsewhere in the library by cened doctor
    UNDONE = "undone"  # put back where it came from
    SKIPPED = "skipped"  # left in place, noted once
    MISSING = "missing"  # not on disk any more, nor found elsewhere (cened doctor, the daemon's start)
    REMOVED = "removed"  # taken out of the library by hand: deleted or moved out, seen as it happened
    ADOPTED = "adopted"  # a file in the library that no row knew (cened doctor)
    # A quarantined file that changed since (its writer had not finished), put back in the
    # inbox by cened to be read again; unlike an undo, the daemon then files it.
    RETURNED = "returned"


class State(StrEnum):
    """Where a row's move stands: an intent is pending until the file is where it was going."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


#: Actions that leave a file somewhere new and can therefore be undone or corrected.
MOVING_ACTIONS = (
    Action.MOVED,
    Action.REVIEW,
    Action.OTHER,
    Action.QUARANTINED,
    Action.DUPLICATE,
    Action.CORRECTED,
    Action.RELOCATED,
)
#: Actions of the daemon's own filing, the base of the rates in :meth:`Journal.stats`.
FILING_ACTIONS = (Action.MOVED, Action.REVIEW, Action.OTHER, Action.QUARANTINED, Action.DUPLICATE)
#: Rows whose ``ref_id`` ends the referred row's say over where its photo is. A duplicate
#: or a skip note also names a row (the photo already filed), and supersedes nothing.
SUPERSEDING_ACTIONS = (
    Action.UNDONE,
    Action.CORRECTED,
    Action.RELOCATED,
    Action.MISSING,
    Action.REMOVED,
    Action.RETURNED,
)
#: Completed rows of these actions leave a photo in the library proper (not quarantine,
#: not ``_duplicates``): what a new photo's content is compared with.
LIBRARY_ACTIONS = (
    Action.MOVED,
    Action.REVIEW,
    Action.OTHER,
    Action.CORRECTED,
    Action.RELOCATED,
    Action.ADOPTED,
)

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE decisions (
        id            INTEGER PRIMARY KEY,
        batch_id      TEXT,
        time          TEXT    NOT NULL,
        action        TEXT    NOT NULL,
        state         TEXT    NOT NULL DEFAULT 'done' CHECK (state IN ('pending', 'done', 'failed')),
        source        TEXT    NOT NULL,
        destination   TEXT,
        sha256        TEXT,
        size          INTEGER,
        label         TEXT,
        album         TEXT,
        confidence    REAL,
        probabilities TEXT,
        model_version TEXT,
        reason        TEXT,
        ref_id        INTEGER REFERENCES decisions(id),
        human_label   TEXT
    );
    CREATE INDEX decisions_time ON decisions(time);
    CREATE INDEX decisions_state ON decisions(state) WHERE state != 'done';
    CREATE INDEX decisions_ref ON decisions(ref_id);
    CREATE INDEX decisions_source ON decisions(source);
    CREATE INDEX decisions_destination ON decisions(destination);
    CREATE INDEX decisions_sha ON decisions(sha256);
    """,
    # Which pixels the model saw: "photo", or "exif-preview" for a large JPEG
    # classified from its camera-made preview (NULL for rows without a prediction).
    2: "ALTER TABLE decisions ADD COLUMN pixel_source TEXT",
    # How unlike the model's training photos a photo is (cened.ml.novelty; NULL without a detector).
    3: "ALTER TABLE decisions ADD COLUMN novelty REAL",
    # A file that travels with a photo (a sidecar, a Live Photo's video, a RAW beside its
    # JPEG) names the row of the photo it moved with; NULL for the photo itself.
    4: """
    ALTER TABLE decisions ADD COLUMN group_id INTEGER REFERENCES decisions(id);
    CREATE INDEX decisions_group ON decisions(group_id) WHERE group_id IS NOT NULL
    """,
    # Near-duplicates and bursts (cened.grouping): the perceptual signature of the pixels the
    # model saw (cened.ml.similar), the EXIF capture time in seconds (local wall clock), and
    # the row of the first photo of the group a near-duplicate or burst frame was filed with.
    5: """
    ALTER TABLE decisions ADD COLUMN signature BLOB;
    ALTER TABLE decisions ADD COLUMN shot_at REAL;
    ALTER TABLE decisions ADD COLUMN similar_id INTEGER REFERENCES decisions(id);
    CREATE INDEX decisions_similar ON decisions(similar_id) WHERE similar_id IS NOT NULL
    """,
}


def _marks(values: Sequence[object]) -> str:
    """SQL placeholders for an ``IN`` list of ``values``."""
    return ", ".join("?" * len(values))


def _literal(member: StrEnum) -> str:
    """A closed set's value written into the SQL, for the statements run per photo.

    Bound values in an ``IN`` list or a correlated subquery cost SQLite work at
    every run of the statement; literals are dealt with once, when it is prepared.
    """
    assert isinstance(member, StrEnum) and "'" not in member
    return f"'{member}'"


def _one_of(members: Sequence[StrEnum]) -> str:
    """An ``IN`` list of a closed set's values, as literals (see :func:`_literal`)."""
    return ", ".join(map(_literal, members))


def path_to_db(path: Path | str) -> str | bytes:
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def path_from_db(value: str | bytes | None) -> Path | None:
    if value is None:
        return None
    return Path(os.fsdecode(value))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Entry:
    """One row of ``decisions``; field names match the columns."""

    action: Action
    source: Path
    destination: Path | None = None
    sha256: str | None = None
    size: int | None = None
    label: str | None = None
    album: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    model_version: str | None = None
    reason: str | None = None
    ref_id: int | None = None
    human_label: str | None = None
    pixel_source: str | None = None
    novelty: float | None = None
    group_id: int | None = None
    signature: bytes | None = field(default=None, repr=False)
    shot_at: float | None = None
    similar_id: int | None = None
    batch_id: str | None = None
    state: State = State.DONE
    time: str = field(default_factory=now_iso)
    id: int | None = None
    # The photo's row this companion moves with, when both are added together: its id,
    # known once it is inserted, becomes ``group_id``. Not a column.
    lead: Entry | None = field(default=None, repr=False, compare=False)

    def follow_up(self, action: Action, **changes: Any) -> Entry:
        """A new row about this row's file: its content and the model's decision carried over.

        It names this row (``ref_id``) and starts afresh in all that is the new
        event's own (state, time, reason, batch, human label, novelty);
        ``changes`` set the rest (at least where the file is now).
        """
        fresh: dict[str, Any] = {
            "action": action,
            "ref_id": self.id,
            "id": None,
            "state": State.DONE,
            "time": now_iso(),
            "reason": None,
            "batch_id": None,
            "human_label": None,
            "novelty": None,
            "lead": None,
        }
        return replace(self, **(fresh | changes))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view, as printed by ``cened history --json``."""
        out = {k: getattr(self, k) for k in _COLUMNS}
        out["source"] = os.fsdecode(self.source)
        out["destination"] = os.fsdecode(self.destination) if self.destination else None
        out["signature"] = self.signature.hex() if self.signature is not None else None
        return out


_COLUMNS = (
    "id",
    "batch_id",
    "time",
    "action",
    "state",
    "source",
    "destination",
    "sha256",
    "size",
    "label",
    "album",
    "confidence",
    "probabilities",
    "model_version",
    "reason",
    "ref_id",
    "human_label",
    "pixel_source",
    "novelty",
    "group_id",
    "signature",
    "shot_at",
    "similar_id",
)


def _filters(
    since: str | None, file: Path | None, batch_id: str | None, actions: Sequence[str] | None
) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of :meth:`Journal.history` and :meth:`Journal.count`."""
    clauses, params = ["1"], []
    if since:
        clauses.append("time >= ?")
        params.append(since)
    if file is not None:
        clauses.append("(source = ? OR destination = ?)")
        params += [path_to_db(file)] * 2
    if batch_id:
        clauses.append("batch_id = ?")
        params.append(batch_id)
    if actions:
        clauses.append(f"action IN ({', '.join('?' * len(actions))})")
        params += list(actions)
    return " AND ".join(clauses), params


def _to_row(entry: Entry) -> tuple[Any, ...]:
    values = []
    for col in _COLUMNS[1:]:
        value = getattr(entry, col)
        if col in ("source", "destination") and value is not None:
            value = path_to_db(value)
        elif col == "probabilities" and value is not None:
            value = json.dumps(value, sort_keys=True)
        values.append(value)
    return tuple(values)


def _from_row(row: sqlite3.Row) -> Entry:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["action"], data["state"] = Action(data["action"]), State(data["state"])
    data["source"] = path_from_db(data["source"])
    data["destination"] = path_from_db(data["destination"])
    if data["probabilities"] is not None:
        data["probabilities"] = json.loads(data["probabilities"])
    return Entry(**data)


class Journal:
    """A connection to the decisions database; one per thread that uses it."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly and not path.exists():
            raise JournalError(f"no database at {path} yet (has cened run?)")
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self._identity = self._file_identity()  # the file this connection writes to
            self.conn.execute("PRAGMA busy_timeout = 10000")
            self._check_and_migrate(readonly)
            if not readonly:
                self.conn.execute("PRAGMA journal_mode = WAL")
                # FULL: a committed intent survives power loss, not just a process crash.
                self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path} is not a usable cened database: {exc}") from exc

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def check_same_file(self) -> None:
        """Fail if the database file was deleted or replaced since it was opened.

        SQLite goes on writing into a deleted file without a word, so every
        decision after that would be lost with it at the next start.
        """
        if self._identity is None:  # not made yet when it was opened
            self._identity = self._file_identity()
        if self._file_identity() != self._identity:
            raise JournalError(
                f"{self.path} was deleted or replaced while in use, its rows with it; nothing more "
                "is written or moved. Restore it from a backup, or start again (a new one is made) "
                "and run `cened doctor --fix` to adopt the photos already filed"
            )

    @contextmanager
    def _guard(self, *, reading: bool = False) -> Iterator[None]:
        """SQLite's errors as :class:`JournalError` (exit code 4), the sqlite3 error kept as the cause.

        A database damaged or made read-only while in use fails at any query,
        not only at opening; every command then ends with one clear line.
        While ``reading`` rows, a value no row of ours can hold (a NULL action,
        broken JSON) is damage too.
        """
        try:
            yield
        except sqlite3.DatabaseError as exc:
            damaged = getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
            raise JournalError(f"{self.path}: {exc}" + (f"; {DAMAGED}" if damaged else "")) from exc
        except (ValueError, TypeError) as exc:
            if not reading:
                raise
            raise JournalError(f"{self.path}: a row cannot be read ({exc}); {DAMAGED}") from exc

    def check_integrity(self, *, full: bool = False) -> None:
        """Fail if SQLite finds the database damaged anywhere, not only where a query happens to read.

        ``quick_check`` reads every page (a fraction of a second for a large
        log); ``full`` adds ``integrity_check``'s comparison of every index
        with its table, for ``cened doctor``.
        """
        pragma = "integrity_check" if full else "quick_check"
        with self._guard():
            problems = [row[0] for row in self.conn.execute(f"PRAGMA {pragma}(5)")]
        if problems != ["ok"]:
            raise JournalError(f"{self.path}: {'; '.join(map(str, problems))}; {DAMAGED}")

    def check_writable(self) -> None:
        """Fail now, not at the first photo, if the database can be read but not written.

        SQLite opens a file it cannot write read-only without a word; setting
        the schema version to itself is a real write, of one page.
        """
        with self.transaction() as conn:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_and_migrate(self, readonly: bool) -> None:
        app_id = self.conn.execute("PRAGMA application_id").fetchone()[0]
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        tables = self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != APPLICATION_ID and (app_id != 0 or tables != 0):
            raise JournalError(f"{self.path} is not a cened database (refusing to touch it)")
        if version > SCHEMA_VERSION:
            raise JournalError(f"{self.path} was written by a newer cened (schema {version})")
        if version == SCHEMA_VERSION:
            return
        if readonly:
            raise JournalError(f"{self.path} needs a schema upgrade; run cened once to apply it")
        with self.transaction():
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
            self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: the write lock is taken up front, so no deadlock later.

        Never into a database file deleted or replaced meanwhile (:meth:`check_same_file`).
        """
        self.check_same_file()
        with self._guard():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                # SQLite rolls back by itself after some errors (a full disk); a
                # second ROLLBACK would then hide the error that mattered.
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    # -- writing -----------------------------------------------------------

    def add(self, entries: Sequence[Entry]) -> list[Entry]:
        """Insert rows in one transaction (one fsync for a whole batch) and set their ids.

        A companion's ``lead`` must come before it in ``entries``: a group is one intent.
        """
        with self.transaction():
            self._insert(entries)
        return list(entries)

    def _insert(self, entries: Sequence[Entry]) -> None:
        placeholders = ", ".join("?" * (len(_COLUMNS) - 1))
        sql = f"INSERT INTO decisions ({', '.join(_COLUMNS[1:])}) VALUES ({placeholders})"
        for entry in entries:
            if entry.lead is not None:
                assert entry.lead.id is not None, "a companion is added after its photo"
                entry.group_id = entry.lead.id
            entry.id = self.conn.execute(sql, _to_row(entry)).lastrowid

    def supersede(self, entries: Sequence[Entry]) -> list[Entry]:
        """Insert follow-up rows (each ``ref_id`` the row it supersedes) unless another came first.

        One transaction: the check and the insert cannot be split by an undo or
        correction run meanwhile by another process, whose intent is written
        before its move.  An entry whose row was superseded meanwhile is left
        out, and so is a companion whose ``lead`` was.  Returns those inserted.
        """
        kept: list[Entry] = []
        with self.transaction():
            for entry in entries:
                if entry.lead is not None and not any(entry.lead is k for k in kept):
                    continue
                if entry.ref_id is not None and self.successor(entry.ref_id) is not None:
                    continue
                kept.append(entry)
            self._insert(kept)
        return kept

    def set_state(
        self, updates: Iterable[tuple[int, State, str | None]], *, discard: Iterable[int] = ()
    ) -> None:
        """Mark rows done or failed (id, state, reason), and drop the ``discard`` intents, in one transaction.

        Only pending rows are ever dropped: a completed row is history.
        """
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE decisions SET state = ?, reason = coalesce(?, reason) WHERE id = ?",
                [(state, reason, row_id) for row_id, state, reason in updates],
            )
            conn.executemany(
                "DELETE FROM decisions WHERE id = ? AND state = ?",
                [(row_id, State.PENDING) for row_id in discard],
            )

    def sign(self, rows: Iterable[tuple[int, bytes, float | None]]) -> None:
        """Give rows (id, signature, capture time) a signature of this version, and a time if they had none.

        A signature is what the pixels look like, not a decision: replacing one of
        an older version rewrites no history.  Only with no daemon running (``cened
        doctor --fix`` holds the lock): a daemon reads each row's signature once.
        """
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE decisions SET signature = ?, shot_at = coalesce(shot_at, ?) WHERE id = ?",
                [(sig, shot_at, row_id) for row_id, sig, shot_at in rows],
            )

    # -- reading -----------------------------------------------------------

    def _select(self, where: str = "1", params: Sequence[Any] = (), tail: str = "ORDER BY id") -> list[Entry]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM decisions WHERE {where} {tail}"
        with self._guard(reading=True):
            return [_from_row(row) for row in self.conn.execute(sql, tuple(params))]

    def get(self, row_id: int) -> Entry | None:
        rows = self._select("id = ?", (row_id,))
        return rows[0] if rows else None

    def pending(self) -> list[Entry]:
        return self._select("state = ?", (State.PENDING,))

    def history(
        self,
        *,
        limit: int | None = None,
        since: str | None = None,
        file: Path | None = None,
        batch_id: str | None = None,
        actions: Sequence[str] | None = None,
    ) -> list[Entry]:
        """Newest last; ``file`` matches either end of a move."""
        where, params = _filters(since, file, batch_id, actions)
        if limit is None:
            return self._select(where, params)
        rows = self._select(where, params, f"ORDER BY id DESC LIMIT {int(limit)}")
        return rows[::-1]

    def count(
        self,
        *,
        since: str | None = None,
        file: Path | None = None,
        batch_id: str | None = None,
        actions: Sequence[str] | None = None,
    ) -> int:
        """How many rows :meth:`history` would give without a limit."""
        where, params = _filters(since, file, batch_id, actions)
        with self._guard(reading=True):
            (n,) = self.conn.execute(f"SELECT count(*) FROM decisions WHERE {where}", params).fetchone()
        return int(n)

    def successor(self, row_id: int) -> Entry | None:
        """The undo or correction that superseded a row, if one was completed or is under way."""
        rows = self._select(
            f"ref_id = ? AND state != {_literal(State.FAILED)} "
            f"AND action IN ({_one_of(SUPERSEDING_ACTIONS)})",
            (row_id,),
        )
        return rows[-1] if rows else None

    def holding(self, sha256: str) -> list[Entry]:
        """Completed, not superseded rows that left a photo of this content in the library, newest first.

        Whether each file is still there is the caller's to check, on disk.
        """
        superseded = (
            "SELECT 1 FROM decisions AS s WHERE s.ref_id = decisions.id "
            f"AND s.state != {_literal(State.FAILED)} AND s.action IN ({_one_of(SUPERSEDING_ACTIONS)})"
        )
        library = f"action IN ({_one_of(LIBRARY_ACTIONS)})"
        return self._select(
            f"sha256 = ? AND state = ? AND {library} AND NOT EXISTS ({superseded})",
            (sha256, State.DONE),
            "ORDER BY id DESC",
        )

    def current(self, row: Entry) -> Entry | None:
        """Where ``row``'s file is now by the log: ``row`` or the correction or relocation that moved it on.

        None when it was undone or found missing, or a move of it is under way.
        """
        while row.id is not None and (later := self.successor(row.id)) is not None:
            if later.action not in (Action.CORRECTED, Action.RELOCATED) or later.state != State.DONE:
                return None
            row = later
        return row

    def signed(self, after: int) -> list[tuple[int, bytes, float | None]]:
        """Rows after row ``after`` that put a photo with a signature in the library: id, signature, shot_at.

        Any state: an intent may be done by the time it is compared with; whether
        it is, and still there, is the caller's to check (cened.grouping).
        """
        sql = (
            "SELECT id, signature, shot_at FROM decisions WHERE id > ? AND signature IS NOT NULL "
            f"AND group_id IS NULL AND state != {_literal(State.FAILED)} "
            f"AND action IN ({_one_of(LIBRARY_ACTIONS)}) ORDER BY id"
        )
        with self._guard(reading=True):
            return [(i, bytes(sig), shot) for i, sig, shot in self.conn.execute(sql, (after,))]

    def similar_to(self, row_id: int) -> list[Entry]:
        """The photos filed with row ``row_id``'s as one group (near-duplicates, a burst), as they are now."""
        rows = self._select("similar_id = ? AND state = ?", (row_id, State.DONE))
        return [r for r in rows if r.action in MOVING_ACTIONS and self.successor(r.id or 0) is None]

    def group(self, row_id: int) -> list[Entry]:
        """The companions that moved with row ``row_id``'s photo and were not moved apart since."""
        rows = self._select("group_id = ? AND state = ?", (row_id, State.DONE))
        return [r for r in rows if r.action in MOVING_ACTIONS and self.successor(r.id or 0) is None]

    def filed_from(self, sources: Sequence[Path]) -> Entry | None:
        """The latest completed filing of a file from any of ``sources`` (the daemon's, not undo's)."""
        rows = self._select(
            f"source IN ({_marks(sources)}) AND state = ? AND action IN ({_one_of(FILING_ACTIONS)})",
            (*map(path_to_db, sources), State.DONE),
            "ORDER BY id DESC LIMIT 1",
        )
        return rows[0] if rows else None

    def last_at(self, path: Path) -> Entry | None:
        """The latest completed row that left a file at ``path``."""
        rows = self._select(
            "destination = ? AND state = ?", (path_to_db(path), State.DONE), "ORDER BY id DESC LIMIT 1"
        )
        return rows[0] if rows else None

    def below(self, folder: Path) -> list[Entry]:
        """Completed rows that left a file somewhere below ``folder``, oldest first."""
        text, raw = os.fsdecode(folder).rstrip("/") + "/", os.fsencode(folder).rstrip(b"/") + b"/"
        # A range on the destination index; '0' is the character after '/'. Paths
        # that are not UTF-8 are stored as BLOBs, which compare among themselves.
        return self._select(
            "state = ? AND ((destination >= ? AND destination < ?) "
            "OR (destination >= ? AND destination < ?))",
            (State.DONE, text, text[:-1] + "0", raw, raw[:-1] + b"0"),
        )

    def last_from(self, source: Path, *, before: int) -> Entry | None:
        """The latest row about ``source`` older than row ``before``: what happened to it last time."""
        rows = self._select("source = ? AND id < ?", (path_to_db(source), before), "ORDER BY id DESC LIMIT 1")
        return rows[0] if rows else None

    def albums(self) -> list[str]:
        """Every album a completed row filed or moved a photo into."""
        with self._guard(reading=True):
            rows = self.conn.execute(
                "SELECT DISTINCT album FROM decisions WHERE state = ? AND album IS NOT NULL ORDER BY 1",
                (State.DONE,),
            )
            return [album for (album,) in rows]

    def stats(self) -> Stats:
        """What ``cened stats`` shows: completed rows per album and per action."""
        with self._guard(reading=True):
            return self._stats()

    def _stats(self) -> Stats:
        done = (State.DONE,)
        # Photos, not files: a photo's companions moved with it and share its decision.
        per_album = self.conn.execute(
            "SELECT coalesce(album, action), count(*), avg(confidence) FROM decisions "
            f"WHERE state = ? AND group_id IS NULL AND action IN ({_one_of(FILING_ACTIONS)}) "
            "GROUP BY 1 ORDER BY 2 DESC, 1",
            done,
        )
        totals = self.conn.execute(
            "SELECT action, count(*) FROM decisions WHERE state = ? AND group_id IS NULL GROUP BY 1", done
        )
        return Stats(
            albums={album: AlbumStats(n, confidence) for album, n, confidence in per_album},
            actions={Action(action): n for action, n in totals},
        )


@dataclass(frozen=True)
class AlbumStats:
    files: int
    mean_confidence: float | None


@dataclass(frozen=True)
class Stats:
    """Completed rows: files per album (with their mean confidence) and counts per action."""

    albums: dict[str, AlbumStats]
    actions: dict[Action, int]

    @property
    def filed(self) -> int:
        return sum(self.actions.get(a, 0) for a in FILING_ACTIONS)

    def rate(self, action: Action) -> float:
        """Rows of ``action`` per filed photo (undo and correction rates)."""
        return self.actions.get(action, 0) / self.filed if self.filed else 0.0
