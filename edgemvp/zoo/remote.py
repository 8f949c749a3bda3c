"""A zoo server seen from a client: :class:`RemoteZoo` has the methods of :class:`edgemvp.zoo.local.LocalZoo`, so
``edgemvp prune --zoo http://HOST:PORT`` and ``edgemvp zoo build --zoo http://...`` run the same pipeline.

Where the work happens for a remote prune: Wu-Palmer ranking and the vote with the averaged initial weights
on the server (``POST /neighbours``, ``POST /vote``; the same :mod:`edgemvp.mvp.voter` code); LEEP here, because
it needs the target's images: every candidate's manifest and weights are downloaded, checked against their
sha256 and rebuilt strictly, scored with the local LEEP, and the N best are sent to ``/vote`` as explicit
neighbours. BatchNorm re-estimation, fine-tuning, export and the latency gate stay here. Every download is
checked against its sha256 before use; nothing from the server is unpickled.

Errors: an unreachable server, a refused token or another 4xx is a :class:`RemoteError` (a usage error, exit
code 2, one line); a server failure (5xx) is a :class:`ServerError` (exit code 1).
"""
from __future__ import annotations

import json
import math
import os
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import httpx
import numpy as np
import torch.nn as nn

from edgemvp.data.tasks import TaskSpec
from edgemvp.errors import EdgeMVPError, UsageError
from edgemvp.models.base import BaseManifest, find_base, load_base
from edgemvp.models.factory import create_model, load_into
from edgemvp.models.weights import parse_safetensors, sha256_bytes
from edgemvp.paths import check_token, read_secret
from edgemvp.shrink import rebuild_pruned
from edgemvp.mvp.similarity import Hierarchy
from edgemvp.mvp.rank import NoTaxonomyNode, Ranking, nearest
from edgemvp.mvp.voter import Initial, VoteSpec
from edgemvp.zoo import wire
from edgemvp.manifest import EntryManifest
from edgemvp.zoo.store import bundle_bytes

ENV_TOKEN = "EDGEMVP_ZOO_TOKEN"
PAGE = 1000


class RemoteError(UsageError):
    """The zoo server could not be reached or refused a request (exit code 2)."""


class ServerError(EdgeMVPError):
    """The zoo server failed while handling a request (exit code 1)."""


def is_url(text: str) -> bool:
    """Whether a ``--zoo`` value is a zoo server's address."""
    return text.startswith(("http://", "https://"))


@dataclass(frozen=True)
class ZooAddress:
    """A zoo server's address and the bearer token sent with every request (never printed).

    Attributes:
        url: ``http(s)://host:port`` (a trailing slash is dropped).
        token: Bearer token; ``None`` sends none (reads of an open server).
        timeout: Seconds for one request (a vote averages full-size weights on the server).
        ca_file: CA certificates (PEM) that an ``https`` server's certificate must chain to, for a private CA;
            ``None`` verifies against the system's trusted CAs. The certificate is always verified.
    """

    url: str
    token: str | None = field(default=None, repr=False)
    timeout: float = 600.0
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", check_url(self.url))
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise UsageError(f"--ca-file {self.ca_file}: not found")

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        verify: ssl.SSLContext | bool = True
        if self.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(self.ca_file))
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise UsageError(f"--ca-file {self.ca_file}: not PEM certificates ({exc.__class__.__name__})") from exc
        return httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout, follow_redirects=False,
                            verify=verify)


def check_url(url: str) -> str:
    """A zoo server's address, checked: ``http(s)://host[:port]`` with nothing after the host but a slash.

    Raises:
        UsageError: Another scheme, no host, a bad port, credentials, a path, a query or a malformed URL.
    """
    shown = url if len(url) <= 100 else url[:97] + "..."
    if not is_url(url):
        raise UsageError(f"zoo server address must start with http:// or https://, got '{shown}'")
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise UsageError(f"zoo server address '{shown}' is malformed ({str(exc)[:100]})") from exc
    if not parsed.host:
        raise UsageError(f"zoo server address '{shown}' names no host")
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"zoo server address '{shown}': port {port} is not in 1-65535")
    if parsed.userinfo or parsed.query or parsed.fragment or parsed.path not in ("", "/"):
        raise UsageError(f"zoo server address '{shown}' must be http(s)://HOST[:PORT] only (no user, path or "
                         "query)")
    return url.rstrip("/")


def read_token(path: str | os.PathLike[str] | None = None) -> str | None:
    """The client's token: from a file when given, else ``EDGEMVP_ZOO_TOKEN``, else None.

    Raises:
        UsageError: An unreadable or empty token file, or one other users can read.
    """
    if path is None:
        token = os.environ.get(ENV_TOKEN, "").strip() or None
        return None if token is None else check_token(token, ENV_TOKEN)
    return check_token(read_secret(path, "--token-file"), f"--token-file {path}")


BUSY_RETRIES = (1.0, 2.0, 4.0)  # seconds to wait after a 503 when the server names no Retry-After
MAX_RETRY_WAIT_S = 10.0


