"""cluster.connect: starts one embedded local Ray and reuses it; a dead address is a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_connect_starts_once_and_reuses(ray_cluster):
    import ray

    from cluster.config import ClusterSection
    from cluster.connect import connect

    assert ray.is_initialized()
    assert ray_cluster.embedded
    assert ray_cluster.num_cpus == 2
    again = connect(ClusterSection(num_cpus=1))  # already connected: nothing new starts
    assert again.address == ray_cluster.address
    assert again.num_cpus == 2


def test_dead_address_names_it_and_how_to_start_one(tmp_path):
    code = (
        "from cluster.config import ClusterSection\n"
        "from cluster.connect import connect\n"
        "from cluster.errors import ConnectError\n"
        "try:\n"
        "    connect(ClusterSection(address='127.0.0.1:1'))\n"
        "except ConnectError as e:\n"
        "    print('CONNECT_ERROR', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert "CONNECT_ERROR" in r.stdout, r.stdout + r.stderr
    assert "127.0.0.1:1" in r.stdout and "ray start --head" in r.stdout
