"""Every request the client sends anywhere in the test suite is checked against its contract.

Loaded from ``tests/conftest.py``. An autouse fixture hooks the session of every
:class:`VastAIClient` built during a test (through the session's ``observers``) and fails the
test when a request on a route with a contract does not fit it. Sessions used without a client
(the transport's own tests send arbitrary bodies on purpose) are not hooked. Answers are not
checked here (unit tests answer with deliberately malformed bodies); the contract suite
(``tests/contract/test_contracts.py``) checks the sandbox's answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.contract.validate import has_contract, request_problems
from vastai_async.client import VastAIClient
from vastai_async.session import Exchange, VastAISession

__all__ = ["contract_requests"]


@pytest.fixture(autouse=True)
def contract_requests(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[list[str]]:
    """The contract problems of requests sent during this test (the test fails on any)."""
    problems: list[str] = []

    def observe(exchange: Exchange) -> None:
        route = f"{exchange.method} {exchange.template}"
        if has_contract(route):
            found = request_problems(route, exchange.params, exchange.body, method=exchange.method)
            problems.extend(found)

    original = VastAIClient.__init__

    def init(self: VastAIClient, session: VastAISession, *args: Any, **kwargs: Any) -> None:
        original(self, session, *args, **kwargs)
        if observe not in session.observers:
            session.observers.append(observe)

    monkeypatch.setattr(VastAIClient, "__init__", init)
    yield problems
    if problems and "contract_violation_expected" not in request.keywords:
        pytest.fail("requests broke their contract:\n" + "\n".join(problems[:20]), pytrace=False)
