"""Run folders: what ``edgemvp prune`` writes, and the only folders it may replace.

A run folder holds only the files a prune writes (:data:`RUN_FILES`) and a ``report.json`` that says it was
written by edgemvp (``"format": "edgemvp-run"``; reports of earlier versions are recognised by their fields).
``--out`` must be a new folder, an empty one, or such a run folder: anything else (a home folder, a folder of
models, a zoo, a cached base) is refused before any work, with one line, and nothing in it is touched. The
new run is written to a temporary sibling and swapped in at the end (an earlier run stays complete until the
swap).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

from edgemvp.errors import UsageError

RUN_FORMAT = "edgemvp-run"
REPORT = "report.json"
CARD = "README.md"
RUN_FILES = frozenset({"model.onnx", "model.int8.onnx", "masks.json", "weights.safetensors", REPORT, CARD,
                       "export.json"})
ZOO_MARKER = "zoo.json"  # edgemvp.zoo.store.MARKER (not imported: the store needs torch-free callers too)
MAX_REPORT_BYTES = 64 << 20
_LEGACY_KEYS = {"schema_version", "task", "method", "latency", "files"}


def _report_says_run(path: Path) -> bool:
    """Whether a ``report.json`` was written by an edgemvp prune (any version)."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_REPORT_BYTES:
            return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    return data.get("format") == RUN_FORMAT or _LEGACY_KEYS <= set(data)


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is an earlier edgemvp run folder that a new run may replace."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    if any(e.name not in RUN_FILES or not e.is_file(follow_symlinks=False) for e in entries):
        return False
    return _report_says_run(folder / REPORT)


def zoo_around(path: Path) -> Path | None:
    """The zoo folder that ``path`` is (or lies inside), if any."""
    for folder in (path, *path.parents):
        if (folder / ZOO_MARKER).is_file():
            return folder
    return None


def _creatable_parent(out: Path, option: str) -> None:
    """Create ``out``'s parent (or refuse with one line: under a file, under /proc, no permission)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {out}: cannot create its parent folder ({exc.strerror or exc})") from exc
    try:  # a real write (root passes every access() check, and /proc refuses new folders)
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name[:40]}.probe-", dir=out.parent))
    except OSError as exc:
        raise UsageError(f"{option} {out}: cannot write in its parent folder ({exc.strerror or exc})") from exc


MAX_NAME_BYTES = 200  # of one path component: the file system's 255, less the temporary names made beside it


def check_out(out: Path | str, option: str = "--out") -> Path:
    """Refuse an output folder edgemvp may not write, before any work; returns it as an absolute path.

    Raises:
        UsageError: An empty name, the current folder or one above it, a symbolic link, a file, a zoo or a
            folder inside one, a folder holding files edgemvp did not write, or a parent that cannot be made.
    """
    if str(out).strip() == "":
        raise UsageError(f"{option} must name a folder, got ''")
    try:
        out = Path(os.path.abspath(Path(out).expanduser()))
        long = next((p for p in out.parts if len(os.fsencode(p)) > MAX_NAME_BYTES), None)
    except (OSError, RuntimeError, ValueError) as exc:  # ~user unknown, an embedded NUL
        raise UsageError(f"{option} {str(out)[:120]!r}: not a usable path ({exc})") from exc
    if long is not None:  # the run is written beside it as .<name>.tmp-<hex> first
        raise UsageError(f"{option}: the name {long[:40]}... is over {MAX_NAME_BYTES} bytes; name a shorter folder")
    try:
        return _check_out(out, option)
    except OSError as exc:  # a path the system refuses (too long in all, a folder that cannot be read)
        raise UsageError(f"{option} {str(out)[:120]}: cannot use it ({exc.strerror or exc})") from exc


def _check_out(out: Path, option: str) -> Path:
    cwd = Path.cwd()
    if out == cwd or out in cwd.parents:
        raise UsageError(f"{option} {out} is the current folder or holds it; name a new folder for the run")
    if out.is_symlink():
        raise UsageError(f"{option} {out} is a symbolic link; name a folder")
    zoo = zoo_around(out)
    if zoo is not None:
        raise UsageError(f"{option} {out} is inside the zoo {zoo}; name a folder outside it")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"{option} {out} exists and is not a folder")
        try:
            empty = next(os.scandir(out), None) is None
        except OSError as exc:
            raise UsageError(f"{option} {out}: cannot read it ({exc.strerror})") from exc
        if not empty and not is_run_folder(out):
            raise UsageError(f"{option} {out} holds files edgemvp did not write; name a new or empty folder, "
                             "or an earlier run folder (nothing was changed)")
    _creatable_parent(out, option)
    return out


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished run ``tmp`` to ``out``; an earlier run there is kept aside until the move is done.

    ``out`` is checked again first, so a folder that changed during the run is refused, not deleted.
    """
    check_out(out)
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old.exists():
            os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


EXPORT_FILES = ("model.onnx", "model.int8.onnx", "export.json")


def check_export_out(out: Path, source_folder: Path, option: str = "--out") -> Path:
    """Refuse an ``edgemvp export`` folder where it would overwrite files edgemvp did not write.

    The export writes :data:`EXPORT_FILES` into the folder: allowed are the source's own folder, a new or empty
    folder, an earlier run folder, or any folder that holds none of those names.

    Raises:
        UsageError: A folder inside a zoo, a file, or one holding a ``model.onnx`` (etc.) of its own.
    """
    out = Path(os.path.abspath(out.expanduser()))
    zoo = zoo_around(out)
    if zoo is not None:
        raise UsageError(f"{option} {out} is inside the zoo {zoo}; name a folder outside it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {out} exists and is not a folder")
    if out == Path(os.path.abspath(source_folder)) or not out.exists() or is_run_folder(out):
        _creatable_parent(out, option)
        return out
    taken = [name for name in EXPORT_FILES if (out / name).exists() or (out / name).is_symlink()]
    if taken:
        raise UsageError(f"{option} {out} already holds {taken[0]}, which edgemvp did not write; name a new or "
                         "empty folder (nothing was changed)")
    return out
