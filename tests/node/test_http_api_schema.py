"""HTTP contract test: the node API against its own OpenAPI schema, with schemathesis.

Every documented operation gets 25 generated requests (derandomized, so the run is the same every
time) against the real server; each response must match the schema (status documented, body
valid) and no request may produce a 500. The job backend is the in-process test double.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
import trio
from hypothesis import HealthCheck, given
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from .test_http_api_harness import api_stack, make_offer, new_key

EXAMPLES = 25


def run_contract(schema_doc: dict[str, Any], base_url: str, headers: dict[str, str]) -> list[str]:
    schema = schemathesis.openapi.from_dict(schema_doc)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=base_url, headers=headers, timeout=30)
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                     response_schema_conformance])

        try:
            check()
        except Exception as exc:  # collected per operation, reported together below
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:800]}")
    return failures


async def test_node_api_honours_its_openapi_schema(tmp_path: Path) -> None:
    async with api_stack(tmp_path) as s:
        now = int(s.clock())
        for i in range(30):
            s.book.put(make_offer(new_key(), price=100 + i, now=now, region="eu" if i % 2 else "us"), f"p{i}", now=now)
        s.double.release.set()  # generated jobs end at once
        doc = (await s.api.get("/openapi.json")).json()
        failures = await trio.to_thread.run_sync(run_contract, doc, s.api_url, s.owner_headers)
        assert not failures, "\n\n".join(failures)
