"""A durable zoo store: content-addressed entry folders plus a SQLite index.

Layout of a zoo folder::

    zoo.json                       format marker with the schema version (checked before anything is touched)
    index.sqlite (+ -wal, -shm)    the index, WAL mode; derived data, rebuilt from objects/ by ``recover``
    objects/ab/<id>/manifest.json  canonical manifest; <id> = its sha256
    objects/ab/<id>/weights.safetensors

Writing an entry: both files go to a temporary folder and are fsynced, the folder is renamed into place
(atomic), the parent is fsynced, and only then the index row is committed. A crash at any point leaves either
nothing, a temporary folder (removed by ``recover``) or an unindexed complete object (indexed by ``recover``
or by the next ``put`` of the same entry). Every read checks sha256s, so a changed or truncated file is
refused with the entry's id, never loaded.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np
import torch

from edgemvp import checks
from edgemvp.errors import EdgeMVPError, UsageError
from edgemvp.manifest import MANIFEST, WEIGHTS, CorruptEntry, EntryManifest, ZooEntry, weights_limit
from edgemvp.models.base import BaseManifest
from edgemvp.models.weights import parse_safetensors, sha256_bytes
from edgemvp.paths import UnsafeFile, atomic_write_bytes, read_regular
from edgemvp.runs import zoo_around
from edgemvp.units import unit_space
from edgemvp.zoo.validate import check_entry

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORMAT = "edgemvp-zoo"
MARKER = "zoo.json"
INDEX = "index.sqlite"
BUNDLE = "bundle.json"
CHUNK = 1 << 20
ENTRY_ID = re.compile(r"[0-9a-f]{64}")  # an entry id: the sha256 of its canonical manifest
MAX_JSON_FILE = 64 << 20  # a zoo marker, a bundle header or a manifest (a resnet50's masks take ~100 KB)
MAX_BUNDLE_ENTRIES = 100_000
MAX_ENTRY_ID = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY, job_key TEXT NOT NULL UNIQUE, arch TEXT NOT NULL, base_sha256 TEXT NOT NULL,
    dataset TEXT NOT NULL, task TEXT NOT NULL, classes TEXT NOT NULL, pruner TEXT NOT NULL,
    test_acc REAL, params INTEGER, macs INTEGER, keep_ratio REAL, mask_bits BLOB NOT NULL,
    n_units INTEGER NOT NULL, build_seconds REAL
);
CREATE TABLE IF NOT EXISTS entry_classes (id TEXT NOT NULL, class TEXT NOT NULL, PRIMARY KEY (id, class));
CREATE INDEX IF NOT EXISTS entries_base ON entries (base_sha256);
CREATE INDEX IF NOT EXISTS classes_class ON entry_classes (class);
"""


_COLUMNS = ["id", "job_key", "arch", "base_sha256", "dataset", "task", "classes", "pruner", "test_acc", "params",
            "macs", "keep_ratio", "mask_bits", "n_units", "build_seconds"]


class DamagedIndex(UsageError):
    """An ``index.sqlite`` that SQLite cannot read (garbage, truncated); ``zoo verify --repair`` rebuilds it."""


def _non_finite(weights: bytes, source: str) -> str | None:
    """The name of the first floating-point tensor holding NaN or infinity, if any."""
    state, _ = parse_safetensors(weights, source)
    return next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)


@dataclass(frozen=True)
class EntryRow:
    """An index row: enough to list, filter and rank entries without reading their files."""

    id: str
    job_key: str
    arch: str
    base_sha256: str
    dataset: str
    task: str
    classes: tuple[str, ...]
    pruner: str
    test_acc: float
    params: int
    macs: int
    keep_ratio: float
    build_seconds: float | None


@dataclass
class VerifyReport:
    """What :meth:`ZooStore.verify` found."""

    checked: int = 0
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    missing: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    removed_temp: int = 0
    repaired: int = 0  # rows rewritten or dropped by a repair
    damaged_index: str | None = None  # where a repair moved an index SQLite could not read

    @property
    def clean(self) -> bool:
        return not self.corrupt and not self.missing


def mask_bits(manifest: EntryManifest) -> tuple[bytes, int]:
    """The kept units as one bit vector over the arch's units in unit-space order (packed)."""
    parts = []
    for unit in unit_space(manifest.arch).units:
        row = np.zeros(unit.size, dtype=bool)
        row[list(manifest.masks.kept[unit.name])] = True
        parts.append(row)
    bits = np.concatenate(parts)
    return np.packbits(bits).tobytes(), len(bits)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, 0o444)  # entries are immutable


