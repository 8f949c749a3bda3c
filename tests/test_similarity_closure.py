"""Wu-Palmer from synset closures: bit for bit nltk's pairwise values, no WordNet reader for the shipped classes,
one clear error for unknown synsets, and task ranking in bounded memory."""
from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from edgemvp.data import wordnet as wordnet_module
from edgemvp.data.wordnet import synset_map
from edgemvp.errors import UsageError
from edgemvp.mvp.similarity import Candidates, Taxonomy, task_similarity

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("fashion-mnist", "oxford-pets", "flowers-102", "cifar-100")
# pairs nltk treats specially, found by search over WordNet: several lowest common hypernyms, the second synset
# a subsumer the first is not (so wup(a, b) != wup(b, a): beverage/substance), instance hypernyms
# (bernoulli -> physicist), a shortest path to the subsumer that bypasses it (ability/antibody), one synset
# by name, wnid and another lemma (dog)
TRICKY = ("agent.n.03", "drug.n.01", "medicine.n.02", "antihypertensive.n.01", "administrator.n.01", "head.n.04",
          "ability.n.02", "antibody.n.01", "macromolecule.n.01", "nucleic_acid.n.01", "abnormality.n.01",
          "substance.n.01", "beverage.n.01", "bernoulli.n.01", "physicist.n.01", "butcher.n.03",
          "skilled_worker.n.01", "dog.n.01", "n02084071", "domestic_dog.n.01", "canine.n.02", "animal.n.01",
          "entity.n.01")
NON_NOUNS = ("run.v.01", "walk.v.01", "travel.v.01", "good.a.01", "quickly.r.01")


@pytest.fixture(scope="module")
def reader():
    return wordnet_module.wordnet()


@pytest.fixture
def fast_nltk(reader, monkeypatch):
    """nltk's own ``wup_similarity``, without costs that do not change what it returns: ``_needs_root()`` reads the
    version from a file on every call, and ``_shortest_hypernym_paths``, ``min_depth`` and ``max_depth`` are redone
    on every call (nltk's memo of the depths looks in ``__dict__`` for a slot); here they are memoised (paths
    handed out as copies, so a caller that adds to one changes nothing)."""
    from nltk.corpus.reader.wordnet import Synset

    version = reader.get_version()
    monkeypatch.setattr(reader, "get_version", lambda: version)

    def memoised(original, copy=lambda value: value):
        memo: dict = {}

        def method(self, *args):
            key = (self._name, *args)
            if key not in memo:
                memo[key] = original(self, *args)
            return copy(memo[key])
        return method

    monkeypatch.setattr(Synset, "_shortest_hypernym_paths", memoised(Synset._shortest_hypernym_paths, dict))
    for name in ("min_depth", "max_depth"):
        original = getattr(Synset, name)
        monkeypatch.setattr(Synset, name, memoised(lambda self, _visited=None, f=original: f(self)))
    return reader


def nltk_synset(wn, name: str):
    """The synset as the pairwise code looked it up."""
    if len(name) == 9 and name[0] == "n" and name[1:].isdigit():
        return wn.synset_from_pos_and_offset("n", int(name[1:]))
    return wn.synset(name)


def nltk_wup(wn, a: str, b: str) -> float:
    """The pairwise ``edgemvp.data.wordnet.wup`` this replaces: nltk's call, 1.0 for the same synset."""
    sa, sb = nltk_synset(wn, a), nltk_synset(wn, b)
    return 1.0 if sa == sb else float(sa.wup_similarity(sb) or 0.0)


