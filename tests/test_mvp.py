"""The parts of Meta-Vote Pruning: task similarity (Wu-Palmer, LEEP), the vote, the averaged initialisation."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from edgemvp.errors import UsageError
from edgemvp.masks import Masks, random_masks
from edgemvp.mvp.average import Contribution, average_state
from edgemvp.train import batchnorm_statistics_matter, reestimate_batchnorm
from edgemvp.mvp.similarity import Candidates, Hierarchy, Taxonomy, leep, task_similarity, wordnet_similarity
from edgemvp.units import unit_space
from edgemvp.mvp.rank import nearest
from edgemvp.mvp.vote import vote

FASHION = "fashion-mnist"


# --- WordNet / hierarchy ---------------------------------------------------------------------------------
def test_wordnet_ranks_a_task_sharing_four_classes_above_one_sharing_one() -> None:
    target = [(FASHION, c) for c in ("Pullover", "Dress", "Sandal", "Shirt", "Bag")]
    four = (FASHION, ("Pullover", "Dress", "Sandal", "Shirt", "Trouser"))
    one = (FASHION, ("Pullover", "Trouser", "Sneaker", "Ankle boot", "T-shirt/top"))
    none = (FASHION, ("Trouser", "Sneaker", "Ankle boot", "T-shirt/top", "Coat"))
    same = (FASHION, ("Bag", "Shirt", "Sandal", "Dress", "Pullover"))
    sims = wordnet_similarity(target, [one, four, none, same], Taxonomy())
    assert sims[3] == pytest.approx(1.0)  # the same classes in another order
    assert sims[3] > sims[1] > sims[0]
    assert sims[1] > sims[2]
    assert np.argsort(-sims, kind="stable").tolist()[:2] == [3, 1]


def test_task_similarity_is_the_symmetric_average_best_match() -> None:
    # three classes a, b, c with a hand-made class x class matrix
    keys = [("d", "a"), ("d", "b"), ("d", "c")]
    matrix = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4], [0.2, 0.4, 1.0]])
    cands = Candidates.from_tasks([("d", ("b",)), ("d", ("b", "c"))], extra=keys)
    assert cands.keys == tuple(keys)
    sims = task_similarity([("d", "a"), ("d", "b")], cands, matrix)
    # target {a, b} vs {b}: a->b 0.5, b->b 1 => 0.75; b->best of {a, b} = 1 => 1; mean 0.875
    # target {a, b} vs {b, c}: a->max(0.5, 0.2)=0.5, b->1 => 0.75; b->1, c->max(0.2, 0.4)=0.4 => 0.7; mean 0.725
    assert sims == pytest.approx([0.875, 0.725])


def test_user_hierarchy_wu_palmer(tmp_path) -> None:
    path = tmp_path / "tree.yaml"
    path.write_text("root:\n  latin: [A, B]\n  greek:\n    vowels: [alpha]\n    consonants: [beta]\n")
    h = Hierarchy.load(path)
    assert h.depth("root") == 1 and h.depth("alpha") == 4
    assert h.wup("A", "B") == pytest.approx(2 * 2 / (3 + 3))  # lcs latin at depth 2
    assert h.wup("alpha", "beta") == pytest.approx(2 * 2 / (4 + 4))  # lcs greek
    assert h.wup("A", "alpha") == pytest.approx(2 * 1 / (3 + 4))  # lcs root
    tax = Taxonomy(h)
    sims = wordnet_similarity([("x", "A"), ("x", "B")], [("x", ("A", "alpha")), ("x", ("alpha", "beta"))], tax)
    assert sims[0] > sims[1]
    with pytest.raises(UsageError, match="no node"):
        wordnet_similarity([("x", "gamma")], [("x", ("A",))], tax)


@pytest.mark.parametrize("text, message", [("- a\n- a\n", "appears twice"), ("42\n", "non-empty mapping"),
                                           ("{a: [b, {c: [true]}]}\n", "non-empty strings")])
def test_bad_hierarchy_is_one_clear_error(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "h.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        Hierarchy.load(path)


# --- LEEP --------------------------------------------------------------------------------------------------
def test_leep_matches_a_hand_computed_case() -> None:
    theta = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    y = np.array([0, 1, 0, 1])
    n = 4
    # joint P(y, z) = 1/n sum theta_z [y_i = y]
    joint = np.array([[0.7 + 0.6, 0.2 + 0.3, 0.1 + 0.1], [0.1 + 0.2, 0.8 + 0.2, 0.1 + 0.6]]) / n
    cond = joint / joint.sum(axis=0)
    expected = np.mean([math.log(sum(cond[y[i], z] * theta[i, z] for z in range(3))) for i in range(n)])
    assert leep(theta, y) == pytest.approx(expected, abs=1e-12)
    # by hand: P(z) = (0.4, 0.375, 0.225); P(y=0|z) = (0.8125, 1/3, 2/9), P(y=1|z) = (0.1875, 2/3, 7/9);
    # per sample sum_z P(y_i|z) theta_z = 0.657639, 0.629861, 0.609722, 0.6375 -> mean log = -0.45658
    assert leep(theta, y) == pytest.approx(-0.45658, abs=1e-5)


def test_leep_guards_an_empty_source_column_and_prefers_a_predictive_source() -> None:
    y = np.array([0, 0, 1, 1])
    informative = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.2, 0.8, 0.0]])
    uninformative = np.full((4, 3), 1 / 3)
    score = leep(informative, y)
    assert np.isfinite(score)
    assert score > leep(uninformative, y) == pytest.approx(math.log(0.5))


# --- the vote ----------------------------------------------------------------------------------------------
def _group(arch: str, name: str) -> tuple[int, int]:
    start = 0
    for u in unit_space(arch).units:
        if u.name == name:
            return start, u.size
        start += u.size
    raise KeyError(name)


def test_vote_selection_frequencies_follow_softmax_of_votes() -> None:
    """Keeping one unit per group, the unit picked is distributed as softmax(v / tau) (chi-square test)."""
    arch, tau = "resnet18", 0.7
    space = unit_space(arch)
    total = sum(u.size for u in space.units)
    rng = np.random.default_rng(123)
    rows = rng.random((3, total)) < 0.15  # three neighbours
    start, size = _group(arch, "conv1")
    v = rows[:, start:start + size].sum(axis=0)
    ratio = 1 - 1 / size  # conv1 keeps exactly one unit
    draws = 3000
    counts = np.zeros(size, dtype=np.int64)
    for seed in range(draws):
        (k,) = vote(arch, rows, ratio, tau, seed).masks.kept["conv1"]
        counts[k] += 1
    p = np.exp(v / tau) / np.exp(v / tau).sum()
    # pool units by their vote count (units with the same votes are exchangeable)
    levels = sorted(set(v.tolist()))
    observed = np.array([counts[v == lv].sum() for lv in levels])
    expected = np.array([p[v == lv].sum() * draws for lv in levels])
    assert len(levels) >= 3
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # and the most-voted level really is picked more often per unit than the least-voted
    assert counts[v == levels[-1]].mean() > 2 * counts[v == levels[0]].mean()


@pytest.mark.slow  # over 15 s on 2 cores: make test-all
def test_vote_without_replacement_matches_successive_sampling() -> None:
    """Keeping 2 of a group, each unit's inclusion probability is that of sampling without replacement."""
    arch, tau = "vit_tiny", 1.0
    space = unit_space(arch)
    total = sum(u.size for u in space.units)
    rows = np.zeros((3, total), dtype=bool)
    start, size = _group(arch, "blocks.0.attn")  # 3 heads
    rows[:, start] = True  # head 0: 3 votes
    rows[0, start + 1] = True  # head 1: 1 vote, head 2: none
    ratio = 1 / 3  # keeps 2 of 3 heads
    logits = np.array([3.0, 1.0, 0.0]) / tau
    p = np.exp(logits) / np.exp(logits).sum()
    inclusion = np.zeros(size)
    for first, second in itertools.permutations(range(size), 2):
        pr = p[first] * p[second] / (1 - p[first])
        inclusion[[first, second]] += pr
    draws = 4000
    counts = np.zeros(size)
    for seed in range(draws):
        counts[list(vote(arch, rows, ratio, tau, seed).masks.kept["blocks.0.attn"])] += 1
    assert counts.sum() == 2 * draws
    sd = np.sqrt(inclusion * (1 - inclusion) / draws)
    assert np.all(np.abs(counts / draws - inclusion) < 4 * sd + 1e-9)


