"""WordNet 3.0 for nltk, offline: locate or lay out the database, map classes to synsets, Wu-Palmer.

nltk reads WordNet from ``<dir>/corpora/wordnet/`` on ``nltk.data.path``. Debian's ``wordnet-base`` and
``wordnet-sense-index`` packages install the same database files in ``/usr/share/wordnet`` but omit the
``lexnames`` file nltk needs; :func:`install_wordnet` copies the Debian files (nltk's path sentinel refuses
symlinks out of its data roots) into
``<cache>/nltk_data/corpora/wordnet/`` and writes ``lexnames`` (its content is fixed by WordNet 3.0,
see lexnames(5WN)). A WordNet that nltk already finds (e.g. from ``nltk.download('wordnet')``) is used as is.

**Wu-Palmer without the reader.** nltk's ``Synset.wup_similarity`` needs, of each synset, its hypernyms (with
instance hypernyms, the synset included) with the length of nltk's shortest hypernym path to each, and their
``min_depth()`` / ``max_depth()``. :class:`ClosureStore` keeps exactly that per synset (a :class:`Closure`) and
computes whole Wu-Palmer matrices from it with array operations (:func:`wup_matrix`), bit for bit what nltk
returns. The closures of the shipped class maps' synsets and their hypernyms are shipped too
(``synsets/_closure.json``, written by ``scripts/make_wordnet_closure.py``), so the common path does not load
(or even import) nltk; any other synset is read from nltk once, under the reader lock, and kept in process.
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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from edgemvp.errors import UsageError
from edgemvp.paths import atomic_write_bytes, cache_dir

logger = logging.getLogger(__name__)
_PLAIN_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# nltk's WordNet reader seeks and reads shared file handles: concurrent lookups (the zoo server ranks in
# several threads) read each other's lines. One lookup at a time; the reader is shared by the whole process.
_READER_LOCK = threading.RLock()

DEBIAN_WORDNET = Path("/usr/share/wordnet")
WORDNET_VERSION = "3.0"  # the WordNet the shipped maps name and the shipped closures were computed from
CLOSURE_FILE = "_closure.json"  # under synsets/; not a dataset name (see _PLAIN_NAME), so synset_map never reads it
CLOSURE_FORMAT = 1
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


def _is_wnid(name: str) -> bool:
    """An ImageNet-style noun id: ``n`` and the synset's 8-digit offset in ``data.noun``."""
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def _lookup(wn: Any, name: str) -> Any:
    """The synset a name or wnid means in the reader ``wn`` (call under ``_READER_LOCK``).

    nltk answers an offset where no synset starts with None (and a warning), not an error; that is turned into
    the same error as an unknown name, as is an offset the found synset does not have.
    """
    try:
        if _is_wnid(name):
            offset = int(name[1:])
            with warnings.catch_warnings():  # "No WordNet synset found for pos=n at offset=...": we raise instead
                warnings.simplefilter("ignore", UserWarning)
                found = wn.synset_from_pos_and_offset("n", offset)
            if found is None or found.offset() != offset:
                raise LookupError(name)
            return found
        sense = name.rpartition(".")[2]
        if not sense.isdigit() or int(sense) < 1:  # nltk reads dog.n.00 as sense -1: the last one
            raise LookupError(name)
        return wn.synset(name)
    except Exception as exc:  # nltk raises WordNetError/ValueError for unknown names
        raise UsageError(f"unknown WordNet synset {name[:80]!r}") from exc


def synset(name: str, cache: str | os.PathLike[str] | None = None) -> Any:
    """Look up a synset by name (``dog.n.01``) or ImageNet wnid (``n02084071``).

    Raises:
        UsageError: When the name is not a WordNet 3.0 synset.
    """
    with _READER_LOCK:
        return _lookup(wordnet(cache), name)


def wnid(name: str, cache: str | os.PathLike[str] | None = None) -> str | None:
    """The ImageNet-style id (``n`` + 8-digit offset) of a noun synset, None for other parts of speech.

    Raises:
        UsageError: When the name is not a WordNet 3.0 synset.
    """
    found = synset(name, cache)
    return f"n{found.offset():08d}" if found.pos() == "n" else None