def pairwise_class_matrix(wn, taxonomy: Taxonomy, keys) -> np.ndarray:
    """``Taxonomy.class_matrix`` as the pairwise loop computed it (``wup(a, b)`` with ``a <= b``)."""
    nodes = [taxonomy.node(k) for k in keys]
    n = len(keys)
    out = np.eye(n)
    cache: dict = {}
    for i in range(n):
        for j in range(i + 1, n):
            a, b = nodes[i], nodes[j]
            if keys[i] == keys[j]:
                v = 1.0
            elif a is None or b is None:
                v = 0.0
            else:
                pair = (a, b) if a <= b else (b, a)
                if pair not in cache:
                    cache[pair] = nltk_wup(wn, *pair)
                v = cache[pair]
            out[i, j] = out[j, i] = v
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float64 and a.shape == b.shape and a.tobytes() == b.tobytes()


def no_table(monkeypatch) -> None:
    """A fresh closure store with nothing shipped: every closure is read from nltk."""
    monkeypatch.setattr(wordnet_module, "_STORE", None, raising=False)
    monkeypatch.setattr(wordnet_module, "shipped_closures", lambda: None, raising=False)


def refuse_reader(*_args, **_kwargs):
    raise AssertionError("the WordNet reader was loaded")


def refuse_pairwise(*_args, **_kwargs):
    raise AssertionError("nltk's wup_similarity was called for a pair of nouns")


def random_nouns(wn, count: int, seed: int) -> list[str]:
    """A seeded sample of noun synsets: every other one as a wnid, the rest by name."""
    offsets = []
    with open(Path(wn.root) / "data.noun", "rb") as f:
        for line in f:
            if line[:1].isdigit():
                offsets.append(int(line[:8]))
    picked = sorted(random.Random(seed).sample(offsets, count))
    return [f"n{o:08d}" if i % 2 == 0 else wn.synset_from_pos_and_offset("n", o).name()
            for i, o in enumerate(picked)]


def test_shipped_classes_bit_for_bit_without_the_reader(fast_nltk, monkeypatch) -> None:
    """All four datasets' classes together (230 synsets): the pairwise nltk values, and the reader never loaded."""
    keys = [(d, c) for d in DATASETS for c in synset_map(d)]
    expected = pairwise_class_matrix(fast_nltk, Taxonomy(), keys)
    monkeypatch.setattr(wordnet_module, "_STORE", None, raising=False)  # a fresh one, from the shipped table
    monkeypatch.setattr(wordnet_module, "_wordnet_for", refuse_reader)
    got = Taxonomy().class_matrix(keys)
    assert same_bits(got, expected)
    assert wordnet_module.wup("dog.n.01", "cat.n.01") == nltk_wup(fast_nltk, "dog.n.01", "cat.n.01")


def test_random_nouns_bit_for_bit_from_nltk_closures(fast_nltk, monkeypatch) -> None:
    """200 seeded random nouns, closures read from nltk (nothing shipped), with no pairwise nltk call."""
    from nltk.corpus.reader.wordnet import Synset

    names = random_nouns(fast_nltk, 200, seed=3)
    keys = [("sample", f"c{i}") for i in range(len(names))]
    taxonomy = Taxonomy(synsets=dict(zip(keys, names)))
    expected = pairwise_class_matrix(fast_nltk, taxonomy, keys)
    no_table(monkeypatch)
    monkeypatch.setattr(Synset, "wup_similarity", refuse_pairwise)
    got = taxonomy.class_matrix(keys)
    assert same_bits(got, expected)