def _retry_after(response: httpx.Response, default: float) -> float:
    """The seconds a 503's ``Retry-After`` asks for (a number; anything else: ``default``)."""
    try:
        value = float(response.headers.get("Retry-After", default))
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default


class RemoteZoo:
    """A zoo server, with the methods a prune (:class:`edgemvp.zoo.local.LocalZoo`) and a build use."""

    def __init__(self, address: ZooAddress, base: BaseManifest | None = None,
                 cache: str | os.PathLike[str] | None = None) -> None:
        self.address, self.cache = address, cache
        self.http = address.client()
        self._base = base
        self._model: nn.Module | None = None

    @classmethod
    def connect(cls, address: ZooAddress, arch: str | None = None, base_dataset: str | None = None,
                cache: str | os.PathLike[str] | None = None) -> "RemoteZoo":
        """Connect and ask which base a prune votes with (as a local prune would pick it).

        Raises:
            RemoteError: Unreachable server, refused token, empty zoo, no base of that arch, ...
        """
        zoo = cls(address, cache=cache)
        try:
            params = {k: v for k, v in (("arch", arch), ("dataset", base_dataset)) if v is not None}
            zoo._base = BaseManifest.from_json(zoo._call("GET", "/base", params=params).text, "server base")
        except BaseException:
            zoo.close()
            raise
        return zoo

    @property
    def base(self) -> BaseManifest:
        if self._base is None:
            raise UsageError("no base chosen for this zoo server connection")
        return self._base

    @property
    def label(self) -> str:
        return self.address.url

    # --- HTTP ----------------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; failures become one-line errors naming the server."""
        url = self.address.url
        try:
            response = self.http.request(method, path, **kwargs)
            for wait in BUSY_RETRIES:  # a busy server (503) says when to come back: a few tries, then the error
                if response.status_code != 503:
                    break
                time.sleep(min(_retry_after(response, wait), MAX_RETRY_WAIT_S))
                response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise RemoteError(f"zoo server {url}: no answer within {self.address.timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise RemoteError(f"zoo server {url} is unreachable ({exc.__class__.__name__}: {exc}); is "
                              "'edgemvp zoo serve' running there?") from exc
        if response.is_success:
            return response
        detail = _detail(response)
        if response.status_code == 422 and isinstance(detail, dict) and detail.get("code") == "no-taxonomy":
            raise NoTaxonomyNode(str(detail.get("message")))
        text = detail if isinstance(detail, str) else str(detail)[:300]
        if response.status_code >= 500:
            raise ServerError(f"zoo server {url} failed on {method} {path}: {text}")
        hint = f" (give the token with --token-file or {ENV_TOKEN})" if response.status_code == 401 else ""
        raise RemoteError(f"zoo server {url}: {method} {path}: {response.status_code} {text}{hint}")

    def _download(self, path: str, sha: str) -> bytes:
        """A file from the server, checked against the sha256 it must have."""
        raw = self._call("GET", path).content
        if sha256_bytes(raw) != sha:
            raise RemoteError(f"zoo server {self.address.url}: {path} does not match its sha256 {sha[:12]}")
        return raw

    # --- what a prune uses ---------------------------------------------------------------------------------
    def task_table(self) -> tuple[list[str], list[tuple[str, tuple[str, ...]]]]:
        """Ids and ``(dataset, classes)`` of the base's entries (paged)."""
        ids, tasks, offset = [], [], 0
        while True:
            page = self._call("GET", "/entries", params={"base_sha256": self.base.weights_sha256, "limit": PAGE,
                                                        "offset": offset}).json()["entries"]
            ids += [r["id"] for r in page]
            tasks += [(r["dataset"], tuple(r["classes"])) for r in page]
            if len(page) < PAGE:
                return ids, tasks
            offset += PAGE

    def rank_by_taxonomy(self, ids: list[str], tasks: list[tuple[str, tuple[str, ...]]], task: TaskSpec,
                         hierarchy: Hierarchy | None, limit: int | None = None) -> Ranking:
        """Wu-Palmer ranking on the server (``POST /neighbours``): the best ``limit`` entries, nearest first.

        Raises:
            NoTaxonomyNode: A target class the taxonomy does not know.
        """
        body = {"task": wire.task_json(task), "limit": min(limit or len(ids), 1000),
                "hierarchy": hierarchy.to_tree() if hierarchy is not None else None,
                "base_sha256": self.base.weights_sha256}
        found = self._call("POST", "/neighbours", json=body).json()
        listed = found["neighbours"]
        scores = np.asarray([n["similarity"] for n in listed], dtype=np.float64)
        return Ranking([n["id"] for n in listed], scores, found["kind"])

    def entry(self, entry_id: str) -> tuple[EntryManifest, bytes]:
        """An entry's manifest and weights, both checked against their sha256s."""
        raw = self._download(f"/entries/{entry_id}", entry_id)
        manifest = EntryManifest.from_bytes(raw, f"{self.address.url} entry {entry_id[:12]}")
        return manifest, self._download(f"/entries/{entry_id}/weights", manifest.weights_sha256)

    def entry_models(self, ids: Sequence[str]) -> Iterator[nn.Module]:
        """The entries' pruned models, downloaded and rebuilt strictly, one at a time (for LEEP)."""
        for entry_id in ids:
            m, weights = self.entry(entry_id)
            source = f"{self.address.url} entry {entry_id[:12]}"
            yield rebuild_pruned(m.arch, len(m.task.classes), m.base.input_spec, m.masks,
                                 parse_safetensors(weights, source)[0], source)

    def initialise(self, spec: VoteSpec, ranking: Ranking | None) -> Initial:
        """Masks and initial model from the server's voter (``POST /vote``; explicit neighbours when ranked)."""
        body: dict[str, Any] = {"task": wire.task_json(spec.task), "method": spec.method,
                                "neighbours": spec.neighbours, "ratio": spec.ratio,
                                "temperature": spec.temperature, "seed": spec.seed,
                                "base_sha256": self.base.weights_sha256}
        if not spec.head_from_base:  # sent only when off: a server of an earlier version keeps working
            body["head_from_base"] = False
        if spec.round_to != 1:  # likewise: sent only when it aligns
            body["round_to"] = spec.round_to
        if spec.prior is not None:  # the base's unit importance on the target's images, measured here
            body["prior"] = [float(x) for x in spec.prior]
        if spec.counts is not None:  # a per-group allocation: sent only when there is one
            body["counts"] = [int(k) for k in spec.counts]
        if ranking is not None:  # the client's ranking (LEEP here, or the server's Wu-Palmer): send the nearest
            order = nearest(ranking.scores, spec.count)
            body["neighbour_ids"] = [ranking.ids[i] for i in order]
            body["similarities"] = [float(ranking.scores[i]) for i in order]
        response = self._call("POST", "/vote", json=body)
        raw = response.content
        if sha256_bytes(raw) != response.headers.get(wire.SHA_HEADER):
            raise RemoteError(f"zoo server {self.address.url}: vote payload does not match its sha256")
        init, seed = wire.initial_from_bytes(raw, self.base.input_spec, self.base.weights_sha256,
                                             f"{self.address.url} vote")
        if seed != spec.seed:
            raise RemoteError(f"zoo server {self.address.url} voted with seed {seed}, not {spec.seed}")
        return init

    def base_model(self) -> nn.Module:
        """The base model: the cached one when it is the server's, else downloaded (sha256 checked) into memory."""
        if self._model is None:
            base = self.base
            cached = find_base(base.arch, base.dataset, self.cache)
            if cached is not None and cached.weights_sha256 == base.weights_sha256:
                self._model, _ = load_base(base.arch, base.dataset, self.cache)
            else:
                raw = self._download(f"/bases/{base.weights_sha256}/weights", base.weights_sha256)
                model = create_model(base.arch, len(base.classes), base.input_spec)
                source = f"{self.address.url} base {base.weights_sha256[:12]}"
                load_into(model, parse_safetensors(raw, source)[0], source)
                self._model = model.eval()
        return self._model

    # --- what a build and --add-to-zoo use -----------------------------------------------------------------
    def bases(self) -> list[BaseManifest]:
        """The bases the server votes with (and accepts entries of)."""
        listed = self._call("GET", "/bases").json()["bases"]
        return [BaseManifest.from_json(json.dumps(b["manifest"]), "server base") for b in listed]

    def require_write(self) -> None:
        """Refuse early, before any work, when this client's token cannot upload.

        Raises:
            RemoteError: No token, or one the server does not accept for writes.
        """
        if not self._call("GET", "/access").json().get("write"):
            raise RemoteError(f"zoo server {self.address.url}: this client's token cannot upload (give the "
                              f"server's write token with --token-file or {ENV_TOKEN})")

    def job_entry(self, job_key: str) -> str | None:
        """The id of the entry a build job produced, if the server has it."""
        page = self._call("GET", "/entries", params={"job_key": job_key, "limit": 1}).json()["entries"]
        return page[0]["id"] if page else None

    def put(self, manifest: EntryManifest, weights: bytes, build_seconds: float | None = None) -> str:
        """Upload an entry (a one-entry bundle); returns its id (the stored one when the job was there)."""
        params = {"build_seconds": build_seconds} if build_seconds is not None else {}
        found = self._call("POST", "/entries", content=bundle_bytes([(manifest.to_bytes(), weights)]),
                           params=params, headers={"Content-Type": wire.BUNDLE_MEDIA_TYPE}).json()
        return (found["added"] or found["present"])[0]

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "RemoteZoo":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _detail(response: httpx.Response) -> Any:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:300] or response.reason_phrase
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # pydantic validation errors
        first = detail[0]
        return f"{'.'.join(str(p) for p in first.get('loc', []))}: {first.get('msg')}"
    return detail
