"""Fuzz the zoo server over its own OpenAPI schema (schemathesis, real uvicorn on loopback): no input, valid
or not, with or without the token, may cause a server error (5xx); nothing a fuzzer sends is stored."""
from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from edgemvp.models.base import find_base
from edgemvp.zoo import ZooStore
from edgemvp.zoo.server import create_app, running
from tests.helpers import make_entry

TOKEN = "f" * 32
# uploads are tar bundles: let the fuzzer send arbitrary bytes with that media type
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")
# per operation, generation mode and auth variant: 25 take about 6 s per variant on 2 CPU cores
EXAMPLES = int(os.environ.get("EDGEMVP_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def fuzz_zoo(tiny_bases, tmp_path_factory):
    base = find_base("resnet18", "digits", tiny_bases)
    zoo = tmp_path_factory.mktemp("fuzz") / "zoo"
    with ZooStore.open(zoo, create=True) as store:
        for seed, classes in enumerate([("0", "1", "2"), ("3", "4", "5"), ("6", "7", "8")]):
            store.put(*make_entry(seed=seed, classes=classes, base_sha256=base.weights_sha256,
                                  spec=base.input_spec, base_dataset=base.dataset))
    return zoo


@pytest.fixture(scope="module")
def fuzz_server(tiny_bases, fuzz_zoo):
    with running(create_app(fuzz_zoo, token=TOKEN, cache=tiny_bases, max_body=1 << 20)) as url:
        yield url
    with ZooStore.open(fuzz_zoo) as store:  # random bytes never pass an upload's validation
        assert len(store) == 3 and store.verify().clean


@pytest.mark.parametrize("token", [None, TOKEN], ids=["anonymous", "token"])
def test_no_server_errors(fuzz_server, token) -> None:
    """Every operation of /openapi.json, EXAMPLES requests each that fit the schema and EXAMPLES that do not
    (schemathesis strategies driven by hypothesis here; its pytest plugin does not load lazily on this pytest)."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 11  # every endpoint but /openapi.json itself
    statuses: Counter[int] = Counter()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def fuzz(case) -> None:
                response = case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=120)
                statuses[response.status_code] += 1

            try:
                fuzz()
            except Unsatisfiable:  # nothing to break: an operation without parameters or body
                assert mode == GenerationMode.NEGATIVE
    print(f"fuzz ({'token' if token else 'anonymous'}): {sum(statuses.values())} requests, status codes "
          f"{dict(sorted(statuses.items()))}")
    assert not [code for code in statuses if code >= 500]