def check_marker(root: Path) -> None:
    """Refuse a folder that is not a zoo or was written by a newer edgemvp (without changing anything).

    Raises:
        UsageError: Missing or unreadable marker, another format, or a newer schema.
    """
    marker = root / MARKER
    if not marker.is_file():
        raise UsageError(f"{root}: not a zoo folder (no {MARKER})")
    try:
        data = json.loads(read_regular(marker, MAX_JSON_FILE))
    except (OSError, ValueError, RecursionError) as exc:
        raise UsageError(f"{marker}: unreadable zoo marker ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        raise UsageError(f"{marker}: not an edgemvp zoo (format {str(fmt)[:40]!r})")
    checks.schema_version(data, SCHEMA_VERSION, f"{root}: zoo", default=None)


def _prepare(db: sqlite3.Connection, index: Path) -> None:
    """WAL mode, the schema, and a check that the index is one this edgemvp reads.

    Raises:
        DamagedIndex: SQLite cannot read it (garbage, truncated), or its tables are not edgemvp's.
        UsageError: Written by a newer edgemvp.
    """
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        value = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        columns = [r[1] for r in db.execute("PRAGMA table_info(entries)")]
        db.execute("SELECT COUNT(*) FROM entries").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DamagedIndex(f"{index}: damaged zoo index ({exc}); run 'edgemvp zoo verify --repair --zoo "
                           f"{index.parent}' to rebuild it from the entries") from exc
    if columns != _COLUMNS:
        raise DamagedIndex(f"{index}: not an edgemvp zoo index (its entries table differs); run 'edgemvp zoo "
                           f"verify --repair --zoo {index.parent}'")
    checks.schema_version({"schema_version": int(value) if str(value).isdigit() and len(str(value)) < 19 else value}, SCHEMA_VERSION,
                          str(index), default=None)


class ZooStore:
    """One zoo folder. Open with :meth:`open`; the index connection is closed with :meth:`close`."""

    def __init__(self, root: Path, db: sqlite3.Connection) -> None:
        self.root, self.db = root, db

    @classmethod
    def open(cls, root: str | os.PathLike[str], create: bool = False, shared: bool = False) -> "ZooStore":
        """Open (or create) a zoo folder.

        ``shared`` lets the connection move between threads (the server's pool hands one store to one thread
        at a time); it is never used by two threads at once.

        Raises:
            UsageError: No zoo there (and ``create`` is false), or a newer schema.
        """
        try:
            root = Path(root).expanduser().resolve()
            if create and not (root / MARKER).exists():
                if root.exists() and (not root.is_dir() or any(p.name != ".DS_Store" for p in root.iterdir())):
                    raise UsageError(f"{root}: exists and is not a zoo; refusing to write into it")
                root.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(root / MARKER,
                                   json.dumps({"format": FORMAT, "schema_version": SCHEMA_VERSION}).encode())
        except (OSError, ValueError) as exc:  # under a file, in /proc, not writable, an embedded NUL
            raise UsageError(f"{str(root)[:200]}: cannot make a zoo there "
                             f"({getattr(exc, 'strerror', None) or exc})") from exc
        check_marker(root)
        index = root / INDEX
        if index.is_symlink() or index.exists() and not index.is_file():
            raise DamagedIndex(f"{index} is not a regular file; run 'edgemvp zoo verify --repair --zoo {root}'")
        db = sqlite3.connect(index, timeout=60.0, isolation_level=None, check_same_thread=not shared)
        try:
            _prepare(db, index)
        except BaseException:
            db.close()
            raise
        return cls(root, db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ZooStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing -------------------------------------------------------------------------------------------
    def folder(self, entry_id: str) -> Path:
        """Where an entry's files live (an id that is not 64 hex digits never becomes a path)."""
        if not isinstance(entry_id, str) or not ENTRY_ID.fullmatch(entry_id):
            raise CorruptEntry(f"zoo index names an entry id that is not 64 hex digits: {str(entry_id)[:20]!r}")
        return self.root / "objects" / entry_id[:2] / entry_id

    def put(self, manifest: EntryManifest, weights: bytes, build_seconds: float | None = None) -> str:
        """Store an entry durably and index it; storing the same entry again is a no-op.

        Returns:
            The entry id (the manifest's sha256).

        Raises:
            UsageError: Weights that do not match the manifest's sha256.
        """
        if sha256_bytes(weights) != manifest.weights_sha256:
            raise UsageError("weights do not match the manifest's weights_sha256")
        bad = _non_finite(weights, f"zoo entry of task {manifest.task.name}: weights")
        if bad is not None:  # a diverged training run must never become a neighbour
            raise EdgeMVPError(f"refusing to store the entry of task {manifest.task.name}: tensor '{bad}' holds NaN "
                               "or infinity (training diverged; lower the learning rate)")
        raw = manifest.to_bytes()
        entry_id = sha256_bytes(raw)
        done = self.job_entry(manifest.job_key)
        if done is not None and done != entry_id:
            logger.warning("job %s is already stored as entry %s; keeping that one", manifest.job_key[:12], done[:12])
            return done
        final = self.folder(entry_id)
        if final.exists() and self._check_files(entry_id) is not None:
            self._quarantine(final)
        if not final.exists():
            self._write_object(final, raw, weights)
        self._index(entry_id, manifest, build_seconds)
        return entry_id

    def _write_object(self, final: Path, raw: bytes, weights: bytes) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent.parent / f".tmp-{final.name[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        _write_synced(tmp / WEIGHTS, weights)
        _write_synced(tmp / MANIFEST, raw)
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # written meanwhile by another writer: keep theirs (same content by construction)
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(final.parent)

    def _quarantine(self, folder: Path) -> None:
        dest = self.root / "quarantine" / f"{folder.name}-{uuid.uuid4().hex[:8]}"
        dest.parent.mkdir(exist_ok=True)
        os.rename(folder, dest)
        logger.warning("moved corrupt entry %s to %s", folder.name[:12], dest)

    def _index(self, entry_id: str, m: EntryManifest, build_seconds: float | None) -> None:
        with self._transaction():
            if self.db.execute("SELECT 1 FROM entries WHERE id=?", (entry_id,)).fetchone():
                return
            self._insert(entry_id, m, build_seconds)

    def _insert(self, entry_id: str, m: EntryManifest, build_seconds: float | None) -> None:
        self.db.execute(f"INSERT INTO entries VALUES ({','.join('?' * len(_COLUMNS))})",
                        (*row_values(entry_id, m), build_seconds))
        self.db.executemany("INSERT OR IGNORE INTO entry_classes VALUES (?,?)", [(entry_id, c) for c in m.task.classes])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- reading -------------------------------------------------------------------------------------------
    def job_entry(self, job_key: str) -> str | None:
        """The id of the entry a build job produced, if it is stored."""
        row = self.db.execute("SELECT id FROM entries WHERE job_key=?", (job_key,)).fetchone()
        return row[0] if row else None

    def _select(self, columns: str, arch: str | None, base_sha256: str | None, class_name: str | None,
                dataset: str | None, job_key: str | None = None, limit: int | None = None,
                offset: int = 0) -> sqlite3.Cursor:
        sql, args, where = f"SELECT {columns} FROM entries e", [], []
        if class_name is not None:
            sql += " JOIN entry_classes c ON c.id = e.id"
            where.append("c.class = ?")
            args.append(class_name)
        for column, value in (("arch", arch), ("base_sha256", base_sha256), ("dataset", dataset),
                              ("job_key", job_key)):
            if value is not None:
                where.append(f"e.{column} = ?")
                args.append(value)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY e.rowid"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [int(limit), int(offset)]
        return self.db.execute(sql, args)

    def rows(self, arch: str | None = None, base_sha256: str | None = None, class_name: str | None = None,
             dataset: str | None = None, job_key: str | None = None, limit: int | None = None,
             offset: int = 0) -> list[EntryRow]:
        """Index rows filtered by arch, base model, dataset, build job and/or a class (in insertion order),
        optionally one page of them (``limit`` rows from ``offset``)."""
        cur = self._select("e.*", arch, base_sha256, class_name, dataset, job_key, limit, offset)
        names = [d[0] for d in cur.description]
        return [_row(dict(zip(names, r))) for r in cur.fetchall()]

    def resolve(self, prefix: str) -> str:
        """The full id for a unique id prefix.

        Raises:
            UsageError: No entry or several entries start with ``prefix``.
        """
        if not prefix or len(prefix) > MAX_ENTRY_ID or any(ch not in "0123456789abcdef" for ch in prefix.lower()):
            raise UsageError(f"'{prefix[:70]}' is not an entry id (at most 64 hex digits)")
        found = [r[0] for r in self.db.execute("SELECT id FROM entries WHERE id LIKE ?", (prefix.lower() + "%",))]
        if not found:
            raise UsageError(f"no zoo entry with id {prefix}")
        if len(found) > 1:
            raise UsageError(f"id prefix {prefix} matches {len(found)} entries; give more characters")
        return found[0]

    def get(self, entry_id: str) -> ZooEntry:
        """Read an entry, checking its manifest's sha256 against its id.

        Raises:
            CorruptEntry: Missing, changed or unreadable manifest.
        """
        folder = self.folder(entry_id)
        try:
            raw = read_regular(folder / MANIFEST, MAX_JSON_FILE)
        except UnsafeFile as exc:
            raise CorruptEntry(f"zoo entry {entry_id[:12]}: {MANIFEST} refused ({exc})") from exc
        except OSError as exc:
            raise CorruptEntry(f"zoo entry {entry_id[:12]}: {MANIFEST} is missing ({exc.strerror})") from exc
        if sha256_bytes(raw) != entry_id:
            raise CorruptEntry(f"zoo entry {entry_id[:12]}: {MANIFEST} is corrupt (sha256 does not match its id)")
        return ZooEntry(entry_id, EntryManifest.from_bytes(raw, f"zoo entry {entry_id[:12]}"), folder)

    def mask_matrix(self, base_sha256: str | None = None, arch: str | None = None
                    ) -> tuple[list[str], np.ndarray]:
        """All matching entries' kept units as one ``(entries, units)`` bool array (unit-space order).

        One query and one unpack, so voting over a large zoo never opens entry files.
        """
        found = self._select("e.id, e.mask_bits, e.n_units", arch, base_sha256, None, None).fetchall()
        if not found:
            return [], np.zeros((0, 0), dtype=bool)
        ids, blobs, sizes = zip(*found)
        return list(ids), _unpack(blobs, sizes, "entries of different architectures; filter by arch or base model")

    def task_table(self, base_sha256: str) -> tuple[list[str], list[tuple[str, tuple[str, ...]]]]:
        """Ids and ``(dataset, classes)`` of every entry of a base model, in one query (for ranking)."""
        found = self.db.execute("SELECT id, dataset, classes FROM entries WHERE base_sha256=? ORDER BY rowid",
                                (base_sha256,)).fetchall()
        parsed: dict[str, tuple[str, ...]] = {}
        ids, tasks = [], []
        for entry_id, dataset, classes in found:
            if classes not in parsed:
                parsed[classes] = _classes(classes, entry_id)
            ids.append(entry_id)
            tasks.append((dataset, parsed[classes]))
        return ids, tasks

    def mask_rows(self, ids: list[str]) -> np.ndarray:
        """The kept units of the given entries as ``(len(ids), units)`` bool, rows in ``ids`` order."""
        if not ids:
            return np.zeros((0, 0), dtype=bool)
        found = dict((r[0], (r[1], r[2])) for r in self.db.execute(
            f"SELECT id, mask_bits, n_units FROM entries WHERE id IN ({','.join('?' * len(ids))})", ids))
        missing = [i for i in ids if i not in found]
        if missing:
            raise UsageError(f"no zoo entry with id {missing[0]}")
        return _unpack([found[i][0] for i in ids], [found[i][1] for i in ids],
                       "entries of different architectures cannot vote together")

    def bases(self) -> list[tuple[str, str, int, str]]:
        """``(arch, base sha256, entries, first entry id)`` for every base model the zoo's entries were pruned from."""
        return [tuple(r) for r in self.db.execute(  # type: ignore[misc]
            "SELECT arch, base_sha256, COUNT(*), (SELECT id FROM entries f WHERE f.base_sha256 = e.base_sha256 "
            "ORDER BY rowid LIMIT 1) FROM entries e GROUP BY arch, base_sha256 ORDER BY MIN(rowid)")]

    def __contains__(self, entry_id: object) -> bool:
        """Whether an entry id is indexed."""
        return self.db.execute("SELECT 1 FROM entries WHERE id=?", (str(entry_id),)).fetchone() is not None

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    # --- checking and repair -------------------------------------------------------------------------------
    def _check_files(self, entry_id: str) -> str | None:
        """None when both files match their sha256s, else the reason."""
        try:
            self.get(entry_id).read_weights()
        except (CorruptEntry, UsageError) as exc:
            return str(exc)
        return None

    def objects(self) -> Iterator[Path]:
        """Every complete-looking entry folder on disk."""
        base = self.root / "objects"
        if base.is_dir():
            yield from (p for p in sorted(base.glob("??/*")) if p.is_dir() and len(p.name) == 64)

    def recover(self) -> VerifyReport:
        """Finish what a crash interrupted: drop temporary folders, index complete objects that are not indexed."""
        report = VerifyReport()
        for tmp in (self.root / "objects").glob(".tmp-*") if (self.root / "objects").is_dir() else []:
            shutil.rmtree(tmp, ignore_errors=True)
            report.removed_temp += 1
        indexed = {r[0] for r in self.db.execute("SELECT id FROM entries")}
        for folder in self.objects():
            if folder.name in indexed:
                continue
            if self._check_files(folder.name) is not None:
                self._quarantine(folder)
                continue
            m = self.get(folder.name).manifest
            if self.job_entry(m.job_key) is None:
                self._index(folder.name, m, None)
                report.recovered.append(folder.name)
            else:  # the same job finished again with other bytes: the indexed one is kept
                shutil.rmtree(folder)
        return report

    def _rewrite(self, entries: list[ZooEntry], seconds: dict[str, float | None]) -> int:
        """Replace every row by the rows of ``entries`` (in order; one per build job); returns rows changed."""
        changed = 0
        with self._transaction():
            before = {r[0] for r in self.db.execute("SELECT id FROM entries")}
            keep = {e.id for e in entries}
            changed += len(before - keep)
            changed += sum(1 for e in entries if e.id not in before or self.row_problems(e.id, e.manifest))
            self.db.execute("DELETE FROM entries")
            self.db.execute("DELETE FROM entry_classes")
            jobs: set[str] = set()
            for e in entries:
                if e.manifest.job_key not in jobs:
                    jobs.add(e.manifest.job_key)
                    self._insert(e.id, e.manifest, seconds.get(e.id))
        return changed

    def row_problems(self, entry_id: str, manifest: EntryManifest) -> list[str]:
        """The fields of an entry's index row (and class rows) that differ from its manifest (empty: it matches)."""
        found = self.db.execute(f"SELECT {', '.join(_COLUMNS[:-1])} FROM entries WHERE id=?", (entry_id,)).fetchone()
        if found is None:
            return ["row"]
        want = row_values(entry_id, manifest)
        bad = [name for name, got, expected in zip(_COLUMNS, found, want) if got != expected]
        classes = {r[0] for r in self.db.execute("SELECT class FROM entry_classes WHERE id=?", (entry_id,))}
        return bad + (["entry_classes"] if classes != set(manifest.task.classes) else [])

    def check_row(self, entry: ZooEntry) -> None:
        """Refuse an entry whose index row does not say what its manifest says (a damaged or tampered index).

        Raises:
            CorruptEntry: Naming the fields that differ and the repair command.
        """
        bad = self.row_problems(entry.id, entry.manifest)
        if bad:
            raise CorruptEntry(f"zoo entry {entry.id[:12]}: its index row differs from its manifest "
                               f"({', '.join(bad)}); run 'edgemvp zoo verify --repair --zoo {self.root}'")

    def verify(self) -> VerifyReport:
        """Recover, then check every indexed entry's files against their sha256s and its row against its manifest."""
        report = self.recover()
        for (entry_id,) in self.db.execute("SELECT id FROM entries ORDER BY rowid").fetchall():
            report.checked += 1
            try:
                folder = self.folder(entry_id)
            except CorruptEntry as exc:
                report.corrupt.append((str(entry_id), str(exc)))
                continue
            if not folder.is_dir():
                report.missing.append(entry_id)
                continue
            reason = self._check_files(entry_id)
            if reason is None:
                bad = self.row_problems(entry_id, self.get(entry_id).manifest)
                reason = (f"zoo entry {entry_id[:12]}: index row differs from its manifest ({', '.join(bad)})"
                          if bad else None)
            if reason is not None:
                report.corrupt.append((entry_id, reason))
        return report

    # --- bundles -------------------------------------------------------------------------------------------
    def export_bundle(self, path: Path, ids: list[str] | None = None, force: bool = False) -> int:
        """Write entries (all by default) into one tar bundle, atomically; every entry is verified first.

        Args:
            path: The bundle file; never inside a zoo, and an existing file only with ``force``.
            ids: Entries to write (default: all).
            force: Replace an existing file.

        Returns:
            The number of entries written.

        Raises:
            UsageError: A destination inside a zoo, a folder, or an existing file without ``force``.
            CorruptEntry: An entry whose files do not match their sha256s (nothing is written).
        """
        path = check_bundle_destination(Path(path), force)
        ids = ids if ids is not None else [r.id for r in self.rows()]
        entries = [self.get(i) for i in ids]
        items = [(e.manifest.to_bytes(), e.read_weights()) for e in entries]  # both checked against sha256s
        atomic_write_bytes(path, bundle_bytes(items))
        return len(ids)

    def import_entries(self, items: list[tuple[EntryManifest, bytes]],
                       bases: Mapping[str, BaseManifest] | None = None, checked: bool = False) -> tuple[int, int]:
        """Add entries from a bundle (:func:`read_bundle`), each validated in full before anything is written.

        The validation is the zoo server's for an upload (:func:`edgemvp.zoo.validate.check_entry`): finite
        weights that load strictly into create(arch) -> shrink(masks), metadata that agrees with the manifest,
        and, for a base in ``bases``, a base reference equal to it.

        Args:
            items: ``(manifest, weights)`` pairs.
            bases: Cached bases by sha256.
            checked: The caller already ran :func:`check_bundle_entries` on ``items``.

        Returns:
            (entries added, entries already present).

        Raises:
            UsageError: The first entry that fails validation (nothing is stored).
        """
        if not checked:
            check_bundle_entries(items, bases)
        before = len(self)
        for manifest, weights in items:
            self.put(manifest, weights)
        added = len(self) - before
        return added, len(items) - added

    def import_bundle(self, path: Path, bases: Mapping[str, BaseManifest] | None = None) -> tuple[int, int]:
        """Add a bundle's entries; every entry is verified before anything is written (see :meth:`import_entries`)."""
        return self.import_entries(read_bundle(Path(path)), bases)


def check_bundle_entries(items: list[tuple[EntryManifest, bytes]],
                         bases: Mapping[str, BaseManifest] | None = None) -> None:
    """Validate a bundle's entries as the zoo server validates an upload (see :meth:`ZooStore.import_entries`).

    Raises:
        UsageError: The first entry that fails.
    """

    for manifest, weights in items:
        check_entry(manifest, weights, bases or {}, f"bundle entry {manifest.entry_id()[:12]}", require_base=False)


def check_bundle_destination(path: Path, force: bool = False) -> Path:
    """Refuse a bundle destination that would overwrite a zoo's files or a file without ``force``.

    Raises:
        UsageError: Inside a zoo (its marker, an entry, the index...), a folder, a link, or an existing file
            without ``force``.
    """
    path = Path(os.path.abspath(path.expanduser()))
    zoo = zoo_around(path.parent)
    if zoo is not None or (path / MARKER).is_file():
        raise UsageError(f"{path} is inside the zoo {zoo or path}; write the bundle outside any zoo")
    if path.is_symlink() or path.exists() and not path.is_file():
        raise UsageError(f"{path} exists and is not a regular file")
    if path.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):  # a folder that exists but takes no files (/proc, read-only)
            pass
    except OSError as exc:
        raise UsageError(f"{path}: cannot write there ({exc.strerror or exc})") from exc
    return path


def repair_index(root: str | os.PathLike[str]) -> VerifyReport:
    """Rebuild a zoo's index from its entries' manifests (``edgemvp zoo verify --repair``).

    Entries whose files do not match their sha256s are moved to ``quarantine/``; every other entry gets the row
    its manifest defines, in the old index's order where it could be read (neighbour ties are broken by that
    order), and keeps its recorded build time. An index SQLite cannot read is moved aside first.

    Raises:
        UsageError: Not a zoo folder.
    """
    root = Path(root).expanduser().resolve()
    check_marker(root)
    report = VerifyReport()
    try:
        store = ZooStore.open(root)
    except DamagedIndex:
        report.damaged_index = _move_aside(root / INDEX)
        store = ZooStore.open(root)
    with store:
        old = {r[0]: (i, r[1]) for i, r in enumerate(store.db.execute(
            "SELECT id, build_seconds FROM entries ORDER BY rowid"))}
        good = []
        for folder in store.objects():
            reason = store._check_files(folder.name)
            if reason is not None:
                store._quarantine(folder)
                report.corrupt.append((folder.name, reason + " (moved to quarantine/)"))
            else:
                good.append(store.get(folder.name))
        good.sort(key=lambda e: (old.get(e.id, (len(old), None))[0], e.id))
        report.repaired = store._rewrite(good, {i: v[1] for i, v in old.items()})
        report.checked = len(good)
        report.missing = [i for i in old if i not in {e.id for e in good}]
    return report


def _move_aside(index: Path) -> str:
    """Move a damaged index (and its WAL files) to ``index.sqlite.damaged-<id>``; returns the new name."""
    dest = index.with_name(f"{index.name}.damaged-{uuid.uuid4().hex[:8]}")
    for suffix in ("", "-wal", "-shm"):
        part = index.with_name(index.name + suffix)
        if part.exists() or part.is_symlink():
            os.rename(part, dest.with_name(dest.name + suffix))
    return str(dest)


def row_values(entry_id: str, m: EntryManifest) -> tuple:
    """An entry's index row as its manifest defines it (every column but ``build_seconds``)."""
    bits, n = mask_bits(m)
    return (entry_id, m.job_key, m.arch, m.base.weights_sha256, m.task.dataset, m.task.name,
            json.dumps(list(m.task.classes)), m.pruner, m.metrics.get("test_acc"), m.metrics.get("params"),
            m.metrics.get("macs"), m.metrics.get("keep_ratio"), bits, n)


def _unpack(blobs, sizes, mixed: str) -> np.ndarray:
    """Packed mask bits of entries of one arch as ``(entries, units)`` bool; ``mixed`` is the error otherwise."""
    if len(set(sizes)) != 1:
        raise UsageError(mixed)
    packed = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), -1)
    return np.unpackbits(packed, axis=1, count=sizes[0]).astype(bool)


