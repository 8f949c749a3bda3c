"""The zoo server: a zoo and the voter behind an HTTP API (FastAPI), for prunes from other machines.

=======================================  ======  =====================================================
endpoint                                 auth    what
=======================================  ======  =====================================================
``GET /health``                          none    status, version, whether writes / reads need a token
``GET /access``                          read    whether the presented token may read / write
``GET /bases``                           read    the bases this server votes with (and accepts entries of)
``GET /base?arch=&dataset=``             read    the base a prune votes with (as a local prune picks it)
``GET /bases/{sha256}/weights``          read    a base's safetensors, streamed, sha256 in a header
``GET /entries?...&limit=&offset=``      read    index rows (filter by arch, base, dataset, class, job key)
``GET /entries/{id}``                    read    an entry's canonical manifest (its sha256 is the id)
``GET /entries/{id}/weights``            read    its safetensors, streamed, sha256 in a header
``POST /neighbours``                     read    Wu-Palmer ranking of the zoo for a task
``POST /vote``                           read    masks + averaged initial weights (safetensors), seed
``POST /entries``                        write   upload entries as a bundle (``edgemvp zoo export``'s format)
``GET /openapi.json``                    none    the schema
=======================================  ======  =====================================================

The voter is :mod:`edgemvp.mvp.voter`, the code a local prune runs. Security: a write needs the bearer token
(``hmac.compare_digest``), a read needs the read token (or the write token) when one is set; request bodies
are limited while they stream (413), JSON bodies are validated by strict pydantic models; an upload is read
in memory and validated completely (:mod:`edgemvp.zoo.validate`) before the store writes it (atomically, as
every ``put``); ids and hashes from URLs must be 64 hex digits, and no path from a request reaches the file
system. Every user-caused error is 4xx with one line in ``detail``.
"""
from __future__ import annotations

import collections
import contextlib
import hmac
import ipaddress
import io
import json
import logging
import os
import queue
import secrets
import socket
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal

import anyio
import anyio.to_thread
import numpy as np
import torch.nn as nn
from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from edgemvp.data.tasks import TaskSpec
from edgemvp.errors import EdgeMVPError, UsageError
from edgemvp.models.base import WEIGHTS as BASE_WEIGHTS
from edgemvp.models.base import BaseManifest, base_folder, cached_bases, load_base
from edgemvp.models.weights import sha256_bytes
from edgemvp.paths import check_token, read_secret
from edgemvp.versions import tool_versions
from edgemvp.mvp.similarity import Hierarchy
from edgemvp.mvp.rank import Ranking, nearest
from edgemvp.mvp.voter import VoteSpec
from edgemvp.zoo.local import LocalZoo, zoo_base
from edgemvp.zoo import wire
from edgemvp.zoo.store import MANIFEST, WEIGHTS, ZooStore, read_bundle_from
from edgemvp.zoo.limits import MAX_TASK_CLASSES, QUEUE, RANK_SLOTS, RETRY_AFTER_S
from edgemvp.zoo.validate import check_entry

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 256 << 20
MAX_JSON_BYTES = 1 << 20
MAX_UPLOAD_ENTRIES = 64
CHUNK = 1 << 20
MIN_TOKEN = 16
NO_TAXONOMY = "no-taxonomy"  # /neighbours and /vote: the taxonomy cannot rank this task; rank by LEEP instead

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=300)]
EntryId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="entry id (64 hex digits)")]
BaseSha = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="base weights sha256")]
Synset = Annotated[str, StringConstraints(pattern=r"^([a-z0-9_.'/-]{1,80}\.[nvasr]\.[0-9]{2}|n[0-9]{8})$")]


# --- request bodies --------------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TaskBody(_Body):
    """A target task: a dataset's classes (label order), optionally their WordNet synsets."""

    dataset: Text
    classes: Annotated[list[Text], Field(min_length=2, max_length=10_000)]
    synsets: Annotated[list[Synset | None], Field(max_length=10_000)] | None = None
    name: Text | None = None

    def spec(self) -> TaskSpec:
        """The task as the voter takes it."""
        return wire.task_from_json(self.dataset, self.classes, self.synsets, self.name)


