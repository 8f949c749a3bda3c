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
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from edgemvp.errors import EdgeMVPError, UsageError
from edgemvp.models.weights import sha256_bytes
from edgemvp.paths import atomic_write_bytes
from edgemvp.units import unit_space
from edgemvp.zoo.entry import EntryManifest, ZooEntry

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FORMAT = "edgemvp-zoo"
MARKER = "zoo.json"
INDEX = "index.sqlite"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
BUNDLE = "bundle.json"
ENTRY_ID = re.compile(r"[0-9a-f]{64}")  # an entry id: the sha256 of its canonical manifest

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


class CorruptEntry(EdgeMVPError):
    """A stored entry whose files do not match their sha256 (bit flips, truncation, tampering)."""


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
        data = json.loads(marker.read_text())
        version = int(data["schema_version"])
        fmt = data["format"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{marker}: unreadable zoo marker ({exc.__class__.__name__})") from exc
    if fmt != FORMAT:
        raise UsageError(f"{marker}: not an edgemvp zoo (format {fmt!r})")
    if version > SCHEMA_VERSION:
        raise UsageError(f"{root}: zoo written by a newer edgemvp (schema {version}, this one reads "
                         f"{SCHEMA_VERSION}); upgrade edgemvp")


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
        root = Path(root).expanduser().resolve()
        if create and not (root / MARKER).exists():
            if root.exists() and any(p.name != ".DS_Store" for p in root.iterdir()):
                raise UsageError(f"{root}: folder exists and is not a zoo; refusing to write into it")
            root.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(root / MARKER, json.dumps({"format": FORMAT, "schema_version": SCHEMA_VERSION}).encode())
        check_marker(root)
        db = sqlite3.connect(root / INDEX, timeout=60.0, isolation_level=None, check_same_thread=not shared)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        version = int(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
        if version > SCHEMA_VERSION:
            db.close()
            raise UsageError(f"{root / INDEX}: index written by a newer edgemvp (schema {version})")
        return cls(root, db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ZooStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing -------------------------------------------------------------------------------------------
    def folder(self, entry_id: str) -> Path:
        """Where an entry's files live."""
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
        bits, n = mask_bits(m)
        with self._transaction():
            if self.db.execute("SELECT 1 FROM entries WHERE id=?", (entry_id,)).fetchone():
                return
            self.db.execute(
                "INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (entry_id, m.job_key, m.arch, m.base.weights_sha256, m.task.dataset, m.task.name,
                 json.dumps(list(m.task.classes)), m.pruner, m.metrics.get("test_acc"), m.metrics.get("params"),
                 m.metrics.get("macs"), m.metrics.get("keep_ratio"), bits, n, build_seconds))
            self.db.executemany("INSERT OR IGNORE INTO entry_classes VALUES (?,?)",
                                [(entry_id, c) for c in m.task.classes])

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
        if not prefix or any(ch not in "0123456789abcdef" for ch in prefix.lower()):
            raise UsageError(f"'{prefix}' is not an entry id (hex)")
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
            raw = (folder / MANIFEST).read_bytes()
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
                parsed[classes] = tuple(json.loads(classes))
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
            entry = self.get(entry_id)
            weights = (entry.folder / WEIGHTS).read_bytes()
        except (CorruptEntry, UsageError) as exc:
            return str(exc)
        except OSError as exc:
            return f"zoo entry {entry_id[:12]}: {WEIGHTS} is missing ({exc.strerror})"
        if sha256_bytes(weights) != entry.manifest.weights_sha256:
            return f"zoo entry {entry_id[:12]}: {WEIGHTS} is corrupt (sha256 does not match the manifest)"
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

    def verify(self) -> VerifyReport:
        """Recover, then check every indexed entry's files against their sha256s."""
        report = self.recover()
        for (entry_id,) in self.db.execute("SELECT id FROM entries ORDER BY rowid").fetchall():
            report.checked += 1
            if not self.folder(entry_id).is_dir():
                report.missing.append(entry_id)
                continue
            reason = self._check_files(entry_id)
            if reason is not None:
                report.corrupt.append((entry_id, reason))
        return report

    # --- bundles -------------------------------------------------------------------------------------------
    def export_bundle(self, path: Path, ids: list[str] | None = None) -> int:
        """Write entries (all by default) into one tar bundle, atomically; every entry is verified first.

        Returns:
            The number of entries written.
        """
        ids = ids if ids is not None else [r.id for r in self.rows()]
        items = []
        for entry_id in ids:
            reason = self._check_files(entry_id)
            if reason is not None:
                raise CorruptEntry(reason)
            items.append(tuple((self.folder(entry_id) / name).read_bytes() for name in (MANIFEST, WEIGHTS)))
        atomic_write_bytes(Path(path), bundle_bytes(items))
        return len(ids)

    def import_entries(self, items: list[tuple[EntryManifest, bytes]]) -> tuple[int, int]:
        """Add verified entries (from :func:`read_bundle`).

        Returns:
            (entries added, entries already present).
        """
        before = len(self)
        for manifest, weights in items:
            self.put(manifest, weights)
        added = len(self) - before
        return added, len(items) - added

    def import_bundle(self, path: Path) -> tuple[int, int]:
        """Add a bundle's entries; every entry is verified (:func:`read_bundle`) before anything is written."""
        return self.import_entries(read_bundle(Path(path)))


def _unpack(blobs, sizes, mixed: str) -> np.ndarray:
    """Packed mask bits of entries of one arch as ``(entries, units)`` bool; ``mixed`` is the error otherwise."""
    if len(set(sizes)) != 1:
        raise UsageError(mixed)
    packed = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), -1)
    return np.unpackbits(packed, axis=1, count=sizes[0]).astype(bool)