def test_vote_is_reproducible_and_keeps_the_ratio() -> None:
    arch = "resnet18"
    rows = np.stack([_bits(random_masks(arch, 0.9, s)) for s in range(3)])
    a, b = vote(arch, rows, 0.9, 0.25, seed=7), vote(arch, rows, 0.9, 0.25, seed=7)
    assert a.masks.kept == b.masks.kept
    assert vote(arch, rows, 0.9, 0.25, seed=8).masks.kept != a.masks.kept
    for u in unit_space(arch).units:
        assert len(a.masks.kept[u.name]) == max(1, round(0.1 * u.size))
    # a low temperature keeps (almost only) units some neighbour kept
    cold = vote(arch, rows, 0.9, 0.01, seed=0)
    voted = sum(int((cold.votes[u][list(k)] > 0).sum()) for u, k in cold.masks.kept.items())
    assert voted / sum(len(k) for k in cold.masks.kept.values()) > 0.99


def _bits(masks: Masks) -> np.ndarray:
    return np.concatenate([np.isin(np.arange(u.size), masks.kept[u.name]) for u in unit_space(masks.arch).units])


def test_nearest_and_its_errors() -> None:
    assert nearest(np.array([0.2, 0.9, 0.5, 0.9]), 3).tolist() == [1, 3, 2]
    with pytest.raises(UsageError, match="more than the 2 entries"):
        nearest(np.array([0.1, 0.2]), 3)
    with pytest.raises(UsageError, match="temperature"):
        vote("resnet18", np.ones((1, 10), bool), 0.9, 0.0)
    with pytest.raises(UsageError, match="vote needs"):
        vote("resnet18", np.ones((1, 10), bool), 0.9, 1.0)


