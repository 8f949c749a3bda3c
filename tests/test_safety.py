"""Nothing lost, nothing let in: each test names the gap it closes (issue "Nothing lost, nothing let in").

Everything here is fast: no training. Zoo entries are random (``tests.helpers.make_entry``), bases are random
models saved as cached bases, and the CLI runs in process through :func:`edgemvp.cli.main`.
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import sqlite3
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgemvp.cli import main
from edgemvp.errors import EdgeMVPError, UsageError
from edgemvp.models.weights import sha256_bytes, weights_bytes
from edgemvp.runs import RUN_FORMAT, check_out, is_run_folder
from edgemvp.zoo import CorruptEntry, EntryManifest, ZooStore
from edgemvp.zoo.store import INDEX, MARKER, WEIGHTS, bundle_bytes, read_bundle, repair_index
from tests.helpers import make_entry


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``edgemvp ARGS`` in this process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["edgemvp", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    return code, err


def one_line_error(code: int, err: str, expected: int = 2) -> str:
    """Assert the CLI's contract for bad input: one ``error:`` line, no traceback, not 'unexpected'."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expected, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "unexpected" not in err and "Traceback" not in err
    return lines[0]


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_bytes(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def zoo_with(tmp_path: Path, n: int = 2) -> tuple[Path, list[str]]:
    root = tmp_path / "zoo"
    with ZooStore.open(root, create=True) as store:
        ids = [store.put(*make_entry(seed=i + 1, classes=("0", "1", str(i + 2)))) for i in range(n)]
    return root, ids


# --- A. never lose or overwrite what edgemvp did not write ------------------------------------------------------
def test_out_refuses_folders_edgemvp_did_not_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "models"
    (mine / "sub").mkdir(parents=True)
    (mine / "precious.onnx").write_bytes(b"user data")
    zoo, _ = zoo_with(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    before = tree_hash(tmp_path)
    for out, reason in ((mine, "holds files edgemvp did not write"), (zoo, "inside the zoo"),
                        (zoo / "objects" / "new", "inside the zoo"), (Path("."), "current folder"),
                        (tmp_path.parent, "current folder"), ("", "must name a folder"),
                        (blocker, "not a folder"), (blocker / "x", "cannot create its parent"),
                        (Path("/proc/edgemvp-run"), "cannot create|cannot write")):
        with pytest.raises(UsageError, match=reason):
            check_out(out)
    assert tree_hash(tmp_path) == before


def test_out_accepts_new_empty_and_earlier_run_folders(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.json").write_text(json.dumps({"format": RUN_FORMAT, "task": "t"}))
    (run_dir / "model.onnx").write_bytes(b"onnx")
    assert is_run_folder(run_dir) and check_out(run_dir) == run_dir
    legacy = tmp_path / "legacy"  # reports of earlier versions have no format field
    legacy.mkdir()
    (legacy / "report.json").write_text(json.dumps({k: 1 for k in ("schema_version", "task", "method", "latency",
                                                                   "files")}))
    assert is_run_folder(legacy)
    (run_dir / "notes.txt").write_text("mine")  # a user's file in a run folder makes it the user's
    assert not is_run_folder(run_dir)
    (tmp_path / "empty").mkdir()
    assert check_out(tmp_path / "empty") == tmp_path / "empty" and check_out(tmp_path / "new" / "x")


def test_prune_refuses_a_user_folder_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("keep me")
    # the zoo does not even exist: the folder check comes first, so nothing is built, read or touched
    code, err = run_cli(monkeypatch, capsys, "--cache-dir", str(tmp_path / "cache"), "prune", "--dataset", "digits",
                        "--classes", "0,1,2", "--device", "host", "--zoo", str(tmp_path / "nozoo"), "--out", str(home))
    assert "holds files edgemvp did not write" in one_line_error(code, err)
    assert (home / ".bashrc").read_text() == "keep me" and sorted(p.name for p in home.iterdir()) == [".bashrc"]


def test_zoo_export_never_writes_into_a_zoo_or_over_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    zoo, ids = zoo_with(tmp_path)
    before = tree_hash(zoo)
    weights = next((zoo / "objects").glob(f"??/{ids[0]}")) / WEIGHTS
    for target in (zoo / MARKER, weights, zoo / "bundle.tar", zoo / "objects" / "x.tar"):
        code, err = run_cli(monkeypatch, capsys, "zoo", "export", str(target), "--zoo", str(zoo))
        assert "inside the zoo" in one_line_error(code, err)
    assert tree_hash(zoo) == before
    mine = tmp_path / "mine.tar"
    mine.write_bytes(b"not yours")
    code, err = run_cli(monkeypatch, capsys, "zoo", "export", str(mine), "--zoo", str(zoo))
    assert "pass --force" in one_line_error(code, err) and mine.read_bytes() == b"not yours"
    code, err = run_cli(monkeypatch, capsys, "zoo", "export", str(mine), "--zoo", str(zoo), "--force")
    assert code == 0 and len(read_bundle(mine)) == 2


def test_calibrated_profile_name_cannot_leave_the_cache(tmp_path: Path) -> None:
    from edgemvp.deploy.devices import parse_profile, profile_file
    from tests.deploy_helpers import profile_data

    for name in ("../../evil", "a/b", "/etc/x", "", "UPPER", "x" * 65):
        with pytest.raises(UsageError, match="name"):
            parse_profile(profile_data("host", name=name), "p.yaml")
        with pytest.raises(UsageError, match="plain name|outside"):
            profile_file(tmp_path, name)
    assert profile_file(tmp_path, "my-board.v2") == (tmp_path / "my-board.v2.yaml").resolve()


# --- B. never store poison -------------------------------------------------------------------------------------
@pytest.mark.parametrize("option,value", [("--lr", "nan"), ("--lr", "inf"), ("--lr", "-0.1"), ("--ratio", "nan"),
                                          ("--ratio", "1"), ("--iters", "1e3"), ("--seed", "-1"),
                                          ("--prune-fraction", "nan"), ("--threads", "0"), ("--tasks", "10" * 20)])
def test_zoo_build_refuses_bad_numbers_before_work(option: str, value: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    code, err = run_cli(monkeypatch, capsys, "--cache-dir", str(tmp_path), "zoo", "build", option, value)
    assert option in one_line_error(code, err)
    assert not (tmp_path / "zoos").exists()


def test_configs_refuse_non_finite_numbers() -> None:
    from edgemvp.pretrain import PretrainConfig
    from edgemvp.pruners import PruneConfig
    from edgemvp.train import OptimConfig
    from tests.helpers import make_entry as _  # noqa: F401  (keeps the import style of the suite)

    for make in (lambda: PruneConfig(lr=math.nan), lambda: PruneConfig(ratio=math.nan),
                 lambda: PruneConfig(prune_fraction=math.inf), lambda: OptimConfig(lr=math.nan),
                 lambda: OptimConfig(lr=math.inf), lambda: PretrainConfig(epochs=math.inf),
                 lambda: PretrainConfig(seed=-1)):
        with pytest.raises(UsageError, match="must be"):
            make()


def test_store_and_cache_refuse_non_finite_weights(tmp_path: Path) -> None:
    from edgemvp.models.base import BaseManifest, save_base
    from edgemvp.models.factory import create_model
    from edgemvp.spec import InputSpec

    manifest, weights = make_entry(seed=1)
    state = {k: v.clone() for k, v in __import__("safetensors.torch", fromlist=["load"]).load(weights).items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name][0] = float("nan")
    poisoned = weights_bytes(state, json.loads(weights[8:8 + int.from_bytes(weights[:8], "little")])["__metadata__"])
    bad = EntryManifest(**{**manifest.__dict__, "weights_sha256": sha256_bytes(poisoned)})
    with ZooStore.open(tmp_path / "zoo", create=True) as store:
        with pytest.raises(EdgeMVPError, match="NaN or infinity"):
            store.put(bad, poisoned)
        assert len(store) == 0 and not list((tmp_path / "zoo").glob("objects/??/*"))
    spec = InputSpec(1, 16, (0.5,), (0.25,))
    model = create_model("resnet18", 3, spec)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("inf")
    with pytest.raises(EdgeMVPError, match="NaN or infinity"):
        save_base(model, BaseManifest("resnet18", "digits", spec, ("0", "1", "2"), 10.0, ""), tmp_path / "base")
    assert not (tmp_path / "base").exists()


def _bundle(items: list[tuple[bytes, bytes]], path: Path) -> Path:
    path.write_bytes(bundle_bytes(items))
    return path


def test_zoo_import_validates_every_entry_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    good_m, good_w = make_entry(seed=1)
    # another entry's weights (a 5-class model) under this 3-class entry's manifest and masks
    other_m, other_w = make_entry(seed=2, classes=("0", "1", "2", "3", "4"))
    swapped = EntryManifest(**{**good_m.__dict__, "weights_sha256": sha256_bytes(other_w)})
    nan_state = __import__("safetensors.torch", fromlist=["load"]).load(good_w)
    key = next(k for k, v in nan_state.items() if v.is_floating_point())
    nan_state[key] = torch.full_like(nan_state[key], float("nan"))
    header = json.loads(good_w[8:8 + int.from_bytes(good_w[:8], "little")])["__metadata__"]
    nan_w = weights_bytes(nan_state, header)
    poisoned = EntryManifest(**{**good_m.__dict__, "job_key": "nan", "weights_sha256": sha256_bytes(nan_w)})
    for name, entry, why in (("swap", (swapped.to_bytes(), other_w), "made for another model|do not fit|size"),
                             ("nan", (poisoned.to_bytes(), nan_w), "NaN or infinity")):
        bundle = _bundle([(good_m.to_bytes(), good_w), entry], tmp_path / f"{name}.tar")
        code, err = run_cli(monkeypatch, capsys, "--cache-dir", str(tmp_path / "c"), "zoo", "import", str(bundle),
                            "--zoo", str(tmp_path / name))
        line = one_line_error(code, err)
        assert __import__("re").search(why, line), line
        assert not (tmp_path / name).exists()  # not even the good first entry, not even the folder


def test_damaged_index_rows_are_found_repaired_and_refused_by_a_prune(tmp_path: Path, monkeypatch,
                                                                     capsys) -> None:
    zoo, ids = zoo_with(tmp_path, 3)
    db = sqlite3.connect(zoo / INDEX)
    n_bytes = len(db.execute("SELECT mask_bits FROM entries WHERE id=?", (ids[1],)).fetchone()[0])
    db.execute("UPDATE entries SET mask_bits=? WHERE id=?", (bytes(n_bytes), ids[1]))
    db.execute("UPDATE entries SET classes=? WHERE id=?", (json.dumps(["9", "8", "7"]), ids[2]))
    db.commit()
    db.close()
    code, err = run_cli(monkeypatch, capsys, "zoo", "verify", "--zoo", str(zoo))
    assert code == 1 and err.count("index row differs from its manifest") == 2 and "mask_bits" in err
    with ZooStore.open(zoo) as store, pytest.raises(CorruptEntry, match="mask_bits.*--repair"):
        store.check_row(store.get(ids[1]))
    report = repair_index(zoo)
    assert report.repaired == 2 and report.checked == 3
    with ZooStore.open(zoo) as store:
        assert store.verify().clean and [r.id for r in store.rows()] == ids  # same order as before
        store.check_row(store.get(ids[1]))


def test_garbage_index_is_one_line_and_repair_rebuilds_it(tmp_path: Path, monkeypatch, capsys) -> None:
    zoo, ids = zoo_with(tmp_path)
    for damage in (b"garbage" * 100, (zoo / INDEX).read_bytes()[:1000]):
        (zoo / INDEX).write_bytes(damage)
        for suffix in ("-wal", "-shm"):
            (zoo / (INDEX + suffix)).unlink(missing_ok=True)
        code, err = run_cli(monkeypatch, capsys, "zoo", "list", "--zoo", str(zoo))
        assert "--repair" in one_line_error(code, err)
        code, _ = run_cli(monkeypatch, capsys, "zoo", "verify", "--repair", "--zoo", str(zoo))
        assert code == 0
        with ZooStore.open(zoo) as store:
            assert sorted(r.id for r in store.rows()) == sorted(ids)


# --- C. bounded work for any input -----------------------------------------------------------------------------
def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO((data or {}).get(info.name, b"")) if info.isreg() else None)
    return buf.getvalue()


def test_bundle_members_are_bounded_before_they_are_read(tmp_path: Path) -> None:
    m, w = make_entry(seed=1)
    with tarfile.open(fileobj=io.BytesIO(bundle_bytes([(m.to_bytes(), w)]))) as tar:
        first = tar.getmembers()[0]
        first_data = tar.extractfile(first).read()
    cases = {}
    link = tarfile.TarInfo(f"{m.entry_id()}/manifest.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    dev = tarfile.TarInfo(f"{m.entry_id()}/manifest.json")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 5
    for name, info in (("link", link), ("device", dev)):
        cases[name] = _tar([first, info], {first.name: first_data})
    raw = bytearray(_tar([first], {first.name: first_data}))
    raw[124:136] = b"%011o\0" % (8 << 30)  # the first header now declares 8 GiB in a few KiB of tar
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    cases["huge"] = bytes(raw)
    cases["sparse"] = _sparse_tar(tmp_path)
    for name, data in cases.items():
        path = tmp_path / f"{name}.tar"
        path.write_bytes(data)
        start = time.perf_counter()
        with pytest.raises(UsageError, match="not a regular file|declares|truncated"):
            read_bundle(path)
        assert time.perf_counter() - start < 5, name


def _sparse_tar(folder: Path) -> bytes:
    """A tar (GNU tar --sparse) whose member bundle.json declares 4 GiB, almost all of it holes."""
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    src = folder / "sparse"
    src.mkdir()
    with open(src / "bundle.json", "wb") as fh:
        fh.write(b"{}")
        fh.truncate(4 << 30)  # no disk is used for the holes
    subprocess.run(["tar", "--sparse", "-cf", str(folder / "s.tar"), "-C", str(src), "bundle.json"], check=True)
    data = (folder / "s.tar").read_bytes()
    assert len(data) < 1 << 20
    return data


def test_store_refuses_links_and_devices_in_place_of_entry_files(tmp_path: Path, monkeypatch, capsys) -> None:
    zoo, ids = zoo_with(tmp_path)
    folder = next((zoo / "objects").glob(f"??/{ids[0]}"))
    (folder / WEIGHTS).chmod(0o644)
    (folder / WEIGHTS).unlink()
    (folder / WEIGHTS).symlink_to("/dev/zero")
    start = time.perf_counter()
    code, err = run_cli(monkeypatch, capsys, "zoo", "verify", "--zoo", str(zoo))
    assert code == 1 and ids[0][:12] in err and "symbolic link" in err
    assert time.perf_counter() - start < 20
    with ZooStore.open(zoo) as store, pytest.raises(CorruptEntry, match="refused"):
        store.get(ids[0]).load_model()


def test_yaml_bombs_deep_trees_and_bad_bytes_are_one_line_fast(tmp_path: Path) -> None:
    from edgemvp.deploy.devices import load_profile
    from edgemvp.mvp.rank import load_hierarchy

    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9))
    files = {"bomb.yaml": laughs, "deep.yaml": "[" * 10_000 + "]" * 10_000, "deep.json": "[" * 10_000 + "]" * 10_000,
             "recursive.yaml": "&a [*a]", "latin1.yaml": "caf\xe9: [a]", "empty.yaml": "", "list.json": "[NaN]"}
    for name, text in files.items():
        path = tmp_path / name
        path.write_bytes(text.encode("latin-1"))
        for load in (load_hierarchy, load_profile):
            start = time.perf_counter()
            with pytest.raises(UsageError):
                load(path)
            assert time.perf_counter() - start < 2, (name, load)
    with pytest.raises(UsageError, match="cannot read"):
        load_hierarchy(tmp_path / "missing.yaml")


def test_a_hierarchy_that_cannot_be_used_is_an_error_not_a_silent_fallback(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from edgemvp.data.tasks import TaskSpec
    from edgemvp.pipeline import rank

    tree = tmp_path / "tree.yaml"
    tree.write_text("root:\n  even: ['0', '2']\n  odd: ['1']\n")
    req = SimpleNamespace(similarity="wordnet", hierarchy=tree, neighbours=1, method="mvp")

    class Zoo:  # ranking by taxonomy happens where the zoo is; this one only records the call
        def rank_by_taxonomy(self, ids, tasks, task, hierarchy, limit):
            from edgemvp.mvp.rank import rank_by_taxonomy

            return rank_by_taxonomy(ids, tasks, task, hierarchy, limit=limit)

    task = TaskSpec("t", "digits", ("0", "1", "7"))  # '7' is not in the tree
    with pytest.raises(UsageError, match="'7'.*no node"):
        rank(Zoo(), ["a"], [("digits", ("0", "1"))], task, SimpleNamespace(), req)


# --- D. never a silent wrong answer ----------------------------------------------------------------------------
def test_nan_budgets_never_pass_the_gate(tmp_path: Path, monkeypatch, capsys) -> None:
    from edgemvp.deploy.devices import ProfileRegistry
    from edgemvp.deploy.budget import over_budget
    from edgemvp.deploy.latency import LatencyReport

    host = ProfileRegistry().get("host")
    report = LatencyReport("m.onnx", "host", 1.0, "p90", "measured", "CPUExecutionProvider", 1)
    for budget in (math.nan, math.inf, -1.0):
        with pytest.raises(UsageError, match="budget"):
            over_budget(report, host, budget)
    with pytest.raises(EdgeMVPError, match="not a finite number"):
        over_budget(LatencyReport("m.onnx", "host", math.nan, "p90", "measured", "CPU", 1), host, 10.0)
    with pytest.raises(UsageError, match="unlike statistics"):
        over_budget(LatencyReport("m.onnx", "host", 1.0, "p50", "estimated", "CPU", 1), host, 10.0)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    for value in ("nan", "inf", "0", "-3"):
        code, err = run_cli(monkeypatch, capsys, "check", str(model), "--device", "host", "--budget-ms", value)
        assert "--budget-ms" in one_line_error(code, err)


def test_estimates_are_compared_at_the_budgets_statistic_and_labelled_truly() -> None:
    from edgemvp.deploy.devices import ProfileRegistry

    reg = ProfileRegistry()
    for name in ("jetson-nano", "jetson-orin-nano", "rpi4", "rpi5"):
        p = reg.get(name)
        refs = [r for r in p.calibration.references if r.precision == p.export.precision]
        assert refs, name  # Jetson references are TensorRT FP16 figures, labelled so, and the fit uses them
        assert p.calibration.spread and p.calibration.spread_source in p.calibration.sources
        native = refs[0].statistic
        converted = p.calibration.convert(10.0, native, p.budget.statistic, name)
        assert converted == pytest.approx(10.0 * p.calibration.spread[p.budget.statistic]
                                          / p.calibration.spread[native])
    nano = reg.get("jetson-nano")
    assert {r.precision for r in nano.calibration.references} == {"fp16"}


# --- E. one clear line and the documented exit code ------------------------------------------------------------
@pytest.mark.parametrize("content", [{"format": "edgemvp-zoo", "schema_version": 10**400},
                                     {"format": "edgemvp-zoo", "schema_version": "1"},
                                     {"format": "edgemvp-zoo", "schema_version": [1]},
                                     {"format": "edgemvp-zoo", "schema_version": True},
                                     {"format": "edgemvp-zoo", "schema_version": 1e300}, [1, 2], "zoo"])
def test_odd_zoo_markers_are_one_line(content, tmp_path: Path, monkeypatch, capsys) -> None:
    zoo, _ = zoo_with(tmp_path, 1)
    (zoo / MARKER).chmod(0o644)
    (zoo / MARKER).write_text(json.dumps(content))
    code, err = run_cli(monkeypatch, capsys, "zoo", "list", "--zoo", str(zoo))
    one_line_error(code, err)


def test_odd_schema_versions_in_masks_bundles_and_manifests(tmp_path: Path) -> None:
    from edgemvp.masks import Masks

    m, w = make_entry(seed=1)
    for version in (10**30, "2", [1], 0, -1, 1.5, None):
        data = json.loads(m.to_bytes())
        data["schema_version"] = version
        with pytest.raises(UsageError):
            EntryManifest.from_bytes(json.dumps(data).encode(), "manifest")
        masks = json.loads(m.masks.to_json())
        masks["schema_version"] = version
        if version is not None:
            with pytest.raises(UsageError):
                Masks.from_json(json.dumps(masks), "masks.json")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            raw = json.dumps({"format": "edgemvp-zoo-bundle", "schema_version": version, "entries": []}).encode()
            info = tarfile.TarInfo("bundle.json")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        (tmp_path / "b.tar").write_bytes(buf.getvalue())
        if version is not None:
            with pytest.raises(UsageError):
                read_bundle(tmp_path / "b.tar")


@pytest.mark.parametrize("args", [
    ("prune", "--task", "fashion5", "--device", "host", "--seed", "-1"),
    ("prune", "--task", "fashion5", "--device", "host", "--zoo", "http://[::1"),
    ("prune", "--task", "fashion5", "--device", "host", "--zoo", "https://host:99999"),
    ("prune", "--task", "fashion5", "--device", "host", "--zoo", "http://"),
    ("prune", "--task", "fashion5", "--device", "host", "--temperature", "inf"),
    ("pretrain", "--lr", "nan"), ("pretrain", "--epochs", "inf"), ("pretrain", "--seed", "-5"),
    ("zoo", "show", "a" * 100_000), ("zoo", "show", "../../etc"),
    ("wordnet", "similarity", "n00000000", "n99999999"),
])
def test_usage_errors_are_one_line_with_exit_2(args, tmp_path: Path, monkeypatch, capsys) -> None:
    zoo, _ = zoo_with(tmp_path, 1)
    full = list(args) + (["--zoo", str(zoo)] if args[:2] == ("zoo", "show") else [])
    code, err = run_cli(monkeypatch, capsys, "--cache-dir", str(tmp_path / "cache"), *full)
    one_line_error(code, err)


def test_cache_dir_that_cannot_be_created(tmp_path: Path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for cache in (blocker / "cache", "/proc/edgemvp-cache"):
        code, err = run_cli(monkeypatch, capsys, "--cache-dir", str(cache), "bases")
        assert "cache folder" in one_line_error(code, err)


def test_corrupt_run_report_and_odd_onnx_files(tmp_path: Path, monkeypatch, capsys) -> None:
    import onnx
    from onnx import helper

    from edgemvp.masks import random_masks
    from edgemvp.shrink import build_pruned, save_pruned
    from edgemvp.spec import InputSpec

    spec = InputSpec(1, 16, (0.5,), (0.25,))
    masks = random_masks("resnet18", 0.9, 0)
    run_dir = tmp_path / "run"
    save_pruned(build_pruned("resnet18", 3, spec, masks), masks, spec, 3, run_dir)
    (run_dir / "report.json").write_bytes(b"{\"task\": \xff")
    code, err = run_cli(monkeypatch, capsys, "export", str(run_dir), "--device", "host")
    assert "report.json" in one_line_error(code, err)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 16, 16])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 16, 16])
    for name, node, opset in (("custom", helper.make_node("Evil", ["x"], ["y"], domain="com.evil"), 18),
                              ("opset99", helper.make_node("Relu", ["x"], ["y"]), 99)):
        graph = helper.make_graph([node], "g", [x], [y])
        imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.evil", 1)] if name == "custom" else [])
        model = helper.make_model(graph, opset_imports=imports)
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        code, err = run_cli(monkeypatch, capsys, "check", str(path), "--device", "host")
        one_line_error(code, err)