def test_both_orders_special_cases_and_non_nouns(fast_nltk, monkeypatch) -> None:
    """Every ordered pair, nouns nltk treats specially and synsets nltk gives a fake root (left to nltk)."""
    no_table(monkeypatch)
    names = list(TRICKY + NON_NOUNS)
    expected = np.array([[nltk_wup(fast_nltk, a, b) for b in names] for a in names])
    keys = [("t", name) for name in names]
    taxonomy = Taxonomy(synsets={k: k[1] for k in keys})
    assert same_bits(taxonomy.class_matrix(keys), pairwise_class_matrix(fast_nltk, taxonomy, keys))
    got = wordnet_module.wup_matrix(names)
    assert same_bits(got, expected)
    assert same_bits(np.array([[wordnet_module.wup(a, b) for b in names] for a in names]), expected)
    nouns = len(TRICKY)
    assert not np.array_equal(expected[:nouns, :nouns], expected[:nouns, :nouns].T), "no asymmetric pair left"
    shortcut = False
    for a in TRICKY:
        for b in TRICKY:
            sa, sb = nltk_synset(fast_nltk, a), nltk_synset(fast_nltk, b)
            subsumers = sa.lowest_common_hypernyms(sb, use_min_depth=True)
            sub = sa if sa in subsumers else subsumers[0]
            shortcut |= sa.shortest_path_distance(sub) < sa._shortest_hypernym_paths(False)[sub]
    assert shortcut, "no pair whose shortest path to the subsumer bypasses it"
    assert wordnet_module.wup("run.v.01", "walk.v.01") == nltk_wup(fast_nltk, "run.v.01", "walk.v.01")


def test_shipped_table_is_what_the_script_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_wordnet_closure", ROOT / "scripts" / "make_wordnet_closure.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text, count = script.table_text()
    shipped = ROOT / "edgemvp" / "data" / "synsets" / wordnet_module.CLOSURE_FILE
    assert shipped.read_text() == text, "run scripts/make_wordnet_closure.py"
    table = wordnet_module.shipped_closures()
    assert table is not None and table["wordnet_version"] == "3.0" and len(table["synsets"]) == count
    names = {n for d in DATASETS for n in synset_map(d).values()}
    assert all(table["aliases"].get(n, n) in table["synsets"] for n in names)
    assert synset_map(Path(wordnet_module.CLOSURE_FILE).stem) == {}  # never read as a dataset's class map


def test_common_path_does_not_import_nltk() -> None:
    code = ("import sys\n"
            "from edgemvp.data.wordnet import synset_map, wup\n"
            "from edgemvp.mvp.similarity import Taxonomy, wordnet_similarity\n"
            "keys = [(d, c) for d in ('fashion-mnist', 'oxford-pets', 'flowers-102', 'cifar-100')\n"
            "        for c in synset_map(d)]\n"
            "assert Taxonomy().class_matrix(keys).shape == (len(keys), len(keys))\n"
            "tasks = [('cifar-100', ('apple', 'bear', 'bed')), ('oxford-pets', ('Beagle', 'Pug'))]\n"
            "assert wordnet_similarity(keys[:5], tasks, Taxonomy()).shape == (2,)\n"
            "assert wup('dog.n.01', 'n02121808') > 0.8\n"  # n02121808: domestic_cat.n.01
            "assert 'nltk' not in sys.modules, 'nltk was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("a, b, unknown", [
    ("n00000000", "n99999999", "n00000000"),
    ("dog.n.01", "n99999999", "n99999999"),
    ("n00001741", "dog.n.01", "n00001741"),  # an offset inside entity.n.01's line, not at its start
    ("dogg.n.01", "dog.n.01", "dogg.n.01"),
    ("dog.n.00", "dog.n.01", "dog.n.00"),  # nltk alone reads sense 0 as the last sense (-1)
])
def test_unknown_synsets_are_one_usage_error(a: str, b: str, unknown: str, recwarn) -> None:
    message = f"unknown WordNet synset '{unknown}'"
    with pytest.raises(UsageError) as caught:
        wordnet_module.wup(a, b)
    assert str(caught.value) == message
    with pytest.raises(UsageError, match="unknown WordNet synset"):
        wordnet_module.synset(unknown)
    with pytest.raises(UsageError, match="unknown WordNet synset"):
        wordnet_module.closure_store().closure(unknown)
    taxonomy = Taxonomy(synsets={("t", "x"): a, ("t", "y"): b})
    with pytest.raises(UsageError, match="unknown WordNet synset"):
        taxonomy.class_matrix([("t", "x"), ("t", "y")])
    assert not [w for w in recwarn if "WordNet" in str(w.message)], "nltk's warning leaked"