# --- averaging ---------------------------------------------------------------------------------------------
def test_average_state_matches_a_hand_computed_case_with_base_fallback() -> None:
    base = {"w": torch.tensor([[10.0, 20.0], [30.0, 40.0]]), "fc.weight": torch.tensor([[1.0, 1.0], [2.0, 2.0],
                                                                                         [3.0, 3.0]]),
            "n": torch.tensor(7)}
    n1 = Contribution({"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "fc.weight": torch.tensor([[5.0, 6.0], [7.0, 8.0]]),
                       "n": torch.tensor(0)},
                      {"w": torch.tensor([[True, True], [False, False]]),
                       "fc.weight": torch.tensor([[True, False], [True, True]]), "n": torch.tensor(True)},
                      rows={0: 1})  # its row 1 is the target's class 0
    n2 = Contribution({"w": torch.tensor([[5.0, 0.0], [0.0, 0.0]]), "fc.weight": torch.tensor([[9.0, 9.0]]),
                       "n": torch.tensor(0)},
                      {"w": torch.tensor([[True, False], [False, False]]), "fc.weight": torch.tensor([[True, True]]),
                       "n": torch.tensor(True)},
                      rows={0: 0, 2: 0})
    out = average_state(base, [n1, n2], head_keys=["fc.weight"])
    # w: (1+5)/2, 2 (only n1), base 30 and 40 (nobody has row 1)
    assert out["w"].tolist() == [[3.0, 2.0], [30.0, 40.0]]
    # head row 0 (class 0): n1's row 1 [7, 8] and n2's row 0 [9, 9] => [8, 8.5]
    # head row 1: nobody has that class => base row [2, 2]; row 2: n2's row 0 => [9, 9]
    assert out["fc.weight"].tolist() == [[8.0, 8.5], [2.0, 2.0], [9.0, 9.0]]
    assert int(out["n"]) == 7  # integer buffers keep the base's value


