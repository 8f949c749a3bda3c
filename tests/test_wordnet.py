"""WordNet offline: layout for nltk, Wu-Palmer, and the shipped class → synset maps."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgemvp.data.datasets import FASHION_MNIST_CLASSES
from edgemvp.data.wordnet import install_wordnet, lexnames_text, synset, synset_map, wup
from edgemvp.errors import UsageError


def test_wu_palmer_dog_cat() -> None:
    assert wup("dog.n.01", "cat.n.01") == pytest.approx(0.857, abs=1e-3)
    assert wup("dog.n.01", "dog.n.01") == 1.0
    assert wup("dog.n.01", "cat.n.01") > wup("dog.n.01", "sandal.n.01")


def test_imagenet_wnid_resolves_to_synset() -> None:
    assert synset("n02084071").name() == "dog.n.01"
    with pytest.raises(UsageError, match="unknown WordNet synset"):
        synset("dogg.n.01")


@pytest.mark.parametrize("wnid", ["n00000000", "n99999999", "n00001741"])
def test_unknown_wnid_is_a_usage_error(wnid: str) -> None:
    """nltk returns None for an offset where no noun starts (0: the licence, 1741: inside entity.n.01's line)."""
    with pytest.raises(UsageError, match=f"unknown WordNet synset '{wnid}'"):
        synset(wnid)
    with pytest.raises(UsageError, match=f"unknown WordNet synset '{wnid}'"):
        wup(wnid, "n00000000" if wnid != "n00000000" else "n99999999")


def test_lexnames_matches_wordnet_3() -> None:
    lines = lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"


def test_install_needs_the_database_files(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data.noun").write_text("")
    with pytest.raises(UsageError, match="index.noun"):
        install_wordnet(tmp_path / "nltk", tmp_path / "src")


def test_install_copies_and_adds_lexnames(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("data.noun", "index.noun", "index.sense"):
        (src / name).write_text(name)
    target = install_wordnet(tmp_path / "nltk", src)
    assert target == tmp_path / "nltk" / "corpora" / "wordnet"
    assert (target / "data.noun").read_text() == "data.noun" and not (target / "data.noun").is_symlink()
    assert (target / "lexnames").read_text() == lexnames_text()
    install_wordnet(tmp_path / "nltk", src)  # idempotent


@pytest.mark.parametrize("dataset", ["fashion-mnist", "oxford-pets", "cifar-100", "flowers-102"])
def test_shipped_synset_maps_resolve(dataset: str) -> None:
    mapping = synset_map(dataset)
    assert mapping, f"no synset map shipped for {dataset}"
    for cls, name in mapping.items():
        assert synset(name).pos() == "n", (cls, name)


def test_fashion_map_covers_every_class_and_ranks_sensibly() -> None:
    mapping = synset_map("fashion-mnist")
    assert tuple(mapping) == FASHION_MNIST_CLASSES
    assert wup(mapping["Sneaker"], mapping["Sandal"]) > wup(mapping["Sneaker"], mapping["Dress"])


@pytest.mark.parametrize("shipped", [True, False])
def test_concurrent_lookups_read_correct_lines(shipped: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """nltk's reader shares file handles; the zoo server ranks in many threads at once (found by its load test).

    With the shipped closures no thread reads WordNet; without them every thread's first synsets are read from
    nltk (under the reader lock) while others compute from what is stored.
    """
    from concurrent.futures import ThreadPoolExecutor

    from edgemvp.data import wordnet as module

    names = list(synset_map("cifar-100").values())
    pairs = [(a, b) for a in names[:30] for b in names[30:60]]
    expected = [wup(a, b) for a, b in pairs]
    monkeypatch.setattr(module, "_STORE", None)
    if not shipped:
        monkeypatch.setattr(module, "shipped_closures", lambda: None)
    with ThreadPoolExecutor(16) as pool:
        parallel = list(pool.map(lambda p: wup(*p), pairs))
    assert parallel == expected