def _classes(text: Any, entry_id: Any) -> tuple[str, ...]:
    """An index row's classes column (a JSON list of names), or a one-line error naming the repair."""
    try:
        classes = json.loads(text)
    except (TypeError, ValueError):
        classes = None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CorruptEntry(f"zoo index row of entry {str(entry_id)[:12]} is damaged (its classes are not a list "
                           "of names); run 'edgemvp zoo verify --repair'")
    return tuple(classes)


def _row(d: dict) -> EntryRow:
    return EntryRow(d["id"], d["job_key"], d["arch"], d["base_sha256"], d["dataset"], d["task"],
                    _classes(d["classes"], d["id"]), d["pruner"], d["test_acc"], d["params"], d["macs"],
                    d["keep_ratio"], d["build_seconds"])


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o444
    tar.addfile(info, io.BytesIO(data))


def bundle_bytes(items: list[tuple[bytes, bytes]]) -> bytes:
    """A bundle (uncompressed tar) of entries given as ``(canonical manifest bytes, weights bytes)``."""
    buf = io.BytesIO()
    ids = [sha256_bytes(raw) for raw, _ in items]
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, BUNDLE, json.dumps({"format": FORMAT + "-bundle", "schema_version": SCHEMA_VERSION,
                                      "entries": ids}).encode())
        for entry_id, (raw, weights) in zip(ids, items):
            _add(tar, f"{entry_id}/{MANIFEST}", raw)
            _add(tar, f"{entry_id}/{WEIGHTS}", weights)
    return buf.getvalue()


