"""The zoo server on a real uvicorn on loopback: prune via the server equals prune via the local zoo; auth,
body limits and upload validation refuse bad writes and store nothing; remote builds; the CLI's one-line errors."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch

from edgemvp.data.tasks import resolve_task
from edgemvp.errors import UsageError
from edgemvp.models.base import find_base
from edgemvp.models.weights import sha256_bytes
from edgemvp.pipeline import PruneRequest, rank, run
from edgemvp.shrink import load_pruned
from edgemvp.mvp.voter import VoteSpec
from edgemvp.zoo.local import LocalZoo
from edgemvp.zoo import ZooStore
from edgemvp.zoo.remote import RemoteError, RemoteZoo, ZooAddress
from edgemvp.zoo.server import create_app, running
from edgemvp.zoo.store import bundle_bytes
from tests.helpers import edgemvp, make_entry

ROOT = Path(__file__).parent.parent
TOKEN, READ_TOKEN = "w" * 24 + "-write", "r" * 24 + "-read"
TASK = ("0", "1", "2")
TREE = "digits:\n  even: ['0', '2', '4', '6', '8']\n  odd: ['1', '3', '5', '7', '9']\n"


def _entry(base, seed: int, classes: tuple[str, ...]):
    """A random (untrained) entry of the tiny resnet18 base: enough for the vote, the average and LEEP."""
    return make_entry(seed=seed, classes=classes, base_sha256=base.weights_sha256, spec=base.input_spec,
                      base_dataset=base.dataset)


@pytest.fixture(scope="module")
def base(tiny_bases):
    return find_base("resnet18", "digits", tiny_bases)


@pytest.fixture(scope="module")
def zoo_dir(base, tmp_path_factory) -> Path:
    zoo = tmp_path_factory.mktemp("srv") / "zoo"
    with ZooStore.open(zoo, create=True) as store:
        for seed, classes in enumerate([("0", "1", "2"), ("1", "2", "3"), ("4", "5", "6"), ("0", "2", "8"),
                                        ("7", "8", "9")]):
            store.put(*_entry(base, seed + 1, classes))
    return zoo


@pytest.fixture(scope="module")
def server(tiny_bases, zoo_dir):
    """A real uvicorn on 127.0.0.1 (free port) serving the zoo; writes need TOKEN."""
    with running(create_app(zoo_dir, token=TOKEN, cache=tiny_bases, max_body=4 << 20)) as url:
        yield url


def _request(zoo, out: Path, **kw) -> PruneRequest:
    args = dict(task=resolve_task(None, "digits", ",".join(TASK)), device="host", zoo=zoo, iters=3, neighbours=2,
                batch_size=32, runs=5, out=out, bn_batches=2, leep_samples=40)
    return PruneRequest(**{**args, **kw})


def _snapshot(zoo: Path) -> tuple[int, list[str]]:
    """Entry count and every file under objects/ (to prove a refused request stored nothing)."""
    with ZooStore.open(zoo) as store:
        count = len(store)
    return count, sorted(str(p.relative_to(zoo)) for p in (zoo / "objects").rglob("*"))


# --- equality with the local zoo -------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, pytest.param({"hierarchy": True}, marks=pytest.mark.slow),
                                   pytest.param({"method": "transfer", "hierarchy": True}, marks=pytest.mark.slow),
                                   pytest.param({"method": "random"}, marks=pytest.mark.slow)],
                         ids=["leep", "hierarchy", "transfer", "random"])  # all but leep: make test-all
def test_prune_via_server_equals_local_prune(tiny_bases, zoo_dir, server, tmp_path, extra) -> None:
    if extra.get("hierarchy"):
        (tmp_path / "tree.yaml").write_text(TREE)
        extra = {**extra, "hierarchy": tmp_path / "tree.yaml"}
    local = run(_request(zoo_dir, tmp_path / "local", **extra), tiny_bases).report
    remote = run(_request(ZooAddress(server), tmp_path / "remote", **extra), tiny_bases).report
    assert remote["zoo"]["path"] == server and local["zoo"]["entries"] == remote["zoo"]["entries"] == 5
    for key in ("neighbours", "similarity", "accuracy", "keep_ratio", "params", "macs"):
        assert remote[key] == local[key], key
    assert remote.get("vote") == local.get("vote")
    # same masks, and (CPU, same seed) the same fine-tuned weights, byte for byte
    for name in ("masks.json", "weights.safetensors"):
        assert remote["files"][name] == local["files"][name], name
    if not extra:  # digits have no WordNet synsets: LEEP ran on the client over downloaded candidates
        assert remote["similarity"]["kind"] == "leep" and "falling back to LEEP" in remote["similarity"]["note"]


def _here_and_there(req: PruneRequest, zoo_dir, cache, server) -> list:
    """The voter's answer to ``req`` in process and through HTTP."""
    from edgemvp.data.datasets import get_dataset

    dataset = get_dataset("digits")
    with LocalZoo.open(zoo_dir, cache=cache) as here, RemoteZoo.connect(ZooAddress(server)) as there:
        answers = []
        for zoo in (here, there):
            ids, tasks = zoo.task_table()
            answers.append(zoo.initialise(req.vote_spec(), rank(zoo, ids, tasks, req.task, dataset, req)))
    return answers


