"""Hostile-input benchmark: hundreds of malformed or hostile inputs to every edgemvp command, file, zoo store,
bundle and zoo-server request, each run and judged automatically by the project's quality bar.

What it does
    1. Builds tiny fixtures once in a temporary folder: a resnet18 base pre-trained on scikit-learn's digits
       (16 px, 1 epoch, offline), a 5-entry zoo of random entries (``tests.helpers.make_entry``), a 3-task zoo
       built by ``edgemvp.zoo.build`` (random pruner, 5 steps), one prune run folder, a bundle, a server token
       and hand-made ONNX files (``--fixtures DIR`` keeps them in DIR and reuses them on the next run).
    2. Runs every CLI case as ``edgemvp ARGS`` in its own process: a pool of ``--jobs`` warm workers (each has
       imported edgemvp once; a fresh interpreter spends ~8 s on imports) forks one child per case, which runs
       ``edgemvp.cli.main`` with its argv, environment and working folder, under RLIMIT_AS 6 GiB and a timeout.
       The worker reads the child's exit status, wall time and peak RSS with ``os.wait4``, and hashes the
       folders the case must not change before and after.
    3. Runs every server case as raw HTTP against ``edgemvp zoo serve`` in a subprocess (RLIMIT_AS 6 GiB) over a
       copy of the small zoo, and checks after each that ``GET /health`` still answers.

How a case is judged (the expected outcome comes from the rules and the README, not from today's code)
    * exit code: 2 usage error (bad value, unknown name, missing or corrupt file the user gave), 1 runtime error
      (``zoo verify`` finding corruption), 3 over budget, 0 success; a usage error is one line ``error: ...``;
    * never a Python traceback, never the catch-all ``error: unexpected ...``, never a MemoryError or a kill;
    * no hang (per-case timeout: 60 s for cheap cases, 120 s where valid input does real work);
    * data: folders that must not change (a user's folder given as --out, zoos, the cached bases, the
      fixtures) keep every file's sha256 ("lost"); a refused case stores nothing where it was watched, and no
      stored weights hold NaN or infinity ("poisoned");
    * server: never 5xx, never a dropped connection or a timeout, a 4xx from the app has one line in
      ``detail``, and the server answers ``GET /health`` afterwards.

Run (from the repository root; offline, a private cache under the temporary folder, never ~/.cache/edgemvp)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/hostile.py --out /tmp/hostile
    .venv/bin/python bench/hostile.py --list                       # the cases, without running anything
    .venv/bin/python bench/hostile.py --out /tmp/h --only zoo-import,server --jobs 2 --keep
    .venv/bin/python bench/hostile.py --out /tmp/h --only devices --fixtures /tmp/hostile-fixtures   # reuse
    .venv/bin/python bench/hostile.py --out /tmp/h --only export --mem-gib 12 --jobs 1   # a looser memory limit

Writes ``DIR/hostile.json`` (every case) and ``DIR/hostile.md`` (summary, per-category table, failing cases).
The exit code is 0 when every case passes, 1 otherwise. ``--keep`` keeps the temporary folder (its path is
printed) so that a failing case can be rerun by hand; paths in the report are written with ``@CASE@`` (the
case's folder) and ``@FIX@`` (the fixtures).
"""
from __future__ import annotations

import argparse
import atexit
import concurrent.futures as cf
import hashlib
import io
import json
import multiprocessing
import os
import resource
import select
import shutil
import signal
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, NoReturn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the tree this file lives in, ahead of any installed edgemvp
    sys.path.insert(0, str(ROOT))

for _var in ("HF_HUB_OFFLINE", "EDGEMVP_OFFLINE"):
    os.environ[_var] = "1"
for _var in ("EDGEMVP_PROFILES", "EDGEMVP_DATA", "EDGEMVP_ZOO_TOKEN"):
    os.environ.pop(_var, None)

CASE, FIX = "@CASE@", "@FIX@"  # placeholders for the case's folder and the fixtures folder
GIB = 1 << 30
MEM_LIMIT = 6 * GIB
CHEAP, WORK = 60.0, 120.0  # per-case timeouts: a case still running then is a hang
BAD = tuple(range(400, 500))
TOKEN = "hostile-bench-write-token-0123456789"
TASK = {"dataset": "digits", "classes": ["0", "1", "2"]}
TREE = {"digits": {"even": ["0", "2", "4", "6", "8"], "odd": ["1", "3", "5", "7", "9"]}}
PRUNE = {"--dataset": "digits", "--classes": "0,1,2", "--device": "host", "--zoo": f"{CASE}/zoo", "--iters": "1",
         "--neighbours": "2", "--runs": "5", "--out": f"{CASE}/out"}
BUILD = {"--arch": "resnet18", "--dataset": "digits", "--tasks": "2", "--classes-per-task": "3", "--iters": "4",
         "--batch-size": "32", "--zoo": f"{CASE}/newzoo"}
QUICK_PRETRAIN = {"--dataset": "digits", "--size": "8", "--epochs": "0.05", "--batch-size": "64"}
LONG = "x" * 100_000
IGNORED = ("-wal", "-shm", ".lock")  # SQLite side files change on every read of a zoo


