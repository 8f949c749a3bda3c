"""Where edgemvp keeps what it downloads, builds and caches.

The cache folder holds data downloads, the WordNet layout for nltk, pre-trained base models and zoos. It is
chosen by, in order: an explicit argument (the CLI's ``--cache-dir``), the ``EDGEMVP_CACHE`` environment
variable, then ``$XDG_CACHE_HOME/edgemvp`` (``~/.cache/edgemvp``). Nothing here is committed to the repository.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from edgemvp.errors import UsageError

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
    try:
        root = root.expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: '~user' of an unknown user
        why = getattr(exc, "strerror", None) or exc
        raise UsageError(f"cache folder {root}: cannot create it ({why}); set --cache-dir or {ENV_CACHE} to a "
                         "folder you can write") from exc
    if not os.access(root, os.W_OK | os.X_OK):
        raise UsageError(f"cache folder {root} is not writable; set --cache-dir or {ENV_CACHE} to one that is")
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


class UnsafeFile(UsageError):
    """A file edgemvp will not read: a symbolic link, a device, a FIFO, or larger than its bound."""


def read_regular(path: str | os.PathLike[str], limit: int, follow_symlinks: bool = False) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, read without following a symbolic link.

    A device (``/dev/zero``), a FIFO or a link in place of a file is refused before anything is read, and the
    read never takes more than ``limit + 1`` bytes, so a hostile file cannot make edgemvp eat memory or hang.

    ``follow_symlinks`` accepts a link to a regular file (an image tree of links); the target is checked.

    Raises:
        UnsafeFile: Not a regular file, or larger than ``limit``.
        OSError: Missing or unreadable.
    """
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:  # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(f"{path} is a symbolic link; refusing to follow it") from exc
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path} is not a regular file")
        if st.st_size > limit:
            raise UnsafeFile(f"{path} is {st.st_size} bytes, more than the {limit} allowed")
        data = bytearray()  # in chunks: read(n) would allocate all n bytes up front
        while len(data) <= limit:
            chunk = fh.read(min(1 << 24, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    if len(data) > limit:
        raise UnsafeFile(f"{path} is larger than the {limit} bytes allowed")
    return bytes(data)


def read_secret(path: str | os.PathLike[str], option: str) -> str:
    """A token from a file only its owner can read (mode 600 or stricter): stripped, non-empty, UTF-8.

    Raises:
        UsageError: Unreadable, not a regular file, readable or writable by the group or others, empty.
    """
    path = Path(path)
    try:
        raw = read_regular(path, 1 << 16)
        mode = path.stat().st_mode
    except UnsafeFile as exc:
        raise UsageError(f"{option} {path}: {exc}") from exc
    except OSError as exc:
        raise UsageError(f"{option} {path}: unreadable ({exc.strerror or exc.__class__.__name__})") from exc
    if mode & 0o077:
        raise UsageError(f"{option} {path} can be read or changed by other users (mode {stat.S_IMODE(mode):o}); "
                         f"run 'chmod 600 {path}'")
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise UsageError(f"{option} {path}: not UTF-8 text") from exc
    if not token:
        raise UsageError(f"{option} {path} is empty")
    return token


def check_token(token: str, where: str) -> str:
    """A bearer token as HTTP carries it: visible ASCII characters only (no spaces, no other scripts).

    Raises:
        UsageError: Any other character (it could never be sent in a header, or never match one).
    """
    if not all("!" <= c <= "~" for c in token):
        raise UsageError(f"{where}: a token must be visible ASCII characters (letters, digits, punctuation), "
                         "without spaces")
    return token
