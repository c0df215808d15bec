"""Builders for the learned-agent tests: tiny untrained actors and short scenarios."""

import pytest
import torch

from eat_policy import nets
from eat_policy.sim import scenarios


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def make_actor(variant: str = "eat", seed: int = 0) -> nets.Actor:
    torch.manual_seed(seed)
    return nets.Actor(variant, d=32, dp=16, diffusion_steps=5).eval()


@pytest.fixture
def small_edge() -> scenarios.Scenario:
    return scenarios.edge(n_nodes=5, load=0.9, n_jobs=40)