def test_initial_weights_are_bit_identical(tiny_bases, zoo_dir, server, tmp_path) -> None:
    """The voter's answer itself (masks + averaged init, before any fine-tuning) through HTTP and in process."""
    (tmp_path / "tree.yaml").write_text(TREE)
    req = _request(zoo_dir, tmp_path, hierarchy=tmp_path / "tree.yaml", neighbours=3, seed=7, temperature=0.5)
    a, b = _here_and_there(req, zoo_dir, tiny_bases, server)
    assert a.masks == b.masks and a.info == b.info and a.info["vote"]["seed"] == 7
    assert [n.id for n in a.neighbours] == [n.id for n in b.neighbours] and len(a.neighbours) == 3
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_per_group_allocation_votes_the_same_through_http_and_in_process(tiny_bases, zoo_dir, server,
                                                                          tmp_path) -> None:
    from edgemvp.units import unit_space

    units = unit_space("resnet18").units
    counts = tuple(max(1, u.size // (2 + i % 3)) for i, u in enumerate(units))
    req = replace(_request(zoo_dir, tmp_path, neighbours=2, seed=3), counts=counts)
    a, b = _here_and_there(req, zoo_dir, tiny_bases, server)
    assert a.masks == b.masks and tuple(len(a.masks.kept[u.name]) for u in units) == counts
    assert a.info["vote"]["counts"] == list(counts) == b.info["vote"]["counts"]
    body = {"task": {"dataset": "digits", "classes": list(TASK)}, "method": "random", "counts": [1, 2]}
    bad = httpx.post(f"{server}/vote", json=body, timeout=120)
    assert bad.status_code == 422 and "has 12 unit groups" in bad.json()["detail"]


def test_vote_returns_the_seed_it_drew(server, base) -> None:
    body = {"task": {"dataset": "digits", "classes": list(TASK)}, "method": "random", "ratio": 0.8}
    first = httpx.post(f"{server}/vote", json=body, timeout=120)
    assert first.status_code == 200, first.text
    seed = int(first.headers["x-edgemvp-seed"])
    assert sha256_bytes(first.content) == first.headers["x-edgemvp-sha256"]
    again = httpx.post(f"{server}/vote", json={**body, "seed": seed}, timeout=120)
    assert again.content == first.content  # the returned seed reproduces the answer
    from edgemvp.zoo.wire import initial_from_bytes

    init, got = initial_from_bytes(first.content, base.input_spec, base.weights_sha256, "vote")
    assert got == seed and init.masks.keep_ratio() < 0.3


def test_reads_endpoints(server, zoo_dir, base) -> None:
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    rows = httpx.get(f"{server}/entries", params={"limit": 2, "offset": 1}).json()["entries"]
    with ZooStore.open(zoo_dir) as store:
        assert [r["id"] for r in rows] == [r.id for r in store.rows()][1:3]
    entry_id = rows[0]["id"]
    manifest = httpx.get(f"{server}/entries/{entry_id}")
    assert sha256_bytes(manifest.content) == entry_id  # content-addressed: the id is the manifest's sha256
    weights = httpx.get(f"{server}/entries/{entry_id}/weights")
    assert sha256_bytes(weights.content) == weights.headers["x-edgemvp-sha256"] == json.loads(
        manifest.content)["weights_sha256"]
    assert httpx.get(f"{server}/base").json()["weights_sha256"] == base.weights_sha256
    near = httpx.post(f"{server}/neighbours", json={"task": {"dataset": "digits", "classes": list(TASK)},
                                                    "hierarchy": {"digits": [str(i) for i in range(10)]},
                                                    "limit": 2}).json()
    assert near["kind"] == "hierarchy" and len(near["neighbours"]) == 2 and near["entries"] == 5
    leep = httpx.post(f"{server}/neighbours", json={"task": {"dataset": "digits", "classes": list(TASK)},
                                                    "similarity": "leep"})
    assert leep.status_code == 422 and "stay on the client" in leep.json()["detail"]
    for path in ("/entries/" + "0" * 64, "/entries/" + "0" * 64 + "/weights", "/bases/" + "a" * 64 + "/weights"):
        assert httpx.get(server + path).status_code == 404
    for path in ("/entries/ABC", "/entries/..%2F..%2Fzoo.json", "/entries/" + "g" * 64, "/bases/x/weights"):
        assert httpx.get(server + path).status_code in (404, 422), path


# --- writes: auth, limits, validation ----------------------------------------------------------------------
def _upload(url: str, data: bytes, token: str | None = TOKEN, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/entries", content=data, headers=headers, timeout=60, **kw)


def test_writes_need_the_token_and_bad_uploads_store_nothing(server, zoo_dir, base) -> None:
    good_manifest, good_weights = _entry(base, 40, ("3", "4", "5"))
    good = bundle_bytes([(good_manifest.to_bytes(), good_weights)])
    before = _snapshot(zoo_dir)
    assert _upload(server, good, token=None).status_code == 401
    assert _upload(server, good, token="x" * 30).status_code == 401
    assert _upload(server, good, token=TOKEN[:-1]).status_code == 401
    pickled = io.BytesIO()
    torch.save({"x": torch.zeros(2)}, pickled)  # a zip of pickles, as torch.save writes
    import pickle

    for weights, message in ((pickled.getvalue(), "zip archive"), (pickle.dumps({"x": 1}), "pickle")):
        evil = replace(good_manifest, weights_sha256=sha256_bytes(weights))
        r = _upload(server, bundle_bytes([(evil.to_bytes(), weights)]))
        assert r.status_code == 422 and message in r.json()["detail"], r.text
    wrong_hash = replace(good_manifest, weights_sha256="0" * 64)
    other_base = _entry(base, 41, ("3", "4", "5"))[0]
    raw = json.loads(good_manifest.to_bytes())
    raw["masks"]["conv1"] = [0, 999]  # out of range for resnet18's conv1
    bad_masks = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    short = _entry(base, 42, ("3", "4"))[1]  # weights of a 2-class model under a 3-class manifest
    cases = [
        (b"not a tar file at all", "unreadable bundle"),
        (bundle_bytes([(wrong_hash.to_bytes(), good_weights)]), "do not match the manifest"),
        (bundle_bytes([(bad_masks, good_weights)]), "out of range"),
        (bundle_bytes([(replace(good_manifest, weights_sha256=sha256_bytes(short)).to_bytes(), short)]),
         "made for another model"),
        (bundle_bytes([(replace(other_base, base=replace(other_base.base, weights_sha256="c" * 64)).to_bytes(),
                        _entry(base, 41, ("3", "4", "5"))[1])]), "not a base of this zoo server"),
        (bundle_bytes([(good_manifest.to_bytes() + b" ", good_weights)]), "canonical"),
        (bundle_bytes([]), "no entries"),
    ]
    for data, message in cases:
        r = _upload(server, data)
        assert r.status_code == 422 and message in r.json()["detail"], (message, r.text)
    big = good + b"\0" * (4 << 20)
    assert _upload(server, big).status_code == 413  # by Content-Length
    assert _upload(server, iter([good, b"\0" * (4 << 20)])).status_code == 413  # chunked, no Content-Length
    assert httpx.post(f"{server}/vote", content=b"{" + b" " * (2 << 20) + b"}",
                      headers={"Content-Type": "application/json"}).status_code == 413
    assert _snapshot(zoo_dir) == before  # nothing stored, no temporary folders left
    added = _upload(server, good)
    assert added.status_code == 201 and added.json()["added"] == [good_manifest.entry_id()]
    assert _upload(server, good).json()["present"] == [good_manifest.entry_id()]
    with ZooStore.open(zoo_dir) as store:
        assert store.verify().clean and len(store) == before[0] + 1


def test_read_token_and_read_only_server(tiny_bases, zoo_dir, base) -> None:
    with running(create_app(zoo_dir, read_token=READ_TOKEN, cache=tiny_bases)) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/entries").status_code == 401
        assert httpx.get(f"{url}/entries", headers={"Authorization": f"Bearer {READ_TOKEN}"}).status_code == 200
        good = bundle_bytes([(m.to_bytes(), w) for m, w in [_entry(base, 50, ("1", "5", "9"))]])
        r = _upload(url, good, token=READ_TOKEN)
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        with pytest.raises(RemoteError, match="401.*EDGEMVP_ZOO_TOKEN"):
            RemoteZoo.connect(ZooAddress(url))


# --- remote builds and the CLI -----------------------------------------------------------------------------
def test_zoo_build_via_server_uploads_the_entries_a_local_build_makes(tiny_bases, base, server, tmp_path) -> None:
    from edgemvp.pruners import PruneConfig
    from edgemvp.zoo.build import BuildSpec, build

    spec = BuildSpec("resnet18", "digits", tasks=2, classes_per_task=3, pruner="random",
                     config=PruneConfig(iters=2, batch_size=16, lr=1e-3), seed=5)  # finite: NaNs are refused
    here = build(spec, tmp_path / "local", tiny_bases, threads=1)
    there = build(spec, ZooAddress(server, TOKEN), tiny_bases, threads=1)
    assert there.ids == here.ids and there.built == 2  # byte-identical entries, now on the server
    assert build(spec, ZooAddress(server, TOKEN), tiny_bases, threads=1).skipped == 2  # resumable remotely
    with pytest.raises(RemoteError, match="token cannot upload"):  # refused before any job runs
        build(replace(spec, seed=6), ZooAddress(server, "nope" * 5), tiny_bases, threads=1)


def _cli(cache: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEMVP_CACHE": str(cache)}
    env.pop("EDGEMVP_ZOO_TOKEN", None)
    if token:
        env["EDGEMVP_ZOO_TOKEN"] = token
    return edgemvp(*args, env=env, cwd=ROOT)  # in process: see tests.helpers.edgemvp


def _one_line(proc: subprocess.CompletedProcess, code: int, message: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and message in lines[0], proc.stderr


def test_cli_prune_against_server_and_its_errors(tiny_bases, zoo_dir, server, tmp_path) -> None:
    args = ["prune", "--dataset", "digits", "--classes", ",".join(TASK), "--device", "host", "-n", "2",
            "--iters", "2", "--runs", "5"]
    ok = _cli(tiny_bases, *args, "--zoo", server, "--out", str(tmp_path / "remote"), "--add-to-zoo", token=TOKEN)
    assert ok.returncode == 0, ok.stderr
    report = json.loads((tmp_path / "remote" / "report.json").read_text())
    added = report["zoo"]["added"]
    with ZooStore.open(zoo_dir) as store:  # uploaded through POST /entries, parents recorded
        assert list(store.get(added).manifest.parents) == [n["id"] for n in report["neighbours"]]
        assert store.get(added).manifest.weights_sha256 == report["files"]["weights.safetensors"]
    model, _ = load_pruned(tmp_path / "remote")
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 3)
    _one_line(_cli(tiny_bases, *args, "--zoo", server, "--add-to-zoo", "--out", str(tmp_path / "o")),
              2, "this client's token cannot upload")
    _one_line(_cli(tiny_bases, *args, "--zoo", "http://127.0.0.1:9", "--out", str(tmp_path / "o")),
              2, "is unreachable")
    _one_line(_cli(tiny_bases, "zoo", "list", "--zoo", server), 2, "is a zoo server")
    assert not (tmp_path / "o").exists()


def test_cli_serve_refuses_unsafe_settings_and_serves(tiny_bases, zoo_dir, tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    serve = ["zoo", "serve", "--zoo", str(zoo_dir)]
    _one_line(_cli(tiny_bases, *serve, "--host", "0.0.0.0"), 2, "pass --public")
    _one_line(_cli(tiny_bases, *serve, "--host", "0.0.0.0", "--public"), 2, "--public needs --token-file")
    _one_line(_cli(tiny_bases, *serve, "--token-file", str(token)), 2, "chmod 600")
    token.chmod(0o600)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        _one_line(_cli(tiny_bases, *serve, "--port", str(port)), 2, "cannot listen on 127.0.0.1")
    env = {**os.environ, "EDGEMVP_CACHE": str(tiny_bases)}
    proc = subprocess.Popen([sys.executable, "-m", "edgemvp", *serve, "--port", str(port), "--token-file",
                             str(token)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        health = None
        for _ in range(300):
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health").json()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health == {"status": "ok", "version": health["version"], "writes": True, "reads_need_token": False}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_zoo_address_never_shows_the_token() -> None:
    address = ZooAddress("http://127.0.0.1:1/", TOKEN)
    assert TOKEN not in repr(address) and address.url == "http://127.0.0.1:1"
    with pytest.raises(UsageError, match="must start with http"):
        ZooAddress("ftp://x")


def test_vote_spec_rejects_what_the_voter_cannot_make() -> None:
    with pytest.raises(UsageError, match="not 'ifp'"):
        VoteSpec(resolve_task(None, "digits", "0,1"), method="ifp")


def test_concurrent_votes_are_deterministic(tiny_bases, zoo_dir) -> None:
    """Votes averaged in parallel threads give the bytes a lone vote gives (no shared RNG state leaks in):
    classes the base does not know get default-initialised rows, drawn from the request's seed."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"task": {"dataset": "elsewhere", "classes": ["a", "b", "c"]}, "method": "random", "seed": 3}
    with running(create_app(zoo_dir, cache=tiny_bases, vote_workers=3)) as url:
        alone = httpx.post(f"{url}/vote", json=body, timeout=120).content
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: httpx.post(f"{url}/vote", json=body, timeout=300).content, range(6)))
    assert len(alone) > 1000 and all(a == alone for a in answers)
