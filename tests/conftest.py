"""Shared test setup: an offline environment, one local Ray cluster, tiny models built in code."""

from __future__ import annotations

import os

# Nothing in the suite may reach a model hub; set before transformers/datasets import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.pop("RAY_ADDRESS", None)
# Dummy cloud credentials for the S3-compatible test server (moto), set before any Ray starts so
# every node inherits them. The secret is a canary: tests grep what runs write for it.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "zerotune-test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "canary-" + os.urandom(6).hex())
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def _shared_ray():
    """Stops the shared Ray once the session ends (whichever module started it last)."""
    from cluster.connect import shutdown

    yield
    shutdown()


@pytest.fixture(scope="module")
def ray_cluster(_shared_ray):
    """One embedded local Ray shared by the integration tests, started through cluster.connect.

    Per module: connect() reuses the running Ray, and starts it again after a module whose
    commands needed the machine's one Ray for themselves (they shut the shared one down)."""
    from cluster.config import ClusterSection
    from cluster.connect import connect

    return connect(ClusterSection(num_cpus=2))
