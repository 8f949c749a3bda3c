"""WordNet 3.0 for nltk, offline: locate or lay out the database, map classes to synsets, Wu-Palmer.

nltk reads WordNet from ``<dir>/corpora/wordnet/`` on ``nltk.data.path``. Debian's ``wordnet-base`` and
``wordnet-sense-index`` packages install the same database files in ``/usr/share/wordnet`` but omit the
``lexnames`` file nltk needs; :func:`install_wordnet` copies the Debian files (nltk's path sentinel refuses
symlinks out of its data roots) into
``<cache>/nltk_data/corpora/wordnet/`` and writes ``lexnames`` (its content is fixed by WordNet 3.0,
see lexnames(5WN)). A WordNet that nltk already finds (e.g. from ``nltk.download('wordnet')``) is used as is.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import threading
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from edgemvp.errors import UsageError
from edgemvp.paths import atomic_write_bytes, cache_dir

logger = logging.getLogger(__name__)
_PLAIN_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# nltk's WordNet reader seeks and reads shared file handles: concurrent lookups (the zoo server ranks in
# several threads) read each other's lines. One lookup at a time; the reader is shared by the whole process.
_READER_LOCK = threading.RLock()

DEBIAN_WORDNET = Path("/usr/share/wordnet")
_REQUIRED = ("data.noun", "index.noun", "index.sense")
# lexnames(5WN): file number, lexicographer file name, syntactic category (1 noun, 2 verb, 3 adj, 4 adv).
_LEXNAMES = (
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1",
    "noun.artifact 1", "noun.attribute 1", "noun.body 1", "noun.cognition 1", "noun.communication 1",
    "noun.event 1", "noun.feeling 1", "noun.food 1", "noun.group 1", "noun.location 1", "noun.motive 1",
    "noun.object 1", "noun.person 1", "noun.phenomenon 1", "noun.plant 1", "noun.possession 1",
    "noun.process 1", "noun.quantity 1", "noun.relation 1", "noun.shape 1", "noun.state 1",
    "noun.substance 1", "noun.time 1", "verb.body 2", "verb.change 2", "verb.cognition 2",
    "verb.communication 2", "verb.competition 2", "verb.consumption 2", "verb.contact 2",
    "verb.creation 2", "verb.emotion 2", "verb.motion 2", "verb.perception 2", "verb.possession 2",
    "verb.social 2", "verb.stative 2", "verb.weather 2", "adj.ppl 3",
)
HOW_TO_GET = (
    "WordNet 3.0 not found: run 'make setup' (on Debian it installs wordnet-base and wordnet-sense-index), "
    "or `python -m nltk.downloader wordnet` when online"
)


def lexnames_text() -> str:
    """The contents of WordNet 3.0's ``lexnames`` file."""
    lines = []
    for number, entry in enumerate(_LEXNAMES):
        name, category = entry.split()
        lines.append(f"{number:02d}\t{name}\t{category}\n")
    return "".join(lines)


def install_wordnet(nltk_root: Path, source: Path = DEBIAN_WORDNET) -> Path:
    """Lay out a WordNet database folder for nltk under ``nltk_root`` (idempotent).

    Args:
        nltk_root: A folder that will be put on ``nltk.data.path``.
        source: The folder holding the WordNet database files (Debian's by default).

    Returns:
        The ``corpora/wordnet`` folder that was laid out.

    Raises:
        UsageError: When ``source`` lacks the database files.
    """
    missing = [name for name in _REQUIRED if not (source / name).is_file()]
    if missing:
        raise UsageError(f"{HOW_TO_GET} (missing in {source}: {', '.join(missing)})")
    target = nltk_root / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for file in sorted(source.iterdir()):
        if not file.is_file():
            continue
        copy = target / file.name
        if copy.is_symlink():
            copy.unlink()
        if not copy.is_file() or copy.stat().st_size != file.stat().st_size:
            tmp = copy.with_name(f".{copy.name}.tmp-{os.getpid()}")
            shutil.copyfile(file, tmp)
            os.replace(tmp, copy)
    if not (target / "lexnames").is_file():
        atomic_write_bytes(target / "lexnames", lexnames_text().encode())
    return target


@functools.lru_cache(maxsize=4)
def _wordnet_for(root: str | None) -> Any:
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    with warnings.catch_warnings():  # "multilingual functions are not available": we only need English
        warnings.simplefilter("ignore", UserWarning)
        try:
            return WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)
        except LookupError:
            pass
        nltk_root = Path(root) / "nltk_data" if root else cache_dir() / "nltk_data"
        install_wordnet(nltk_root)
        if str(nltk_root) not in nltk.data.path:
            nltk.data.path.append(str(nltk_root))
        return WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)


def wordnet(cache: str | os.PathLike[str] | None = None) -> Any:
    """Return an nltk WordNet reader, laying out Debian's files in the cache on first use.

    Args:
        cache: The cache folder (see :func:`edgemvp.paths.cache_dir`).

    Returns:
        An ``nltk.corpus.reader.wordnet.WordNetCorpusReader``.

    Raises:
        UsageError: When no WordNet database can be found.
    """
    return _wordnet_for(str(cache_dir(cache)) if cache is not None else None)


def synset(name: str, cache: str | os.PathLike[str] | None = None) -> Any:
    """Look up a synset by name (``dog.n.01``) or ImageNet wnid (``n02084071``).

    Raises:
        UsageError: When the name is not a WordNet 3.0 synset.
    """
    with _READER_LOCK:
        wn = wordnet(cache)
        try:
            if len(name) == 9 and name[0] == "n" and name[1:].isdigit():
                return wn.synset_from_pos_and_offset("n", int(name[1:]))
            return wn.synset(name)
        except Exception as exc:  # nltk raises WordNetError/ValueError for unknown names
            raise UsageError(f"unknown WordNet synset '{name}'") from exc


def wup(a: str, b: str, cache: str | os.PathLike[str] | None = None) -> float:
    """Wu-Palmer similarity of two synsets given by name or wnid.

    A synset is identical to itself (1.0); nltk can return less when a synset has several hypernym paths of
    different depths (``dog.n.01`` with itself gives 0.929), which would make a task less similar to itself
    than to nothing better.
    """
    with _READER_LOCK:  # hypernym paths are read lazily from the same files
        sa, sb = synset(a, cache), synset(b, cache)
        return 1.0 if sa == sb else float(sa.wup_similarity(sb) or 0.0)


@functools.lru_cache(maxsize=256)
def synset_map(dataset: str) -> dict[str, str]:
    """The class name → WordNet synset map shipped for a dataset (empty when none is shipped).

    Only plain registry names are looked up: a name with a path in it (``imagefolder:/data``, or one that came
    over the network) never reaches the file system.

    Args:
        dataset: A dataset name such as ``fashion-mnist``, ``oxford-pets`` or ``cifar-100``.
    """
    if not _PLAIN_NAME.fullmatch(dataset):
        return {}
    path = resources.files("edgemvp.data").joinpath("synsets", f"{dataset}.json")
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()))