def test_server_refuses_nan_json_and_huge_tasks_with_one_line(tmp_path: Path) -> None:
    import httpx

    from edgemvp.zoo.server import create_app, running

    zoo, _ = zoo_with(tmp_path, 1)
    app = create_app(zoo, cache=tmp_path / "cache", max_task_classes=8)
    with running(app) as url, httpx.Client(base_url=url) as client:
        for body in (b'{"task": {"dataset": "d", "classes": ["a", "b"]}, "ratio": NaN}',
                     b'{"task": {"dataset": "d", "classes": ["a", "b"]}, "temperature": Infinity}',
                     b'{"task": {"dataset": "d", "classes": ["a", "b"]}, "similarities": [NaN], '
                     b'"neighbour_ids": ["' + b"a" * 64 + b'"]}'):
            r = client.post("/vote", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422 and isinstance(r.json()["detail"], str), r.text
            assert "\n" not in r.json()["detail"]
        many = {"task": {"dataset": "fashion-mnist", "classes": [f"c{i}" for i in range(1000)]}}
        start = time.perf_counter()
        r = client.post("/neighbours", json=many)
        assert r.status_code == 422 and "at most 8" in r.json()["detail"]
        assert time.perf_counter() - start < 2
        assert client.get("/health").status_code == 200


def test_gate_answers_503_when_its_queue_is_full() -> None:
    import threading

    from fastapi import HTTPException

    from edgemvp.zoo.server import Gate

    gate, release, inside = Gate("votes", slots=1, queue=1), threading.Event(), threading.Event()

    def hold() -> None:
        with gate.enter():
            inside.set()
            release.wait(5)

    workers = [threading.Thread(target=hold) for _ in range(2)]  # one working, one waiting
    workers[0].start()
    inside.wait(5)
    workers[1].start()
    time.sleep(0.2)
    with pytest.raises(HTTPException) as refused:
        with gate.enter():
            pass
    assert refused.value.status_code == 503 and refused.value.headers["Retry-After"]
    release.set()
    for w in workers:
        w.join(5)
    with gate.enter():  # free again
        pass


def test_gate_serves_waiting_requests_in_arrival_order() -> None:
    import threading

    from edgemvp.zoo.server import Gate

    gate, order, release = Gate("rankings", slots=1, queue=8), [], threading.Event()

    def hold() -> None:
        with gate.enter():
            release.wait(5)

    def ranked(i: int) -> None:
        with gate.enter():
            order.append(i)

    first = threading.Thread(target=hold)
    first.start()
    time.sleep(0.1)
    waiting = []
    for i in range(6):  # they queue one after the other behind the running one
        waiting.append(threading.Thread(target=ranked, args=(i,)))
        waiting[-1].start()
        time.sleep(0.05)
    release.set()
    for w in [first, *waiting]:
        w.join(5)
    assert order == list(range(6))  # first come, first served: no request starves behind later ones


def test_the_client_waits_out_a_busy_server(monkeypatch) -> None:
    import httpx

    from edgemvp.zoo import remote

    answers = iter([httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": "busy"}),
                    httpx.Response(503, headers={"Retry-After": "nan"}, json={"detail": "busy"}),
                    httpx.Response(200, json={"ok": True})])
    waits: list[float] = []
    monkeypatch.setattr(remote.time, "sleep", waits.append)
    zoo = remote.RemoteZoo.__new__(remote.RemoteZoo)
    zoo.address = remote.ZooAddress("http://127.0.0.1:1")
    zoo.http = httpx.Client(transport=httpx.MockTransport(lambda request: next(answers)),
                            base_url="http://127.0.0.1:1")
    assert zoo._call("GET", "/health").json() == {"ok": True}
    assert waits == [0.0, 2.0]  # the server's Retry-After, then the default for one that is not a number
    always = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(503, json={"detail": "busy"})),
                          base_url="http://127.0.0.1:1")
    zoo.http = always
    with pytest.raises(EdgeMVPError, match="failed on GET /health: busy"):
        zoo._call("GET", "/health")