def test_cli_unknown_synsets_one_line_exit_2(reader, monkeypatch, capsys) -> None:
    from edgemvp.cli import main

    # without --cache-dir (EDGEMVP_CACHE) the command uses the reader already loaded here, not a second one
    monkeypatch.delenv("EDGEMVP_CACHE")
    monkeypatch.setattr(sys, "argv", ["edgemvp", "wordnet", "similarity", "n00000000", "n99999999"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert len(err) == 1 and err[0] == "error: unknown WordNet synset 'n00000000'", err


def unchunked_task_similarity(target, candidates: Candidates, matrix: np.ndarray) -> np.ndarray:
    """The one-shot formula (a ``(tasks, target classes, vocabulary)`` temporary)."""
    pos = {k: i for i, k in enumerate(candidates.keys)}
    rows = matrix[[pos[k] for k in target]]
    member = candidates.member
    ab = np.where(member[:, None, :], rows[None, :, :], -np.inf).max(axis=2).mean(axis=1)
    best = rows.max(axis=0)
    ba = (member @ best) / member.sum(axis=1)
    return 0.5 * (ab + ba)


def synthetic_zoo(tasks: int, vocabulary: int, sizes: tuple[int, int], target_size: int, seed: int):
    rng = np.random.default_rng(seed)
    keys = tuple(("zoo", f"c{i}") for i in range(vocabulary))
    member = np.zeros((tasks, vocabulary), dtype=bool)
    for t in range(tasks):
        member[t, rng.choice(vocabulary, rng.integers(sizes[0], sizes[1] + 1), replace=False)] = True
    sim = rng.random((vocabulary, vocabulary))
    matrix = np.triu(sim, 1) + np.triu(sim, 1).T + np.eye(vocabulary)
    target = [keys[i] for i in rng.choice(vocabulary, target_size, replace=False)]
    return target, Candidates(keys, member), matrix


def test_task_similarity_large_zoo_bounded_memory() -> None:
    """20,000 tasks of 5 classes from 1,000: the one-shot values, in a small part of its memory."""
    target, candidates, matrix = synthetic_zoo(20_000, 1_000, (5, 5), 5, seed=0)
    tracemalloc.start()
    try:
        got = task_similarity(target, candidates, matrix)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_shot = 20_000 * 5 * 1_000 * 8  # the (tasks, target classes, vocabulary) float64 temporary alone: 800 MB
    assert peak < 80 * 2**20 and peak < one_shot / 10, f"peak {peak / 2**20:.0f} MiB"
    # slices start at multiples of 64 tasks: BLAS sums rows in groups of 4 from the start of each call
    for start in (0, 9_984, 19_456):
        part = Candidates(candidates.keys, candidates.member[start:start + 544])
        assert same_bits(got[start:start + 544], unchunked_task_similarity(target, part, matrix))


def test_task_similarity_chunks_do_not_change_values(monkeypatch) -> None:
    """Tasks of 1-12 classes, a 20-class target (a mean of more than 8 terms): any chunk size, the same bits."""
    import edgemvp.mvp.similarity as similarity

    target, candidates, matrix = synthetic_zoo(3_000, 400, (1, 12), 20, seed=1)
    expected = unchunked_task_similarity(target, candidates, matrix)
    for budget in (similarity.CHUNK_ELEMENTS, 100_000, 5_000, 1):
        monkeypatch.setattr(similarity, "CHUNK_ELEMENTS", budget)
        assert same_bits(task_similarity(target, candidates, matrix), expected), budget
    deduped = Candidates.from_tasks([("zoo", ("c1", "c2")), ("zoo", ("c1", "c2")), ("zoo", ("c3",))])
    assert deduped.member.shape == (3, 3) and (deduped.member[0] == deduped.member[1]).all()