def wup(a: str, b: str, cache: str | os.PathLike[str] | None = None) -> float:
    """Wu-Palmer similarity of two synsets given by name or wnid: nltk's ``a.wup_similarity(b)``.

    A synset is identical to itself (1.0); nltk can return less when a synset has several hypernym paths of
    different depths (``dog.n.01`` with itself gives 0.929), which would make a task less similar to itself
    than to nothing better. No path (None) is 0.0. Computed from the synsets' closures (see
    :class:`ClosureStore`), so synsets of the shipped maps need no WordNet reader.

    Raises:
        UsageError: A name or wnid WordNet 3.0 does not have.
    """
    return closure_store().wup(a, b, cache)


def wup_matrix(names: Sequence[str], cache: str | os.PathLike[str] | None = None) -> np.ndarray:
    """``out[i, j] = wup(names[i], names[j])`` for every pair, as array operations (float64, n x n).

    Not symmetric in general: like nltk, the first synset is the subsumer when it is one of several lowest
    common hypernyms (:meth:`Taxonomy.class_matrix <edgemvp.similarity.Taxonomy.class_matrix>` reads the
    pair in the order its pairwise loop used).

    Raises:
        UsageError: A name or wnid WordNet 3.0 does not have.
    """
    return closure_store().matrix(names, cache)


# --- synset closures ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Closure:
    """What Wu-Palmer needs of one synset, as nltk computes it.

    Attributes:
        name: The synset's name (``dog.n.01``).
        pos: Its part of speech (``n``, ``v``, ``a``, ``s``, ``r``).
        offset: Its offset in the ``data.<pos>`` file (the number of an ImageNet wnid for a noun).
        needs_root: nltk's ``_needs_root()``: the synset's taxonomy has no single root (every non-noun), so
            nltk adds a fake root to its comparisons. Pairs with such a synset are left to nltk.
        min_depth: ``min_depth()``: edges of the shortest hypernym path up to a root.
        max_depth: ``max_depth()``: edges of the longest one.
        hypernyms: Every hypernym above the synset, instance hypernyms included, and the synset itself (0),
            with the edges of the shortest path up to it (nltk's ``_shortest_hypernym_paths``). Empty when
            ``needs_root``.
    """

    name: str
    pos: str
    offset: int
    needs_root: bool
    min_depth: int
    max_depth: int
    hypernyms: Mapping[str, int]


def _needs_root(pos: str, version: str | None) -> bool:
    """nltk's ``Synset._needs_root()`` (which reads the version from a file on every call)."""
    return pos != "n" or version == "1.6"


def _entry(s: Any) -> dict[str, Any]:
    """The closure table entry of an nltk synset (see :func:`closure_table`)."""
    paths = s._shortest_hypernym_paths(False)  # what shortest_path_distance uses: BFS over @ and @i
    return {"offset": s.offset(), "pos": s.pos(), "min_depth": s.min_depth(), "max_depth": s.max_depth(),
            "hypernyms": {h.name(): d for h, d in sorted(paths.items(), key=lambda item: item[0].name())}}