# --- F. transport and secrets ----------------------------------------------------------------------------------
def test_token_files_other_users_can_read_are_refused(tmp_path: Path) -> None:
    from edgemvp.zoo.remote import read_token
    from edgemvp.zoo.server import load_token

    token = tmp_path / "zoo.token"
    token.write_text("t" * 32)
    for mode in (0o640, 0o604, 0o620, 0o660):
        token.chmod(mode)
        with pytest.raises(UsageError, match="chmod 600"):
            load_token(token)
        with pytest.raises(UsageError, match="chmod 600"):
            read_token(token)
    token.chmod(0o600)
    assert load_token(token) == read_token(token) == "t" * 32


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def test_tls_serve_verifies_the_server_and_public_http_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    from edgemvp.zoo.remote import RemoteError, RemoteZoo, ZooAddress
    from edgemvp.zoo.server import create_app, running

    zoo, _ = zoo_with(tmp_path, 1)
    cert, key = _self_signed(tmp_path)
    with running(create_app(zoo, cache=tmp_path / "cache"), ssl_certfile=cert, ssl_keyfile=key) as url:
        assert url.startswith("https://")
        trusted = RemoteZoo(ZooAddress(url, ca_file=cert))
        assert trusted._call("GET", "/health").json()["status"] == "ok"
        trusted.close()
        untrusted = RemoteZoo(ZooAddress(url))  # the system's CAs do not know this certificate
        with pytest.raises(RemoteError, match="unreachable|CERTIFICATE"):
            untrusted._call("GET", "/health")
        untrusted.close()
    token = tmp_path / "t"
    token.write_text("x" * 32)
    token.chmod(0o600)
    code, err = run_cli(monkeypatch, capsys, "zoo", "serve", "--zoo", str(zoo), "--host", "0.0.0.0", "--public",
                        "--token-file", str(token))
    assert "--insecure-http" in one_line_error(code, err)
    key.chmod(0o644)
    code, err = run_cli(monkeypatch, capsys, "zoo", "serve", "--zoo", str(zoo), "--ssl-certfile", str(cert),
                        "--ssl-keyfile", str(key))
    assert "chmod 600" in one_line_error(code, err)