def _row(d: dict) -> EntryRow:
    return EntryRow(d["id"], d["job_key"], d["arch"], d["base_sha256"], d["dataset"], d["task"],
                    tuple(json.loads(d["classes"])), d["pruner"], d["test_acc"], d["params"], d["macs"],
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
    if not path.is_file():
        raise UsageError(f"bundle not found: {path}")
    with open(path, "rb") as fh:
        return read_bundle_from(fh, str(path))


def read_bundle_from(fileobj: BinaryIO, source: str, max_entries: int | None = None
                     ) -> list[tuple[EntryManifest, bytes]]:
    """Read and verify every entry of a bundle from an open binary file (or ``io.BytesIO``), in memory.

    Args:
        fileobj: The bundle's bytes.
        source: Names the bundle in errors.
        max_entries: Refuse bundles listing more entries.

    Raises:
        UsageError: Not a bundle, a newer schema, too many entries, or an entry whose files do not match
            their sha256s (or whose manifest is not in canonical form).
    """
    path = source
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}

            def read(name: str) -> bytes:
                if name not in members:
                    raise UsageError(f"{path}: bundle lacks {name}")
                return tar.extractfile(members[name]).read()  # type: ignore[union-attr]

            header = json.loads(read(BUNDLE))
            if header.get("format") != FORMAT + "-bundle":
                raise UsageError(f"{path}: not an edgemvp zoo bundle")
            if int(header.get("schema_version", 0)) > SCHEMA_VERSION:
                raise UsageError(f"{path}: bundle written by a newer edgemvp (schema {header['schema_version']})")
            listed = header["entries"]
            if not isinstance(listed, list) or not all(isinstance(i, str) and ENTRY_ID.fullmatch(i) for i in listed):
                raise UsageError(f"{path}: bundle header must list entry ids (64 hex digits)")
            if max_entries is not None and len(listed) > max_entries:
                raise UsageError(f"{path}: {len(listed)} entries; at most {max_entries} per bundle")
            out = []
            for entry_id in listed:
                raw, weights = read(f"{entry_id}/{MANIFEST}"), read(f"{entry_id}/{WEIGHTS}")
                if sha256_bytes(raw) != entry_id:
                    raise UsageError(f"{path}: entry {str(entry_id)[:12]}: manifest does not match its id")
                manifest = EntryManifest.from_bytes(raw, f"{path}: entry {entry_id[:12]}")
                if manifest.to_bytes() != raw:  # else it would be stored under another id
                    raise UsageError(f"{path}: entry {entry_id[:12]}: manifest is not in canonical form")
                if sha256_bytes(weights) != manifest.weights_sha256:
                    raise UsageError(f"{path}: entry {entry_id[:12]}: weights do not match the manifest")
                out.append((manifest, weights))
            return out
    except (tarfile.TarError, EOFError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise UsageError(f"{path}: unreadable bundle ({exc.__class__.__name__}: {exc})") from exc
