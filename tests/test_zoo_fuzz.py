"""Fuzz the zoo server over its own OpenAPI schema (schemathesis, real uvicorn on loopback): no input, valid
or not, with or without the token, may cause a server error (5xx); nothing a fuzzer sends is stored."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from edgemvp.models.base import find_base
from edgemvp.zoo import ZooStore
from edgemvp.zoo.server import create_app, running
from tests.helpers import make_entry

TOKEN = "f" * 32
EXAMPLES = 25  # per operation and auth variant; about a minute on 2 CPU cores


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


@pytest.fixture
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.parametrize("token", [None, TOKEN], ids=["anonymous", "token"])
def test_no_server_errors(case, token) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    case.call_and_validate(headers=headers, checks=[not_a_server_error], timeout=120)