# --- G. small truths -------------------------------------------------------------------------------------------
def test_image_folder_names_are_normalised_in_one_place(tmp_path: Path, monkeypatch) -> None:
    from edgemvp.data.datasets import canonical_name
    from edgemvp.models.base import base_folder

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "pics").mkdir()
    spellings = (f"imagefolder:{tmp_path}/pics", f"imagefolder:{tmp_path}/pics/", "imagefolder:~/pics",
                 f"imagefolder:{tmp_path}/./pics", f"imagefolder: {tmp_path}/pics")
    assert len({canonical_name(s) for s in spellings}) == 1
    assert len({base_folder("resnet18", s, tmp_path / "cache") for s in spellings}) == 1
    with pytest.raises(UsageError, match="needs a path"):
        canonical_name("imagefolder:")


def test_deterministic_training_is_reproducible_on_this_cpu() -> None:
    """With 2 threads, oneDNN's weight gradients of small strided 1x1 convolutions varied between runs on an
    AMD EPYC (AVX2), and corrupted the heap with 1; deterministic training must give the same weights anyway
    (:mod:`edgemvp.probe`)."""
    from edgemvp.masks import random_masks
    from edgemvp.shrink import build_pruned
    from edgemvp.spec import InputSpec
    from edgemvp.train import OptimConfig, train_steps

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spec = InputSpec(1, 16, (0.5,), (0.25,))
        gen = torch.Generator().manual_seed(0)
        data = [(torch.randn(32, 1, 16, 16, generator=gen), torch.randint(0, 3, (32,), generator=gen))
                for _ in range(3)]
        start = build_pruned("resnet18", 3, spec, random_masks("resnet18", 0.9, 0))
        hashes = set()
        for _ in range(4):
            model = copy.deepcopy(start)
            train_steps(model, iter(data), 3, OptimConfig(lr=0.05), torch.device("cpu"), deterministic=True)
            hashes.add(sha256_bytes(b"".join(v.numpy().tobytes() for v in model.state_dict().values())))
        assert len(hashes) == 1
    finally:
        torch.set_num_threads(threads)