# --- the data model ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """One HTTP request to the zoo server (written by hand, so framing and headers can be malformed)."""

    method: str
    path: str
    body: bytes | Callable[["Fixtures"], bytes] = b""
    auth: str | None = None  # "token": the server's write token; anything else is sent as the header's value
    content_type: str | None = "application/json"
    chunked: bool = False
    length: str | None = None  # a Content-Length value to send instead of the body's length
    extra: tuple[tuple[str, str], ...] = ()

    def encode(self, fx: "Fixtures") -> bytes:
        """The request's bytes."""
        body = self.body(fx) if callable(self.body) else self.body
        lines = [f"{self.method} {fx.resolve(self.path)} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        if self.auth is not None:
            lines.append("Authorization: " + (f"Bearer {TOKEN}" if self.auth == "token" else self.auth))
        if self.content_type and (body or self.method == "POST"):
            lines.append(f"Content-Type: {self.content_type}")
        lines += [f"{k}: {v}" for k, v in self.extra]
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
            body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                            for i in range(0, len(body), 65536)) + b"0\r\n\r\n"
        elif self.length is not None or body or self.method == "POST":
            lines.append(f"Content-Length: {self.length if self.length is not None else len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body

    def summary(self) -> dict[str, Any]:
        """What the report shows of the request (a body built at run time is described by the case)."""
        shown = self.body[:200].decode("utf-8", "replace") if isinstance(self.body, bytes) else "<built at run time>"
        return {"method": self.method, "path": cut(self.path), "auth": None if self.auth is None else
                ("token" if self.auth == "token" else cut(self.auth, 40)), "chunked": self.chunked,
                "content_length": self.length, "extra_headers": [[k, cut(v, 60)] for k, v in self.extra],
                "body_head": cut(shown, 200)}


@dataclass(frozen=True)
class Case:
    """One hostile input and the outcome the rules expect.

    Attributes:
        id: ``category/slug``.
        category: Groups cases in the report (``--only``).
        description: What is sent and why the outcome is expected.
        expected: Acceptable exit codes (CLI) or HTTP statuses (server).
        argv: The CLI arguments after ``edgemvp`` (placeholders ``@CASE@``, ``@FIX@``, ``@ENTRY0@`` ...).
        request: The server request, for server cases.
        prepare: Makes the case's files in its folder before it runs (called with the folder and fixtures).
        env: Extra environment variables.
        cache: ``shared`` (the fixtures' cache, read-only), ``empty`` (a new one) or ``base`` (a new one holding
            the fixture base).
        cwd: The working folder, relative to the case's folder.
        timeout: Seconds before the case counts as a hang.
        protect: Paths that must not change (hashed before and after).
        watch: Paths where a refused case must store nothing (and no stored weights may be non-finite).
        mention: Text the output must contain (e.g. the corrupt entry's id).
    """

    id: str
    category: str
    description: str
    expected: tuple[int, ...]
    argv: tuple[str, ...] = ()
    request: Request | None = None
    prepare: Callable[[Path, "Fixtures"], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cache: str = "shared"
    cwd: str = ""
    timeout: float = CHEAP
    protect: tuple[str, ...] = ()
    watch: tuple[str, ...] = ()
    mention: str | None = None


@dataclass(frozen=True)
class Job:
    """What a pool worker needs to run one CLI case (picklable; placeholders resolved)."""

    id: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    timeout: float
    protect: tuple[str, ...]
    watch: tuple[str, ...]
    logs: str
    mem_limit: int = MEM_LIMIT


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cut(text: str, limit: int = 200) -> str:
    """A long string shortened for the report, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def cli(category: str, slug: str, description: str, argv: Iterable[str], expected: int | tuple[int, ...] = 2,
        **kw: Any) -> Case:
    """A CLI case."""
    codes = (expected,) if isinstance(expected, int) else tuple(expected)
    return Case(f"{category}/{slug}", category, description, codes, tuple(argv), **kw)


def http(slug: str, description: str, request: Request, expected: int | tuple[int, ...] = BAD, **kw: Any) -> Case:
    """A server case."""
    codes = (expected,) if isinstance(expected, int) else tuple(expected)
    return Case(f"server/{slug}", "server", description, codes, request=request, **kw)


def options(command: tuple[str, ...], base: dict[str, str], changes: dict[str, str | bool | None]) -> tuple[str, ...]:
    """``command`` with ``base`` options, some replaced (None drops one, True is a flag)."""
    out = list(command)
    for key, value in {**base, **changes}.items():
        if value is True:
            out.append(key)
        elif value is not None:
            out += [key, value]
    return tuple(out)


# --- hostile files ----------------------------------------------------------------------------------------------
def write(path: Path, data: bytes | str) -> Path:
    """Write a file (creating its folder); an existing file is unlinked first, never changed in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def alias_bomb(leaf: str = "[]", levels: int = 9, width: int = 9) -> str:
    """YAML 'billion laughs': anchors ``l0`` .. ``l8``, each repeating the previous one nine times (9**9 leaves)."""
    lines = [f"l0: &l0 [{', '.join([leaf] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def deep(depth: int = 10_000, mapping: bool = False) -> str:
    """A tree nested ``depth`` levels deep (valid YAML and, as lists, valid JSON)."""
    return "{a: " * depth + "1" + "}" * depth if mapping else "[" * depth + "1" + "]" * depth


NON_UTF8 = b"name: \xff\xfe\xe9vil\ncpu: \xc3\x28\n"


def sparse(path: Path, size: int = 10 * GIB) -> Path:
    """A sparse file of ``size`` bytes (no disk used)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def fifo(path: Path) -> Path:
    """A named pipe nothing writes to (a read blocks forever)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def link(path: Path, target: str) -> Path:
    """``path`` replaced by a symlink to ``target``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    os.symlink(target, path)
    return path


def _tar_number(value: int, width: int = 12) -> bytes:
    """A tar header number: octal, or base-256 when it does not fit."""
    text = f"{value:0{width - 1}o}".encode() + b"\0"
    return text if len(text) == width else b"\x80" + value.to_bytes(width - 1, "big")


def tar_header(name: str, size: int, typeflag: bytes = b"0", linkname: str = "",
               fields: dict[int, bytes] | None = None, magic: bytes = b"ustar  \0") -> bytes:
    """One 512-byte tar header written by hand (GNU magic by default), with optional raw fields."""
    h = bytearray(512)
    h[0:100] = name.encode()[:100].ljust(100, b"\0")
    h[100:124] = b"0000444\0" + b"0000000\0" * 2
    h[124:136] = _tar_number(size)
    h[136:148] = _tar_number(0)
    h[156:157] = typeflag
    h[157:257] = linkname.encode()[:100].ljust(100, b"\0")
    h[257:265] = magic
    for offset, raw in (fields or {}).items():
        h[offset:offset + len(raw)] = raw
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)


def tar_member(name: str, data: bytes) -> bytes:
    """A regular member: header and data padded to 512 bytes."""
    return tar_header(name, len(data)) + data + b"\0" * (-len(data) % 512)


def gnu_sparse_member(name: str, realsize: int = 64 * GIB) -> bytes:
    """A GNU sparse member: 512 stored bytes, declared ``realsize`` (a reader materialises gigabytes of zeros)."""
    fields = {386: _tar_number(0) + _tar_number(512), 482: b"\0", 483: _tar_number(realsize)}
    return tar_header(name, 512, b"S", fields=fields) + b"\0" * 512


def pax_size_member(name: str, data: bytes, declared: int = 64 * GIB) -> bytes:
    """A regular member after a PAX header whose ``size`` record claims ``declared`` bytes."""
    record = f" size={declared}\n"
    length = len(record) + 2
    while len(f"{length}{record}") != length:
        length += 1
    pax = f"{length}{record}".encode()
    head = tar_header("././@PaxHeader", len(pax), b"x", magic=b"ustar\x0000") + pax + b"\0" * (-len(pax) % 512)
    return head + tar_header(name, len(data), magic=b"ustar\x0000") + data + b"\0" * (-len(data) % 512)


def tar_end(members: Iterable[bytes]) -> bytes:
    """Members followed by the end-of-archive blocks."""
    return b"".join(members) + b"\0" * 1024


def gzip_bomb(size: int = GIB) -> bytes:
    """``size`` zero bytes gzipped (about 1 MB)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    return b"".join(comp.compress(block) for _ in range(size >> 20)) + comp.flush()


def png_bomb() -> bytes:
    """A PNG header declaring 100,000 x 100,000 grey pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        """One PNG chunk with its CRC."""
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + \
        chunk(b"IEND", b"")


def pickle_payload() -> bytes:
    """A pickle whose loading would print 'pwned' (a checkpoint must never be unpickled)."""
    import pickle

    from tests.helpers import Payload

    return pickle.dumps({"conv1.weight": Payload()})


def torch_zip() -> bytes:
    """A ``torch.save`` checkpoint (a zip of pickles) of one tensor."""
    import torch

    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(2)}, buf)
    return buf.getvalue()


def safetensors_header(header: dict[str, Any], data: bytes = b"") -> bytes:
    """A safetensors file with a hand-written JSON header."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def onnx_bytes(kind: str) -> bytes:
    """Hand-made ONNX models: ``custom-op``, ``opset99``, ``two-inputs``, ``3d-input``, ``external-passwd``,
    ``huge-input`` (a valid 1x1 conv on 3 x 100,000 x 100,000 images) and ``valid`` (a 1x1 conv at 16 px)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side = 100_000 if kind == "huge-input" else 16
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, side, side])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, side, side])
    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    nodes, inputs, inits, opsets = [helper.make_node("Conv", ["input", "w"], ["logits"])], [x], [weight], [("", 18)]
    if kind == "custom-op":
        nodes = [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("Evil", ["c"], ["logits"],
                                                                                    domain="com.hostile")]
        opsets.append(("com.hostile", 1))
    elif kind == "opset99":
        opsets = [("", 99)]
    elif kind == "two-inputs":
        inputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["batch", 1, side, side]))
        nodes = [helper.make_node("Add", ["input", "other"], ["logits"])]
    elif kind == "3d-input":
        inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", side, side])]
        nodes, inits = [helper.make_node("Relu", ["input"], ["logits"])], []
    elif kind == "external-passwd":
        weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 1, 1, 1],
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", "../../../../../../../../etc/passwd"), ("offset", "0"), ("length", "4")):
            weight.external_data.add(key=key, value=value)
        inits = [weight]
    graph = helper.make_graph(nodes, "hostile", inputs, [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 9
    return model.SerializeToString()


def profile_yaml(changes: dict[str, Any] | None = None, head: str = "", name: str = "hostile") -> str:
    """The packaged host profile renamed ``name`` with dotted-path changes (value None deletes a field)."""
    import yaml

    data = yaml.safe_load((ROOT / "edgemvp" / "deploy" / "device_profiles" / "host.yaml").read_text())
    data.update(name=name, aliases=[], detect={})
    data["calibration"]["suite"] = [{"arch": "resnet18", "size": 8, "channels": 1, "classes": 2, "ratio": 0.9}]
    for dotted, value in (changes or {}).items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return head + yaml.safe_dump(data, sort_keys=False)


# --- fixtures ---------------------------------------------------------------------------------------------------
@dataclass
class Fixtures:
    """The tiny things every case starts from, built once per run under ``root``."""

    root: Path
    built: bool = False
    base_sha: str = ""
    entries: list[str] = field(default_factory=list)  # the small zoo's entry ids, in insertion order
    busy_port: int = 0
    _made: dict = field(default_factory=dict, repr=False)

    @property
    def cache(self) -> Path:
        """The cache holding the base (shared read-only by the cases)."""
        return self.root / "cache"

    @property
    def base_dir(self) -> Path:
        """The fixture base's folder."""
        return self.cache / "bases" / "resnet18--digits"

    def resolve(self, text: str, case_dir: Path | None = None) -> str:
        """Replace the placeholders in an argument, a path or an environment value."""
        text = text.replace(FIX, str(self.root)).replace("@BASESHA@", self.base_sha or "b" * 64)
        text = text.replace("@BUSYPORT@", str(self.busy_port))
        if "@FREEPORT@" in text:
            text = text.replace("@FREEPORT@", str(free_port()))
        for i, entry in enumerate(self.entries or ["0" * 64] * 5):
            text = text.replace(f"objects/@ENTRY{i}@", f"objects/{entry[:2]}/{entry}").replace(f"@ENTRY{i}@", entry)
        return text.replace(CASE, str(case_dir)) if case_dir is not None else text

    def entry(self, seed: int, classes: tuple[str, ...] = ("0", "1", "2"), ratio: float = 0.9) -> tuple[Any, bytes]:
        """A random (untrained) entry of the fixture base: ``(manifest, weights bytes)``."""
        from edgemvp.models.base import find_base
        from tests.helpers import make_entry

        if (seed, classes, ratio) not in self._made:
            base = find_base("resnet18", "digits", self.cache)
            self._made[seed, classes, ratio] = make_entry(seed=seed, classes=classes, ratio=ratio,
                                                          base_sha256=base.weights_sha256, spec=base.input_spec,
                                                          base_dataset=base.dataset)
        return self._made[seed, classes, ratio]

    def load_or_build(self) -> None:
        """Reuse fixtures an earlier run left in :attr:`root` (``fixtures.json`` marks them done), else build."""
        marker = self.root / "fixtures.json"
        if marker.is_file():
            saved = json.loads(marker.read_text())
            self.base_sha, self.entries, self.built = saved["base_sha"], saved["entries"], True
            print(f"reusing fixtures in {self.root}", flush=True)
            return
        if self.root.exists():
            shutil.rmtree(self.root)  # an interrupted build
        self.build()
        marker.write_text(json.dumps({"base_sha": self.base_sha, "entries": self.entries}))

    def build(self) -> None:
        """Pre-train the base, make both zoos, one prune run, the bundle, the token and the ONNX files."""
        import torch

        torch.set_num_threads(2)
        started = time.perf_counter()
        self._base()
        self._zoos()
        self._run()
        write(self.root / "token", TOKEN + "\n").chmod(0o600)
        for kind in ("custom-op", "opset99", "two-inputs", "3d-input", "external-passwd", "huge-input", "valid"):
            write(self.root / "onnx" / f"{kind}.onnx", onnx_bytes(kind))
        self.built = True
        print(f"fixtures ready in {time.perf_counter() - started:.0f} s ({self.root})", flush=True)

    def _base(self) -> None:
        """Pre-train the tiny digits base and lay out WordNet."""
        from edgemvp.data.wordnet import wordnet
        from edgemvp.pretrain import PretrainConfig, pretrain
        from edgemvp.train import OptimConfig

        cfg = PretrainConfig(epochs=1, batch_size=64, size=16, amp=False, optim=OptimConfig(lr=0.05, warmup_steps=5))
        self.base_sha = pretrain("resnet18", "digits", cfg, cache=self.cache).weights_sha256
        wordnet(self.cache)  # laid out once, so that concurrent cases only read it

    def _zoos(self) -> None:
        """The small zoo of random entries, its bundle, and the zoo built by ``zoo.build``."""
        from edgemvp.pruners import PruneConfig
        from edgemvp.zoo.build import BuildSpec, build
        from edgemvp.zoo.store import ZooStore

        with ZooStore.open(self.root / "zoo", create=True) as store:
            for seed, classes in enumerate([("0", "1", "2"), ("1", "2", "3"), ("4", "5", "6"), ("0", "2", "8"),
                                            ("7", "8", "9")]):
                self.entries.append(store.put(*self.entry(seed + 1, classes)))
            store.export_bundle(self.root / "bundle.tar")
        spec = BuildSpec("resnet18", "digits", tasks=3, classes_per_task=3, pruner="random",
                         config=PruneConfig(iters=5, batch_size=32), seed=0)
        build(spec, self.root / "bzoo", self.cache, threads=2)

    def _run(self) -> None:
        """One prune run folder (and its model.onnx), and rpi4's fitted cost model."""
        from edgemvp.data.tasks import resolve_task
        from edgemvp.deploy.devices import ProfileRegistry
        from edgemvp.deploy.budget import check_model
        from edgemvp.pipeline import PruneRequest, run

        task = resolve_task(None, "digits", "0,1,2")
        run(PruneRequest(task, "host", self.root / "bzoo", iters=2, neighbours=2, batch_size=32, runs=5,
                         out=self.root / "run", bn_batches=2, leep_samples=40), self.cache)
        shutil.copy(self.root / "run" / "model.onnx", self.root / "model.onnx")
        # fits rpi4's cost model once, so that the cases that estimate latency only read it
        check_model(self.root / "model.onnx", ProfileRegistry((), self.cache).get("rpi4"), 1e9, cache=self.cache)


# --- preparing a case's files -----------------------------------------------------------------------------------
Step = Callable[[Path, Fixtures], None]
Content = bytes | str | Callable[[Fixtures], bytes | str]


def prep(*steps: Step) -> Step:
    """Several preparation steps, in order."""
    def run(case_dir: Path, fx: Fixtures) -> None:
        """Run the steps."""
        for step in steps:
            step(case_dir, fx)
    return run


def copy(name: str, dest: str | None = None) -> Step:
    """Copy a fixture (file or folder) into the case's folder."""
    def step(case_dir: Path, fx: Fixtures) -> None:
        src, dst = fx.root / name, case_dir / (dest or name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy(src, dst)
    return step


def files(mapping: dict[str, Content]) -> Step:
    """Write files relative to the case's folder (a callable content is called with the fixtures)."""
    def step(case_dir: Path, fx: Fixtures) -> None:
        for rel, content in mapping.items():
            data = content(fx) if callable(content) else content
            write(case_dir / rel, fx.resolve(data, case_dir) if isinstance(data, str) else data)
    return step


def at(rel: str, fn: Callable[[Path], Any]) -> Step:
    """Apply ``fn`` to a path in the case's folder (placeholders resolved)."""
    def step(case_dir: Path, fx: Fixtures) -> None:
        fn(Path(fx.resolve(rel, case_dir)))
    return step


def user_folder(rel: str = "home") -> Step:
    """A folder that looks like a user's home: dotfiles, documents, a key (must survive every case)."""
    return files({f"{rel}/.bashrc": "export PATH=$HOME/bin:$PATH\n", f"{rel}/thesis/chapter1.tex": "\\chapter{One}\n",
                  f"{rel}/photo.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, f"{rel}/.ssh/id_ed25519": "KEY\n"})


def sql(*statements: str, zoo: str = "zoo") -> Step:
    """Run SQL on a zoo copy's index (``@ENTRY0@`` etc. resolved)."""
    def step(case_dir: Path, fx: Fixtures) -> None:
        db = sqlite3.connect(case_dir / zoo / "index.sqlite")
        try:
            for statement in statements:
                db.execute(fx.resolve(statement))
            db.commit()
        finally:
            db.close()
    return step


def entry_file(name: str, index: int = 0, zoo: str = "zoo") -> str:
    """The path (with placeholders) of one file of a zoo copy's entry."""
    return f"{CASE}/{zoo}/objects/@ENTRY{index}@/{name}"


def tamper(rel: str, fn: Callable[[Path], Any]) -> Step:
    """Apply ``fn`` to a file of an entry (see :func:`entry_file`)."""
    def step(case_dir: Path, fx: Fixtures) -> None:
        path = Path(fx.resolve(rel, case_dir))
        path.parent.chmod(0o755)
        if path.exists() and not path.is_symlink():
            path.chmod(0o644)
        fn(path)
    return step


def flip_bit(path: Path) -> None:
    """Flip one bit in the middle of a file (rewritten, not changed in place)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    write(path, bytes(data))


def truncate_half(path: Path) -> None:
    """Keep the first half of a file."""
    write(path, path.read_bytes()[: path.stat().st_size // 2])


def remove(path: Path) -> None:
    """Remove a file or a folder."""
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def to_dir(path: Path) -> None:
    """Replace a file by a folder of the same name."""
    remove(path)
    path.mkdir()


def to_fifo(path: Path) -> None:
    """Replace a file by a named pipe."""
    remove(path)
    fifo(path)


def to_sparse(path: Path) -> None:
    """Replace a file by a 10 GiB sparse file."""
    remove(path)
    sparse(path)


def edit_json(path: Path, fn: Callable[[Any], Any]) -> None:
    """Rewrite a JSON file through ``fn``."""
    write(path, json.dumps(fn(json.loads(path.read_text()))))


def base_weights_with(fx: Fixtures, change: Callable[[dict], None]) -> bytes:
    """The fixture base's weights (safetensors bytes) after ``change`` edits the state dict."""
    from edgemvp.models.weights import parse_safetensors, weights_bytes

    state, meta = parse_safetensors((fx.base_dir / "model.safetensors").read_bytes(), "fixture base")
    change(state)
    return weights_bytes(state, meta or None)


def nan_first(state: dict) -> None:
    """Put a NaN into the first floating tensor."""
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")


def cut_first(state: dict) -> None:
    """Keep one row of the first floating tensor that has rows."""
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 0)
    state[key] = state[key][:1].clone()


def inf_first(state: dict) -> None:
    """Put an infinity into the first floating tensor."""
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("inf")


# --- case tables: global options, names, WordNet, cached bases -------------------------------------------------
USER_FILE = files({"file": "the user's notes\n"})


def global_cases() -> list[Case]:
    """``--cache-dir`` / ``--data-dir`` and their environment variables, unknown commands and options."""
    g = "global"
    protect = (f"{CASE}/file",)
    return [
        cli(g, "cache-dir-under-file", "--cache-dir under a regular file (cannot be created)",
            ("--cache-dir", f"{CASE}/file/cache", "bases"), prepare=USER_FILE, protect=protect),
        cli(g, "cache-dir-is-file", "--cache-dir is a regular file", ("--cache-dir", f"{CASE}/file", "bases"),
            prepare=USER_FILE, protect=protect),
        cli(g, "cache-dir-proc", "--cache-dir under /proc", ("--cache-dir", "/proc/hostile/cache", "bases")),
        cli(g, "cache-dir-empty", "--cache-dir ''", ("--cache-dir", "", "bases")),
        cli(g, "env-cache-under-file", "EDGEMVP_CACHE under a regular file", ("bases",),
            env={"EDGEMVP_CACHE": f"{CASE}/file/cache"}, prepare=USER_FILE, protect=protect),
        cli(g, "env-cache-proc", "EDGEMVP_CACHE under /proc, zoo list", ("zoo", "list"),
            env={"EDGEMVP_CACHE": "/proc/hostile/cache"}),
        cli(g, "cache-dir-under-file-prune", "prune with --cache-dir under a regular file",
            ("--cache-dir", f"{CASE}/file/cache", *options(("prune",), PRUNE, {})), prepare=prep(USER_FILE,
            copy("bzoo", "zoo")), protect=protect, timeout=WORK),
        cli(g, "cache-dir-proc-wordnet", "wordnet setup with --cache-dir under /proc",
            ("--cache-dir", "/proc/hostile/cache", "wordnet", "setup")),
        cli(g, "data-dir-proc", "--data-dir under /proc", ("--data-dir", "/proc/hostile/data", "pretrain",
                                                           "--dataset", "cifar-10")),
        cli(g, "data-dir-under-file", "--data-dir under a regular file",
            ("--data-dir", f"{CASE}/file/data", "pretrain", "--dataset", "cifar-10"), prepare=USER_FILE,
            protect=protect),
        cli(g, "env-data-proc", "EDGEMVP_DATA under /proc", ("pretrain", "--dataset", "cifar-10"),
            env={"EDGEMVP_DATA": "/proc/hostile/data"}),
        cli(g, "unknown-command", "an unknown command", ("frobnicate",)),
        cli(g, "unknown-global-option", "an unknown global option", ("--frobnicate", "archs")),
        cli(g, "unknown-zoo-command", "an unknown zoo subcommand", ("zoo", "frobnicate")),
        cli(g, "unknown-option-unicode", "an unknown option with non-ASCII letters", ("archs", "--ärchs")),
        cli(g, "help", "--help (valid)", ("--help",), 0),
        cli(g, "version", "--version (valid)", ("--version",), 0),
        cli(g, "env-profiles-missing", "EDGEMVP_PROFILES names a missing file", ("devices", "list"),
            env={"EDGEMVP_PROFILES": f"{CASE}/nope.yaml"}),
        cli(g, "env-profiles-alias-bomb", "EDGEMVP_PROFILES file with a YAML alias bomb (billion laughs)",
            ("devices", "list"), env={"EDGEMVP_PROFILES": f"{CASE}/bomb.yaml"},
            prepare=files({"bomb.yaml": lambda fx: profile_yaml(head=alias_bomb('"lol"'))})),
        cli(g, "env-profiles-dir-deep", "EDGEMVP_PROFILES folder holding a 10,000-deep YAML file",
            ("devices", "list"), env={"EDGEMVP_PROFILES": f"{CASE}/profiles"},
            prepare=files({"profiles/deep.yaml": deep()})),
    ]


def names_cases() -> list[Case]:
    """Unknown or malformed names and class lists for units, tasks, archs and datasets."""
    n = "names"
    bad_archs = {"nosuch": "nosuch", "empty": "", "upper": "RESNET18", "trailing-space": "resnet18 ",
                 "unicode": "résnet18", "traversal": "../resnet18", "long": LONG, "escape": "resnet18\x1b[31m"}
    cases = [cli(n, f"units-arch-{k}", f"units --arch {cut(v, 30)!r}", ("units", "--arch", v))
             for k, v in bad_archs.items()]
    bad_classes = {"empty": "", "commas": ",,,", "one": "0", "twice": "0,0", "unknown": "0,1,nosuch",
                   "long": LONG, "escape": "0,1,\x1b[2J", "fullwidth": "\uff10,\uff11", "many": ",".join(
                       str(i) for i in range(1000))}
    cases += [cli(n, f"tasks-classes-{k}", f"tasks show --dataset digits --classes {cut(v, 30)!r}",
                  ("tasks", "show", "--dataset", "digits", "--classes", v)) for k, v in bad_classes.items()]
    cases += [
        cli(n, "tasks-classes-rtl", "tasks show --classes '0,\\u202e1' (an RTL override; class names ignore "
            "punctuation, so valid or refused)", ("tasks", "show", "--dataset", "digits", "--classes", "0,\u202e1"),
            (0, 2)),
        cli(n, "tasks-unknown", "tasks show of an unknown task", ("tasks", "show", "nosuch")),
        cli(n, "tasks-empty-name", "tasks show ''", ("tasks", "show", "")),
        cli(n, "tasks-long-name", "tasks show with a 100,000-character name", ("tasks", "show", LONG)),
        cli(n, "tasks-nothing", "tasks show without a task or dataset", ("tasks", "show")),
        cli(n, "tasks-unknown-dataset", "tasks show --dataset nosuch", ("tasks", "show", "--dataset", "nosuch",
                                                                           "--classes", "a,b")),
        cli(n, "tasks-empty-dataset", "tasks show --dataset ''", ("tasks", "show", "--dataset", "", "--classes",
                                                                     "a,b")),
        cli(n, "tasks-imagefolder-empty-path", "tasks show --dataset imagefolder: (no path)",
            ("tasks", "show", "--dataset", "imagefolder:", "--classes", "a,b")),
        cli(n, "tasks-imagefolder-proc", "tasks show --dataset imagefolder:/proc/self/fd (not images)",
            ("tasks", "show", "--dataset", "imagefolder:/proc/self/fd", "--classes", "a,b")),
        cli(n, "tasks-valid", "tasks show --dataset digits --classes 0,1,2 (valid)",
            ("tasks", "show", "--dataset", "digits", "--classes", "0,1,2"), 0),
        cli(n, "tasks-named-valid", "tasks show fashion5 (valid)", ("tasks", "show", "fashion5"), 0),
        cli(n, "archs-valid", "archs (valid)", ("archs",), 0),
        cli(n, "datasets-valid", "datasets list (valid)", ("datasets", "list"), 0),
    ]
    return cases


def wordnet_cases() -> list[Case]:
    """``wordnet similarity`` with unknown, malformed and hostile synset names."""
    w = "wordnet"
    pairs = {"wnid-unknown": ("n00000000", "n99999999"), "wnid-unknown-self": ("n99999999", "n99999999"),
             "name-unknown": ("dog.n.01", "nosuch.n.01"), "empty": ("", ""), "no-pos": ("dog", "cat"),
             "bad-sense": ("dog.n.99", "cat.n.01"), "bad-pos": ("dog.x.01", "cat.n.01"), "long": (LONG, "cat.n.01"),
             "unicode": ("ñandú.n.01", "cat.n.01"), "escape": ("dog.n.01\x1b[31m", "cat.n.01"),
             "traversal": ("../../../etc/passwd", "cat.n.01"), "wnid-negative": ("n-1234567", "cat.n.01"),
             "wnid-offset-zero": ("n00000000", "cat.n.01"), "wnid-verb": ("v01234567", "cat.n.01"),
             "wnid-ten-digits": ("n012345678", "cat.n.01"), "sense-zero": ("dog.n.00", "cat.n.01")}
    cases = [cli(w, k, f"wordnet similarity {cut(a, 30)!r} {cut(b, 30)!r}", ("wordnet", "similarity", a, b))
             for k, (a, b) in pairs.items()]
    return cases + [
        cli(w, "valid-wnids", "wordnet similarity of dog and cat by wnid (valid)",
            ("wordnet", "similarity", "n02084071", "n02121808"), 0),
        cli(w, "valid-names", "wordnet similarity dog.n.01 cat.n.01 (valid)",
            ("wordnet", "similarity", "dog.n.01", "cat.n.01"), 0),
        cli(w, "one-argument", "wordnet similarity with one synset", ("wordnet", "similarity", "dog.n.01")),
    ]


def bases_cases() -> list[Case]:
    """``bases`` (and a prune) over a cache whose base manifest or weights are corrupt."""
    b = "bases"
    manifest = f"{CASE}/cache/bases/resnet18--digits/manifest.json"
    weights = f"{CASE}/cache/bases/resnet18--digits/model.safetensors"

    def schema(value: Any) -> Step:
        """Set the base manifest's schema_version."""
        return at(manifest, lambda p: edit_json(p, lambda d: {**d, "schema_version": value}))

    variants: dict[str, tuple[str, Step]] = {
        "manifest-garbage": ("manifest.json is garbage", files({manifest[len(CASE) + 1:]: "{not json"})),
        "manifest-deep": ("manifest.json nested 10,000 deep", files({manifest[len(CASE) + 1:]: deep()})),
        "manifest-non-utf8": ("manifest.json is not UTF-8", files({manifest[len(CASE) + 1:]: NON_UTF8})),
        "manifest-list": ("manifest.json is a list", files({manifest[len(CASE) + 1:]: "[1, 2]"})),
        "schema-huge": ("schema_version 10**30", schema(10**30)),
        "schema-string": ("schema_version '1' (a string)", schema("1")),
        "schema-list": ("schema_version [1]", schema([1])),
        "schema-float-overflow": ("schema_version 1e400 (overflows to infinity)", at(manifest, lambda p: write(
            p, p.read_text().replace('"schema_version": 1', '"schema_version": 1e400')))),
        "test-acc-string": ("test_acc 'abc'", at(manifest, lambda p: edit_json(p, lambda d: {**d, "test_acc": "x"}))),
        "input-spec-channels": ("input_spec with 2 channels", at(manifest, lambda p: edit_json(
            p, lambda d: {**d, "input_spec": {**d["input_spec"], "channels": 2}}))),
        "manifest-dev-zero": ("manifest.json is a symlink to /dev/zero", at(manifest, lambda p: link(p, "/dev/zero"))),
        "manifest-fifo": ("manifest.json is a named pipe", at(manifest, to_fifo)),
    }
    cases = [cli(b, k, f"bases over a cache whose {d}", ("bases",), cache="base", prepare=step)
             for k, (d, step) in variants.items()]
    cases += [
        cli(b, "weights-dev-zero-prune", "prune with the cached base's weights a symlink to /dev/zero",
            options(("prune",), PRUNE, {}), cache="base", timeout=WORK,
            prepare=prep(copy("bzoo", "zoo"), at(weights, lambda p: link(p, "/dev/zero")))),
        cli(b, "weights-truncated-prune", "prune with the cached base's weights truncated",
            options(("prune",), PRUNE, {}), cache="base", timeout=WORK,
            prepare=prep(copy("bzoo", "zoo"), at(weights, truncate_half))),
        cli(b, "manifest-garbage-prune", "prune with the cached base's manifest garbage",
            options(("prune",), PRUNE, {}), cache="base", timeout=WORK,
            prepare=prep(copy("bzoo", "zoo"), files({manifest[len(CASE) + 1:]: "{not json"}))),
        cli(b, "valid", "bases over the fixture cache (valid)", ("bases",), 0),
    ]
    return cases


# --- case tables: pre-training, --init files, image folders, zoo builds ----------------------------------------
FLOATS_BAD = {"nan": "nan", "NaN": "NaN", "inf": "inf", "minus-inf": "-inf", "zero": "0", "minus-zero": "-0",
              "negative": "-1", "overflow": "1e309", "empty": "", "word": "abc"}


def pretrain_cases() -> list[Case]:
    """``pretrain`` option values (a new cache: what an accepted bad value trains is checked for NaN)."""
    p = "pretrain"
    watch = (f"{CASE}/cache/bases",)
    values = {"--lr": {**FLOATS_BAD, "huge": "1e308"},
              "--epochs": {**FLOATS_BAD, "huge": "1e308"},
              "--batch-size": {"zero": "0", "negative": "-1", "huge": str(10**30), "float": "1.5", "empty": ""},
              "--size": {"seven": "7", "zero": "0", "negative": "-1", "huge": str(10**6), "overflow": str(10**30),
                         "word": "abc"},
              "--seed": {"negative": "-1", "two-to-64": str(2**64), "huge": str(10**30), "float": "1.5"},
              "--arch": {"unknown": "nosuch", "empty": "", "unicode": "résnet18", "traversal": "../resnet18"},
              "--dataset": {"unknown": "nosuch", "empty": "", "traversal": "../../etc", "long": LONG}}
    cases = [cli(p, f"{opt[2:]}-{k}", f"pretrain {opt} {cut(v, 30)!r}", options(("pretrain",), QUICK_PRETRAIN, {opt: v}),
                 cache="empty", watch=watch, timeout=WORK)
             for opt, table in values.items() for k, v in table.items()]
    return cases + [
        cli(p, "epochs-tiny", "pretrain --epochs 1e-300 (valid: one step)",
            options(("pretrain",), QUICK_PRETRAIN, {"--epochs": "1e-300"}), 0, cache="empty", timeout=WORK),
        cli(p, "lr-nan-cached", "pretrain --lr nan when the base is cached (the value is checked first)",
            ("pretrain", "--dataset", "digits", "--size", "16", "--lr", "nan"), cache="base",
            protect=(f"{CASE}/cache/bases",)),
        cli(p, "epochs-nan-cached", "pretrain --epochs nan when the base is cached",
            ("pretrain", "--dataset", "digits", "--size", "16", "--epochs", "nan"), cache="base",
            protect=(f"{CASE}/cache/bases",)),
        cli(p, "force-lr-nan", "pretrain --force --lr nan over the cached base (must not replace it)",
            ("pretrain", "--dataset", "digits", "--size", "16", "--epochs", "0.05", "--force", "--lr", "nan"),
            cache="base", protect=(f"{CASE}/cache/bases",), timeout=WORK),
        cli(p, "offline-dataset", "pretrain --dataset cifar-100 offline", ("pretrain", "--dataset", "cifar-100")),
    ]


def init_cases() -> list[Case]:
    """``pretrain --init FILE`` with files that are not safe, finite weights of this model."""
    i = "init"
    watch = (f"{CASE}/cache/bases",)
    files_ = {
        "pickle": ("a pickle whose loading runs code", "evil.pt", lambda fx: pickle_payload()),
        "torch-zip": ("a torch.save zip named .safetensors", "w.safetensors", lambda fx: torch_zip()),
        "torch-zip-pt": ("a torch.save zip of one tensor (does not fit)", "w.pt", lambda fx: torch_zip()),
        "truncated": ("the base's safetensors cut in half", "w.safetensors",
                      lambda fx: (fx.base_dir / "model.safetensors").read_bytes()[:1 << 20]),
        "empty": ("an empty .safetensors file", "w.safetensors", b""),
        "header-lies": ("a safetensors header declaring a 10**12-element tensor", "w.safetensors",
                        safetensors_header({"conv1.weight": {"dtype": "F32", "shape": [10**6, 10**6],
                                                             "data_offsets": [0, 4 * 10**12]}})),
        "header-huge": ("a safetensors header length of 2**63", "w.safetensors", struct.pack("<Q", 2**63) + b"{}"),
        "nan": ("the base's weights with a NaN", "nan.safetensors", lambda fx: base_weights_with(fx, nan_first)),
        "inf": ("the base's weights with an infinity", "inf.safetensors", lambda fx: base_weights_with(fx, inf_first)),
        "wrong-shapes": ("weights of another shape (one tensor cut)", "cut.safetensors",
                         lambda fx: base_weights_with(fx, cut_first)),
        "text": ("a text file named .pt", "w.pt", "not a checkpoint\n"),
    }
    cases = [cli(i, k, f"--init {d}", options(("pretrain",), {**QUICK_PRETRAIN, "--size": "16"},
                                               {"--init": f"{CASE}/{name}"}),
                 prepare=files({name: content}), cache="empty", watch=watch, timeout=WORK)
             for k, (d, name, content) in files_.items()]
    specials = {
        "sparse-10g": ("a 10 GiB sparse .safetensors file", lambda d, fx: sparse(d / "w.safetensors")),
        "dev-zero": ("a symlink to /dev/zero named .safetensors", lambda d, fx: link(d / "w.safetensors", "/dev/zero")),
        "fifo": ("a named pipe named .safetensors", lambda d, fx: fifo(d / "w.safetensors")),
        "directory": ("a folder named .safetensors", lambda d, fx: (d / "w.safetensors").mkdir()),
    }
    cases += [cli(i, k, f"--init {d}", options(("pretrain",), QUICK_PRETRAIN, {"--init": f"{CASE}/w.safetensors"}),
                  prepare=step, cache="empty", watch=watch) for k, (d, step) in specials.items()]
    return cases + [
        cli(i, "missing", "--init a missing file", options(("pretrain",), QUICK_PRETRAIN, {"--init": f"{CASE}/no.pt"}),
            cache="empty", watch=watch),
        cli(i, "hub-offline", "--init hub while offline", options(("pretrain",), QUICK_PRETRAIN, {"--init": "hub"}),
            cache="empty", watch=watch),
        cli(i, "empty-string", "--init ''", options(("pretrain",), QUICK_PRETRAIN, {"--init": ""}), cache="empty",
            watch=watch),
    ]


def bases_add_cases() -> list[Case]:
    """``bases add`` (a stock pre-trained checkpoint as a base) with files that are not safe weights of the arch,
    and bad sources and sizes; nothing may be cached."""
    a = "bases-add"
    watch = (f"{CASE}/cache/bases",)
    files_ = {
        "pickle": ("a pickle whose loading runs code", "evil.pt", lambda fx: pickle_payload()),
        "torch-zip": ("a torch.save zip named .safetensors", "w.safetensors", lambda fx: torch_zip()),
        "resnet-for-lite0": ("the fixture resnet18's weights for efficientnet_lite0", "w.safetensors",
                             lambda fx: (fx.base_dir / "model.safetensors").read_bytes()),
        "truncated": ("a safetensors file cut in half", "w.safetensors",
                      lambda fx: (fx.base_dir / "model.safetensors").read_bytes()[:1 << 20]),
        "empty": ("an empty .safetensors file", "w.safetensors", b""),
        "header-lies": ("a safetensors header declaring a 10**12-element tensor", "w.safetensors",
                        safetensors_header({"_conv_stem.weight": {"dtype": "F32", "shape": [10**6, 10**6],
                                                                  "data_offsets": [0, 4 * 10**12]}})),
        "text": ("a text file named .pth", "w.pth", "not a checkpoint\n"),
    }
    cases = [cli(a, k, f"bases add efficientnet_lite0 --weights {d}",
                 ("bases", "add", "efficientnet_lite0", "--weights", f"{CASE}/{name}", "--size", "32"),
                 prepare=files({name: content}), cache="empty", watch=watch, timeout=WORK)
             for k, (d, name, content) in files_.items()]
    specials = {
        "dev-zero": ("a symlink to /dev/zero", lambda d, fx: link(d / "w.safetensors", "/dev/zero")),
        "fifo": ("a named pipe", lambda d, fx: fifo(d / "w.safetensors")),
        "directory": ("a folder", lambda d, fx: (d / "w.safetensors").mkdir()),
        "sparse-10g": ("a 10 GiB sparse file", lambda d, fx: sparse(d / "w.safetensors")),
    }
    cases += [cli(a, k, f"bases add --weights {d}", ("bases", "add", "efficientnet_lite0", "--weights",
                                                       f"{CASE}/w.safetensors"), prepare=step, cache="empty",
                  watch=watch) for k, (d, step) in specials.items()]
    argv = {"hub-offline": ("resnet18", "--weights", "hub"), "hub-other-arch": ("resnet50", "--weights", "hub:resnet18"),
            "package-unknown": ("resnet18", "--weights", "package"), "arch-unknown": ("nosuch", "--weights", "hub"),
            "weights-empty": ("efficientnet_lite0", "--weights", ""), "size-zero": ("resnet18", "--size", "0"),
            "size-huge": ("resnet18", "--size", str(10**30)), "size-word": ("resnet18", "--size", "abc"),
            "weights-long": ("efficientnet_lite0", "--weights", LONG)}
    return cases + [cli(a, k, f"bases add {' '.join(cut(x, 30) for x in v)}", ("bases", "add", *v), cache="empty",
                        watch=watch) for k, v in argv.items()]


def tasks_file_cases() -> list[Case]:
    """``zoo build --tasks-file`` with hostile or malformed task lists; no zoo may be written."""
    t = "tasks-file"
    watch = (f"{CASE}/newzoo", f"{CASE}/cache/zoos")
    lists = {
        "alias-bomb": ("a YAML alias bomb", alias_bomb()),
        "deep": ("nested 10,000 deep", deep()),
        "not-a-mapping": ("a list at the top", "- dataset: digits\n"),
        "empty-list": ("an empty tasks list", "tasks: []\n"),
        "no-classes": ("a task without classes", "tasks:\n  - {dataset: digits}\n"),
        "classes-dicts": ("classes that are mappings", "tasks:\n  - {dataset: digits, classes: [{a: 1}, {b: 2}]}\n"),
        "dataset-unknown": ("an unknown dataset", "tasks:\n  - {dataset: nosuch, classes: [a, b]}\n"),
        "dataset-traversal": ("an image-folder dataset that does not exist",
                              "tasks:\n  - {dataset: 'imagefolder:../../etc', classes: [a, b]}\n"),
        "class-unknown": ("a class the dataset lacks", "tasks:\n  - {dataset: digits, classes: [0, nosuch]}\n"),
        "repeat": ("the same task twice", "tasks:\n  - {dataset: digits, classes: [0, 1]}\n"
                                          "  - {dataset: digits, classes: [1, 0]}\n"),
        "name-traversal": ("a name with a path", "tasks:\n  - {dataset: digits, classes: [0, 1], name: ../x}\n"),
        "non-utf8": ("not UTF-8", NON_UTF8),
        "garbage": ("not YAML", "tasks: [unclosed\n"),
    }
    cases = [cli(t, k, f"zoo build --tasks-file with {d}", options(("zoo", "build"), BUILD,
                                                                    {"--tasks-file": f"{CASE}/past.yaml"}),
                 prepare=files({"past.yaml": content}), watch=watch) for k, (d, content) in lists.items()]
    return cases + [
        cli(t, "missing", "zoo build --tasks-file missing", options(("zoo", "build"), BUILD,
                                                                   {"--tasks-file": f"{CASE}/none.yaml"}), watch=watch),
        cli(t, "dev-zero", "zoo build --tasks-file a symlink to /dev/zero", options(("zoo", "build"), BUILD, {
            "--tasks-file": f"{CASE}/past.yaml"}), prepare=lambda d, fx: link(d / "past.yaml", "/dev/zero"),
            watch=watch),
        cli(t, "min-similarity-negative", "prune --min-similarity -1", options(("prune",), PRUNE, {
            "--min-similarity": "-1"}), prepare=copy("bzoo", "zoo"), protect=(f"{CASE}/zoo",)),
        cli(t, "min-similarity-nan", "prune --min-similarity nan", options(("prune",), PRUNE, {
            "--min-similarity": "nan"}), prepare=copy("bzoo", "zoo"), protect=(f"{CASE}/zoo",)),
    ]


def imagefolder_cases() -> list[Case]:
    """``imagefolder:<path>`` datasets with missing, empty, corrupt or hostile trees."""
    f = "imagefolder"
    good = {f"tree/{c}/{n}.png": lambda fx, c=c, n=n: _png(c, n) for c in ("a", "b") for n in range(3)}
    trees: dict[str, tuple[str, Step]] = {
        "missing": ("a missing folder", prep()),
        "file": ("a regular file", files({"tree": "not a folder"})),
        "empty": ("an empty folder", at(f"{CASE}/tree", lambda p: p.mkdir())),
        "corrupt-png": ("a tree with a corrupt PNG", files({**good, "tree/a/bad.png": b"\x89PNG\r\n\x1a\nnot a png"})),
        "zero-byte-png": ("a tree with a 0-byte PNG", files({**good, "tree/b/empty.png": b""})),
        "png-bomb": ("a tree with a PNG declaring 100,000 x 100,000 pixels", files({**good, "tree/a/bomb.png":
                                                                                        png_bomb()})),
        "one-class": ("a tree with a single class", files({k: v for k, v in good.items() if "/a/" in k})),
        "dev-zero-image": ("a tree with an image that is a symlink to /dev/zero",
                           prep(files(good), at(f"{CASE}/tree/a/zero.png", lambda p: link(p, "/dev/zero")))),
        "fifo-image": ("a tree with an image that is a named pipe",
                       prep(files(good), at(f"{CASE}/tree/b/pipe.png", fifo))),
    }
    cases = [cli(f, f"pretrain-{k}", f"pretrain --dataset imagefolder: {d}",
                 options(("pretrain",), {**QUICK_PRETRAIN, "--dataset": f"imagefolder:{CASE}/tree"}, {}),
                 prepare=step, cache="empty", watch=(f"{CASE}/cache/bases",), timeout=WORK)
             for k, (d, step) in trees.items()]
    return cases + [
        cli(f, "tasks-symlink-loop", "tasks show over an image folder with a symlink loop",
            ("tasks", "show", "--dataset", f"imagefolder:{CASE}/tree", "--classes", "a,b"), (0, 2),
            prepare=prep(files(good), at(f"{CASE}/tree/a/loop", lambda p: link(p, "..")))),
        cli(f, "tasks-valid", "tasks show over a valid image folder", ("tasks", "show", "--dataset",
                                                                       f"imagefolder:{CASE}/tree", "--classes", "a,b"),
            0, prepare=files(good)),
    ]


def _png(cls: str, n: int) -> bytes:
    """A small solid-colour RGB PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (12, 16), (60 * (cls == "b"), 10 * n, 0)).save(buf, format="PNG")
    return buf.getvalue()


def build_cases() -> list[Case]:
    """``zoo build`` option values (on a copy of the fixture base; what an accepted value builds is checked)."""
    z = "zoo-build"
    watch = (f"{CASE}/newzoo/objects", f"{CASE}/cache/zoos")
    values = {"--lr": {**FLOATS_BAD, "huge": "1e308"},
              "--ratio": {"nan": "nan", "inf": "inf", "zero": "0", "one": "1", "negative": "-0.1", "huge": "1e308"},
              "--prune-fraction": {"nan": "nan", "zero": "0", "one": "1", "inf": "inf"},
              "--tasks": {"zero": "0", "negative": "-1", "trillion": str(10**12), "huge": str(10**30)},
              "--classes-per-task": {"one": "1", "zero": "0", "eleven": "11", "huge": str(10**30)},
              "--iters": {"zero": "0", "negative": "-1", "huge": str(10**30)},
              "--batch-size": {"zero": "0", "negative": "-1", "huge": str(10**30)},
              "--prune-every": {"zero": "0", "negative": "-1"},
              "--seed": {"negative": "-1", "two-to-64": str(2**64), "huge": str(10**30)},
              "--workers": {"zero": "0", "negative": "-1", "million": str(10**6)},
              "--threads": {"zero": "0", "negative": "-1", "million": str(10**6)},
              "--pruner": {"unknown": "nosuch", "ahnp-on-cnn": "ahnp", "empty": ""},
              "--arch": {"unknown": "nosuch", "vit-without-base": "vit_tiny"},
              "--dataset": {"unknown": "nosuch", "without-base": "fashion-mnist"}}
    cases = [cli(z, f"{opt[2:]}-{k}", f"zoo build {opt} {cut(v, 30)!r}", options(("zoo", "build"), BUILD, {opt: v}),
                 cache="base", watch=watch, timeout=WORK)
             for opt, table in values.items() for k, v in table.items()]
    return cases + [
        cli(z, "ray-bad-address", "zoo build --ray with a malformed address",
            options(("zoo", "build"), BUILD, {"--ray": "http://[::1"}), cache="base", watch=watch, timeout=WORK),
        cli(z, "zoo-user-folder", "zoo build --zoo a user's folder with files",
            options(("zoo", "build"), BUILD, {"--zoo": f"{CASE}/home"}), cache="base", prepare=user_folder(),
            protect=(f"{CASE}/home",), timeout=WORK),
        cli(z, "zoo-marker-garbage", "zoo build --zoo a zoo whose zoo.json is garbage",
            options(("zoo", "build"), BUILD, {"--zoo": f"{CASE}/zoo"}), cache="base",
            prepare=prep(copy("zoo"), files({"zoo/zoo.json": "{garbage"})), protect=(f"{CASE}/zoo",)),
        cli(z, "zoo-proc", "zoo build --zoo under /proc", options(("zoo", "build"), BUILD, {"--zoo": "/proc/hostile"}),
            cache="base", timeout=WORK),
        cli(z, "zoo-under-file", "zoo build --zoo under a regular file",
            options(("zoo", "build"), BUILD, {"--zoo": f"{CASE}/file/zoo"}), cache="base", prepare=USER_FILE,
            protect=(f"{CASE}/file",), timeout=WORK),
    ]


# --- case tables: prune options, --out, --hierarchy, zoo addresses and token files -----------------------------
def prune_cases() -> list[Case]:
    """``prune`` option values (each on its own copy of the built zoo, which must not change)."""
    p = "prune"
    values = {"--iters": {"negative": "-1", "trillion": str(10**12), "huge": str(10**30), "word": "abc", "empty": ""},
              "--neighbours": {"zero": "0", "negative": "-1", "huge": str(10**30), "more-than-zoo": "99"},
              "--temperature": {k: v for k, v in FLOATS_BAD.items() if k != "NaN"},
              "--ratio": {**{k: v for k, v in FLOATS_BAD.items() if k not in ("NaN", "word")}, "one": "1",
                          "above-one": "1.5", "huge": "1e308"},
              "--lr": {k: v for k, v in FLOATS_BAD.items() if k != "NaN"},
              "--seed": {"negative": "-1", "two-to-64": str(2**64), "huge": str(10**30), "float": "1.5"},
              "--budget-ms": {k: v for k, v in FLOATS_BAD.items() if k != "NaN"},
              "--train-per-class": {"zero": "0", "negative": "-1", "float": "2.5"},
              "--runs": {"four": "4", "negative": "-1"},
              "--device": {"unknown": "toaster", "empty": "", "traversal": "../host", "long": LONG},
              "--method": {"unknown": "nosuch"}, "--similarity": {"unknown": "nosuch"},
              "--bn-reestimate": {"unknown": "sometimes"}, "--arch": {"unknown": "nosuch", "vit": "vit_tiny"},
              "--base-dataset": {"unknown": "nosuch"},
              "--classes": {"empty": "", "one": "0", "twice": "0,0", "unknown": "0,1,nosuch", "long": LONG,
                            "escape": "0,1,\x1b[2J"},
              "--dataset": {"unknown": "nosuch", "empty": ""}}
    protect = (f"{CASE}/zoo",)
    cases = [cli(p, f"{opt[2:]}-{k}", f"prune {opt} {cut(v, 30)!r}", options(("prune",), PRUNE, {opt: v}),
                 prepare=copy("bzoo", "zoo"), protect=protect, timeout=WORK)
             for opt, table in values.items() for k, v in table.items()]
    no_task = {"--dataset": None, "--classes": None}
    return cases + [
        cli(p, "task-unknown", "prune --task nosuch", options(("prune",), PRUNE, {**no_task, "--task": "nosuch"}),
            prepare=copy("bzoo", "zoo"), protect=protect),
        cli(p, "task-empty", "prune --task ''", options(("prune",), PRUNE, {**no_task, "--task": ""}),
            prepare=copy("bzoo", "zoo"), protect=protect),
        cli(p, "no-task", "prune without a task", options(("prune",), PRUNE, no_task), prepare=copy("bzoo", "zoo")),
        cli(p, "runs-huge-measure", "prune --measure --runs 10**30", options(("prune",), PRUNE, {
            "--runs": str(10**30), "--measure": True}), prepare=copy("bzoo", "zoo"), protect=protect, timeout=WORK),
        cli(p, "bn-contradiction", "prune --no-bn-reestimate --bn-reestimate on",
            options(("prune",), PRUNE, {"--no-bn-reestimate": True, "--bn-reestimate": "on"}),
            prepare=copy("bzoo", "zoo"), protect=protect),
        cli(p, "lr-huge-add-to-zoo", "prune --lr 1e308 --add-to-zoo: fine-tuning diverges; no NaN entry stored",
            options(("prune",), PRUNE, {"--lr": "1e308", "--add-to-zoo": True}), (1, 2),
            prepare=copy("bzoo", "zoo"), watch=(f"{CASE}/zoo/objects",), timeout=WORK),
        cli(p, "profiles-alias-bomb", "prune --profiles FILE with a YAML alias bomb",
            options(("prune",), PRUNE, {"--profiles": f"{CASE}/p.yaml"}), prepare=prep(copy("bzoo", "zoo"), files(
                {"p.yaml": lambda fx: profile_yaml(head=alias_bomb('"lol"'))})), protect=protect, timeout=WORK),
        cli(p, "zoo-empty-folder", "prune --zoo an empty folder (not a zoo)", options(("prune",), PRUNE, {}),
            prepare=at(f"{CASE}/zoo", lambda q: q.mkdir())),
        cli(p, "zoo-file", "prune --zoo a regular file", options(("prune",), PRUNE, {}),
            prepare=files({"zoo": "not a zoo"})),
        cli(p, "zoo-missing", "prune --zoo a missing folder", options(("prune",), PRUNE, {})),
        cli(p, "valid", "prune with valid options (control)", options(("prune",), PRUNE, {}), 0,
            prepare=copy("bzoo", "zoo"), protect=protect, timeout=WORK),
    ]


def out_cases() -> list[Case]:
    """``prune --out``: folders it must refuse (with the files intact) and ones it may replace."""
    o = "prune-out"
    zoo = copy("bzoo", "zoo")
    home = prep(zoo, user_folder(), files({"home/work/draft.txt": "draft\n"}))
    rows: list[tuple[str, str, str, int, Step, tuple[str, ...], str]] = [
        ("dot", "--out . (the working folder, inside a user's folder)", ".", 2, home, (f"{CASE}/home",), "home/work"),
        ("dotdot", "--out .. (the user's folder)", "..", 2, home, (f"{CASE}/home",), "home/work"),
        ("empty", "--out ''", "", 2, zoo, (), ""),
        ("proc", "--out under /proc", "/proc/hostile/out", 2, zoo, (), ""),
        ("root", "--out /", "/", 2, zoo, (), ""),
        ("under-file", "--out under a regular file", f"{CASE}/file/out", 2, prep(zoo, USER_FILE), (f"{CASE}/file",), ""),
        ("is-file", "--out a regular file", f"{CASE}/file", 2, prep(zoo, USER_FILE), (f"{CASE}/file",), ""),
        ("user-folder", "--out a user's folder with files (like $HOME)", f"{CASE}/home", 2, home, (f"{CASE}/home",), ""),
        ("symlink-to-user-folder", "--out a symlink to a user's folder", f"{CASE}/link", 2,
         prep(home, at(f"{CASE}/link", lambda p: link(p, "home"))), (f"{CASE}/home",), ""),
        ("zoo-folder", "--out the zoo folder it votes from", f"{CASE}/zoo", 2, zoo, (f"{CASE}/zoo",), ""),
        ("inside-zoo", "--out the zoo's objects folder", f"{CASE}/zoo/objects", 2, zoo, (f"{CASE}/zoo",), ""),
        ("long-name", "--out with a 300-character name", f"{CASE}/{'a' * 300}", 2, zoo, (), ""),
        ("earlier-run", "--out an earlier edgemvp run folder (valid: replaced atomically)", f"{CASE}/run", 0,
         prep(zoo, copy("run"), files({"notes.txt": "beside the run\n"})), (f"{CASE}/notes.txt",), ""),
        ("empty-folder", "--out an existing empty folder (valid)", f"{CASE}/emptydir", 0,
         prep(zoo, at(f"{CASE}/emptydir", lambda p: p.mkdir())), (), ""),
        ("new-nested", "--out a new nested folder (valid)", f"{CASE}/new/deep/out", 0, zoo, (), ""),
    ]
    cases = [cli(o, slug, description, options(("prune",), PRUNE, {"--out": out}), code, prepare=step,
                 protect=(*protect, f"{CASE}/zoo"), cwd=cwd, timeout=WORK)
             for slug, description, out, code, step, protect, cwd in rows]
    cases.append(cli(o, "cache-folder", "--out the cache folder holding the bases", options(("prune",), PRUNE, {
        "--out": f"{CASE}/cache"}), prepare=zoo, cache="base", protect=(f"{CASE}/cache/bases", f"{CASE}/zoo"),
        timeout=WORK))
    return cases


def hierarchy_cases() -> list[Case]:
    """``prune --hierarchy FILE`` with files that are missing, unparsable, hostile or not trees."""
    h = "hierarchy"
    texts: dict[str, tuple[str, str, Content]] = {
        "empty": ("an empty file", "tree.yaml", ""),
        "yaml-garbage": ("unparsable YAML", "tree.yaml", "root: [unclosed\n  - {a: b\n"),
        "json-garbage": ("unparsable JSON", "tree.json", "{\"root\": [1, 2"),
        "alias-bomb": ("a YAML alias bomb of nested empty lists (9**9 nodes)", "tree.yaml", alias_bomb()),
        "alias-bomb-lol": ("a YAML alias bomb of strings", "tree.yaml", alias_bomb('"lol"')),
        "deep-yaml-list": ("YAML lists nested 10,000 deep", "tree.yaml", deep()),
        "deep-yaml-map": ("YAML mappings nested 10,000 deep", "tree.yaml", deep(mapping=True)),
        "deep-json": ("JSON nested 10,000 deep", "tree.json", deep()),
        "tree-65-deep": ("a tree 65 levels deep", "tree.json", json.dumps(_chain(65))),
        "non-utf8": ("a file that is not UTF-8", "tree.yaml", NON_UTF8),
        "scalar": ("a scalar, not a tree", "tree.yaml", "hello\n"),
        "floats": ("node names that are floats", "tree.yaml", "root: [1.5, 2.5]\n"),
        "duplicates": ("a node twice", "tree.yaml", "root: {a: ['0', '1'], b: ['0', '2']}\n"),
        "bool-names": ("node names that are booleans", "tree.yaml", "root: [true, false]\n"),
    }
    protect = (f"{CASE}/zoo",)
    cases = [cli(h, slug, f"prune --hierarchy {d}", options(("prune",), PRUNE, {"--hierarchy": f"{CASE}/{name}"}),
                 prepare=prep(copy("bzoo", "zoo"), files({name: content})), protect=protect, timeout=WORK)
             for slug, (d, name, content) in texts.items()]
    specials: dict[str, tuple[str, Step]] = {
        "missing": ("a missing file", prep()),
        "directory": ("a folder", at(f"{CASE}/tree.yaml", lambda p: p.mkdir())),
        "dev-zero": ("a symlink to /dev/zero", at(f"{CASE}/tree.yaml", lambda p: link(p, "/dev/zero"))),
        "fifo": ("a named pipe", at(f"{CASE}/tree.yaml", fifo)),
        "sparse-10g": ("a 10 GiB sparse file", at(f"{CASE}/tree.yaml", sparse)),
    }
    cases += [cli(h, slug, f"prune --hierarchy {d}", options(("prune",), PRUNE, {"--hierarchy": f"{CASE}/tree.yaml"}),
                  prepare=prep(copy("bzoo", "zoo"), step), protect=protect, timeout=WORK)
              for slug, (d, step) in specials.items()]
    return cases + [
        cli(h, "valid", "prune --hierarchy a valid even/odd digits tree (valid)",
            options(("prune",), PRUNE, {"--hierarchy": f"{CASE}/tree.json"}), 0,
            prepare=prep(copy("bzoo", "zoo"), files({"tree.json": json.dumps(TREE)})), protect=protect,
            timeout=WORK),
        cli(h, "classes-not-in-tree", "prune --hierarchy a valid tree without the task's classes (the README's "
            "fallback to LEEP, or refused)", options(("prune",), PRUNE, {"--hierarchy": f"{CASE}/tree.json"}), (0, 2),
            prepare=prep(copy("bzoo", "zoo"), files({"tree.json": json.dumps({"r": ["x", "y"]})})),
            protect=protect, timeout=WORK),
    ]


def _chain(depth: int) -> Any:
    """A tree that is one chain ``depth`` levels deep."""
    node: Any = ["0", "1", "2"]
    for i in range(depth):
        node = {f"n{i}": node}
    return node


def url_cases() -> list[Case]:
    """Malformed zoo server addresses and token files for ``prune`` and ``zoo build``."""
    u = "zoo-url"
    urls = {"unclosed-ipv6": "http://[::1", "no-host": "http://", "port-too-big": "https://host:99999",
            "port-word": "http://127.0.0.1:port", "empty-host": "http://:8000", "bad-escape": "http://127.0.0.1:1/%zz",
            "closed-port": "http://127.0.0.1:1", "unresolvable": "http://hostile.invalid:8000",
            "port-zero": "http://[::1]:0", "userinfo": "http://user:pass@[::1]:x/", "space": "http://127.0.0.1 :1",
            "newline": "http://127.0.0.1:1/\r\nX-Evil: 1"}
    cases = [cli(u, f"prune-{k}", f"prune --zoo {v!r}", options(("prune",), PRUNE, {"--zoo": v}), timeout=WORK)
             for k, v in urls.items()]
    cases += [cli(u, f"build-{k}", f"zoo build --zoo {v!r}", options(("zoo", "build"), BUILD, {"--zoo": v}),
                  cache="base", timeout=WORK) for k, v in urls.items() if k in ("unclosed-ipv6", "no-host",
                                                                                "port-too-big", "closed-port")]
    tokens: dict[str, tuple[str, Step]] = {
        "missing": ("a missing token file", prep()),
        "empty": ("an empty token file", files({"token": ""})),
        "directory": ("a folder", at(f"{CASE}/token", lambda p: p.mkdir())),
        "dev-zero": ("a symlink to /dev/zero", at(f"{CASE}/token", lambda p: link(p, "/dev/zero"))),
        "fifo": ("a named pipe", at(f"{CASE}/token", fifo)),
        "sparse-10g": ("a 10 GiB sparse file", at(f"{CASE}/token", sparse)),
        "non-utf8": ("a token file that is not UTF-8", files({"token": b"\xff\xfe\xfd token"})),
    }
    cases += [cli(u, f"token-{k}", f"prune --zoo http://127.0.0.1:1 --token-file {d}",
                  options(("prune",), PRUNE, {"--zoo": "http://127.0.0.1:1", "--token-file": f"{CASE}/token"}),
                  prepare=step) for k, (d, step) in tokens.items()]
    return cases + [
        cli(u, "env-token-newline", "EDGEMVP_ZOO_TOKEN holding a newline (an HTTP header injection)",
            options(("prune",), PRUNE, {"--zoo": "http://127.0.0.1:1"}),
            env={"EDGEMVP_ZOO_TOKEN": "abc\r\nX-Evil: 1"}),
        cli(u, "env-token-non-ascii", "EDGEMVP_ZOO_TOKEN with non-ASCII characters",
            options(("prune",), PRUNE, {"--zoo": "http://127.0.0.1:1"}), env={"EDGEMVP_ZOO_TOKEN": "tökén☃"}),
        cli(u, "build-token-dev-zero", "zoo build --zoo http://127.0.0.1:1 --token-file a symlink to /dev/zero",
            options(("zoo", "build"), BUILD, {"--zoo": "http://127.0.0.1:1", "--token-file": f"{CASE}/token"}),
            cache="base", prepare=at(f"{CASE}/token", lambda p: link(p, "/dev/zero"))),
        cli(u, "list-url", "zoo list --zoo a URL (works on folders only)", ("zoo", "list", "--zoo",
                                                                            "http://127.0.0.1:1")),
    ]


# --- bundles (for zoo import and server uploads) ----------------------------------------------------------------
def bundle(items: list[tuple[bytes, bytes]]) -> bytes:
    """A bundle in ``zoo export``'s format of ``(canonical manifest bytes, weights bytes)``."""
    from edgemvp.zoo.store import bundle_bytes

    return bundle_bytes(items)


def resigned(manifest: Any, weights: bytes) -> bytes:
    """A one-entry bundle whose manifest names ``weights`` by their sha256 (so only a full check refuses it)."""
    return bundle([(replace(manifest, weights_sha256=hashlib.sha256(weights).hexdigest()).to_bytes(), weights)])


def entry_weights_with(fx: Fixtures, seed: int, change: Callable[[dict], None]) -> tuple[Any, bytes]:
    """An entry with its weights' state dict edited by ``change``."""
    from edgemvp.models.weights import parse_safetensors, weights_bytes

    manifest, weights = fx.entry(seed)
    state, meta = parse_safetensors(weights, "entry")
    change(state)
    return manifest, weights_bytes(state, meta)


def canonical(data: dict) -> bytes:
    """Manifest JSON in canonical form (sorted keys, no spaces)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def raw_bundle(fx: Fixtures, header: bytes | None = None, members: Iterable[bytes] = (), seed: int = 20,
               weights: bytes | None = None, raw: bytes | None = None) -> bytes:
    """A hand-made bundle tar: ``bundle.json`` (``header`` or a valid one), one entry, extra members."""
    manifest, good = fx.entry(seed)
    raw = raw or manifest.to_bytes()
    entry_id = hashlib.sha256(raw).hexdigest()
    if header is None:
        header = json.dumps({"format": "edgemvp-zoo-bundle", "schema_version": 1, "entries": [entry_id]}).encode()
    parts = [tar_member("bundle.json", header), tar_member(f"{entry_id}/manifest.json", raw),
             tar_member(f"{entry_id}/weights.safetensors", good if weights is None else weights)]
    return tar_end([*parts, *members])


def header_bundle(schema: str) -> Callable[[Fixtures], bytes]:
    """A bundle whose header's schema_version is the raw JSON text ``schema``."""
    def make(fx: Fixtures) -> bytes:
        entry_id = hashlib.sha256(fx.entry(20)[0].to_bytes()).hexdigest()
        text = '{"format": "edgemvp-zoo-bundle", "schema_version": %s, "entries": ["%s"]}' % (schema, entry_id)
        return raw_bundle(fx, text.encode())
    return make


def manifest_bundle(edit: Callable[[dict], None], seed: int = 21) -> Callable[[Fixtures], bytes]:
    """A bundle of one entry whose manifest JSON is edited, then written canonically (its id follows)."""
    def make(fx: Fixtures) -> bytes:
        manifest, weights = fx.entry(seed)
        data = json.loads(manifest.to_bytes())
        edit(data)
        return bundle([(canonical(data), weights)])
    return make


def special_member(kind: str) -> Callable[[Fixtures], bytes]:
    """A bundle whose weights member is ``sparse`` (GNU, 64 GiB), ``pax-size`` (a 64 GiB size record),
    ``symlink`` or ``hardlink``."""
    def make(fx: Fixtures) -> bytes:
        manifest, weights = fx.entry(22)
        raw = manifest.to_bytes()
        entry_id = hashlib.sha256(raw).hexdigest()
        name = f"{entry_id}/weights.safetensors"
        member = {"sparse": lambda: gnu_sparse_member(name),
                  "pax-size": lambda: pax_size_member(name, weights),
                  "symlink": lambda: tar_header(name, 0, b"2", "/etc/passwd"),
                  "hardlink": lambda: tar_header(name, 0, b"1", "bundle.json")}[kind]()
        header = json.dumps({"format": "edgemvp-zoo-bundle", "schema_version": 1, "entries": [entry_id]}).encode()
        return tar_end([tar_member("bundle.json", header), tar_member(f"{entry_id}/manifest.json", raw), member])
    return make


def many_members(count: int) -> Callable[[Fixtures], bytes]:
    """A tar of ``count`` empty members and no ``bundle.json`` (a member-count bomb)."""
    def make(fx: Fixtures) -> bytes:
        return tar_end(tar_header(f"m/{i:07d}", 0) for i in range(count))
    return make


def _nan_entry(fx: Fixtures) -> bytes:
    """An entry with a NaN in its weights, re-signed."""
    return resigned(*entry_weights_with(fx, 11, nan_first))


def _inf_entry(fx: Fixtures) -> bytes:
    """An entry with an infinity in its weights, re-signed."""
    return resigned(*entry_weights_with(fx, 11, inf_first))


def _other_weights(fx: Fixtures) -> bytes:
    """Entry 12's manifest (ratio 0.9) naming entry 13's weights (ratio 0.8: other masks, other widths).

    A swap between entries of the same ratio keeps every shape, so only masks recorded with the weights could
    tell it apart; this one is refused by loading the weights strictly into create(arch) -> shrink(masks)."""
    return resigned(fx.entry(12)[0], fx.entry(13, ratio=0.8)[1])


def _fewer_classes(fx: Fixtures) -> bytes:
    """A 3-class manifest naming a 2-class model's weights."""
    return resigned(fx.entry(14)[0], fx.entry(14, ("0", "1"))[1])


def _weights(data: bytes | Callable[[Fixtures], bytes]) -> Callable[[Fixtures], bytes]:
    """A bundle of one entry whose weights are replaced by ``data`` (re-signed)."""
    return lambda fx: resigned(fx.entry(15)[0], data(fx) if callable(data) else data)


def _many_classes(fx: Fixtures) -> bytes:
    """A canonical manifest of 20,000 classes over 3-class weights."""
    from edgemvp.data.tasks import TaskSpec

    manifest, weights = fx.entry(16)
    classes = tuple(f"c{i}" for i in range(20_000))
    return bundle([(replace(manifest, task=TaskSpec("many", "digits", classes)).to_bytes(), weights)])


def _nan_metric(fx: Fixtures) -> bytes:
    """A canonical manifest whose test_acc is NaN."""
    manifest, weights = fx.entry(17)
    return bundle([(replace(manifest, metrics={**manifest.metrics, "test_acc": float("nan")}).to_bytes(), weights)])


def _masks_out_of_range(data: dict) -> None:
    """Keep an index conv1 does not have."""
    data["masks"]["conv1"] = [0, 999]


def _unknown_arch(data: dict) -> None:
    """Name an arch edgemvp does not know."""
    data["base"]["arch"] = "nosuch"


def _newer_schema(data: dict) -> None:
    """Claim a newer manifest schema."""
    data["schema_version"] = 99


def _too_many(fx: Fixtures) -> bytes:
    """A bundle of 65 entries (one more than an upload may hold)."""
    return bundle([(m.to_bytes(), w) for m, w in (fx.entry(100 + i) for i in range(65))])


BUNDLES: dict[str, tuple[str, Callable[[Fixtures], bytes]]] = {
    "nan-weights": ("an entry with NaN weights (re-signed)", _nan_entry),
    "inf-weights": ("an entry with infinite weights (re-signed)", _inf_entry),
    "other-entry-weights": ("another entry's weights under this entry's masks (re-signed)", _other_weights),
    "fewer-classes": ("weights of a 2-class model under a 3-class manifest (re-signed)", _fewer_classes),
    "sparse-member": ("a GNU sparse weights member declaring 64 GiB", special_member("sparse")),
    "pax-size-lie": ("a PAX header claiming a 64 GiB weights member", special_member("pax-size")),
    "symlink-member": ("the weights member a symlink to /etc/passwd", special_member("symlink")),
    "hardlink-member": ("the weights member a hard link", special_member("hardlink")),
    "member-bomb": ("100,000 members and no bundle.json", many_members(100_000)),
    "gzip-bomb": ("1 GiB of zeros gzipped (not a plain tar)", lambda fx: gzip_bomb()),
    "garbage": ("random bytes", lambda fx: os.urandom(4096)),
    "empty-file": ("an empty file", lambda fx: b""),
    "header-garbage": ("bundle.json is not JSON", lambda fx: raw_bundle(fx, b"{garbage")),
    "header-deep": ("bundle.json nested 10,000 deep", lambda fx: raw_bundle(fx, deep().encode())),
    "header-non-utf8": ("bundle.json is not UTF-8", lambda fx: raw_bundle(fx, NON_UTF8)),
    "header-list": ("bundle.json is a list", lambda fx: raw_bundle(fx, b"[1, 2, 3]")),
    "schema-huge": ("bundle.json schema_version 10**30", header_bundle(str(10**30))),
    "schema-string": ("bundle.json schema_version \"1\" (a string)", header_bundle('"1"')),
    "schema-list": ("bundle.json schema_version [1]", header_bundle("[1]")),
    "schema-overflow": ("bundle.json schema_version 1e400", header_bundle("1e400")),
    "schema-nan": ("bundle.json schema_version NaN", header_bundle("NaN")),
    "schema-bool": ("bundle.json schema_version true", header_bundle("true")),
    "format-wrong": ("bundle.json of another format", lambda fx: raw_bundle(fx, b'{"format": "tar", "entries": []}')),
    "entries-not-list": ("bundle.json entries is a string", lambda fx: raw_bundle(
        fx, b'{"format": "edgemvp-zoo-bundle", "schema_version": 1, "entries": "abc"}')),
    "entries-missing-member": ("bundle.json lists an entry it lacks", lambda fx: raw_bundle(
        fx, json.dumps({"format": "edgemvp-zoo-bundle", "schema_version": 1, "entries": ["e" * 64]}).encode())),
    "no-header": ("no bundle.json", lambda fx: tar_end([tar_member("x/manifest.json", b"{}")])),
    "manifest-not-canonical": ("a manifest not in canonical form", lambda fx: raw_bundle(
        fx, raw=json.dumps(json.loads(fx.entry(20)[0].to_bytes()), indent=1).encode())),
    "manifest-garbage": ("a manifest that is not JSON (its id matches)", lambda fx: raw_bundle(fx, raw=b"{garbage")),
    "manifest-newer": ("a manifest of schema 99", manifest_bundle(_newer_schema)),
    "masks-out-of-range": ("masks with an index out of range", manifest_bundle(_masks_out_of_range)),
    "unknown-arch": ("an entry of an unknown arch", manifest_bundle(_unknown_arch)),
    "many-classes": ("an entry of 20,000 classes", _many_classes),
    "nan-metric": ("an entry whose test_acc is NaN", _nan_metric),
    "weights-pickle": ("weights that are a pickle (re-signed)", _weights(lambda fx: pickle_payload())),
    "weights-torch-zip": ("weights that are a torch.save zip (re-signed)", _weights(lambda fx: torch_zip())),
    "weights-truncated": ("truncated weights (re-signed)", _weights(lambda fx: fx.entry(15)[1][:4096])),
    "weights-header-lies": ("a safetensors header claiming 10**12 elements (re-signed)", _weights(
        safetensors_header({"fc.weight": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}))),
    "too-many-entries": ("65 entries", _too_many),
}


# --- case tables: the zoo store (marker, index, entries), show, export, import, serve ---------------------------
def _marker(text: str) -> Step:
    """Replace a zoo copy's zoo.json."""
    return files({"zoo/zoo.json": text})


MARKERS: dict[str, tuple[str, Step]] = {
    "garbage": ("zoo.json is garbage", _marker("{garbage")),
    "deep": ("zoo.json nested 10,000 deep", _marker(deep())),
    "non-utf8": ("zoo.json is not UTF-8", files({"zoo/zoo.json": NON_UTF8})),
    "list": ("zoo.json is a list", _marker("[1]")),
    "empty": ("zoo.json is empty", _marker("")),
    "schema-huge": ("schema_version 10**30", _marker('{"format": "edgemvp-zoo", "schema_version": %d}' % 10**30)),
    "schema-string": ("schema_version \"1\" (a string)", _marker('{"format": "edgemvp-zoo", "schema_version": "1"}')),
    "schema-list": ("schema_version [1]", _marker('{"format": "edgemvp-zoo", "schema_version": [1]}')),
    "schema-float": ("schema_version 1.5", _marker('{"format": "edgemvp-zoo", "schema_version": 1.5}')),
    "schema-bool": ("schema_version true", _marker('{"format": "edgemvp-zoo", "schema_version": true}')),
    "schema-negative": ("schema_version -1", _marker('{"format": "edgemvp-zoo", "schema_version": -1}')),
    "schema-overflow": ("schema_version 1e400", _marker('{"format": "edgemvp-zoo", "schema_version": 1e400}')),
    "schema-nan": ("schema_version NaN", _marker('{"format": "edgemvp-zoo", "schema_version": NaN}')),
    "format-other": ("another format", _marker('{"format": "other", "schema_version": 1}')),
    "missing": ("no zoo.json", at(f"{CASE}/zoo/zoo.json", remove)),
    "directory": ("zoo.json is a folder", at(f"{CASE}/zoo/zoo.json", to_dir)),
    "dev-zero": ("zoo.json is a symlink to /dev/zero", at(f"{CASE}/zoo/zoo.json", lambda p: link(p, "/dev/zero"))),
    "fifo": ("zoo.json is a named pipe", at(f"{CASE}/zoo/zoo.json", to_fifo)),
}
INDEXES: dict[str, tuple[str, Step]] = {
    "index-garbage": ("index.sqlite is garbage", files({"zoo/index.sqlite": os.urandom(8192)})),
    "index-truncated": ("index.sqlite cut in half", at(f"{CASE}/zoo/index.sqlite", truncate_half)),
    "index-directory": ("index.sqlite is a folder", at(f"{CASE}/zoo/index.sqlite", to_dir)),
    "index-dev-zero": ("index.sqlite is a symlink to /dev/zero", at(f"{CASE}/zoo/index.sqlite",
                                                                     lambda p: link(p, "/dev/zero"))),
    "index-fifo": ("index.sqlite is a named pipe", at(f"{CASE}/zoo/index.sqlite", to_fifo)),
    "index-schema-newer": ("index meta schema_version 999", sql("UPDATE meta SET value='999' WHERE key='schema_version'")),
    "index-schema-word": ("index meta schema_version 'abc'", sql("UPDATE meta SET value='abc' WHERE key='schema_version'")),
    "index-wrong-table": ("index entries table with other columns", sql("DROP TABLE entries",
                                                                        "CREATE TABLE entries (x INTEGER)")),
    "index-classes-garbage": ("an index row whose classes are not JSON",
                              sql("UPDATE entries SET classes='[garbage' WHERE id='@ENTRY0@'")),
}


def store_cases() -> list[Case]:
    """Corrupt zoo markers and indexes, for every command that opens a zoo the user names (usage errors)."""
    s = "zoo-store"
    commands = {"list": ("zoo", "list", "--zoo", f"{CASE}/zoo"), "verify": ("zoo", "verify", "--zoo", f"{CASE}/zoo"),
                "show": ("zoo", "show", "@ENTRY0@", "--zoo", f"{CASE}/zoo"),
                "export": ("zoo", "export", f"{CASE}/out.tar", "--zoo", f"{CASE}/zoo"),
                "import": ("zoo", "import", f"{FIX}/bundle.tar", "--zoo", f"{CASE}/zoo"),
                "prune": options(("prune",), PRUNE, {"--zoo": f"{CASE}/zoo"})}
    plan = {"list": [*MARKERS, *INDEXES], "verify": ["garbage", "deep", "schema-overflow", "index-garbage",
                                                     "index-truncated", "index-fifo", "index-schema-word"],
            "show": ["garbage", "index-garbage", "index-classes-garbage"], "export": ["deep", "index-garbage"],
            "import": ["garbage", "deep", "schema-string", "index-garbage", "index-truncated"],
            "prune": ["garbage", "deep", "schema-overflow", "index-garbage", "index-wrong-table"]}
    both = {**MARKERS, **INDEXES}
    cases = []
    for command, names in plan.items():
        for name in names:
            description, step = both[name]
            zoo = "bzoo" if command == "prune" else "zoo"
            # a row the index holds but cannot describe is corruption found (exit 1, as zoo verify), not a
            # usage error; an index SQLite cannot read at all is a usage error (2) with the repair command
            expected = 1 if name == "index-classes-garbage" else 2
            cases.append(cli(s, f"{command}-{name}", f"zoo {command} of a zoo whose {description}"
                             if command != "prune" else f"prune --zoo a zoo whose {description}", commands[command],
                             expected, prepare=prep(copy(zoo, "zoo"), step), protect=(f"{CASE}/zoo/objects",),
                             watch=(f"{CASE}/out.tar",), timeout=WORK if command == "prune" else CHEAP))
    return cases + [
        cli(s, "list-index-empty", "zoo list of a zoo whose index.sqlite is empty (derived data; 0 or a clear error)",
            commands["list"], (0, 2), prepare=prep(copy("zoo"), files({"zoo/index.sqlite": b""}))),
        cli(s, "list-valid", "zoo list of the small zoo (valid)", commands["list"], 0, prepare=copy("zoo"),
            protect=(f"{CASE}/zoo",)),
        cli(s, "list-class-unicode", "zoo list --class with unicode and escapes (valid filter, no rows)",
            (*commands["list"], "--class", "ñ\x1b[31m☃"), 0, prepare=copy("zoo"), protect=(f"{CASE}/zoo",)),
        cli(s, "list-class-long", "zoo list --class with 100,000 characters (valid filter, no rows)",
            (*commands["list"], "--class", LONG), 0, prepare=copy("zoo"), protect=(f"{CASE}/zoo",)),
        cli(s, "list-missing-folder", "zoo list of a missing folder", commands["list"]),
        cli(s, "list-user-folder", "zoo list of a user's folder", ("zoo", "list", "--zoo", f"{CASE}/home"),
            prepare=user_folder(), protect=(f"{CASE}/home",)),
    ]


def tampering() -> dict[str, tuple[str, Step]]:
    """Ways to corrupt entry 0 of a zoo copy (its files, its folder or its index row), with a description."""
    weights, manifest = entry_file("weights.safetensors"), entry_file("manifest.json")
    return {
        "weights-bit-flip": ("one bit of an entry's weights flipped", tamper(weights, flip_bit)),
        "weights-truncated": ("an entry's weights cut in half", tamper(weights, truncate_half)),
        "weights-empty": ("an entry's weights emptied", tamper(weights, lambda p: write(p, b""))),
        "weights-dev-zero": ("an entry's weights a symlink to /dev/zero", tamper(weights, lambda p: link(p, "/dev/zero"))),
        "weights-fifo": ("an entry's weights a named pipe", tamper(weights, to_fifo)),
        "weights-directory": ("an entry's weights a folder", tamper(weights, to_dir)),
        "weights-sparse-10g": ("an entry's weights a 10 GiB sparse file", tamper(weights, to_sparse)),
        "weights-missing": ("an entry's weights deleted", tamper(weights, remove)),
        "manifest-bit-flip": ("one bit of an entry's manifest flipped", tamper(manifest, flip_bit)),
        "manifest-dev-zero": ("an entry's manifest a symlink to /dev/zero", tamper(manifest, lambda p: link(p, "/dev/zero"))),
        "manifest-fifo": ("an entry's manifest a named pipe", tamper(manifest, to_fifo)),
        "manifest-missing": ("an entry's manifest deleted", tamper(manifest, remove)),
        "folder-missing": ("an entry's folder deleted", tamper(f"{CASE}/zoo/objects/@ENTRY0@", remove)),
        "folder-symlink-to-other": ("an entry's folder a symlink to another entry's",
                                    tamper(f"{CASE}/zoo/objects/@ENTRY0@", lambda p: link(p, fx_other(p)))),
        "mask-bits-zeroed": ("an entry's mask bits zeroed in index.sqlite", sql(
            "UPDATE entries SET mask_bits = zeroblob(length(mask_bits)) WHERE id='@ENTRY0@'")),
        "mask-bits-ones": ("an entry's mask bits all set in index.sqlite", sql(
            "UPDATE entries SET mask_bits = CAST(replace(hex(zeroblob(length(mask_bits))), '00', 'ff') AS BLOB) "
            "WHERE id='@ENTRY0@'")),
        "mask-bits-short": ("an entry's mask bits cut short in index.sqlite", sql(
            "UPDATE entries SET mask_bits = substr(mask_bits, 1, 10) WHERE id='@ENTRY0@'")),
        "n-units-wrong": ("an entry's unit count wrong in index.sqlite", sql(
            "UPDATE entries SET n_units = n_units - 1 WHERE id='@ENTRY0@'")),
        "classes-changed": ("an entry's classes changed in index.sqlite", sql(
            "UPDATE entries SET classes='[\"9\",\"8\",\"7\"]' WHERE id='@ENTRY0@'")),
        "arch-changed": ("an entry's arch changed in index.sqlite", sql(
            "UPDATE entries SET arch='resnet50' WHERE id='@ENTRY0@'")),
        "base-changed": ("an entry's base sha256 changed in index.sqlite", sql(
            f"UPDATE entries SET base_sha256='{'c' * 64}' WHERE id='@ENTRY0@'")),
        "row-without-files": ("an index row for an entry that has no files", sql(
            f"INSERT INTO entries SELECT '{'e' * 64}', 'ghost-job', arch, base_sha256, dataset, task, classes, "
            "pruner, test_acc, params, macs, keep_ratio, mask_bits, n_units, build_seconds FROM entries "
            "WHERE id='@ENTRY0@'")),
    }


def verify_cases() -> list[Case]:
    """``zoo verify`` of zoos with a tampered entry: exit 1 naming the entry, fast, without touching the others."""
    v = "zoo-verify"
    weights, manifest = entry_file("weights.safetensors"), entry_file("manifest.json")
    others = tuple(f"{CASE}/zoo/objects/@ENTRY{i}@" for i in range(1, 5))
    cases = [cli(v, slug, f"zoo verify with {d}", ("zoo", "verify", "--zoo", f"{CASE}/zoo"), 1,
                 prepare=prep(copy("zoo"), step), mention=f"{'e' * 64}" if slug == "row-without-files" else "@ENTRY0@",
                 protect=others) for slug, (d, step) in tampering().items()]
    return cases + [
        cli(v, "valid", "zoo verify of the small zoo (valid)", ("zoo", "verify", "--zoo", f"{CASE}/zoo"), 0,
            prepare=copy("zoo"), protect=(f"{CASE}/zoo/objects",)),
        cli(v, "temp-folder", "zoo verify removes an unfinished write (valid)", ("zoo", "verify", "--zoo",
                                                                                f"{CASE}/zoo"), 0,
            prepare=prep(copy("zoo"), files({"zoo/objects/.tmp-0123456789abcdef-1-deadbeef/weights.safetensors": b"x"}))),
        cli(v, "unindexed-entry", "zoo verify re-indexes a complete entry missing from the index (valid)",
            ("zoo", "verify", "--zoo", f"{CASE}/zoo"), 0, prepare=prep(copy("zoo"), sql(
                "DELETE FROM entries WHERE id='@ENTRY0@'", "DELETE FROM entry_classes WHERE id='@ENTRY0@'"))),
        cli(v, "index-deleted", "zoo verify rebuilds a deleted index from the entries (valid)",
            ("zoo", "verify", "--zoo", f"{CASE}/zoo"), 0, prepare=prep(copy("zoo"), at(
                f"{CASE}/zoo/index.sqlite", remove))),
        cli(v, "objects-dev-zero", "zoo verify with objects/ a symlink to /dev/zero (every entry missing)",
            ("zoo", "verify", "--zoo", f"{CASE}/zoo"), 1, prepare=prep(copy("zoo"), at(
                f"{CASE}/zoo/objects", lambda p: link(p, "/dev/zero")))),
        cli(v, "show-manifest-bit-flip", "zoo show of an entry whose manifest has a flipped bit",
            ("zoo", "show", "@ENTRY0@", "--zoo", f"{CASE}/zoo"), (1, 2), prepare=prep(copy("zoo"),
                                                                                     tamper(manifest, flip_bit))),
        cli(v, "export-weights-bit-flip", "zoo export of a zoo with a corrupt entry writes no bundle",
            ("zoo", "export", f"{CASE}/out/b.tar", "--zoo", f"{CASE}/zoo"), (1, 2),
            prepare=prep(copy("zoo"), tamper(weights, flip_bit), at(f"{CASE}/out", lambda p: p.mkdir())),
            watch=(f"{CASE}/out",)),
    ]


def fx_other(path: Path) -> str:
    """The folder of another entry next to ``path`` (``objects/<xx>/<id>``), as a symlink target."""
    objects = path.parent.parent
    others = sorted(p for p in objects.glob("??/*") if p.is_dir() and p.name != path.name)
    return str(others[0])


def show_cases() -> list[Case]:
    """``zoo show`` with ids that are not entry ids."""
    s = "zoo-show"
    ids = {"long": LONG, "empty": "", "not-hex": "zz", "like-percent": "%", "like-underscore": "_",
           "unknown": "f" * 64, "sixty-five": "a" * 65, "unicode": "ß" * 12, "escape": "\x1b[2J", "traversal":
           "../../etc/passwd", "sql": "' OR 1=1 --", "whitespace": "  "}
    cases = [cli(s, slug, f"zoo show {cut(v, 30)!r}", ("zoo", "show", v, "--zoo", f"{CASE}/zoo"),
                 prepare=copy("zoo"), protect=(f"{CASE}/zoo",)) for slug, v in ids.items()]
    return cases + [
        cli(s, "valid", "zoo show of an entry (valid)", ("zoo", "show", "@ENTRY0@", "--zoo", f"{CASE}/zoo"), 0,
            prepare=copy("zoo"), protect=(f"{CASE}/zoo",)),
        cli(s, "files-missing", "zoo show of an indexed entry whose folder is gone", ("zoo", "show", "@ENTRY0@",
                                                                                    "--zoo", f"{CASE}/zoo"), (1, 2),
            prepare=prep(copy("zoo"), tamper(f"{CASE}/zoo/objects/@ENTRY0@", remove))),
    ]


def export_bundle_cases() -> list[Case]:
    """``zoo export BUNDLE``: targets it must refuse without touching the zoo or the user's files."""
    e = "zoo-export"
    zoo = (f"{CASE}/zoo",)
    base = copy("zoo")
    rows: list[tuple[str, str, str, Step, tuple[str, ...]]] = [
        ("onto-index", "onto the zoo's index.sqlite", f"{CASE}/zoo/index.sqlite", base, zoo),
        ("onto-marker", "onto the zoo's zoo.json", f"{CASE}/zoo/zoo.json", base, zoo),
        ("onto-entry-weights", "onto an entry's weights file", entry_file("weights.safetensors"), base, zoo),
        ("onto-user-file", "onto an existing user file (no --force)", f"{CASE}/file", prep(base, USER_FILE),
         (*zoo, f"{CASE}/file")),
        ("onto-symlink", "onto a symlink to a user file", f"{CASE}/link", prep(base, USER_FILE, at(
            f"{CASE}/link", lambda p: link(p, "file"))), (*zoo, f"{CASE}/file")),
        ("onto-dev-null", "onto /dev/null (an existing file)", "/dev/null", base, zoo),
        ("onto-folder", "onto a folder", f"{CASE}/home", prep(base, user_folder()), (*zoo, f"{CASE}/home")),
        ("onto-zoo", "onto the zoo folder itself", f"{CASE}/zoo", base, zoo),
        ("proc", "under /proc", "/proc/hostile.tar", base, zoo),
        ("under-file", "under a regular file", f"{CASE}/file/b.tar", prep(base, USER_FILE), (*zoo, f"{CASE}/file")),
        ("empty", "to ''", "", base, zoo),
    ]
    cases = [cli(e, slug, f"zoo export {d}", ("zoo", "export", target, "--zoo", f"{CASE}/zoo"), prepare=step,
                 protect=protect) for slug, d, target, step, protect in rows]
    ids = {"unknown-id": "f" * 64, "not-hex": "zz", "long-id": LONG}
    cases += [cli(e, slug, f"zoo export with id {cut(v, 30)!r}", ("zoo", "export", f"{CASE}/b.tar", v, "--zoo",
                                                                  f"{CASE}/zoo"), prepare=base, protect=zoo,
                  watch=(f"{CASE}/b.tar",)) for slug, v in ids.items()]
    return cases + [
        cli(e, "valid", "zoo export to a new file (valid)", ("zoo", "export", f"{CASE}/b.tar", "--zoo",
                                                             f"{CASE}/zoo"), 0, prepare=base, protect=zoo),
        cli(e, "missing-zoo", "zoo export of a missing zoo", ("zoo", "export", f"{CASE}/b.tar", "--zoo",
                                                              f"{CASE}/nozoo"), watch=(f"{CASE}/b.tar",)),
    ]


def import_cases() -> list[Case]:
    """``zoo import BUNDLE``: every hostile bundle refused (exit 2) with nothing stored, fast."""
    i = "zoo-import"
    cases = []
    for slug, (description, make) in BUNDLES.items():
        if slug == "too-many-entries":
            continue  # only the server limits the entries per bundle
        for target in ("new", "existing"):
            zoo = f"{CASE}/{'newzoo' if target == 'new' else 'zoo'}"
            cases.append(cli(i, f"{slug}-{target}", f"zoo import of a bundle with {description} into a "
                             f"{target} zoo", ("zoo", "import", f"{CASE}/b.tar", "--zoo", zoo),
                             prepare=prep(files({"b.tar": make}), *([copy("zoo")] if target == "existing" else [])),
                             protect=(f"{CASE}/zoo",) if target == "existing" else (), watch=(f"{zoo}/objects",)))
            if slug not in ("nan-weights", "other-entry-weights", "sparse-member", "pax-size-lie", "member-bomb"):
                break  # the rest once, into a new zoo
    files_: dict[str, tuple[str, Step]] = {
        "bundle-dev-zero": ("a symlink to /dev/zero", at(f"{CASE}/b.tar", lambda p: link(p, "/dev/zero"))),
        "bundle-fifo": ("a named pipe", at(f"{CASE}/b.tar", fifo)),
        "bundle-sparse-10g": ("a 10 GiB sparse file", at(f"{CASE}/b.tar", sparse)),
        "bundle-directory": ("a folder", at(f"{CASE}/b.tar", lambda p: p.mkdir())),
        "bundle-missing": ("a missing file", prep()),
    }
    cases += [cli(i, slug, f"zoo import of {d}", ("zoo", "import", f"{CASE}/b.tar", "--zoo", f"{CASE}/newzoo"),
                  prepare=step, watch=(f"{CASE}/newzoo/objects",)) for slug, (d, step) in files_.items()]
    valid = copy("bundle.tar", "b.tar")
    return cases + [
        cli(i, "valid-new", "zoo import of the fixture bundle into a new zoo (valid)",
            ("zoo", "import", f"{CASE}/b.tar", "--zoo", f"{CASE}/newzoo"), 0, prepare=valid),
        cli(i, "valid-present", "zoo import of the fixture bundle into the zoo it came from (valid, all present)",
            ("zoo", "import", f"{CASE}/b.tar", "--zoo", f"{CASE}/zoo"), 0, prepare=prep(valid, copy("zoo"))),
        cli(i, "into-user-folder", "zoo import into a user's folder", ("zoo", "import", f"{CASE}/b.tar", "--zoo",
                                                                       f"{CASE}/home"),
            prepare=prep(valid, user_folder()), protect=(f"{CASE}/home",)),
        cli(i, "into-proc", "zoo import into /proc", ("zoo", "import", f"{CASE}/b.tar", "--zoo", "/proc/hostile"),
            prepare=valid),
        cli(i, "into-under-file", "zoo import into a folder under a regular file",
            ("zoo", "import", f"{CASE}/b.tar", "--zoo", f"{CASE}/file/zoo"), prepare=prep(valid, USER_FILE),
            protect=(f"{CASE}/file",)),
        cli(i, "too-many-entries", "zoo import of 65 entries (valid on the CLI: no per-bundle limit)",
            ("zoo", "import", f"{CASE}/b.tar", "--zoo", f"{CASE}/newzoo"), 0, prepare=files({"b.tar": _too_many}),
            timeout=WORK),
    ]


def serve_cases() -> list[Case]:
    """``zoo serve`` option values it must refuse before listening (a server that starts is a hang here)."""
    s = "zoo-serve"
    base = ("zoo", "serve", "--zoo", f"{CASE}/zoo", "--port", "@FREEPORT@")
    tokens: dict[str, tuple[str, Step]] = {
        "token-missing": ("a missing file", prep()),
        "token-world-readable": ("a world-readable file", prep(files({"t": TOKEN}), at(f"{CASE}/t",
                                                                                        lambda p: p.chmod(0o644)))),
        "token-short": ("a short token", prep(files({"t": "short"}), at(f"{CASE}/t", lambda p: p.chmod(0o600)))),
        "token-empty": ("an empty file", prep(files({"t": ""}), at(f"{CASE}/t", lambda p: p.chmod(0o600)))),
        "token-non-utf8": ("a file that is not UTF-8", prep(files({"t": b"\xff" * 40}), at(f"{CASE}/t",
                                                                                         lambda p: p.chmod(0o600)))),
        "token-dev-zero": ("a symlink to /dev/zero", at(f"{CASE}/t", lambda p: link(p, "/dev/zero"))),
        "token-fifo": ("a named pipe", prep(at(f"{CASE}/t", fifo), at(f"{CASE}/t", lambda p: p.chmod(0o600)))),
        "token-directory": ("a folder", at(f"{CASE}/t", lambda p: p.mkdir(mode=0o700))),
        "token-sparse-10g": ("a 10 GiB sparse file", prep(at(f"{CASE}/t", sparse), at(f"{CASE}/t",
                                                                                      lambda p: p.chmod(0o600)))),
    }
    cases = [cli(s, slug, f"zoo serve --token-file {d}", (*base, "--token-file", f"{CASE}/t"),
                 prepare=prep(copy("zoo"), step), timeout=30) for slug, (d, step) in tokens.items()]
    cases.append(cli(s, "read-token-dev-zero", "zoo serve --read-token-file a symlink to /dev/zero",
                     (*base, "--read-token-file", f"{CASE}/t"), prepare=prep(copy("zoo"), at(
                         f"{CASE}/t", lambda p: link(p, "/dev/zero"))), timeout=30))
    values = {"--port": {"zero": "0", "too-big": "65536", "negative": "-1", "word": "http", "busy": "@BUSYPORT@"},
              "--host": {"unresolvable": "hostile.invalid", "public-without-flag": "0.0.0.0", "empty": ""},
              "--max-upload-mb": {"zero": "0", "too-big": "4097", "negative": "-1"},
              "--vote-workers": {"zero": "0", "too-many": "65"}, "--threads": {"zero": "0", "too-many": "257"},
              "--zoo": {"user-folder": f"{CASE}/home", "proc": "/proc/hostile", "under-file": f"{CASE}/file/zoo"}}
    cases += [cli(s, f"{opt[2:]}-{k}", f"zoo serve {opt} {v!r}", base[:2] + _swap(base[2:], opt, v),
                  prepare=prep(copy("zoo"), user_folder(), USER_FILE), protect=(f"{CASE}/home", f"{CASE}/file"),
                  timeout=30) for opt, table in values.items() for k, v in table.items()]
    return cases + [
        cli(s, "public-without-token", "zoo serve --public without --token-file", (*base, "--public"),
            prepare=copy("zoo"), timeout=30),
        cli(s, "zoo-index-garbage", "zoo serve of a zoo whose index.sqlite is garbage", base,
            prepare=prep(copy("zoo"), files({"zoo/index.sqlite": os.urandom(8192)})), timeout=30),
        cli(s, "zoo-marker-deep", "zoo serve of a zoo whose zoo.json is nested 10,000 deep", base,
            prepare=prep(copy("zoo"), _marker(deep())), timeout=30),
    ]


def _swap(args: tuple[str, ...], option: str, value: str) -> tuple[str, ...]:
    """``args`` (pairs of option and value) with one option's value set (appended when absent)."""
    pairs = dict(zip(args[::2], args[1::2]))
    pairs[option] = value
    return tuple(x for kv in pairs.items() for x in kv)


# --- case tables: device profiles, check, export ----------------------------------------------------------------
BOMB_OPTIONS = ("  - name: CPUExecutionProvider\n", "  - name: CPUExecutionProvider\n    options: {x: *l8}\n")


def _profile(changes: dict[str, Any] | None = None, **kw: Any) -> Callable[[Fixtures], str]:
    """A profile file's text made at preparation time (see :func:`profile_yaml`)."""
    return lambda fx: profile_yaml(changes, **kw)


def _bomb_in_options(fx: Fixtures) -> str:
    """A valid profile whose provider options are a YAML alias bomb."""
    return profile_yaml(head=alias_bomb('"lol"')).replace(*BOMB_OPTIONS)


PROFILES: dict[str, tuple[str, Content]] = {
    "alias-bomb": ("a YAML alias bomb in unknown fields", _profile(head=alias_bomb('"lol"'))),
    "alias-bomb-options": ("a YAML alias bomb as provider options", _bomb_in_options),
    "deep-list": ("YAML nested 10,000 deep", deep()),
    "deep-map": ("YAML mappings nested 10,000 deep", deep(mapping=True)),
    "non-utf8": ("a file that is not UTF-8", NON_UTF8),
    "empty-file": ("an empty file", ""),
    "list": ("a list", "- 1\n- 2\n"),
    "scalar": ("a scalar", "hello\n"),
    "malformed": ("malformed YAML", "name: [unclosed\nbudget: {a\n"),
    "name-empty": ("name ''", _profile({"name": ""})),
    "name-number": ("name 123", _profile({"name": 123})),
    "latency-nan": ("budget.latency_ms .nan", _profile({"budget.latency_ms": float("nan")})),
    "latency-inf": ("budget.latency_ms .inf", _profile({"budget.latency_ms": float("inf")})),
    "latency-negative": ("budget.latency_ms -1", _profile({"budget.latency_ms": -1})),
    "latency-word": ("budget.latency_ms 'abc'", _profile({"budget.latency_ms": "abc"})),
    "latency-bool": ("budget.latency_ms true", _profile({"budget.latency_ms": True})),
    "statistic-unknown": ("budget.statistic p101", _profile({"budget.statistic": "p101"})),
    "size-budget-inf": ("budget.model_size_mb .inf", _profile({"budget.model_size_mb": float("inf")})),
    "size-budget-nan": ("budget.model_size_mb .nan", _profile({"budget.model_size_mb": float("nan")})),
    "memory-inf": ("hardware.memory_gb .inf", _profile({"hardware.memory_gb": float("inf")})),
    "cores-negative": ("hardware.cores -1", _profile({"hardware.cores": -1})),
    "cores-huge": ("hardware.cores 10**30", _profile({"hardware.cores": 10**30})),
    "gflops-nan": ("hardware.peak_gflops .nan", _profile({"hardware.peak_gflops": float("nan")})),
    "bandwidth-inf": ("hardware.mem_bandwidth_gbs .inf", _profile({"hardware.mem_bandwidth_gbs": float("inf")})),
    "cache-word": ("hardware.cache_mb 'lots'", _profile({"hardware.cache_mb": "lots"})),
    "providers-empty": ("runtime.providers []", _profile({"runtime.providers": []})),
    "providers-string": ("runtime.providers a string", _profile({"runtime.providers": "CPU"})),
    "threads-negative": ("runtime.threads -1", _profile({"runtime.threads": -1})),
    "threads-huge": ("runtime.threads 10**30", _profile({"runtime.threads": 10**30})),
    "optimization-unknown": ("runtime.graph_optimization max", _profile({"runtime.graph_optimization": "max"})),
    "opset-99": ("export.opset 99", _profile({"export.opset": 99})),
    "input-size-negative": ("export.input_size -5", _profile({"export.input_size": -5})),
    "input-size-zero": ("export.input_size 0", _profile({"export.input_size": 0})),
    "input-size-huge": ("export.input_size 10**9", _profile({"export.input_size": 10**9})),
    "calibration-samples-huge": ("quantization.calibration_samples 10**30",
                                 _profile({"quantization.calibration_samples": 10**30})),
    "quantization-unknown": ("quantization.cnn int4", _profile({"quantization.cnn": "int4"})),
    "aliases-string": ("aliases a string", _profile({"aliases": "jetson"})),
    "aliases-number": ("aliases [1]", _profile({"aliases": [1]})),
    "constants-word": ("non-numeric calibration.constants", _profile({"calibration.constants": {"gflops": "abc"}})),
    "constants-list": ("calibration.constants a list", _profile({"calibration.constants": [1, 2]})),
    "constants-nan": ("calibration.constants NaN", _profile({"calibration.constants": {"gflops": float("nan")}})),
    "constants-inf": ("calibration.constants infinity", _profile({"calibration.constants": {"gflops": float("inf")}})),
    "reference-unknown-source": ("a reference naming a missing source", _profile({"calibration.references": [
        {"model": {"arch": "resnet18"}, "latency_ms": 1.0, "source": "nowhere"}]})),
    "reference-latency-inf": ("a reference latency of .inf", _profile({"calibration.sources": {"s": {"title": "t"}},
                                                                       "calibration.references": [
        {"model": {"arch": "resnet18"}, "latency_ms": float("inf"), "source": "s"}]})),
    "reference-unknown-arch": ("a reference of an unknown arch", _profile({"calibration.sources": {"s": {"title": "t"}},
                                                                           "calibration.references": [
        {"model": {"arch": "nosuch"}, "latency_ms": 1.0, "source": "s"}]})),
    "sources-list": ("calibration.sources a list", _profile({"calibration.sources": [1, 2]})),
    "budget-missing": ("no budget", _profile({"budget": None})),
}


def devices_cases() -> list[Case]:
    """``devices show|list|calibrate`` with hostile profile files and names."""
    d = "devices"
    cases = [cli(d, f"show-{slug}", f"devices show of a profile with {desc}",
                 ("devices", "show", "hostile", "--profiles", f"{CASE}/p.yaml"), prepare=files({"p.yaml": text}))
             for slug, (desc, text) in PROFILES.items()]
    escapes: dict[str, tuple[str, str, str]] = {
        "traversal": ("name ../../evil", "../../evil", f"{CASE}/evil.yaml"),
        "absolute": ("an absolute path as name", f"{CASE}/abs-evil", f"{CASE}/abs-evil.yaml"),
        "slash": ("name a/b", "a/b", f"{CASE}/cache/profiles/a"),
        "newline": ("a name with a newline", "evil\nname", f"{CASE}/cache/profiles"),
    }
    cases += [cli(d, f"calibrate-name-{slug}", f"devices calibrate of a profile with {desc} (nothing written "
                  "outside the cache)", ("devices", "calibrate", name, "--profiles", f"{CASE}/p.yaml", "--force",
                                         "--runs", "5"), prepare=files({"p.yaml": _profile(name=name)}),
                  cache="empty", watch=(target,), timeout=WORK) for slug, (desc, name, target) in escapes.items()]
    profile = files({"p.yaml": _profile()})
    with_profile = ("--profiles", f"{CASE}/p.yaml")
    return cases + [
        cli(d, "calibrate-unknown", "devices calibrate nosuch", ("devices", "calibrate", "nosuch")),
        cli(d, "calibrate-not-here", "devices calibrate jetson on another machine (no --force)",
            ("devices", "calibrate", "jetson"), cache="empty"),
        cli(d, "calibrate-runs-four", "devices calibrate --runs 4", ("devices", "calibrate", "host", "--runs", "4")),
        cli(d, "calibrate-runs-negative", "devices calibrate --runs -1", ("devices", "calibrate", "host", "--runs",
                                                                          "-1")),
        cli(d, "calibrate-runs-huge", "devices calibrate --runs 10**30", ("devices", "calibrate", "hostile", "--runs",
                                                                          str(10**30), "--force", *with_profile),
            prepare=profile, cache="empty", watch=(f"{CASE}/cache/profiles",), timeout=WORK),
        cli(d, "calibrate-suite-huge", "devices calibrate of a suite model of 10**6 px",
            ("devices", "calibrate", "hostile", "--force", "--runs", "5", *with_profile),
            prepare=files({"p.yaml": _profile({"calibration.suite": [{"arch": "resnet18", "size": 10**6}]})}),
            cache="empty", watch=(f"{CASE}/cache/profiles",), timeout=WORK),
        cli(d, "calibrate-constants-word", "devices calibrate of a profile with non-numeric constants",
            ("devices", "calibrate", "hostile", "--force", "--runs", "5", *with_profile),
            prepare=files({"p.yaml": PROFILES["constants-word"][1]}), cache="empty",
            watch=(f"{CASE}/cache/profiles",), timeout=WORK),
        cli(d, "list-detect-dev-zero", "devices list with a profile detecting by reading /dev/zero (bounded)",
            ("devices", "list", *with_profile), (0, 2), prepare=files({"p.yaml": _profile(
                {"detect": {"file": "/dev/zero", "contains": "jetson"}})})),
        cli(d, "list-detect-fifo", "devices list with a profile detecting by reading a named pipe (bounded)",
            ("devices", "list", *with_profile), (0, 2), prepare=prep(at(f"{CASE}/pipe", fifo), at(
                f"{CASE}/p.yaml", lambda p: write(p, profile_yaml({"detect": {"file": str(p.parent / "pipe"),
                                                                             "contains": "x"}}))))),
        cli(d, "show-unknown", "devices show nosuch", ("devices", "show", "nosuch")),
        cli(d, "show-empty", "devices show ''", ("devices", "show", "")),
        cli(d, "show-long", "devices show with a 100,000-character name", ("devices", "show", LONG)),
        cli(d, "profiles-missing", "--profiles a missing file", ("devices", "list", "--profiles", f"{CASE}/no.yaml")),
        cli(d, "profiles-dir-bad-file", "--profiles a folder with one bad file", ("devices", "list", "--profiles",
                                                                                 f"{CASE}/profiles"),
            prepare=files({"profiles/good.yaml": _profile(name="good"), "profiles/bad.yaml": "name: [\n"})),
        cli(d, "profiles-dev-zero", "--profiles /dev/zero", ("devices", "list", "--profiles", "/dev/zero")),
        cli(d, "profiles-fifo", "--profiles a named pipe", ("devices", "list", "--profiles", f"{CASE}/pipe.yaml"),
            prepare=at(f"{CASE}/pipe.yaml", fifo)),
        cli(d, "list-valid", "devices list (valid)", ("devices", "list"), 0),
        cli(d, "show-valid", "devices show jetson (valid)", ("devices", "show", "jetson"), 0),
        cli(d, "show-valid-user-profile", "devices show of a valid user profile", ("devices", "show", "hostile",
                                                                                  *with_profile), 0, prepare=profile),
    ]


def check_cases() -> list[Case]:
    """``check MODEL.onnx``: hostile ONNX files, budgets, runs, devices and profiles."""
    c = "check"
    model = f"{FIX}/model.onnx"
    onnx_files = {"custom-op": "an op of a custom domain", "opset99": "opset 99", "two-inputs": "two inputs",
                  "3d-input": "a 3-D input", "external-passwd": "external data at ../../etc/passwd"}
    cases = [cli(c, f"onnx-{k}", f"check of an ONNX file with {d}", ("check", f"{FIX}/onnx/{k}.onnx", "--device",
                                                                     "rpi4")) for k, d in onnx_files.items()]
    hostile_files: dict[str, tuple[str, Step]] = {
        "empty": ("an empty file", files({"m.onnx": b""})),
        "garbage": ("random bytes", files({"m.onnx": os.urandom(4096)})),
        "truncated": ("a model cut in half", files({"m.onnx": lambda fx: (fx.root / "model.onnx").read_bytes()[
            : (fx.root / "model.onnx").stat().st_size // 2]})),
        "directory": ("a folder", at(f"{CASE}/m.onnx", lambda p: p.mkdir())),
        "dev-zero": ("a symlink to /dev/zero", at(f"{CASE}/m.onnx", lambda p: link(p, "/dev/zero"))),
        "fifo": ("a named pipe", at(f"{CASE}/m.onnx", fifo)),
        "sparse-10g": ("a 10 GiB sparse file", at(f"{CASE}/m.onnx", sparse)),
        "missing": ("a missing file", prep()),
    }
    cases += [cli(c, f"file-{k}", f"check of {d}", ("check", f"{CASE}/m.onnx", "--device", "rpi4"), prepare=step)
              for k, (d, step) in hostile_files.items()]
    budgets = {**{k: v for k, v in FLOATS_BAD.items() if k != "NaN"}}
    cases += [cli(c, f"budget-{k}", f"check --budget-ms {v!r}", ("check", model, "--device", "rpi4", "--budget-ms", v))
              for k, v in budgets.items()]
    return cases + [
        cli(c, "onnx-huge-input-estimated", "check of a valid conv on 3 x 100,000 x 100,000 images (estimated)",
            ("check", f"{FIX}/onnx/huge-input.onnx", "--device", "rpi4"), (2, 3)),
        cli(c, "onnx-huge-input-measured", "check of a valid conv on 3 x 100,000 x 100,000 images (measured on host)",
            ("check", f"{FIX}/onnx/huge-input.onnx", "--device", "host"), (2, 3)),
        cli(c, "budget-huge", "check --budget-ms 1e308 (finite and positive: within budget, or refused by a "
            "documented upper bound)", ("check", model, "--device", "rpi4", "--budget-ms", "1e308"), (0, 2)),
        cli(c, "budget-tiny", "check --budget-ms 1e-9 (valid: over budget)",
            ("check", model, "--device", "rpi4", "--budget-ms", "1e-9"), 3),
        cli(c, "valid-measured", "check on host with a generous budget (valid)",
            ("check", model, "--device", "host", "--budget-ms", "1e6", "--runs", "5"), 0),
        cli(c, "valid-small-onnx", "check of a hand-made valid 1x1 conv (valid)",
            ("check", f"{FIX}/onnx/valid.onnx", "--device", "rpi4", "--budget-ms", "1e6"), 0),
        cli(c, "runs-four", "check --runs 4", ("check", model, "--device", "host", "--runs", "4")),
        cli(c, "runs-negative", "check --runs -1", ("check", model, "--device", "host", "--runs", "-1")),
        cli(c, "runs-huge-measure", "check --measure --runs 10**30", ("check", model, "--device", "host", "--measure",
                                                                      "--runs", str(10**30))),
        cli(c, "device-unknown", "check --device toaster", ("check", model, "--device", "toaster")),
        cli(c, "device-empty", "check --device ''", ("check", model, "--device", "")),
        cli(c, "device-long", "check --device of 100,000 characters", ("check", model, "--device", LONG)),
        cli(c, "profile-bomb-options-measure", "check --measure on a profile whose provider options are an alias bomb",
            ("check", model, "--device", "hostile", "--measure", "--runs", "5", "--profiles", f"{CASE}/p.yaml"),
            prepare=files({"p.yaml": _bomb_in_options})),
        cli(c, "profile-provider-unknown", "check --measure with only an unknown execution provider",
            ("check", model, "--device", "hostile", "--measure", "--runs", "5", "--profiles", f"{CASE}/p.yaml"),
            prepare=files({"p.yaml": _profile({"runtime.providers": [{"name": "NoSuchExecutionProvider"}]})})),
        cli(c, "profile-reference-huge", "check on a profile whose cost model references a 10**9 px model",
            ("check", model, "--device", "hostile", "--profiles", f"{CASE}/p.yaml"), cache="empty",
            prepare=files({"p.yaml": _profile({"detect": {}, "calibration.sources": {"s": {"title": "t"}},
                                               "calibration.references": [{"model": {"arch": "resnet18", "size": 10**9},
                                                                           "latency_ms": 1.0, "source": "s"}]})})),
    ]


def _weights_meta(change: Callable[[dict], None]) -> Callable[[Fixtures], bytes]:
    """The fixture run's weights with their safetensors metadata edited."""
    def make(fx: Fixtures) -> bytes:
        from edgemvp.models.weights import parse_safetensors, weights_bytes

        state, meta = parse_safetensors((fx.root / "run" / "weights.safetensors").read_bytes(), "run")
        change(meta)
        return weights_bytes(state, meta)
    return make


def _run_weights(change: Callable[[dict], None]) -> Callable[[Fixtures], bytes]:
    """The fixture run's weights with their state dict edited."""
    def make(fx: Fixtures) -> bytes:
        from edgemvp.models.weights import parse_safetensors, weights_bytes

        state, meta = parse_safetensors((fx.root / "run" / "weights.safetensors").read_bytes(), "run")
        change(state)
        return weights_bytes(state, meta)
    return make


def _masks(change: Callable[[dict], None]) -> Callable[[Fixtures], str]:
    """The fixture run's masks.json edited by ``change``."""
    def make(fx: Fixtures) -> str:
        data = json.loads((fx.root / "run" / "masks.json").read_text())
        change(data)
        return json.dumps(data)
    return make


RUN_FILES: dict[str, tuple[str, str, Content]] = {
    "report-garbage": ("report.json is garbage", "report.json", "{garbage"),
    "report-list": ("report.json is a list", "report.json", "[1, 2]"),
    "report-deep": ("report.json nested 10,000 deep", "report.json", deep()),
    "report-non-utf8": ("report.json is not UTF-8", "report.json", NON_UTF8),
    "masks-garbage": ("masks.json is garbage", "masks.json", "{garbage"),
    "masks-deep": ("masks.json nested 10,000 deep", "masks.json", deep()),
    "masks-schema-huge": ("masks.json schema_version 10**30", "masks.json", _masks(lambda d: d.update(
        schema_version=10**30))),
    "masks-schema-string": ("masks.json schema_version \"1\"", "masks.json", _masks(lambda d: d.update(
        schema_version="1"))),
    "masks-schema-list": ("masks.json schema_version [1]", "masks.json", _masks(lambda d: d.update(
        schema_version=[1]))),
    "masks-other-arch": ("masks.json for resnet50", "masks.json", _masks(lambda d: d.update(arch="resnet50"))),
    "masks-out-of-range": ("masks.json with an index out of range", "masks.json", _masks(
        lambda d: d["kept"].update(conv1=[0, 9999]))),
    "weights-truncated": ("weights.safetensors cut in half", "weights.safetensors", lambda fx: (
        fx.root / "run" / "weights.safetensors").read_bytes()[:4096]),
    "weights-pickle": ("weights.safetensors a pickle", "weights.safetensors", lambda fx: pickle_payload()),
    "weights-torch-zip": ("weights.safetensors a torch.save zip", "weights.safetensors", lambda fx: torch_zip()),
    "weights-header-lies": ("weights.safetensors claiming 10**12 elements", "weights.safetensors", safetensors_header(
        {"fc.weight": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}})),
    "weights-nan": ("weights.safetensors with a NaN", "weights.safetensors", _run_weights(nan_first)),
    "meta-input-spec": ("weights metadata input_spec garbage", "weights.safetensors", _weights_meta(
        lambda m: m.update(input_spec="{garbage"))),
    "meta-num-classes-word": ("weights metadata num_classes 'abc'", "weights.safetensors", _weights_meta(
        lambda m: m.update(num_classes="abc"))),
    "meta-num-classes-huge": ("weights metadata num_classes 10**9", "weights.safetensors", _weights_meta(
        lambda m: m.update(num_classes=str(10**9)))),
    "meta-arch-unknown": ("weights metadata arch nosuch", "weights.safetensors", _weights_meta(
        lambda m: m.update(arch="nosuch"))),
}


def export_cases() -> list[Case]:
    """``export SOURCE``: corrupt run folders and base folders, hostile sources and options."""
    e = "export"
    run = ("export", f"{CASE}/run", "--device", "rpi4", "--out", f"{CASE}/out")
    no_report = at(f"{CASE}/run/report.json", remove)  # so that the model files are what decides
    cases = [cli(e, slug, f"export of a run folder whose {d}" + ("" if n == "report.json" else " (report.json "
                 "removed)"), run, prepare=prep(copy("run"), *([] if n == "report.json" else [no_report]),
                                                  files({f"run/{n}": c})), timeout=WORK)
             for slug, (d, n, c) in RUN_FILES.items()]
    specials: dict[str, tuple[str, Step]] = {
        "report-dev-zero": ("report.json is a symlink to /dev/zero", at(f"{CASE}/run/report.json",
                                                                         lambda p: link(p, "/dev/zero"))),
        "report-fifo": ("report.json is a named pipe", at(f"{CASE}/run/report.json", to_fifo)),
        "weights-dev-zero": ("weights.safetensors is a symlink to /dev/zero", at(f"{CASE}/run/weights.safetensors",
                                                                                  lambda p: link(p, "/dev/zero"))),
        "weights-sparse-10g": ("weights.safetensors is a 10 GiB sparse file", at(f"{CASE}/run/weights.safetensors",
                                                                                  to_sparse)),
        "weights-fifo": ("weights.safetensors is a named pipe", at(f"{CASE}/run/weights.safetensors", to_fifo)),
        "masks-dev-zero": ("masks.json is a symlink to /dev/zero", at(f"{CASE}/run/masks.json",
                                                                       lambda p: link(p, "/dev/zero"))),
    }
    cases += [cli(e, slug, f"export of a run folder whose {d}", run, prepare=prep(
        copy("run"), *([] if slug.startswith("report") else [no_report]), step), timeout=WORK)
        for slug, (d, step) in specials.items()]
    cases += base_folder_cases()
    run_ok = copy("run")
    return cases + [
        cli(e, "source-missing", "export of a missing path", ("export", f"{CASE}/nope", "--device", "rpi4")),
        cli(e, "source-dev-zero", "export of /dev/zero", ("export", "/dev/zero", "--device", "rpi4")),
        cli(e, "source-empty-folder", "export of an empty folder", ("export", f"{CASE}/empty", "--device", "rpi4"),
            prepare=at(f"{CASE}/empty", lambda p: p.mkdir())),
        cli(e, "source-fifo", "export of a named pipe", ("export", f"{CASE}/pipe", "--device", "rpi4"),
            prepare=at(f"{CASE}/pipe", fifo)),
        cli(e, "source-pickle-file", "export of a pickle file", ("export", f"{CASE}/w.pt", "--device", "rpi4"),
            prepare=files({"w.pt": lambda fx: pickle_payload()})),
        cli(e, "out-proc", "export --out under /proc", (*run[:-1], "/proc/hostile"), prepare=run_ok, timeout=WORK),
        cli(e, "out-under-file", "export --out under a regular file", (*run[:-1], f"{CASE}/file/out"),
            prepare=prep(run_ok, USER_FILE), protect=(f"{CASE}/file",), timeout=WORK),
        cli(e, "device-unknown", "export --device toaster", (*run[:3], "toaster"), prepare=run_ok),
        cli(e, "task-unknown", "export --task nosuch", (*run, "--task", "nosuch"), prepare=run_ok),
        cli(e, "classes-unknown", "export --dataset digits --classes 0,1,nosuch",
            (*run, "--dataset", "digits", "--classes", "0,1,nosuch"), prepare=run_ok),
        cli(e, "exporter-unknown", "export --exporter nosuch", (*run, "--exporter", "nosuch"), prepare=run_ok),
        cli(e, "runs-four", "export --runs 4", (*run, "--runs", "4"), prepare=run_ok),
        cli(e, "valid", "export of the fixture run folder, an ad-hoc digits task (valid)", (*run, "--runs", "5"), 0,
            prepare=run_ok, timeout=WORK),
        cli(e, "valid-without-report", "export of the fixture run folder without its report.json (valid)",
            (*run, "--runs", "5"), 0, prepare=prep(run_ok, no_report), timeout=WORK),
    ]


def base_folder_cases() -> list[Case]:
    """``export BASE_DIR`` of a copy of the fixture base whose manifest or weights are corrupt."""
    e = "export"
    base = ("export", f"{CASE}/base", "--device", "rpi4", "--out", f"{CASE}/out")
    bases: dict[str, tuple[str, Step]] = {
        "base-manifest-garbage": ("manifest.json is garbage", files({"base/manifest.json": "{garbage"})),
        "base-schema-huge": ("manifest.json schema_version 10**30", at(f"{CASE}/base/manifest.json", lambda p: edit_json(
            p, lambda d: {**d, "schema_version": 10**30}))),
        "base-schema-string": ("manifest.json schema_version \"1\"", at(f"{CASE}/base/manifest.json",
                                                                        lambda p: edit_json(p, lambda d: {
                                                                            **d, "schema_version": "1"}))),
        "base-schema-list": ("manifest.json schema_version [1]", at(f"{CASE}/base/manifest.json", lambda p: edit_json(
            p, lambda d: {**d, "schema_version": [1]}))),
        "base-weights-flipped": ("model.safetensors has a flipped bit", at(f"{CASE}/base/model.safetensors", flip_bit)),
    }
    return [cli(e, slug, f"export of a base folder whose {d}", base, prepare=prep(_copy_base, step), timeout=WORK)
            for slug, (d, step) in bases.items()]


def _copy_base(case_dir: Path, fx: Fixtures) -> None:
    """Copy the fixture base folder to ``<case>/base``."""
    shutil.copytree(fx.base_dir, case_dir / "base")


# --- case tables: the zoo server ---------------------------------------------------------------------------------
def body(data: Any) -> bytes:
    """A JSON body (Python's json writes NaN and Infinity literals for non-finite floats)."""
    return json.dumps(data).encode()


def neighbours(**fields: Any) -> bytes:
    """A ``/neighbours`` body: the digits task with some fields changed."""
    return body({"task": TASK, **fields})


def with_raw(name: str, text: str) -> bytes:
    """A ``/neighbours`` body with one field given as raw JSON text (too deep for Python's json to write)."""
    return b'{"task": %s, "%s": %s}' % (body(TASK), name.encode(), text.encode())


def vote(**fields: Any) -> Request:
    """A ``POST /vote`` request: the digits task voted from two given neighbours, some fields changed."""
    data = {"task": TASK, "neighbour_ids": ["@ENTRY0@", "@ENTRY1@"], "neighbours": 2, "seed": 1, **fields}
    return Request("POST", "/vote", lambda fx: fx.resolve(json.dumps(data)).encode())


def post(path: str, data: bytes | Callable[[Fixtures], bytes], **kw: Any) -> Request:
    """A JSON POST."""
    return Request("POST", path, data, **kw)


def neighbour_bodies() -> dict[str, tuple[str, bytes]]:
    """Malformed, mistyped, out-of-range and hostile ``/neighbours`` bodies, with a description."""
    return {
        "malformed": ("truncated JSON", b'{"task": '),
        "empty": ("an empty body", b""),
        "null": ("null", b"null"), "list": ("a list", b"[]"), "string": ("a string", b'"x"'),
        "nan-literal": ("a NaN literal for limit", b'{"task": %s, "limit": NaN}' % body(TASK)),
        "infinity-literal": ("an Infinity literal for limit", b'{"task": %s, "limit": Infinity}' % body(TASK)),
        "non-utf8": ("bytes that are not UTF-8", b'{"task": "\xff\xfe"}'),
        "utf16": ("UTF-16 JSON", json.dumps({"task": TASK}).encode("utf-16")),
        "classes-string": ("classes as a string", neighbours(task={"dataset": "digits", "classes": "0,1,2"})),
        "limit-string": ("limit as a string", neighbours(limit="10")),
        "limit-float": ("limit 10.5", neighbours(limit=10.5)),
        "limit-bool": ("limit true", neighbours(limit=True)),
        "limit-zero": ("limit 0", neighbours(limit=0)), "limit-huge": ("limit 10**30", neighbours(limit=10**30)),
        "limit-over": ("limit 1001", neighbours(limit=1001)),
        "task-list": ("task as a list", body({"task": []})),
        "dataset-number": ("dataset as a number", body({"task": {"dataset": 5, "classes": ["0", "1"]}})),
        "extra-field": ("an unknown field", neighbours(evil=1)),
        "extra-task-field": ("an unknown field in task", body({"task": {**TASK, "evil": 1}})),
        "classes-100k": ("100,000 classes", body({"task": {"dataset": "digits", "classes": [str(i) for i in
                                                                                            range(100_000)]}})),
        "classes-1001": ("1,001 classes", body({"task": {"dataset": "digits", "classes": [f"c{i}" for i in
                                                                                          range(1001)]}})),
        "class-301-chars": ("a 301-character class", body({"task": {"dataset": "digits", "classes": ["a" * 301, "b"]}})),
        "class-empty": ("an empty class name", body({"task": {"dataset": "digits", "classes": ["", "b"]}})),
        "classes-duplicate": ("a class twice", body({"task": {"dataset": "digits", "classes": ["0", "0"]}})),
        "classes-one": ("one class", body({"task": {"dataset": "digits", "classes": ["0"]}})),
        "synsets-unknown": ("unknown synsets n99999999", body({"task": {**TASK, "synsets": [
            "n99999999", "n99999998", "n99999997"]}})),
        "synsets-malformed": ("synsets that are not synset names", body({"task": {**TASK, "synsets": ["dog", "x", "y"]}})),
        "synsets-mismatch": ("2 synsets for 3 classes", body({"task": {**TASK, "synsets": ["dog.n.01", "cat.n.01"]}})),
        "base-malformed": ("base_sha256 not hex", neighbours(base_sha256="zz")),
        "base-unknown": ("an unknown base_sha256", neighbours(base_sha256="f" * 64)),
        "similarity-leep": ("similarity leep (needs the client's images)", neighbours(similarity="leep")),
        "similarity-unknown": ("an unknown similarity", neighbours(similarity="nosuch")),
        "hierarchy-deep-100k": ("a hierarchy nested 100,000 deep", with_raw("hierarchy", deep(100_000))),
        "hierarchy-deep-1000": ("a hierarchy nested 1,000 deep", with_raw("hierarchy", deep(1000))),
        "hierarchy-65": ("a hierarchy 65 levels deep", neighbours(hierarchy=_chain(65))),
        "hierarchy-duplicates": ("a hierarchy with a node twice", neighbours(hierarchy={"r": {"a": ["0"], "b": ["0"]}})),
        "hierarchy-floats": ("a hierarchy of float names", neighbours(hierarchy={"r": [1.5, True]})),
        "hierarchy-empty": ("an empty hierarchy", neighbours(hierarchy={})),
        "hierarchy-string": ("a hierarchy that is a string", neighbours(hierarchy="tree")),
        "extra-deep": ("an unknown field nested 100,000 deep", with_raw("x", deep(100_000))),
    }


def server_json_cases() -> list[Case]:
    """Malformed and hostile JSON bodies for ``/neighbours``, and valid ones that must stay bounded."""
    n = "/neighbours"
    cases = [http(f"neighbours-{slug}", f"POST /neighbours with {d}", post(n, data))
             for slug, (d, data) in neighbour_bodies().items()]
    flat = {"r": [f"c{i}" for i in range(1000)]}
    return cases + [
        http("neighbours-valid", "POST /neighbours with the even/odd tree (valid)", post(n, neighbours(hierarchy=TREE)),
             200),
        http("neighbours-1000-classes", "POST /neighbours with 1,000 classes no taxonomy knows (bounded)",
             post(n, body({"task": {"dataset": "digits", "classes": flat["r"]}})), (200, *BAD)),
        http("neighbours-1000-classes-tree", "POST /neighbours with 1,000 classes and a tree holding them (valid, "
             "or refused by a class limit; bounded)",
             post(n, body({"task": {"dataset": "digits", "classes": flat["r"]}, "hierarchy": flat})), (200, *BAD)),
        http("neighbours-tree-50k", "POST /neighbours with a flat 50,000-node tree (valid, bounded)",
             post(n, neighbours(hierarchy={"r": [str(i) for i in range(50_000)]})), 200),
        http("neighbours-unicode-classes", "POST /neighbours with classes of control and RTL characters",
             post(n, body({"task": {"dataset": "digits", "classes": ["\u0000", "\u202e", "\U0001f4a9"]}})),
             (200, *BAD)),
        http("neighbours-text-plain", "POST /neighbours with Content-Type text/plain",
             post(n, neighbours(hierarchy=TREE), content_type="text/plain"), (200, *BAD)),
    ]


def server_vote_cases() -> list[Case]:
    """``POST /vote`` with values out of range, non-finite, of the wrong type or naming unknown entries."""
    raw = {"ratio-nan": b'{"task": %s, "ratio": NaN}' % body(TASK),
           "temperature-infinity": b'{"task": %s, "temperature": Infinity}' % body(TASK),
           "similarities-nan": b'{"task": %s, "neighbour_ids": ["@ENTRY0@"], "neighbours": 1, "similarities": [NaN]}'
                               % body(TASK),
           "seed-overflow": b'{"task": %s, "seed": 1e400}' % body(TASK)}
    cases = [http(f"vote-{slug}", f"POST /vote with {slug.replace('-', ' ')} (raw JSON literal)",
                  post("/vote", lambda fx, d=data: fx.resolve(d.decode()).encode())) for slug, data in raw.items()]
    fields = {"ratio-zero": {"ratio": 0}, "ratio-one": {"ratio": 1}, "ratio-above-one": {"ratio": 1.5},
              "ratio-negative-zero": {"ratio": -0.0}, "ratio-string": {"ratio": "0.5"},
              "temperature-zero": {"temperature": 0}, "temperature-tiny": {"temperature": 1e-7},
              "temperature-huge": {"temperature": 1e7}, "seed-negative": {"seed": -1}, "seed-2-32": {"seed": 2**32},
              "seed-string": {"seed": "1"}, "seed-float": {"seed": 1.5}, "neighbours-zero": {"neighbours": 0},
              "neighbours-101": {"neighbours": 101}, "neighbours-more-than-zoo": {"neighbours": 50,
                                                                                  "neighbour_ids": None},
              "ids-malformed": {"neighbour_ids": ["zz"]}, "ids-unknown": {"neighbour_ids": ["f" * 64, "e" * 64]},
              "ids-duplicate": {"neighbour_ids": ["@ENTRY0@", "@ENTRY0@"]}, "ids-empty": {"neighbour_ids": []},
              "ids-101": {"neighbour_ids": ["f" * 64] * 101},
              "similarities-mismatch": {"similarities": [1.0, 0.5, 0.2]}, "method-ifp": {"method": "ifp"},
              "similarity-leep": {"similarity": "leep"}, "base-unknown": {"base_sha256": "f" * 64},
              "hierarchy-unknown-classes": {"neighbour_ids": None, "hierarchy": {"r": ["x", "y"]}},
              "extra-field": {"evil": True}}
    cases += [http(f"vote-{slug}", f"POST /vote with {json.dumps(change)[:80]}", vote(**change))
              for slug, change in fields.items()]
    return cases + [
        http("vote-valid", "POST /vote from two given neighbours (valid)", vote(), 200),
        http("vote-random-valid", "POST /vote method random (valid)", vote(method="random", neighbour_ids=None), 200),
        http("vote-hierarchy-valid", "POST /vote ranked by the even/odd tree (valid)",
             vote(neighbour_ids=None, hierarchy=TREE), 200),
    ]


def server_url_cases() -> list[Case]:
    """Ids, hashes and queries in URLs; methods, headers and framing."""
    paths = {"entry-not-hex": "/entries/zz", "entry-upper": "/entries/" + "A" * 64, "entry-unknown": "/entries/" + "f" * 64,
             "weights-unknown": f"/entries/{'f' * 64}/weights", "traversal": "/entries/../../../../etc/passwd",
             "traversal-encoded": "/entries/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "nul": "/entries/@ENTRY0@%00",
             "dot-segments": "/entries/@ENTRY0@/../../weights", "base-not-hex": "/bases/zz/weights",
             "base-unknown": f"/bases/{'f' * 64}/weights", "limit-zero": "/entries?limit=0",
             "limit-over": "/entries?limit=1001", "limit-word": "/entries?limit=abc", "offset-negative":
             "/entries?offset=-1", "offset-2-63": f"/entries?offset={2**63}", "limit-huge": f"/entries?limit={10**30}",
             "base-filter-not-hex": "/entries?base_sha256=zz", "class-long": f"/entries?class={'x' * 100_000}",
             "arch-unknown": "/base?arch=nosuch", "dataset-unknown": "/base?dataset=nosuch",
             "arch-long": f"/base?arch={'x' * 65}", "unknown-route": "/nosuch", "double-slash": "//entries/zz"}
    cases = [http(f"url-{slug}", f"GET {cut(p, 60)}", Request("GET", p)) for slug, p in paths.items()]
    valid = {"health": "/health", "entries": "/entries", "entry": "/entries/@ENTRY0@",
             "entry-weights": "/entries/@ENTRY0@/weights", "bases": "/bases", "base-weights": "/bases/@BASESHA@/weights",
             "openapi": "/openapi.json", "offset-2-62": f"/entries?offset={2**62}", "class-non-utf8": "/entries?class=%ff%fe"}
    cases += [http(f"valid-{slug}", f"GET {p} (valid)", Request("GET", p), 200) for slug, p in valid.items()]
    return cases + [
        http("method-patch", "PATCH /entries", Request("PATCH", "/entries")),
        http("method-delete", "DELETE /entries/<id>", Request("DELETE", "/entries/@ENTRY0@")),
        http("header-100kb", "GET /health with a 100 KB header", Request("GET", "/health", extra=(("X-Big", LONG),))),
        http("length-word", "POST /neighbours with Content-Length: abc", post("/neighbours", neighbours(), length="abc")),
        http("length-negative", "POST /neighbours with Content-Length: -1", post("/neighbours", neighbours(),
                                                                                 length="-1")),
        http("length-huge", "POST /neighbours declaring 10**30 bytes", post("/neighbours", neighbours(),
                                                                            length=str(10**30))),
        http("length-and-chunked", "a chunked body that also declares a Content-Length",
             post("/neighbours", neighbours(), chunked=True, extra=(("Content-Length", "5"),))),
        http("json-oversized", "POST /neighbours of 2 MiB (over the 1 MiB JSON limit)",
             post("/neighbours", b'{"task": %s, "x": "%s"}' % (body(TASK), b"a" * (2 << 20))), 413),
        http("chunked-valid", "POST /neighbours chunked without a length (valid)",
             post("/neighbours", neighbours(hierarchy=TREE), chunked=True), 200),
        http("chunked-oversized", "POST /neighbours chunked, 2 MiB, without a length",
             post("/neighbours", b'{"task": %s, "x": "%s"}' % (body(TASK), b"a" * (2 << 20)), chunked=True), 413),
    ]


def server_upload_cases() -> list[Case]:
    """``POST /entries``: tokens, and every hostile bundle (refused with nothing stored)."""
    watch = (f"{CASE}/zoo/objects",)
    good = lambda fx: bundle([(fx.entry(30)[0].to_bytes(), fx.entry(30)[1])])  # noqa: E731
    auth = {"no-token": None, "bad-token": "Bearer " + "x" * 40, "basic": "Basic dXNlcjpwYXNz",
            "empty-bearer": "Bearer ", "non-ascii": "Bearer tökén-☃-0123456789", "long-token": "Bearer " + LONG}
    cases = [http(f"upload-{slug}", f"POST /entries with authorization {cut(str(a), 30)!r}",
                  Request("POST", "/entries", good, auth=a, content_type="application/x-tar"), BAD, watch=watch)
             for slug, a in auth.items()]
    cases += [http(f"upload-{slug}", f"POST /entries of a bundle with {d}",
                   Request("POST", "/entries", make, auth="token", content_type="application/x-tar"), BAD, watch=watch)
              for slug, (d, make) in BUNDLES.items()]
    q = "/entries?build_seconds="
    return cases + [
        http("upload-build-seconds-nan", "POST /entries?build_seconds=nan", Request(
            "POST", q + "nan", good, auth="token", content_type="application/x-tar"), BAD, watch=watch),
        http("upload-build-seconds-inf", "POST /entries?build_seconds=inf", Request(
            "POST", q + "inf", good, auth="token", content_type="application/x-tar"), BAD, watch=watch),
        http("upload-build-seconds-negative", "POST /entries?build_seconds=-1", Request(
            "POST", q + "-1", good, auth="token", content_type="application/x-tar"), BAD, watch=watch),
        http("upload-empty-bundle", "POST /entries of a bundle without entries", Request(
            "POST", "/entries", lambda fx: bundle([]), auth="token", content_type="application/x-tar"), BAD,
             watch=watch),
        http("upload-oversized", "POST /entries of 65 MiB (over --max-upload-mb 64)", Request(
            "POST", "/entries", lambda fx: good(fx) + b"\0" * (65 << 20), auth="token",
            content_type="application/x-tar"), 413, watch=watch),
        http("upload-chunked-oversized", "POST /entries chunked, 65 MiB, without a length", Request(
            "POST", "/entries", lambda fx: good(fx) + b"\0" * (65 << 20), auth="token", chunked=True,
            content_type="application/x-tar"), 413, watch=watch),
        http("upload-valid", "POST /entries of a new valid entry (valid, runs last)", Request(
            "POST", "/entries", good, auth="token", content_type="application/x-tar"), 201),
    ]


def server_cases() -> list[Case]:
    """Every server case, the valid upload last (it changes the zoo)."""
    return [*server_json_cases(), *server_vote_cases(), *server_url_cases(), *server_upload_cases()]


def all_cases() -> list[Case]:
    """Every case, in report order."""
    tables = (global_cases, names_cases, wordnet_cases, bases_cases, bases_add_cases, pretrain_cases, init_cases,
              imagefolder_cases, build_cases, tasks_file_cases, prune_cases, out_cases, hierarchy_cases, url_cases, store_cases, verify_cases, show_cases,
              export_bundle_cases, import_cases, serve_cases, devices_cases, check_cases, export_cases, server_cases)
    cases = [case for table in tables for case in table()]
    ids = [c.id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SystemExit(f"duplicate case ids: {duplicates}")
    return cases


# --- what a case changed on disk ---------------------------------------------------------------------------------
def fingerprint(path: Path, st: os.stat_result) -> str:
    """A file's identity without following links or reading pipes and devices (big files by stat)."""
    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if not stat.S_ISREG(st.st_mode):
        return f"special:{stat.S_IFMT(st.st_mode)}"
    if st.st_size > 8 << 20:  # not ctime: hard links to the fixture base are added while cases run
        return f"big:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    with open(path, "rb") as fh:
        return "sha256:" + hashlib.sha256(fh.read()).hexdigest()


def digest(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (or ``root`` itself when it is a file) by relative path."""
    out: dict[str, str] = {}
    try:
        st = os.lstat(root)
    except OSError:
        return out
    out["."] = fingerprint(root, st)
    if not stat.S_ISDIR(st.st_mode):
        return out
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(IGNORED):
                continue
            path = Path(entry.path)
            try:
                st = entry.stat(follow_symlinks=False)
                out[str(path.relative_to(root))] = fingerprint(path, st)
            except OSError as exc:
                out[str(path.relative_to(root))] = f"unreadable:{exc.errno}"
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Relative paths added, removed or changed."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def nonfinite(path: Path) -> str | None:
    """The first tensor of a safetensors file holding NaN or infinity (None when all are finite or unreadable)."""
    import numpy as np

    try:
        if path.stat().st_size > 1 << 30:
            return None
        raw = path.read_bytes()
        size = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + size])
    except (OSError, ValueError, struct.error):
        return None
    kinds = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict) or info.get("dtype") not in (*kinds, "BF16"):
            continue
        begin, end = info["data_offsets"]
        data = raw[8 + size + begin:8 + size + end]
        if info["dtype"] == "BF16":
            bad = bool(((np.frombuffer(data, "<u2") & 0x7F80) == 0x7F80).any())
        else:
            bad = not bool(np.isfinite(np.frombuffer(data, kinds[info["dtype"]])).all())
        if bad:
            return name
    return None


def stored_weights_problems(root: str, before: dict[str, str], after: dict[str, str]) -> list[str]:
    """New or changed safetensors files under ``root`` that hold non-finite values."""
    out = []
    for rel in changed(before, after):
        if rel.endswith(".safetensors") and after.get(rel, "").startswith(("sha256:", "big:")):
            path = Path(root) if rel == "." else Path(root) / rel
            tensor = nonfinite(path)
            if tensor is not None:
                out.append(f"{path}: tensor {tensor} is not finite")
    return out


# --- running CLI cases: a pool of warm workers, one forked child per case ---------------------------------------
WARM = ("edgemvp.cli", "edgemvp.models.factory", "edgemvp.zoo.store", "edgemvp.deploy.devices", "edgemvp.pipeline",
        "edgemvp.deploy.export", "safetensors.torch", "yaml", "onnx", "numpy")


def warm_worker() -> None:
    """Pool initializer: import edgemvp (and its heavy dependencies) once; every case is forked from here."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in WARM:
        importlib.import_module(name)


def run_job(job: Job) -> dict[str, Any]:
    """Run one CLI case in a child forked from this warm worker; what it printed, cost and changed."""
    before = {p: digest(Path(p)) for p in (*job.protect, *job.watch)}
    out, err = Path(job.logs + ".out"), Path(job.logs + ".err")
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(job, out, err)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child set it already, or has exited
    status, usage, timed_out = _wait(pid, job.timeout)
    seconds = time.monotonic() - start
    _kill_group(pid)  # anything the case started and left behind
    after = {p: digest(Path(p)) for p in (*job.protect, *job.watch)}
    return {"code": os.waitstatus_to_exitcode(status), "timed_out": timed_out, "seconds": round(seconds, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "stdout": _tail(out), "stderr": _tail(err),
            "lost": [f"{p}: {c}" for p in job.protect for c in changed(before[p], after[p])][:8],
            "stored": [f"{p}: {c}" for p in job.watch for c in changed(before[p], after[p])][:8],
            "nonfinite": [x for p in job.watch for x in stored_weights_problems(p, before[p], after[p])][:8]}


def _child(job: Job, out: Path, err: Path) -> NoReturn:
    """The forked case: its own process group, memory limit, files, folder, environment and argv."""
    code = 1
    try:
        os.setpgid(0, 0)
        resource.setrlimit(resource.RLIMIT_AS, (job.mem_limit, job.mem_limit))
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        os.chdir(job.cwd)
        os.environ.update(job.env)
        atexit._clear()  # the worker's own exit handlers are not the case's
        code = _main(job.argv)
    except BaseException:  # noqa: BLE001 (reported as the interpreter would: a traceback, exit 1)
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _main(argv: tuple[str, ...]) -> int:
    """``edgemvp ARGV`` as the console script runs it: exit status, and a traceback for an uncaught exception."""
    from edgemvp.cli import main

    sys.argv = ["edgemvp", *argv]
    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    return code


def _wait(pid: int, timeout: float) -> tuple[int, Any, bool]:
    """Wait for a child (killing its group after ``timeout``): status, rusage, whether it timed out."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            return status, usage, False
        if time.monotonic() > deadline:
            _kill_group(pid)
            _, status, usage = os.wait4(pid, 0)
            return status, usage, True
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _kill_group(pgid: int) -> None:
    """SIGKILL a case's process group (only processes this bench started)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, limit: int = 4 << 20) -> str:
    """A log as text: all of it, or its first and last ``limit / 2`` bytes when longer."""
    try:
        with open(path, "rb") as fh:
            size = path.stat().st_size
            if size <= limit:
                return fh.read().decode("utf-8", "replace")
            head = fh.read(limit // 2)
            fh.seek(size - limit // 2)
            return (head + b"\n[...]\n" + fh.read()).decode("utf-8", "replace")
    except OSError:
        return ""


def fixture_paths(fx: Fixtures) -> tuple[str, ...]:
    """What no case may change: the fixture base, zoos, run folder, bundle and model files."""
    return tuple(str(p) for p in (fx.cache / "bases", fx.root / "zoo", fx.root / "bzoo", fx.root / "run",
                                  fx.root / "bundle.tar", fx.root / "model.onnx", fx.root / "onnx", fx.root / "token"))


def make_job(case: Case, fx: Fixtures, work: Path, mem_limit: int = MEM_LIMIT) -> Job:
    """Create the case's folder and files, its cache, and the job a worker runs."""
    case_dir = work / "cases" / case.id.replace("/", "__")
    case_dir.mkdir(parents=True)
    cache = fx.cache if case.cache == "shared" else case_dir / "cache"
    if case.cache == "base":
        base = cache / "bases" / fx.base_dir.name
        base.mkdir(parents=True)
        for f in fx.base_dir.iterdir():
            os.link(f, base / f.name)  # files are replaced, never changed in place, by the cases' preparations
    elif case.cache == "empty":
        cache.mkdir()
    if case.prepare is not None:
        case.prepare(case_dir, fx)
    cwd = case_dir / case.cwd
    cwd.mkdir(parents=True, exist_ok=True)
    env = {"EDGEMVP_CACHE": str(cache), **{k: fx.resolve(v, case_dir) for k, v in case.env.items()}}
    return Job(case.id, tuple(fx.resolve(a, case_dir) for a in case.argv), env, str(cwd), case.timeout,
               (*(fx.resolve(p, case_dir) for p in case.protect), *fixture_paths(fx)),
               tuple(fx.resolve(p, case_dir) for p in case.watch), str(work / "logs" / case.id.replace("/", "__")),
               mem_limit)


def run_cli_cases(cases: list[Case], fx: Fixtures, work: Path, jobs: int, mem_limit: int = MEM_LIMIT
                  ) -> list[dict[str, Any]]:
    """Run CLI cases on a pool of ``jobs`` warm workers; results in case order."""
    (work / "logs").mkdir(exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(jobs, mp_context=context, initializer=warm_worker) as pool:
        futures = {}
        for case in cases:
            try:
                futures[pool.submit(run_job, make_job(case, fx, work, mem_limit))] = case
            except Exception as exc:  # noqa: BLE001 (a broken preparation is the bench's fault: reported)
                results[case.id] = judge_cli(case, fx, {"error": f"preparation failed: {exc!r}"})
        for done, future in enumerate(cf.as_completed(futures), 1):
            case = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001
                outcome = {"error": f"worker failed: {exc!r}"}
            results[case.id] = judge_cli(case, fx, outcome)
            _progress(done, len(futures), results[case.id])
    return [results[c.id] for c in cases]


def _progress(done: int, total: int, result: dict[str, Any]) -> None:
    """One line per finished case."""
    state = "ok  " if result["ok"] else "FAIL"
    print(f"[{done:4d}/{total}] {state} {result['seconds']:7.1f} s  {result['id']}"
          + ("" if result["ok"] else f"  ({', '.join(result['failures'])})"), flush=True)


# --- judging ------------------------------------------------------------------------------------------------------
FLAGS = ("traceback", "wrong_exit", "unexpected", "not_one_line", "lost", "poisoned", "hang", "memory", "unpickled",
         "no_mention", "server_5xx", "dropped", "stopped", "no_detail", "bench_error")


def visible_lines(text: str) -> list[str]:
    """Non-empty lines as a terminal would leave them (a progress bar's carriage returns overwrite)."""
    return [line.rsplit("\r", 1)[-1].strip() for line in text.splitlines() if line.rsplit("\r", 1)[-1].strip()]


def shown_argv(case: Case) -> list[str]:
    """The case's arguments for the report (long ones cut)."""
    return [cut(a, 120) for a in case.argv]


def _record(case: Case, outcome: dict[str, Any], got: int | None, flags: dict[str, bool],
            last_line: str) -> dict[str, Any]:
    """One case's entry in the report."""
    failures = [name for name in FLAGS if flags.get(name)]
    lines = visible_lines(outcome.get("stderr") or "") if failures else []
    return {"stderr_head": [cut(line, 300) for line in lines[:6]],  # failing cases: what else was printed
            "id": case.id, "category": case.category, "description": case.description,
            "argv": shown_argv(case) if case.request is None else None,
            "request": case.request.summary() if case.request is not None else None,
            "expected": list(case.expected), "got": got, "stderr_last": cut(last_line, 400),
            "seconds": outcome.get("seconds", 0.0), "peak_rss_mib": outcome.get("peak_rss_mib"),
            "changed_paths": outcome.get("lost", []), "stored_paths": outcome.get("stored", []),
            "nonfinite_tensors": outcome.get("nonfinite", []), "error": outcome.get("error"),
            **{name: bool(flags.get(name)) for name in FLAGS}, "failures": failures, "ok": not failures}


def judge_cli(case: Case, fx: Fixtures, outcome: dict[str, Any]) -> dict[str, Any]:
    """Judge a CLI case by the rules (see the module docstring)."""
    if "error" in outcome:
        return _record(case, outcome, None, {"bench_error": True}, outcome["error"])
    code, stderr, stdout = outcome["code"], outcome["stderr"], outcome["stdout"]
    lines = visible_lines(stderr)
    timed_out = outcome["timed_out"]
    mention = fx.resolve(case.mention) if case.mention else None
    if mention and len(mention) == 64:
        mention = mention[:12]
    flags = {
        "hang": timed_out,
        "traceback": "Traceback (most recent call last)" in stderr,
        "unexpected": "error: unexpected" in stderr,
        "memory": "MemoryError" in stderr or (code < 0 and not timed_out),
        "wrong_exit": not timed_out and code not in case.expected,
        "not_one_line": code == 2 and (len(lines) != 1 or not lines[0].startswith("error: ")),
        "lost": bool(outcome["lost"]),
        "poisoned": bool(outcome["nonfinite"]) or (bool(outcome["stored"]) and not (code == 0 and 0 in case.expected)),
        "unpickled": "pwned" in stdout + stderr,
        "no_mention": bool(mention) and not timed_out and mention not in stdout + stderr,
    }
    last = lines[-1] if lines else ""
    return _record(case, outcome, None if timed_out else code, flags, last)


def one_line_detail(raw: bytes) -> bool:
    """Whether a JSON error body has ``detail`` as one line (or a dict with a one-line ``message``)."""
    try:
        detail = json.loads(raw).get("detail")
    except (ValueError, AttributeError):
        return False
    if isinstance(detail, dict):
        detail = detail.get("message")
    return isinstance(detail, str) and bool(detail.strip()) and "\n" not in detail


def judge_server(case: Case, outcome: dict[str, Any]) -> dict[str, Any]:
    """Judge a server case: status, 5xx, a one-line detail, the connection, the server still answering, data."""
    status, problem = outcome["status"], outcome["problem"]
    flags = {
        "server_5xx": status is not None and status >= 500,
        "dropped": problem == "dropped",
        "hang": problem == "timeout",
        "wrong_exit": status is not None and status not in case.expected,
        "no_detail": status is not None and 400 <= status < 500 and outcome["json"]
                     and not one_line_detail(outcome["body"]),
        "stopped": not outcome["alive"],
        "poisoned": bool(outcome["nonfinite"]) or (bool(outcome["stored"]) and not 200 <= (status or 0) < 300),
        "memory": outcome.get("server_died", False),
    }
    detail = outcome["body"][:400].decode("utf-8", "replace").replace("\n", " ")
    return _record(case, outcome, status, flags, detail)


# --- running server cases -----------------------------------------------------------------------------------------
def _limit_memory(limit: int) -> None:
    """In the server's process: the same address-space limit as every case."""
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class ZooServer:
    """``edgemvp zoo serve`` of this tree in a subprocess, over a zoo folder, writes with :data:`TOKEN`."""

    def __init__(self, fx: Fixtures, zoo: Path, log: Path, mem_limit: int = MEM_LIMIT) -> None:
        self.fx, self.zoo, self.log, self.mem_limit = fx, zoo, log, mem_limit
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start and wait until ``GET /health`` answers.

        Raises:
            RuntimeError: The server did not come up within two minutes.
        """
        self.port = free_port()
        env = {**os.environ, "EDGEMVP_CACHE": str(self.fx.cache), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "edgemvp", "zoo", "serve", "--zoo", str(self.zoo), "--token-file",
               str(self.fx.root / "token"), "--port", str(self.port), "--max-upload-mb", "64"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         preexec_fn=lambda: _limit_memory(self.mem_limit), start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zoo serve exited with {self.proc.returncode} (see {self.log})")
            if self.healthy(2.0):
                return
            time.sleep(0.5)
        raise RuntimeError(f"zoo serve did not answer /health within 120 s (see {self.log})")

    def healthy(self, timeout: float = 10.0) -> bool:
        """Whether ``GET /health`` answers 200."""
        try:
            status, _, _, _ = exchange(self.port, Request("GET", "/health").encode(self.fx), timeout)
        except OSError:
            return False
        return status == 200

    def peak_rss_mib(self) -> float | None:
        """The server's peak resident memory so far (VmHWM)."""
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except (OSError, AttributeError):
            return None
        line = next((x for x in text.splitlines() if x.startswith("VmHWM:")), None)
        return round(int(line.split()[1]) / 1024, 1) if line else None

    def stop(self) -> None:
        """Stop the server (its whole process group)."""
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc.pid)
            self.proc.wait()


def exchange(port: int, data: bytes, timeout: float) -> tuple[int | None, bytes, bool, str | None]:
    """Send raw request bytes, read the whole response: status, body, whether it is JSON, and a problem
    (``dropped``: no response; ``timeout``). Sending stops when the server answers early (a 413)."""
    deadline = time.monotonic() + timeout
    response = bytearray()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            _send(sock, data, deadline)
            while True:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    chunk = sock.recv(1 << 16)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                response += chunk
    except socket.timeout:
        return None, bytes(response), False, "timeout"
    except OSError:
        pass
    return _parse(bytes(response))


def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Send ``data`` unless the server answers (or closes) first."""
    view, sent = memoryview(data), 0
    while sent < len(data):
        readable, writable, _ = select.select([sock], [sock], [], max(0.0, deadline - time.monotonic()))
        if readable:
            return
        if not writable:
            raise socket.timeout("send timed out")
        try:
            sent += sock.send(view[sent:sent + (1 << 16)])
        except (BrokenPipeError, ConnectionResetError):
            return


def _parse(raw: bytes) -> tuple[int | None, bytes, bool, str | None]:
    """Status, body (chunked decoded), whether JSON, problem."""
    head, sep, payload = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2) if lines and lines[0].startswith(b"HTTP/") else []
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        return None, raw, False, "dropped"
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])}
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        out, rest = bytearray(), payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2:]
        payload = bytes(out)
    return int(parts[1]), payload, b"json" in headers.get(b"content-type", b""), None


def run_server_case(case: Case, fx: Fixtures, server: ZooServer, case_dir: Path) -> dict[str, Any]:
    """One request; then whether the server still answers (restarted when not), and what it stored."""
    watch = [fx.resolve(p, case_dir) for p in case.watch]
    before = {p: digest(Path(p)) for p in watch}
    data = case.request.encode(fx)
    start = time.monotonic()
    status, payload, is_json, problem = exchange(server.port, data, case.timeout)
    seconds = time.monotonic() - start
    alive = server.healthy()
    died = server.proc.poll() is not None
    peak = server.peak_rss_mib()
    if not alive:
        server.stop()
        server.start()
    after = {p: digest(Path(p)) for p in watch}
    return {"status": status, "body": payload, "json": is_json, "problem": problem, "alive": alive,
            "server_died": died, "seconds": round(seconds, 2), "peak_rss_mib": peak, "request_bytes": len(data),
            "stored": [f"{p}: {c}" for p in watch for c in changed(before[p], after[p])][:8],
            "nonfinite": [x for p in watch for x in stored_weights_problems(p, before[p], after[p])][:8]}


def run_server_cases(cases: list[Case], fx: Fixtures, work: Path, mem_limit: int = MEM_LIMIT) -> list[dict[str, Any]]:
    """Every server case against one ``zoo serve`` over a copy of the small zoo, in order."""
    case_dir = work / "cases" / "server"
    case_dir.mkdir(parents=True)
    shutil.copytree(fx.root / "zoo", case_dir / "zoo")
    (work / "logs").mkdir(exist_ok=True)
    server = ZooServer(fx, case_dir / "zoo", work / "logs" / "server.log", mem_limit)
    results = []
    bases_before = digest(fx.cache / "bases")
    server.start()
    try:
        for done, case in enumerate(cases, 1):
            try:
                result = judge_server(case, run_server_case(case, fx, server, case_dir))
            except Exception as exc:  # noqa: BLE001 (the bench's own failure, reported)
                result = _record(case, {}, None, {"bench_error": True}, f"{exc!r}")
            results.append(result)
            _progress(done, len(cases), result)
    finally:
        server.stop()
    return results + [_after_all(case_dir / "zoo", cases, bool(changed(bases_before, digest(fx.cache / "bases"))))]


def _after_all(zoo: Path, cases: list[Case], bases_changed: bool) -> dict[str, Any]:
    """After every request: the server's zoo verifies clean, holds only what valid uploads added, and the
    cached bases it served are unchanged."""
    from edgemvp.zoo.store import ZooStore

    uploads = sum(1 for c in cases if c.request is not None and c.request.path == "/entries" and 201 in c.expected)
    case = Case("server/after-all", "server", f"after every server case the zoo verifies clean and holds 5 + "
                f"{uploads} entries, and the cached bases are unchanged", (0,))
    start = time.monotonic()
    with ZooStore.open(zoo) as store:
        report, count = store.verify(), len(store)
    problems = ([] if report.clean and count == 5 + uploads else
                [f"zoo verify clean={report.clean}, corrupt={len(report.corrupt)}, entries={count}"])
    problems += ["the cached bases changed"] if bases_changed else []
    outcome = {"seconds": round(time.monotonic() - start, 2), "lost": problems}
    return _record(case, outcome, 1 if problems else 0, {"lost": bool(problems)}, "; ".join(problems))


# --- the report ---------------------------------------------------------------------------------------------------
ROWS = (("tracebacks", "traceback"), ("wrong exit codes (or HTTP statuses)", "wrong_exit"),
        ("`unexpected` errors", "unexpected"), ("error not one `error:` line", "not_one_line"),
        ("data lost or poisoned", ("lost", "poisoned")), ("hangs", "hang"), ("memory errors or kills", "memory"),
        ("pickles executed", "unpickled"), ("corrupt entry not named", "no_mention"), ("server 5xx", "server_5xx"),
        ("server dropped the connection", "dropped"), ("server stopped answering", "stopped"),
        ("server 4xx without a one-line detail", "no_detail"), ("bench errors", "bench_error"))


def _count(results: list[dict[str, Any]], flags: str | tuple[str, ...]) -> int:
    """How many results have any of the flags."""
    names = (flags,) if isinstance(flags, str) else flags
    return sum(1 for r in results if any(r[n] for n in names))


def summary(results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The summary figures (also the first table of the Markdown report)."""
    slowest = max(results, key=lambda r: r["seconds"] or 0.0)
    biggest = max(results, key=lambda r: r["peak_rss_mib"] or 0.0)
    return {"cases": len(results), "passed": sum(r["ok"] for r in results),
            "failed": sum(not r["ok"] for r in results),
            **{label: _count(results, flags) for label, flags in ROWS},
            "slowest": {"id": slowest["id"], "seconds": slowest["seconds"]},
            "most_memory": {"id": biggest["id"], "peak_rss_mib": biggest["peak_rss_mib"]},
            "wall_seconds": round(seconds, 1)}


def _sent(r: dict[str, Any]) -> str:
    """What a case sent, on one line."""
    if r["request"] is not None:
        q = r["request"]
        return f"{q['method']} {q['path']}" + (" (chunked)" if q["chunked"] else "")
    return "edgemvp " + " ".join(json.dumps(a) if (not a or any(c in a for c in " '\"\\\n\r\x1b")) else a
                                 for a in r["argv"])


def _codes(codes: list[int]) -> str:
    """Expected codes, short."""
    return "4xx" if codes == list(BAD) else ("200/4xx" if codes == [200, *BAD] else "/".join(map(str, codes)))


def markdown(results: list[dict[str, Any]], figures: dict[str, Any], meta: dict[str, Any]) -> str:
    """The Markdown report: summary, per-category table, every failing case on one line."""
    lines = ["# edgemvp hostile-input benchmark", "",
             f"Tree `{meta['tree']}` at {meta['commit']} ({meta['dirty']}), {meta['date']}, {meta['jobs']} workers, "
             f"{figures['wall_seconds'] / 60:.1f} min in all (fixtures {meta['fixture_seconds']:.0f} s), every case "
             f"under RLIMIT_AS {meta['mem_gib']:g} GiB.", "",
             "| | |", "|---|---|", f"| cases | {figures['cases']} ({figures['passed']} passed, {figures['failed']} "
             "failed) |"]
    lines += [f"| {label} | {figures[label]} |" for label, _ in ROWS]
    lines += [f"| slowest case | {figures['slowest']['seconds']:.1f} s (`{figures['slowest']['id']}`) |",
              f"| most memory | {figures['most_memory']['peak_rss_mib']} MiB peak RSS "
              f"(`{figures['most_memory']['id']}`) |", "", "## Per category", "",
              "| category | cases | failed | tracebacks | wrong exit | unexpected | not one line | lost/poisoned "
              "| hangs | memory | 5xx | no detail | slowest s | peak MiB |", "|---" * 14 + "|"]
    for category in dict.fromkeys(r["category"] for r in results):
        rs = [r for r in results if r["category"] == category]
        counts = [_count(rs, f) for f in ("traceback", "wrong_exit", "unexpected", "not_one_line", ("lost", "poisoned"),
                                          "hang", "memory", "server_5xx", "no_detail")]
        lines.append(f"| {category} | {len(rs)} | {sum(not r['ok'] for r in rs)} | " + " | ".join(map(str, counts))
                     + f" | {max(r['seconds'] or 0 for r in rs):.1f} | {max(r['peak_rss_mib'] or 0 for r in rs):.0f} |")
    lines += ["", "## Failing cases", "", "One line each: id, what was sent, expected, got, what failed, the last line "
              "of stderr (server: of the response body). `@CASE@` is the case's folder, `@FIX@` the fixtures.", ""]
    for r in results:
        if not r["ok"]:
            got = "timeout" if r["hang"] else r["got"]
            lines.append(f"- `{r['id']}`: {r['description']}. Sent `{cut(_sent(r), 160)}`; expected "
                         f"{_codes(r['expected'])}, got {got} [{', '.join(r['failures'])}]"
                         + (f"; {'; '.join(paths)[:200]}" if (paths := r["changed_paths"] + r["stored_paths"]
                                                                 + r["nonfinite_tensors"]) else "")
                         + f"; `{cut(r['stderr_last'], 220)}`")
    return "\n".join(lines) + "\n"


def placeholders(results: list[dict[str, Any]], fx: Fixtures, work: Path) -> list[dict[str, Any]]:
    """Results with this run's temporary paths written as ``@CASE@`` and ``@FIX@`` (stable across runs)."""
    text = json.dumps(results)
    for case_dir in sorted({r["id"].replace("/", "__") for r in results}, key=len, reverse=True):
        text = text.replace(str(work / "cases" / case_dir), CASE)
    text = text.replace(str(work / "cases" / "server"), CASE).replace(str(fx.root), FIX).replace(str(work), "@WORK@")
    return json.loads(text)


def git_state() -> tuple[str, str]:
    """The tree's commit and how many tracked files differ from it (read-only git commands)."""
    def git(*args: str) -> str:
        """A git command's output ("" when git fails)."""
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = [line for line in git("status", "--porcelain").splitlines() if line and not line.endswith("hostile.py")]
    return commit, f"{len(dirty)} files differ from it" if dirty else "clean"


def write_reports(out: Path, results: list[dict[str, Any]], meta: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Write ``hostile.json`` and ``hostile.md``; return the summary figures."""
    figures = summary(results, seconds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hostile.json").write_text(json.dumps({"meta": meta, "summary": figures, "cases": results}, indent=1))
    (out / "hostile.md").write_text(markdown(results, figures, meta))
    return figures


# --- main ---------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="Folder for hostile.json and hostile.md (required to run).")
    parser.add_argument("--only", help="Comma-separated categories to run (see --list).")
    parser.add_argument("--jobs", type=int, default=2, help="Worker processes for CLI cases [2].")
    parser.add_argument("--mem-gib", type=float, default=MEM_LIMIT / GIB,
                        help="Address-space limit (RLIMIT_AS) of every case and of the server, in GiB [6].")
    parser.add_argument("--list", action="store_true", help="List the cases (id, expected, description) and exit.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder (fixtures, cases, logs).")
    parser.add_argument("--fixtures", type=Path, help="Keep the fixtures in this folder and reuse them when a "
                        "finished set is there [default: built in the temporary folder].")
    args = parser.parse_args(argv)
    if not args.list and args.out is None:
        parser.error("--out DIR is required (or --list)")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if not 2 <= args.mem_gib <= 64:
        parser.error("--mem-gib must be between 2 and 64")
    return args


def select_cases(only: str | None) -> list[Case]:
    """All cases, or those of the named categories."""
    cases = all_cases()
    if not only:
        return cases
    wanted = {c.strip() for c in only.split(",") if c.strip()}
    unknown = wanted - {c.category for c in cases}
    if unknown:
        raise SystemExit(f"unknown categories: {', '.join(sorted(unknown))}; valid: "
                         f"{', '.join(dict.fromkeys(c.category for c in cases))}")
    return [c for c in cases if c.category in wanted]


def run(args: argparse.Namespace, cases: list[Case]) -> int:
    """Build the fixtures, run the cases, write the reports; 0 when every case passed."""
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edgemvp-hostile-"))
    fx = Fixtures((args.fixtures or work / "fix").resolve())
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    fx.busy_port = busy.getsockname()[1]
    print(f"{len(cases)} cases; working in {work}", flush=True)
    try:
        fx.load_or_build()
        fixture_seconds = time.perf_counter() - started
        cli_cases = [c for c in cases if c.request is None]
        limit = int(args.mem_gib * GIB)
        results = run_cli_cases(cli_cases, fx, work, args.jobs, limit) if cli_cases else []
        server = [c for c in cases if c.request is not None]
        results += run_server_cases(server, fx, work, limit) if server else []
        commit, dirty = git_state()
        meta = {"tree": str(ROOT), "commit": commit, "dirty": dirty, "date": time.strftime("%Y-%m-%d %H:%M"),
                "jobs": args.jobs, "fixture_seconds": round(fixture_seconds, 1), "only": args.only,
                "mem_gib": args.mem_gib}
        figures = write_reports(args.out, placeholders(results, fx, work), meta, time.perf_counter() - started)
    finally:
        busy.close()
        if args.keep:
            print(f"kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{figures['cases']} cases, {figures['failed']} failed, {figures['wall_seconds'] / 60:.1f} min; "
          f"report: {args.out / 'hostile.md'}", flush=True)
    return 0 if figures["failed"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    args = parse_args(argv)
    cases = select_cases(args.only)
    if args.list:
        for case in cases:
            print(f"{case.id:60s} {_codes(list(case.expected)):8s} {case.description}")
        print(f"{len(cases)} cases in {len(dict.fromkeys(c.category for c in cases))} categories")
        return 0
    return run(args, cases)


if __name__ == "__main__":
    sys.exit(main())
