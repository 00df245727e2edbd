"""The worker's torch thread count follows the CPUs it reserved, whatever OMP_NUM_THREADS it
inherited (issue 17: a 2-CPU worker on 1 thread runs at about half speed)."""

from __future__ import annotations

import pytest
import torch

from trainers.loop import set_worker_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cpus", "inherited", "expected"), [(2.0, 1, 2), (1.0, 4, 1), (0.5, 2, 1), (3.5, 1, 3)])
def test_threads_follow_the_reserved_cpus(restore_threads, cpus, inherited, expected):
    torch.set_num_threads(inherited)  # what OMP_NUM_THREADS from the environment would have set
    assert set_worker_threads(cpus) == expected
    assert torch.get_num_threads() == expected