# --- odd names, paths and numbers found by bench/hostile.py -----------------------------------------------------
def test_error_lines_escape_control_characters(tmp_path: Path, monkeypatch, capsys) -> None:
    from edgemvp.cli.common import one_line as _line

    assert _line("error: a\nb\x1b[31m\x00") == "error: a\\nb\\x1b[31m\\x00"
    code, err = run_cli(monkeypatch, capsys, "--cache-dir", str(tmp_path / "c"), "pretrain",
                        "--dataset", "x\ny\x1b[2J")
    line = one_line_error(code, err)
    assert "\x1b" not in err and "unknown dataset" in line


def test_empty_folder_options_are_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for option in ("--cache-dir", "--data-dir"):
        code, err = run_cli(monkeypatch, capsys, option, "", "bases")
        assert "must name a folder" in one_line_error(code, err)
    assert list(tmp_path.iterdir()) == []  # nothing was made in the current folder


def test_long_and_odd_dataset_names_are_one_usage_error(tmp_path: Path) -> None:
    from edgemvp.data.datasets import get_dataset

    for name, what in (("a" * 5000, "unknown dataset"), ("imagefolder:" + "/x" * 3000, "cannot be read"),
                       ("imagefolder:/tmp/\x00a", "not a usable path")):
        with pytest.raises(UsageError, match=what) as caught:
            get_dataset(name, root=tmp_path)
        assert len(str(caught.value)) < 400


