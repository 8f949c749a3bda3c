"""Where edgemvp keeps what it downloads, builds and caches.

The cache folder holds data downloads, the WordNet layout for nltk, pre-trained base models and zoos. It is
chosen by, in order: an explicit argument (the CLI's ``--cache-dir``), the ``EDGEMVP_CACHE`` environment
variable, then ``$XDG_CACHE_HOME/edgemvp`` (``~/.cache/edgemvp``). Nothing here is committed to the repository.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "EDGEMVP_CACHE"


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache folder, creating it if needed.

    Args:
        explicit: A folder that overrides the environment and the default.

    Returns:
        The absolute path of the cache folder.
    """
    if explicit is not None:
        root = Path(explicit)
    elif os.environ.get(ENV_CACHE):
        root = Path(os.environ[ENV_CACHE])
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(xdg) / "edgemvp"
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a half-written file.

    The bytes go to a temporary file in the same folder, are fsynced, then renamed over ``path``.

    Args:
        path: Destination file.
        data: The full contents.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