def closure_table(names: Iterable[str], cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The closure table (the content of ``synsets/_closure.json``) of some synsets, read from nltk.

    Args:
        names: Synset names or wnids; the table holds them and every hypernym above them.

    Returns:
        ``{"format", "wordnet_version", "aliases": {given name: synset name} (names that are not the synset's
        own), "synsets": {name: {"offset", "pos", "min_depth", "max_depth", "hypernyms": {name: edges}}}}``.

    Raises:
        UsageError: An unknown synset.
    """
    aliases: dict[str, str] = {}
    synsets: dict[str, dict[str, Any]] = {}
    with _READER_LOCK:
        wn = wordnet(cache)
        for name in names:
            s = _lookup(wn, name)
            if s.name() != name and not _is_wnid(name):
                aliases[name] = s.name()
            for h in s._shortest_hypernym_paths(False):
                if h.name() not in synsets:
                    synsets[h.name()] = _entry(h)
        version = wn.get_version()
    return {"format": CLOSURE_FORMAT, "wordnet_version": version, "aliases": dict(sorted(aliases.items())),
            "synsets": dict(sorted(synsets.items()))}


def render_closure_table(table: Mapping[str, Any]) -> str:
    """The closure table as JSON text: sorted keys, one synset a line (the same table gives the same text)."""
    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True)

    synsets = table["synsets"]
    rows = [f"  {dump(name)}: {dump(synsets[name])}" for name in sorted(synsets)]
    lines = ["{", f' "aliases": {dump(table["aliases"])},', f' "format": {dump(table["format"])},',
             ' "synsets": {', ",\n".join(rows), " },", f' "wordnet_version": {dump(table["wordnet_version"])}', "}"]
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=1)
def shipped_closures() -> dict[str, Any] | None:
    """The shipped closure table, or None when it is missing, unreadable or not of WordNet 3.0."""
    path = resources.files("edgemvp.data").joinpath("synsets", CLOSURE_FILE)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("shipped WordNet closures not used (%s): synsets are read from WordNet", exc)
        return None
    if table.get("format") != CLOSURE_FORMAT or table.get("wordnet_version") != WORDNET_VERSION:
        logger.warning("shipped WordNet closures not used: format %s of WordNet %s, this needs format %s of "
                       "WordNet %s", table.get("format"), table.get("wordnet_version"), CLOSURE_FORMAT,
                       WORDNET_VERSION)
        return None
    return table


class _State:
    """Closures by synset name and the names that resolve to them (filled in order: hypernyms first)."""

    def __init__(self) -> None:
        self.closures: dict[str, Closure] = {}
        self.aliases: dict[str, str] = {}


class ClosureStore:
    """Synset closures (shipped, or read from nltk once and kept) and Wu-Palmer matrices computed from them.

    Thread-safe: lookups of known names read dicts only; a name not known yet is read from nltk under
    ``_READER_LOCK``, its closure and its hypernyms' stored hypernyms first, so a closure present is complete.

    Args:
        table: A closure table (:func:`closure_table`) to start from, of WordNet ``table["wordnet_version"]``.
            When the nltk reader is loaded (for a synset the table lacks) and is of another version, the table
            is dropped and every synset is read from nltk from then on.
    """

    def __init__(self, table: Mapping[str, Any] | None = None) -> None:
        self._state = _State()
        self._version: str | None = None
        self._checked = False
        if table is not None:
            self._load(table)

    def _load(self, table: Mapping[str, Any]) -> None:
        version = str(table["wordnet_version"])
        state = self._state
        entries = table["synsets"]
        for name in sorted(entries, key=lambda n: entries[n]["max_depth"]):  # hypernyms have smaller max_depth
            e = entries[name]
            if any(h not in entries for h in e["hypernyms"]):
                raise UsageError(f"WordNet closure table: a hypernym of '{name}' is missing")
            state.closures[name] = Closure(name, e["pos"], int(e["offset"]), _needs_root(e["pos"], version),
                                           int(e["min_depth"]), int(e["max_depth"]),
                                           {h: int(d) for h, d in e["hypernyms"].items()})
            if e["pos"] == "n":
                state.aliases[f"n{int(e['offset']):08d}"] = name
        for alias, name in table["aliases"].items():
            if name in state.closures:
                state.aliases[alias] = name
        self._version = version

    def _reader(self, cache: str | os.PathLike[str] | None) -> Any:
        """The nltk reader (call under ``_READER_LOCK``); drops the table if the reader is another WordNet."""
        wn = wordnet(cache)
        if not self._checked:
            version = wn.get_version()
            if self._version is not None and version != self._version:
                logger.warning("WordNet %s found, the closure table is of WordNet %s: not used", version,
                               self._version)
                self._state = _State()
            self._version, self._checked = version, True
        return wn

    def canonical(self, name: str, cache: str | os.PathLike[str] | None = None) -> str:
        """The synset name a name or wnid means, its closure stored.

        Raises:
            UsageError: A name or wnid WordNet 3.0 does not have.
        """
        return self._canonical(self._state, name, cache)

    def _canonical(self, state: _State, name: str, cache: str | os.PathLike[str] | None) -> str:
        known = state.aliases.get(name)
        if known is not None:
            return known
        if name in state.closures:
            return name
        with _READER_LOCK:
            wn = self._reader(cache)
            s = _lookup(wn, name)
            if s.name() not in state.closures:
                new: dict[str, Closure] = {}
                if _needs_root(s.pos(), self._version):
                    new[s.name()] = Closure(s.name(), s.pos(), s.offset(), True, 0, 0, {})
                else:
                    for h in s._shortest_hypernym_paths(False):
                        if h.name() not in state.closures:
                            e = _entry(h)
                            new[h.name()] = Closure(h.name(), e["pos"], e["offset"],
                                                    _needs_root(e["pos"], self._version), e["min_depth"],
                                                    e["max_depth"], e["hypernyms"])
                for c in sorted(new.values(), key=lambda c: c.max_depth):
                    state.closures[c.name] = c
            # spellings are many ("dog.n.1", "Dog.n.01"): keep only the wnid, bounded by WordNet's size
            if _is_wnid(name) and name == f"n{s.offset():08d}":
                state.aliases[name] = s.name()
            return s.name()

    def closure(self, name: str, cache: str | os.PathLike[str] | None = None) -> Closure:
        """The closure of the synset a name or wnid means.

        Raises:
            UsageError: A name or wnid WordNet 3.0 does not have.
        """
        state = self._state
        return state.closures[self._canonical(state, name, cache)]

    def wup(self, a: str, b: str, cache: str | os.PathLike[str] | None = None) -> float:
        """:func:`wup` from the closures."""
        state = self._state
        ca, cb = self._canonical(state, a, cache), self._canonical(state, b, cache)
        if ca == cb:
            return 1.0
        first, second = state.closures[ca], state.closures[cb]
        if first.needs_root or second.needs_root:
            return float(self._matrix(state, [ca, cb], cache)[0, 1])
        return _wup_pair(first, second, state.closures)

    def matrix(self, names: Sequence[str], cache: str | os.PathLike[str] | None = None) -> np.ndarray:
        """:func:`wup_matrix` from the closures."""
        state = self._state
        canon = [self._canonical(state, n, cache) for n in names]
        distinct = sorted(set(canon))
        where = {c: i for i, c in enumerate(distinct)}
        index = np.array([where[c] for c in canon], dtype=np.int64)
        return self._matrix(state, distinct, cache)[np.ix_(index, index)]

    def _matrix(self, state: _State, names: list[str], cache: str | os.PathLike[str] | None) -> np.ndarray:
        """Wu-Palmer of distinct synset names whose closures are stored (``out[i, j]``: ``i`` is nltk's self)."""
        closures = [state.closures[n] for n in names]
        out = np.eye(len(names))
        plain = [i for i, c in enumerate(closures) if not c.needs_root]
        if len(plain) > 1:
            out[np.ix_(plain, plain)] = _wup_arrays([closures[i] for i in plain], state.closures)
        rooted = [i for i, c in enumerate(closures) if c.needs_root]
        if rooted:  # nltk adds a fake root for these (verbs, adjectives): its own call, pair by pair
            with _READER_LOCK:
                wn = self._reader(cache)
                objects = [_lookup(wn, n) for n in names]
                for i in rooted:
                    for j in range(len(names)):
                        if i != j:
                            out[i, j] = float(objects[i].wup_similarity(objects[j]) or 0.0)
                            out[j, i] = float(objects[j].wup_similarity(objects[i]) or 0.0)
        return out


def _wup_pair(a: Closure, b: Closure, closures: Mapping[str, Closure]) -> float:
    """nltk's ``a.wup_similarity(b)`` for two distinct noun synsets, step by step (see :func:`_wup_arrays`)."""
    common = a.hypernyms.keys() & b.hypernyms.keys()
    if not common:
        return 0.0
    deepest = max(closures[h].min_depth for h in common)
    lowest = sorted(h for h in common if closures[h].min_depth == deepest)
    subsumer = a.name if a.name in lowest else lowest[0]
    depth = closures[subsumer].max_depth + 1
    above = closures[subsumer].hypernyms  # every one is above a and b too
    len1 = min(a.hypernyms[h] + d for h, d in above.items()) + depth
    len2 = min(b.hypernyms[h] + d for h, d in above.items()) + depth
    return (2.0 * depth) / (len1 + len2)


_NONE = np.iinfo(np.int32).max  # "no common hypernym" while looking for the lowest one
_FAR = 1 << 20  # edges to a synset that is not a hypernym: more than any path, small enough to add


def _wup_arrays(rows: Sequence[Closure], closures: Mapping[str, Closure]) -> np.ndarray:
    """nltk's ``rows[i].wup_similarity(rows[j])`` for every pair of distinct noun synsets, as array operations.

    nltk (``use_min_depth=True``, no fake root): the lowest common hypernyms are the common hypernyms (each
    synset counts as its own) of the largest ``min_depth()``, sorted by name; the subsumer is ``self`` when it
    is one of them, else the first; ``depth = max_depth(subsumer) + 1`` and ``len_k =
    shortest_path_distance(s_k, subsumer) + depth``, where the distance is the fewest edges from both up to a
    common hypernym (in a DAG it can be shorter than the path up to the subsumer itself); the similarity is
    ``2.0 * depth / (len_1 + len_2)``, the same float64 operations as nltk's.

    Here every hypernym of the rows is a column, ordered by ``(-min_depth, name)``: the first lowest common
    hypernym of a pair is the smallest column both rows reach. Hypernyms at the same ``min_depth`` share a
    column range, so the smallest shared column is found level by level, comparing each row's columns at that
    level (one or a few) with every other row's: array operations over pairs, a loop over levels only.
    """
    m = len(rows)
    names = sorted({h for c in rows for h in c.hypernyms}, key=lambda h: (-closures[h].min_depth, h))
    col = {h: k for k, h in enumerate(names)}
    u = len(names)  # column u stands for "none"
    min_depth = np.array([closures[h].min_depth for h in names] + [-1], dtype=np.int64)  # [u + 1]
    max_depth = np.array([closures[h].max_depth for h in names] + [0], dtype=np.int64)  # [u + 1]
    up = _edges_up(rows, col, u)  # [m, u + 1]
    reach = up[:, :u] < _FAR  # [m, u]

    first = _first_common_column(reach, min_depth)  # [m, m], _NONE where the pair shares no hypernym
    common = first != _NONE
    first = np.where(common, first, u)  # [m, m], column u where none
    subsumer = _subsumer_columns(rows, col, up, min_depth, first)  # [m, m]
    to = _edges_to_hypernyms(names, col, closures, up, reach)  # [m, u + 1]

    depth = max_depth[subsumer] + 1  # [m, m]
    len1 = to[np.arange(m)[:, None], subsumer] + depth  # [m, m]
    len2 = to[np.arange(m)[None, :], subsumer] + depth  # [m, m]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (2.0 * depth) / (len1 + len2)
    out[~common] = 0.0  # no common hypernym: nltk's None
    np.fill_diagonal(out, 1.0)
    return out


def _edges_up(rows: Sequence[Closure], col: Mapping[str, int], u: int) -> np.ndarray:
    """``up[r, k]``: edges from ``rows[r]`` up to hypernym column ``k`` (``_FAR`` where it is not one), [m, u + 1]."""
    up = np.full((len(rows), u + 1), _FAR, dtype=np.int64)
    for r, c in enumerate(rows):
        up[r, [col[h] for h in c.hypernyms]] = list(c.hypernyms.values())
    return up


def _first_common_column(reach: np.ndarray, min_depth: np.ndarray) -> np.ndarray:
    """The first lowest common hypernym of each pair: the smallest column both rows reach, level by level.

    ``reach`` is [m, u] (columns ordered by ``(-min_depth, name)``), ``min_depth`` [u + 1]; returns [m, m]
    int32, ``_NONE`` where a pair shares no hypernym.
    """
    m, u = reach.shape
    first = np.full((m, m), _NONE, dtype=np.int32)
    # bounds: the first column of each min_depth level, and u at the end
    bounds = np.flatnonzero(np.diff(min_depth[:u], prepend=min_depth[0] + 1, append=min_depth[u - 1] - 1))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        slots, count = _level_slots(reach[:, lo:hi], lo)
        _merge_level(first, slots, count)
    return first


def _level_slots(level: np.ndarray, lo: int) -> tuple[list[np.ndarray], np.ndarray]:
    """A level's hypernyms per row: ``slots[p][r]`` is the column of the (p+1)-th hypernym of row r at this
    level, or ``_NONE``; ``count[r]`` how many it has. ``level`` is [m, hi - lo], each slot [m]."""
    count = level.sum(axis=1)  # [m]
    slots = []
    seen = np.cumsum(level, axis=1)  # [m, hi - lo]
    for p in range(int(count.max())):
        slots.append(np.where(count > p, lo + np.argmax(seen == p + 1, axis=1), _NONE).astype(np.int32))
    return slots, count


def _merge_level(first: np.ndarray, slots: list[np.ndarray], count: np.ndarray) -> None:
    """Lower ``first`` [m, m] in place to the smallest column of this level that both rows of a pair reach."""
    m = len(count)
    a = slots[0]  # [m]
    np.minimum(first, np.where(a[:, None] == a[None, :], a[:, None], _NONE), out=first)
    for p in range(1, len(slots)):  # rows with several hypernyms at this level: few
        some = np.flatnonzero(count > p)  # [s]
        ap = slots[p][some][:, None]  # [s, 1]
        best = np.full((len(some), m), _NONE, dtype=np.int32)  # [s, m]
        for q in range(len(slots)):
            np.minimum(best, np.where(ap == slots[q][None, :], ap, _NONE), out=best)
        first[some, :] = np.minimum(first[some, :], best)
        first[:, some] = np.minimum(first[:, some], best.T)


def _subsumer_columns(rows: Sequence[Closure], col: Mapping[str, int], up: np.ndarray, min_depth: np.ndarray,
                      first: np.ndarray) -> np.ndarray:
    """The subsumer of each pair, [m, m]: self when it is one of the lowest common hypernyms, else the first."""
    own = np.array([col[c.name] for c in rows])  # [m]
    self_above = up[:, own].T < _FAR  # [m, m], [i, j]: rows[i] is a hypernym of rows[j]
    self_lowest = self_above & (min_depth[own][:, None] == min_depth[first])  # [m, m]
    return np.where(self_lowest, own[:, None], first)


def _edges_to_hypernyms(names: Sequence[str], col: Mapping[str, int], closures: Mapping[str, Closure],
                        up: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """``to[r, k] = shortest_path_distance(rows[r], hypernym k)``, [m, u + 1] (``_FAR`` where not reached):
    the min over hypernyms x of k of ``up[r, x] + d(k, x)``."""
    u = len(names)
    width = max(len(closures[h].hypernyms) for h in names)
    above = np.full((u, width), u, dtype=np.int64)  # [u, width]: hypernym columns of each column (u: padding)
    edges = np.zeros((u, width), dtype=np.int64)  # [u, width]: edges up to each of them
    for k, h in enumerate(names):
        hyp = closures[h].hypernyms
        above[k, :len(hyp)] = [col[x] for x in hyp]
        edges[k, :len(hyp)] = list(hyp.values())
    r_at, k_at = np.nonzero(reach)  # [n] each: the (row, column) pairs a row reaches
    to = np.full((up.shape[0], u + 1), _FAR, dtype=np.int64)
    to[r_at, k_at] = (up[r_at[:, None], above[k_at]] + edges[k_at]).min(axis=1)
    return to


_STORE: ClosureStore | None = None
_STORE_LOCK = threading.Lock()


def closure_store() -> ClosureStore:
    """The process's closure store, started from the shipped table."""
    global _STORE
    if _STORE is None:
        with _STORE_LOCK:
            if _STORE is None:
                table = shipped_closures()
                try:
                    _STORE = ClosureStore(table)
                except (KeyError, TypeError, ValueError, AttributeError, UsageError) as exc:
                    logger.warning("shipped WordNet closures not used (%s): synsets are read from WordNet", exc)
                    _STORE = ClosureStore()
    return _STORE


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