class NeighboursBody(_Body):
    """``POST /neighbours``: rank the zoo's entries of a base for a task."""

    task: TaskBody
    similarity: Literal["wordnet", "leep"] = "wordnet"
    hierarchy: dict[str, Any] | list[Any] | None = Field(None, description="class tree instead of WordNet")
    limit: int = Field(10, ge=1, le=1000, description="how many nearest entries to return")
    base_sha256: Sha256 | None = None


class VoteBody(_Body):
    """``POST /vote``: the target's masks and initial weights from its nearest entries (or given ones)."""

    task: TaskBody
    method: Literal["mvp", "transfer", "random"] = "mvp"
    neighbours: int = Field(3, ge=1, le=100)
    neighbour_ids: Annotated[list[Sha256], Field(min_length=1, max_length=100)] | None = Field(
        None, description="vote from these entries (e.g. ranked by LEEP on the client), nearest first")
    similarities: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(max_length=100)] | None = None
    similarity: Literal["wordnet"] = "wordnet"
    hierarchy: dict[str, Any] | list[Any] | None = None
    ratio: float = Field(0.9, gt=0.0, lt=1.0)
    temperature: float = Field(0.25, ge=1e-6, le=1e6)
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="drawn at random when absent; returned")
    base_sha256: Sha256 | None = None
    head_from_base: bool = Field(True, description="start a class from the base's classifier row for it")
    round_to: int = Field(1, ge=1, le=4096, description="keep channel counts as multiples of this (a device's block)")
    prior: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(max_length=1_000_000)] | None = Field(
        None, description="per unit, the base's importance on the target: fills groups beyond the neighbours' votes")
    counts: Annotated[list[Annotated[int, Field(ge=1, le=1_000_000)]], Field(min_length=1, max_length=100_000)] \
        | None = Field(None, description="per unit group, the units to keep (a per-group allocation) instead of the "
                                         "ratio's")


# --- the service ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerConfig:
    """How a server runs (see :func:`create_app`)."""

    zoo: Path
    cache: Path | None = None
    token: str | None = None
    read_token: str | None = None
    max_body: int = MAX_UPLOAD_BYTES
    max_json: int = MAX_JSON_BYTES
    vote_workers: int = 1
    connections: int = 8
    max_task_classes: int = MAX_TASK_CLASSES
    queue: int = QUEUE


