"""Schemathesis against the running daemon, from the /openapi.json it serves: no 5xx, and only documented statuses.

A bounded run (a few dozen generated requests per operation, valid and invalid) so it fits in CI; the real
daemon process, so the HTTP stack's own parsing is fuzzed too.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aeguard.serve.openapi import openapi_document
from tests.bundles import tiny_bundle
from tests.daemon import Daemon

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    bundle = tiny_bundle(tmp_path_factory.mktemp("api") / "tiny")
    with Daemon(
        bundle, "--max-images", "8", "--max-body-bytes", "200000", env={"AEGUARD_ADMIN_TOKEN": "adm"}
    ) as daemon:
        yield daemon


# The document the daemon serves (test_the_served_document_is_this_one checks that): loaded here, at import,
# because Hypothesis needs the strategy before any fixture exists. (schemathesis' own pytest plugin does this
# from a fixture, but does not run under pytest 9.)
SCHEMA = schemathesis.openapi.from_dict(openapi_document())


def test_the_served_document_is_this_one(served):
    assert served.client.get("/openapi.json").json() == openapi_document()


# Valid and invalid requests, with random and with the served model's name, with and without the admin token.
CASES = st.one_of(
    SCHEMA.as_strategy(GenerationMode.POSITIVE),
    SCHEMA.as_strategy(GenerationMode.NEGATIVE),
    SCHEMA.as_strategy(GenerationMode.POSITIVE, path_parameters={"name": "tiny"}),
    SCHEMA.as_strategy(GenerationMode.NEGATIVE, path_parameters={"name": "tiny"}),
    SCHEMA.as_strategy(GenerationMode.POSITIVE, headers={"authorization": "Bearer adm"}),
)


@given(case=CASES)
@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_5xx_or_an_undocumented_status(served, case):
    response = case.call(base_url=served.url)
    case.validate_response(response, checks=CHECKS)
    assert served.process.poll() is None