def read_bundle(path: Path) -> list[tuple[EntryManifest, bytes]]:
    """Read and verify every entry of a bundle file without extracting anything to disk.

    Raises:
        UsageError: Not a bundle, a newer schema, or an entry whose files do not match their sha256s.
    """
    if path.is_symlink() or not path.is_file():
        raise UsageError(f"bundle not found (or not a regular file): {path}")
    with open(path, "rb") as fh:
        return read_bundle_from(fh, str(path), max_bytes=os.fstat(fh.fileno()).st_size)


def read_bundle_from(fileobj: BinaryIO, source: str, max_entries: int | None = None,
                     max_bytes: int | None = None) -> list[tuple[EntryManifest, bytes]]:
    """Read and verify every entry of a bundle from an open binary file (or ``io.BytesIO``), in memory.

    The tar is read member by member: only regular members are accepted (links, devices, FIFOs and sparse
    members are refused), ``bundle.json`` must come first, every member's declared size is bounded (and their
    total by ``max_bytes``) before its data is read, and data are hashed while they are read in chunks.

    Args:
        fileobj: The bundle's bytes.
        source: Names the bundle in errors.
        max_entries: Refuse bundles listing more entries.
        max_bytes: Refuse bundles whose members declare more bytes in all (e.g. the file's or the body's size).

    Raises:
        UsageError: Not a bundle, a newer schema, too many entries or bytes, a member that is not a regular file,
            or an entry whose files do not match their sha256s (or whose manifest is not in canonical form).
    """
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            return _BundleReader(tar, source, max_entries, max_bytes).entries()
    except UsageError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError,
            RecursionError) as exc:
        raise UsageError(f"{source}: unreadable bundle ({exc.__class__.__name__}: {str(exc)[:200]})") from exc


