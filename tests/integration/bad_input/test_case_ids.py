"""The cases of the four bad-input tables together: every one has a unique id."""

from __future__ import annotations

from tests.integration.bad_input.test_bus_input import BUS_CASES
from tests.integration.bad_input.test_registry_input import REGISTRY_CASES
from tests.integration.bad_input.test_runtime_input import RUNTIME_CASES
from tests.integration.bad_input.test_tsq_input import TSQ_CASES

ALL_CASES = [*BUS_CASES, *RUNTIME_CASES, *TSQ_CASES, *REGISTRY_CASES]


def test_every_case_has_a_unique_id() -> None:
    ids = [param.id for param in ALL_CASES]
    assert len(ids) == len(set(ids))
