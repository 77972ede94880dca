"""A property-based run of ``cxr serve``'s OpenAPI document (schemathesis): generated
requests to every operation, valid and invalid, never get a 5xx, and every answer matches
the document (status codes, content types, response schemas). Bounded: a few dozen
examples per operation and mode, against a real server on loopback.

Hypothesis drives schemathesis's strategies directly (``APIOperation.as_strategy``):
schemathesis's own pytest plugin does not run under pytest 9.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cxr.serving import ServeSettings, create_app  # noqa: E402
from test_serving_api import LiveServer, write_model  # noqa: E402

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = write_model(tmp_path_factory.mktemp("schema_model") / "model.safetensors")
    app = create_app(model, settings=ServeSettings(max_wait_ms=1, max_request_bytes=2**20))
    with LiveServer(app) as live:
        yield live


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_generated_requests_get_no_5xx_and_match_the_document(server, mode):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/explain", "/v1/model"}
    checked = 0
    for operation in operations:
        strategy = operation.as_strategy(schemathesis.GenerationMode(mode))

        @given(case=strategy)
        @settings(
            max_examples=20,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:
            nonlocal checked
            response = case.call(base_url=server.url, timeout=60)
            case.validate_response(response, checks=CHECKS)
            checked += 1

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid (a GET without parameters)
            assert mode == "negative" and operation.method.upper() == "GET", operation.path
    assert checked >= 40