def test_a_zoo_where_none_can_be_made_is_one_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    for root, what in ((blocker / "zoo", "cannot make a zoo"), (blocker, "not a zoo"),
                       (Path("/proc/edgemvp-zoo"), "cannot make a zoo")):
        with pytest.raises(UsageError, match=what):
            ZooStore.open(root, create=True)
    assert blocker.read_text() == "mine"


def test_a_named_base_dataset_the_zoo_lacks_is_an_error_not_another_base(tmp_path: Path) -> None:
    from edgemvp.zoo.local import zoo_base

    root, ids = zoo_with(tmp_path, 1)
    with ZooStore.open(root) as store:
        held = store.get(ids[0]).manifest.base.dataset
        with pytest.raises(UsageError, match="holds no entries pruned from a base of 'cifar-100'"):
            zoo_base(store, None, "cifar-100", tmp_path / "cache")
        with pytest.raises(UsageError, match="not in the cache"):  # the zoo's own base dataset: found, not cached
            zoo_base(store, None, held, tmp_path / "cache")


def test_profile_counts_are_bounded() -> None:
    from edgemvp.deploy.devices import parse_profile
    from tests.deploy_helpers import profile_data

    for section, key, value in (("hardware", "cores", 10**9), ("hardware", "channel_block", 10**6),
                                ("quantization", "calibration_samples", 10**9)):
        data = profile_data("host")
        data.setdefault(section, {})[key] = value
        with pytest.raises(UsageError, match=key):
            parse_profile(data, "p.yaml")