def test_averaged_init_through_expand_uses_neighbours_and_base(tiny_bases) -> None:
    """On a real resnet18: elements both neighbours kept are their mean, elements neither kept are the base's."""
    from edgemvp.models.base import load_base
    from edgemvp.mvp.average import averaged_model, classifier_keys, neighbour_contribution
    from edgemvp.shrink import contract_state, expand_state
    from edgemvp.zoo import ZooStore
    from tests.helpers import make_entry

    base, manifest = load_base("resnet18", "digits", tiny_bases)
    with ZooStore.open(tiny_bases / "zoo-avg", create=True) as store:
        ids = [store.put(*make_entry(seed=s, classes=c, ratio=0.5, base_sha256=manifest.weights_sha256))
               for s, c in ((1, ("0", "1", "2")), (2, ("2", "3", "4")))]
        entries = [store.get(i) for i in ids]
    target = ("2", "9")
    shapes = {k: v.shape for k, v in base.state_dict().items()}
    shapes.update({k: torch.Size((2,) + tuple(shapes[k][1:])) for k in classifier_keys(base)})
    c1, c2 = (neighbour_contribution(e, shapes, classifier_keys(base), "digits", target) for e in entries)
    assert dict(c1.rows) == {0: 2} and dict(c2.rows) == {0: 0}  # class "2" by identity; "9" in neither
    masks = random_masks("resnet18", 0.5, 3)
    model = averaged_model(base, manifest.classes, "digits", "resnet18", manifest.input_spec, masks, entries,
                           "digits", target, seed=0)
    got = expand_state(model.state_dict(), masks, shapes)[0]
    key = "layer1.0.conv1.weight"
    both = c1.present[key] & c2.present[key] & expand_state(contract_state({key: torch.ones(shapes[key])}, masks),
                                                            masks, {key: shapes[key]})[1][key]
    neither = ~(c1.present[key] | c2.present[key]) & expand_state(
        contract_state({key: torch.ones(shapes[key])}, masks), masks, {key: shapes[key]})[1][key]
    assert both.any() and neither.any()
    mean = (c1.state[key] + c2.state[key]) / 2
    assert torch.allclose(got[key][both], mean[both], atol=1e-6)
    assert torch.equal(got[key][neither], base.state_dict()[key][neither])
    # classifier row of "9": no neighbour has it => the base's row for "9" (cut to the kept inputs)
    fc = manifest.classes.index("9")
    head_w = got["fc.weight"][1]
    kept_in = masks.index(_last_unit(masks))
    assert torch.allclose(head_w[kept_in], base.state_dict()["fc.weight"][fc][kept_in])
    # averaging only the kept elements gives exactly what averaging the full layout and contracting gives
    from edgemvp.mvp.average import average_state, target_model
    full = target_model(base, manifest.classes, "digits", "digits", target, seed=0).state_dict()
    reference = contract_state(average_state(full, [c1, c2], classifier_keys(base)), masks)
    state = model.state_dict()
    assert set(state) == set(reference) and all(torch.equal(state[k], reference[k]) for k in reference)


def _last_unit(masks: Masks) -> str:
    space = unit_space(masks.arch)
    return next(c.unit for c in space.cuts if c.key == "fc.weight")


def test_batchnorm_reestimation_changes_only_statistics() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    model[1].running_mean.fill_(5.0)
    params = {k: v.clone() for k, v in model.named_parameters()}
    data = [(torch.randn(8, 1, 6, 6) * 2 + 1, torch.zeros(8)) for _ in range(4)]
    assert reestimate_batchnorm(model, iter(data), 4) == 1
    assert not model.training and model[1].momentum == 0.1
    with torch.no_grad():
        acts = torch.cat([model[0](x) for x, _ in data])
    assert torch.allclose(model[1].running_mean, acts.mean(dim=(0, 2, 3)), atol=1e-5)
    assert all(torch.equal(params[k], v) for k, v in model.named_parameters())


def test_batchnorm_statistics_matter_until_momentum_has_replaced_them() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    assert batchnorm_statistics_matter(model, 65) and not batchnorm_statistics_matter(model, 66)  # 0.9^66 < 1e-3
    model[1].momentum = 0.01
    assert batchnorm_statistics_matter(model, 66) and not batchnorm_statistics_matter(model, 700)
    model[1].momentum = None  # cumulative average: the starting statistics always count
    assert batchnorm_statistics_matter(model, 10_000)
    assert not batchnorm_statistics_matter(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)), 1)
