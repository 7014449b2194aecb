"""The synthetic DeepPlanning fixture (eval.deepplanning.fixture), built once per test session."""
import sys
from pathlib import Path

import pytest

from eval.deepplanning import fixture

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parents[1]):  # parity_cases, and tests/ (the agent-loop fakes)
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


@pytest.fixture(scope="session")
def fixture_paths(tmp_path_factory):
    return fixture.build(tmp_path_factory.mktemp("deepplanning"))


@pytest.fixture
def db0(fixture_paths):
    from eval.deepplanning.database import load_task

    return load_task(fixture_paths["database"], "0")
