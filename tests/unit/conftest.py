"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from tests.net import free_port
from trainers.storage import Location


@pytest.fixture(scope="module")
def s3():
    """A real S3-compatible server (moto) on 127.0.0.1 with a bucket `unit`; yields the URI options
    that reach it (endpoint_override=...&scheme=http)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    options = f"endpoint_override=127.0.0.1:{port}&scheme=http"
    fs, _ = Location.parse(f"s3://unit?{options}&allow_bucket_creation=true").filesystem()
    fs.create_dir("unit")
    yield options
    server.stop()