class Gate:
    """At most ``slots`` requests do the work at once and at most ``queue`` more wait, served first come first
    served; any more get 503 at once (with ``Retry-After``).

    The waiting happens in the request's worker thread before it borrows anything (an index connection, a
    model), so a flood of heavy requests can neither hold the pool nor queue without bound; the server's thread
    pool is sized so that waiting requests never starve the light endpoints (:func:`thread_tokens`).
    """

    def __init__(self, name: str, slots: int, queue: int) -> None:
        self.name, self.slots, self.queue = name, slots, queue
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: collections.deque[object] = collections.deque()  # tickets, oldest first

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """Wait for a slot in arrival order (503 when the queue is full)."""
        ticket = object()
        with self._cond:
            if self._running + len(self._waiting) >= self.slots + self.queue:
                raise HTTPException(503, f"the zoo server is busy ({self.name}: {self.slots} running, {self.queue} "
                                         "waiting); retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)})
            self._waiting.append(ticket)
            while self._waiting[0] is not ticket or self._running >= self.slots:
                self._cond.wait()
            self._waiting.popleft()
            self._running += 1
            self._cond.notify_all()  # the next ticket may start too when a slot is still free
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()


def thread_tokens(config: "ServerConfig", light: int = 32) -> int:
    """Worker threads the server needs: every gated request that may run or wait, plus ``light`` for the
    cheap endpoints (lists, manifests, weights), so a full queue never blocks them."""
    return RANK_SLOTS + config.vote_workers + 2 * config.queue + light


class StorePool:
    """Open index connections handed to one thread at a time (sqlite connections are not shared)."""

    def __init__(self, root: Path, size: int) -> None:
        self._free: queue.Queue[ZooStore] = queue.Queue()
        self._all = [ZooStore.open(root, shared=True) for _ in range(size)]
        for store in self._all:
            self._free.put(store)

    @contextlib.contextmanager
    def borrow(self) -> Iterator[ZooStore]:
        """A store for this thread until the block ends (waits while all are lent)."""
        store = self._free.get()
        try:
            yield store
        finally:
            self._free.put(store)

    def close(self) -> None:
        for store in self._all:
            store.close()


class ZooService:
    """What the endpoints do, without HTTP: one zoo, the cached bases it votes with, bounded vote slots."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.pool = StorePool(config.zoo, config.connections)
        self._models: dict[str, nn.Module] = {}
        self._models_lock = threading.Lock()
        self.ranking = Gate("rankings", RANK_SLOTS, config.queue)
        self.voting = Gate("votes", config.vote_workers, config.queue)

    def task(self, body: TaskBody) -> TaskSpec:
        """The request's task, within this server's class bound (422 past it)."""
        if len(body.classes) > self.config.max_task_classes:
            raise UsageError(f"the task has {len(body.classes)} classes; this zoo server ranks tasks of at most "
                             f"{self.config.max_task_classes} (zoo serve --max-task-classes)")
        return body.spec()

    def bases(self) -> dict[str, BaseManifest]:
        """The cached bases, by weights sha256."""
        return {b.weights_sha256: b for b in cached_bases(self.config.cache)}

    def base_model(self, base: BaseManifest) -> nn.Module:
        """A base model, loaded once (sha256 checked) and shared read-only by every request."""
        with self._models_lock:
            if base.weights_sha256 not in self._models:
                model, loaded = load_base(base.arch, base.dataset, self.config.cache)
                if loaded.weights_sha256 != base.weights_sha256:
                    raise UsageError(f"base {base.weights_sha256[:12]} changed in the server's cache")
                self._models[base.weights_sha256] = model
            return self._models[base.weights_sha256]

    def resolve_base(self, store: ZooStore, sha: str | None, arch: str | None = None,
                     dataset: str | None = None) -> BaseManifest:
        """The base a request means: by sha256, else as a local prune would pick it."""
        if sha is None:
            return zoo_base(store, arch, dataset, self.config.cache)
        base = self.bases().get(sha)
        if base is None:
            raise HTTPException(404, f"no base with sha256 {sha[:12]} on this server")
        return base

    @contextlib.contextmanager
    def zoo(self, sha: str | None) -> Iterator[LocalZoo]:
        """The voter's view of the zoo for one base (a borrowed connection)."""
        with self.pool.borrow() as store:
            base = self.resolve_base(store, sha)
            yield LocalZoo(store, base, self.config.cache, self.base_model(base))

    def neighbours(self, body: NeighboursBody) -> dict[str, Any]:
        """The ``limit`` entries nearest to the task by Wu-Palmer, nearest first, with their tasks."""
        if body.similarity == "leep":
            raise UsageError("LEEP needs the target's images, which stay on the client: rank the candidates "
                             "there (GET /entries/{id}/weights) and POST /vote with neighbour_ids")
        task = self.task(body.task)
        with self.ranking.enter(), self.zoo(body.base_sha256) as zoo:  # a slot first, then a connection
            ids, tasks = zoo.task_table()
            ranking = _taxonomy_ranking(zoo, ids, tasks, task, body.hierarchy, body.limit)
            table = dict(zip(ids, tasks))
            out = [{"id": i, "similarity": float(score), "dataset": table[i][0], "classes": list(table[i][1])}
                   for i, score in zip(ranking.ids, ranking.scores)]
            return {"kind": ranking.kind, "base_sha256": zoo.base.weights_sha256, "entries": len(ids),
                    "neighbours": out}

    def vote(self, body: VoteBody) -> tuple[bytes, int]:
        """The voter's answer as safetensors bytes, and the seed used."""
        seed = body.seed if body.seed is not None else secrets.randbelow(2**32)
        task = self.task(body.task)
        spec = VoteSpec(task, body.method, body.neighbours, body.ratio, body.temperature, seed, body.head_from_base,
                        body.round_to, None if body.prior is None else np.asarray(body.prior, dtype=np.float64),
                        None if body.counts is None else tuple(body.counts))
        with self.voting.enter(), self.zoo(body.base_sha256) as zoo:  # a slot first, then a connection
            ids, tasks = zoo.task_table()
            ranking = None
            if spec.method != "random":
                if spec.method == "mvp":
                    nearest(np.zeros(len(ids)), spec.neighbours)  # N larger than the zoo: the local prune's error
                ranking = (_given_ranking(ids, body, spec.count) if body.neighbour_ids is not None
                           else _taxonomy_ranking(zoo, ids, tasks, task, body.hierarchy, spec.count))
            init = zoo.initialise(spec, ranking)  # in a vote slot: bounded, so memory stays bounded
            kind = ranking.kind if ranking is not None else "none"
            return wire.initial_bytes(init, zoo.base.input_spec, len(task.classes), seed, kind), seed

    def upload(self, data: bytes, build_seconds: float | None) -> dict[str, Any]:
        """Validate every entry of a bundle, then store them all (nothing is written when one is refused)."""
        items = read_bundle_from(io.BytesIO(data), "upload", max_entries=MAX_UPLOAD_ENTRIES, max_bytes=len(data))
        if not items:
            raise UsageError("upload: the bundle holds no entries")
        bases = self.bases()
        for manifest, weights in items:
            check_entry(manifest, weights, bases, f"upload: entry {manifest.entry_id()[:12]}")
        added, present = [], []
        with self.pool.borrow() as store:
            for manifest, weights in items:
                known = store.job_entry(manifest.job_key)
                entry_id = known or store.put(manifest, weights, build_seconds)
                (present if known else added).append(entry_id)
        return {"added": added, "present": present}

    def entry_file(self, entry_id: str, name: str) -> tuple[Path, str]:
        """An indexed entry's file and the sha256 it must have (404 for an unknown id)."""
        with self.pool.borrow() as store:
            if entry_id not in store:
                raise HTTPException(404, f"no zoo entry with id {entry_id[:12]}")
            entry = store.get(entry_id)  # checks the manifest against its id
            return entry.folder / name, (entry_id if name == MANIFEST else entry.manifest.weights_sha256)

    def close(self) -> None:
        self.pool.close()


def _taxonomy_ranking(zoo: LocalZoo, ids: list[str], tasks: list[tuple[str, tuple[str, ...]]], task: TaskSpec,
                      tree: Any, limit: int) -> Ranking:
    hierarchy = Hierarchy.from_tree(tree, "request hierarchy") if tree is not None else None
    try:
        return zoo.rank_by_taxonomy(ids, tasks, task, hierarchy, limit=limit)
    except UsageError as exc:  # the client falls back to LEEP, as a local prune does
        raise HTTPException(422, {"code": NO_TAXONOMY, "message": str(exc)}) from exc


def _given_ranking(ids: list[str], body: VoteBody, count: int) -> Ranking:
    given = list(body.neighbour_ids or [])
    known = set(ids)
    missing = [i for i in given if i not in known]
    if missing:
        raise UsageError(f"neighbour {missing[0][:12]} is not an entry of this base in the zoo")
    if len(set(given)) != len(given):
        raise UsageError("neighbour_ids lists an entry twice")
    if len(given) < count:
        raise UsageError(f"--method {body.method} needs {count} neighbour ids, got {len(given)}")
    scores = body.similarities if body.similarities is not None else [0.0] * len(given)
    if len(scores) != len(given):
        raise UsageError(f"{len(scores)} similarities for {len(given)} neighbour ids")
    return Ranking(given, np.asarray(scores, dtype=np.float64), "given")


def load_token(path: str | os.PathLike[str], option: str = "--token-file") -> str:
    """A server token from a file: stripped, at least 16 characters, readable by its owner only.

    Raises:
        UsageError: Unreadable, empty or short, or readable by the group or others (see
            :func:`edgemvp.paths.read_secret`).
    """
    token = check_token(read_secret(path, option), f"{option} {path}")
    if len(token) < MIN_TOKEN:
        raise UsageError(f"{option} {path}: the token is shorter than {MIN_TOKEN} characters")
    return token


def check_tls(certfile: Path | None, keyfile: Path | None) -> bool:
    """Whether TLS is on; its files must be given together, readable, PEM, and the key private to its owner.

    Raises:
        UsageError: One of the two files alone, unreadable files, a key others can read, or files that do not
            make a certificate and its key.
    """
    import ssl

    if certfile is None and keyfile is None:
        return False
    if certfile is None or keyfile is None:
        raise UsageError("TLS needs both --ssl-certfile and --ssl-keyfile")
    read_secret(keyfile, "--ssl-keyfile")  # a private key readable by others is refused, like a token
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(certfile), str(keyfile))
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile}: not a PEM certificate and its key "
                         f"({getattr(exc, 'reason', None) or exc.__class__.__name__})") from exc
    return True