def test_onnx_files_edgemvp_cannot_run_are_refused_before_any_work(tmp_path: Path) -> None:
    import onnx
    from onnx import helper, numpy_helper

    from edgemvp.deploy.onnx import check_onnx, image_input_shape

    def model(side: int, external: bool = False) -> Path:
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, side, side])
        y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, side, side])
        w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
        graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y], [w])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        path = tmp_path / f"m{side}{external}.onnx"
        if external:
            onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                      size_threshold=0)
        else:
            onnx.save(m, str(path))
        return path

    image_input_shape(check_onnx(model(16)), "m")  # the plain model passes
    with pytest.raises(UsageError, match="external files"):
        check_onnx(model(16, external=True))
    with pytest.raises(UsageError, match="4096 px"):
        image_input_shape(check_onnx(model(8192)), "m")
    with pytest.raises(UsageError, match="not a regular file"):
        check_onnx(tmp_path)


def test_out_names_too_long_and_non_ascii_tokens_are_one_line(tmp_path: Path, monkeypatch) -> None:
    from edgemvp.zoo.remote import read_token

    with pytest.raises(UsageError, match="is over 200 bytes"):
        check_out(tmp_path / ("x" * 300))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("EDGEMVP_ZOO_TOKEN", "t\u00f6k\u00e9n")
    with pytest.raises(UsageError, match="visible ASCII"):
        read_token()
    monkeypatch.setenv("EDGEMVP_ZOO_TOKEN", "  abc-DEF_123  ")
    assert read_token() == "abc-DEF_123"