class _BundleReader:
    """One pass over a bundle's tar members, bounded before any member's data is read."""

    def __init__(self, tar: tarfile.TarFile, source: str, max_entries: int | None, max_bytes: int | None) -> None:
        self.tar, self.source = tar, source
        self.max_entries = min(max_entries or MAX_BUNDLE_ENTRIES, MAX_BUNDLE_ENTRIES)
        self.left = max_bytes  # bytes the remaining members may still declare

    def fail(self, reason: str) -> UsageError:
        return UsageError(f"{self.source}: {reason}")

    def member(self, limit: int, expected: str) -> tuple[str, bytes]:
        """The next member's name and data (refused when it is not a regular file or declares over ``limit``)."""
        info = self.tar.next()
        if info is None:
            raise self.fail(f"bundle lacks {expected}")
        name = info.name[:200]
        if not info.isreg() or info.issparse():
            raise self.fail(f"member '{name}' is not a regular file (links, devices and sparse members are refused)")
        if info.size > limit or (self.left is not None and info.size > self.left):
            raise self.fail(f"member '{name}' declares {info.size} bytes, more than this bundle may hold")
        if self.left is not None:
            self.left -= info.size
        fh = self.tar.extractfile(info)
        data = bytearray()
        while len(data) < info.size:
            chunk = fh.read(min(CHUNK, info.size - len(data)))  # type: ignore[union-attr]
            if not chunk:
                raise self.fail(f"member '{name}' is truncated")
            data += chunk
        return info.name, bytes(data)

    def header(self) -> list[str]:
        name, raw = self.member(MAX_JSON_FILE, BUNDLE)
        if name != BUNDLE:
            raise self.fail(f"not an edgemvp zoo bundle (its first member is '{name[:80]}', not {BUNDLE})")
        header = json.loads(raw)
        if not isinstance(header, dict) or header.get("format") != FORMAT + "-bundle":
            raise self.fail("not an edgemvp zoo bundle")
        checks.schema_version(header, SCHEMA_VERSION, f"{self.source}: bundle")
        listed = header.get("entries")
        if not isinstance(listed, list) or not all(isinstance(i, str) and ENTRY_ID.fullmatch(i) for i in listed):
            raise self.fail("bundle header must list entry ids (64 hex digits)")
        if len(listed) > self.max_entries:
            raise self.fail(f"{len(listed)} entries; at most {self.max_entries} per bundle")
        if len(set(listed)) != len(listed):
            raise self.fail("bundle header lists an entry twice")
        return listed

    def entries(self) -> list[tuple[EntryManifest, bytes]]:
        out = []
        for entry_id in self.header():
            where = f"{self.source}: entry {entry_id[:12]}"
            name, raw = self.member(MAX_JSON_FILE, f"{entry_id}/{MANIFEST}")
            if name != f"{entry_id}/{MANIFEST}":
                raise self.fail(f"bundle lacks {entry_id}/{MANIFEST} (found '{name[:80]}')")
            if sha256_bytes(raw) != entry_id:
                raise self.fail(f"entry {entry_id[:12]}: manifest does not match its id")
            manifest = EntryManifest.from_bytes(raw, where)
            if manifest.to_bytes() != raw:  # else it would be stored under another id
                raise UsageError(f"{where}: manifest is not in canonical form")
            name, weights = self.member(weights_limit(manifest), f"{entry_id}/{WEIGHTS}")
            if name != f"{entry_id}/{WEIGHTS}":
                raise self.fail(f"bundle lacks {entry_id}/{WEIGHTS} (found '{name[:80]}')")
            if sha256_bytes(weights) != manifest.weights_sha256:
                raise UsageError(f"{where}: weights do not match the manifest")
            out.append((manifest, weights))
        if self.tar.next() is not None:
            raise self.fail("bundle holds members its header does not list")
        return out