def is_loopback(host: str) -> bool:
    """Whether a host name or address only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(host: str, port: int) -> None:
    """Refuse, with one line, an address this machine cannot listen on (before the server starts).

    Raises:
        UsageError: Unknown host, port in use, no permission.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc


@contextlib.contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0, ssl_certfile: Path | None = None,
            ssl_keyfile: Path | None = None) -> Iterator[str]:
    """Serve an app with uvicorn in a background thread (tests, benchmarks, notebooks); yields its URL.

    ``port=0`` takes a free port; with a certificate and key it serves https. The server stops when the block
    ends.
    """
    import uvicorn

    tls = check_tls(ssl_certfile, ssl_keyfile)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           ssl_certfile=str(ssl_certfile) if tls else None,
                                           ssl_keyfile=str(ssl_keyfile) if tls else None))
    thread = threading.Thread(target=server.run, name="edgemvp-zoo-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise UsageError(f"the zoo server could not start on {host}:{port}")
        threading.Event().wait(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"{'https' if tls else 'http'}://{host}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join()


# --- HTTP -----------------------------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: refuse request bodies over a limit (413), by Content-Length and while they stream.

    Uploads (``POST /entries``) get ``max_body``; every other request ``max_json``.
    """

    def __init__(self, app, max_body: int, max_json: int) -> None:
        self.app, self.max_body, self.max_json = app, max_body, max_json

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body if (scope["method"], scope["path"]) == ("POST", "/entries") else self.max_json
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reply(send, 400, "malformed Content-Length")
                return
            if int(declared) > limit:
                await _reply(send, 413, f"request body over the {limit}-byte limit")
                return
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body, or one longer than it said
                    raise HTTPException(413, f"request body over the {limit}-byte limit")
            return message

        await self.app(scope, limited, send)


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _matches(cred: HTTPAuthorizationCredentials | None, token: str | None) -> bool:
    """Constant-time comparison of a bearer token."""
    if cred is None or token is None:
        return False
    return hmac.compare_digest(cred.credentials.encode(), token.encode())


def _stream(path: Path, sha: str, media_type: str = "application/octet-stream") -> StreamingResponse:
    """A file streamed in chunks, with its sha256 (the client verifies it) and immutable caching."""
    try:
        fh = open(path, "rb")
        size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise EdgeMVPError(f"{path.name} of {sha[:12]} is missing on the server ({exc.strerror})") from exc

    def chunks() -> Iterator[bytes]:
        with fh:
            while block := fh.read(CHUNK):
                yield block

    return StreamingResponse(chunks(), media_type=media_type, headers=_content_headers(sha, size))


def _content_headers(sha: str, size: int) -> dict[str, str]:
    return {wire.SHA_HEADER: sha, "Content-Length": str(size), "ETag": f'"{sha}"',
            "Cache-Control": "public, max-age=31536000, immutable"}


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite numbers become null."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}


def create_app(zoo_path: str | os.PathLike[str], token: str | None = None, read_token: str | None = None,
               max_body: int = MAX_UPLOAD_BYTES, cache: str | os.PathLike[str] | None = None,
               max_json: int = MAX_JSON_BYTES, vote_workers: int = 1, connections: int = 8,
               max_task_classes: int = MAX_TASK_CLASSES, queue: int = QUEUE) -> FastAPI:
    """The zoo server's ASGI app (run it with uvicorn; ``edgemvp zoo serve`` does).

    Args:
        zoo_path: The zoo folder (created when missing).
        token: Bearer token for writes; None: the server is read-only.
        read_token: Bearer token for reads (the write token is accepted too); None: reads are open.
        max_body: Upload size limit in bytes.
        cache: Cache with the bases the zoo votes with.
        max_json: Size limit of every other request body.
        vote_workers: Votes averaged at once (each holds full-size float64 copies of the model).
        connections: Index connections shared by the request threads.
        max_task_classes: Classes a ``/neighbours`` or ``/vote`` task may have.
        queue: Rankings (and votes) that may wait for a slot; past that, 503.

    Raises:
        UsageError: A folder that is not a zoo, or empty tokens.
    """
    if token is not None and not token.strip() or read_token is not None and not read_token.strip():
        raise UsageError("a token must not be empty")
    if vote_workers < 1 or connections < 1 or max_task_classes < 2 or queue < 0:
        raise UsageError("vote_workers and connections must be at least 1, max_task_classes 2, queue 0")
    ZooStore.open(zoo_path, create=True).close()
    config = ServerConfig(Path(zoo_path).expanduser().resolve(), None if cache is None else Path(cache), token,
                          read_token, max_body, max_json, vote_workers, connections, max_task_classes, queue)
    service = ZooService(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        limiter = anyio.to_thread.current_default_thread_limiter()  # sync endpoints run on these threads
        limiter.total_tokens = max(limiter.total_tokens, thread_tokens(config))
        yield
        service.close()

    app = FastAPI(title="edgemvp zoo server", version=_version(), lifespan=lifespan,
                  description="A zoo of pruned models and the Meta-Vote Pruning voter (see edgemvp.zoo.server).")
    app.state.service = service
    app.add_middleware(BodyLimit, max_body=max_body, max_json=max_json)
    _handlers(app)
    _routes(app, service, HTTPBearer(auto_error=False))
    return app


def _version() -> str:
    return tool_versions()["edgemvp"]


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # one line, and never the offending input: a NaN in it would make the error itself unserialisable
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return JSONResponse({"detail": f"invalid request: {where}: {str(first.get('msg', 'invalid'))[:200]}"},
                            status_code=422)

    @app.exception_handler(UsageError)
    async def usage(_: Request, exc: UsageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(EdgeMVPError)
    async def failure(_: Request, exc: EdgeMVPError) -> JSONResponse:
        logger.error("server error: %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=500)


def _routes(app: FastAPI, service: ZooService, bearer: HTTPBearer) -> None:
    config = service.config
    unauthorized = {"WWW-Authenticate": "Bearer"}

    def read_access(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.read_token is not None and not (_matches(cred, config.read_token) or _matches(cred, config.token)):
            raise HTTPException(401, "reading this zoo needs a valid bearer token", headers=unauthorized)

    def write_access(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.token is None:
            raise HTTPException(403, "this zoo server is read-only (start it with --token-file to accept uploads)")
        if not _matches(cred, config.token):
            raise HTTPException(401, "writing to this zoo needs the server's bearer token", headers=unauthorized)

    read = [Depends(read_access)]
    _base_routes(app, service, read, bearer)
    _entry_routes(app, service, read)
    _voter_routes(app, service, read)
    _upload_route(app, service, [Depends(write_access)])


BINARY = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


def _base_routes(app: FastAPI, service: ZooService, read: list, bearer: HTTPBearer) -> None:
    config, version = service.config, app.version

    @app.get("/health")
    async def health() -> dict[str, Any]:  # async: answers even when every worker thread is busy
        """Liveness, and what needs a token."""
        return {"status": "ok", "version": version, "writes": config.token is not None,
                "reads_need_token": config.read_token is not None}

    @app.get("/access", dependencies=read)
    def access(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> dict[str, bool]:
        """What the presented token may do (a client checks before work whose result it will upload)."""
        return {"read": True, "write": _matches(cred, config.token)}

    @app.get("/bases", dependencies=read)
    def bases() -> dict[str, Any]:
        """The bases this server votes with and accepts entries of, with their entry counts."""
        with service.pool.borrow() as store:
            counts = {sha: n for _, sha, n, _ in store.bases()}
        return {"bases": [{"manifest": json.loads(b.to_json()), "entries": counts.get(sha, 0)}
                          for sha, b in service.bases().items()]}

    @app.get("/base", dependencies=read)
    def base(arch: Annotated[str | None, Query(max_length=64)] = None,
             dataset: Annotated[str | None, Query(max_length=300)] = None) -> dict[str, Any]:
        """The base a prune of this zoo votes with (picked as a local prune picks it)."""
        with service.pool.borrow() as store:
            return json.loads(service.resolve_base(store, None, arch, dataset).to_json())

    @app.get("/bases/{sha}/weights", dependencies=read, responses={200: BINARY})
    def base_weights(sha: BaseSha) -> StreamingResponse:
        """A base's weights (safetensors), streamed; the sha256 is in the X-Edgemvp-Sha256 header."""
        found = service.bases().get(sha)
        if found is None:
            raise HTTPException(404, f"no base with sha256 {sha[:12]} on this server")
        return _stream(base_folder(found.arch, found.dataset, config.cache) / BASE_WEIGHTS, sha)

def _entry_routes(app: FastAPI, service: ZooService, read: list) -> None:
    @app.get("/entries", dependencies=read)
    def entries(arch: Annotated[str | None, Query(max_length=64)] = None,
                base_sha256: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
                dataset: Annotated[str | None, Query(max_length=300)] = None,
                class_name: Annotated[str | None, Query(alias="class", max_length=300)] = None,
                job_key: Annotated[str | None, Query(max_length=128)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                offset: Annotated[int, Query(ge=0, le=2**62)] = 0) -> dict[str, Any]:
        """Index rows in insertion order, one page at a time."""
        with service.pool.borrow() as store:
            rows = store.rows(arch, base_sha256, class_name, dataset, job_key, limit, offset)
        return {"entries": [_finite(asdict(r)) for r in rows], "limit": limit, "offset": offset}

    @app.get("/entries/{entry_id}", dependencies=read, responses={200: {"content": {"application/json": {}}}})
    def entry(entry_id: EntryId) -> Response:
        """An entry's canonical manifest bytes (their sha256 is the id)."""
        path, sha = service.entry_file(entry_id, MANIFEST)
        raw = path.read_bytes()
        return Response(raw, media_type="application/json", headers=_content_headers(sha, len(raw)))

    @app.get("/entries/{entry_id}/weights", dependencies=read, responses={200: BINARY})
    def entry_weights(entry_id: EntryId) -> StreamingResponse:
        """An entry's weights (safetensors, shrunk layout), streamed; the sha256 is in X-Edgemvp-Sha256."""
        return _stream(*service.entry_file(entry_id, WEIGHTS))

def _voter_routes(app: FastAPI, service: ZooService, read: list) -> None:
    @app.post("/neighbours", dependencies=read)
    def neighbours(body: NeighboursBody) -> dict[str, Any]:
        """The zoo's entries nearest to a task by Wu-Palmer (WordNet or a given class tree).

        422 with ``detail.code == "no-taxonomy"`` when a class has no node: rank by LEEP on the client.
        """
        return service.neighbours(body)

    @app.post("/vote", dependencies=read, responses={200: {"content": {wire.VOTE_MEDIA_TYPE: {}}}})
    def vote(body: VoteBody) -> Response:
        """Masks and averaged initial weights of the target's sub-network, as one safetensors file.

        The header's ``__metadata__`` holds arch, num_classes, input_spec, masks, seed, info and neighbours
        (each with its canonical manifest); the seed is also in X-Edgemvp-Seed.
        """
        raw, seed = service.vote(body)
        headers = {wire.SHA_HEADER: sha256_bytes(raw), wire.SEED_HEADER: str(seed)}
        return Response(raw, media_type=wire.VOTE_MEDIA_TYPE, headers=headers)

def _upload_route(app: FastAPI, service: ZooService, write: list) -> None:
    upload_body = {"requestBody": {"required": True, "content": {
        wire.BUNDLE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}}

    @app.post("/entries", status_code=201, dependencies=write, openapi_extra=upload_body)
    async def upload(request: Request,
                     build_seconds: Annotated[float | None, Query(ge=0, le=1e7)] = None) -> dict[str, Any]:
        """Add entries: a bundle (``edgemvp zoo export``'s tar format), validated in full before any write."""
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
        return await run_in_threadpool(service.upload, bytes(data), build_seconds)
