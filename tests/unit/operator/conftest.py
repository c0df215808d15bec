"""Unit tests of eat_operator: no cluster, plain dicts in (builders.py), decisions out."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
for p in (ROOT / "operator", ROOT / "policy"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from eat_operator import settings as settings_mod  # noqa: E402


@pytest.fixture
def settings() -> settings_mod.Settings:
    return settings_mod.Settings(_env_file=None, policy_url=None, backoff_limit=2, replan_limit=3,
                                 unschedulable_timeout_s=30, node_selector={"eat.aigc.io/fake-node": "true"},
                                 sim_duration_scale=0.5, sim_duration_max_s=20)