def test_index_rows_that_cannot_be_read_are_corruption_with_the_repair(tmp_path: Path, monkeypatch, capsys) -> None:
    zoo, ids = zoo_with(tmp_path, 2)
    db = sqlite3.connect(zoo / INDEX)
    db.execute("UPDATE entries SET classes='[garbage' WHERE id=?", (ids[0],))
    db.commit()
    db.close()
    for args in (("zoo", "list", "--zoo", str(zoo)), ("zoo", "show", ids[0][:12], "--zoo", str(zoo))):
        code, err = run_cli(monkeypatch, capsys, *args)
        assert "--repair" in one_line_error(code, err, expected=1)
    assert repair_index(zoo).repaired == 1
    code, _ = run_cli(monkeypatch, capsys, "zoo", "list", "--zoo", str(zoo))
    assert code == 0


def test_bundle_destinations_that_take_no_files_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    zoo, _ = zoo_with(tmp_path, 1)
    code, err = run_cli(monkeypatch, capsys, "zoo", "export", "/proc/edgemvp.tar", "--zoo", str(zoo))
    assert "cannot write there" in one_line_error(code, err)


def test_init_and_run_weights_holding_nan_or_huge_heads_are_refused(tmp_path: Path) -> None:
    from edgemvp.masks import random_masks
    from edgemvp.models.factory import create_model
    from edgemvp.models.weights import save_weights
    from edgemvp.shrink import WEIGHTS_FILE, build_pruned, load_pruned, pruned_metadata, save_pruned
    from edgemvp.spec import InputSpec

    spec = InputSpec(1, 16, (0.5,), (0.25,))
    model = create_model("resnet18", 3, spec)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    save_weights(state, tmp_path / "nan.safetensors")
    with pytest.raises(UsageError, match="conv1.weight holds NaN or infinity"):
        create_model("resnet18", 3, spec, checkpoint_path=tmp_path / "nan.safetensors")
    masks = random_masks("resnet18", 0.9, 0)
    run_dir = tmp_path / "run"
    pruned = build_pruned("resnet18", 3, spec, masks)
    save_pruned(pruned, masks, spec, 3, run_dir)
    save_weights(pruned.state_dict(), run_dir / WEIGHTS_FILE, metadata=pruned_metadata(masks, spec, 10**9))
    with pytest.raises(UsageError, match="num_classes 1000000000 is outside"):
        load_pruned(run_dir)


def test_export_reads_the_run_reports_task_and_refuses_a_report_that_is_not_one(tmp_path: Path) -> None:
    from edgemvp.deploy.export import load_source
    from edgemvp.masks import random_masks
    from edgemvp.shrink import build_pruned, save_pruned
    from edgemvp.spec import InputSpec

    spec = InputSpec(1, 16, (0.5,), (0.25,))
    masks = random_masks("resnet18", 0.9, 0)
    run_dir = tmp_path / "run"
    save_pruned(build_pruned("resnet18", 3, spec, masks), masks, spec, 3, run_dir)
    (run_dir / "report.json").write_text(json.dumps({"format": RUN_FORMAT, "task": "digits-3c-abc",
                                                     "dataset": "digits", "classes": ["0", "1", "2"]}))
    task = load_source(run_dir).task  # an ad-hoc task is no named task: its dataset and classes say what it is
    assert (task.name, task.dataset, task.classes) == ("digits-3c-abc", "digits", ("0", "1", "2"))
    (run_dir / "report.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a JSON object"):
        load_source(run_dir)


def test_image_files_that_cannot_be_images_are_refused_before_training(tmp_path: Path) -> None:
    from edgemvp.data.datasets import get_dataset
    from tests.helpers import write_imagefolder

    for name, make in (("empty", lambda p: p.write_bytes(b"")), ("fifo", lambda p: os.mkfifo(p))):
        root = tmp_path / name
        write_imagefolder(root, {"a": 3, "b": 3})
        make(root / "b" / "odd.png")
        with pytest.raises(UsageError, match="is empty|not a regular file"):
            get_dataset(f"imagefolder:{root}")  # at load, not when training reaches the file


def test_an_unreachable_ray_address_is_one_line_before_any_bar(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from tests.helpers import edgemvp

    proc = edgemvp("--cache-dir", str(tmp_path / "c"), "zoo", "build", "--dataset", "digits", "--tasks", "2",
                   "--classes-per-task", "3", "--iters", "2", "--zoo", str(tmp_path / "zoo"), "--ray", "http://[::1")
    lines = [line for line in proc.stderr.splitlines() if line.rsplit("\r", 1)[-1].strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "cannot connect to Ray" in lines[0], proc.stderr
