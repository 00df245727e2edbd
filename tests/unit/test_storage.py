"""trainers.storage.Location on a local directory and on a real S3-compatible server (moto), and the
errors a user sees for a wrong storage path (no Ray here)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.net import free_port
from trainers.launch import resolve_storage
from trainers.storage import Location, StorageError, cached_copy

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_parse_keeps_query_options_on_every_join(s3):
    root = Location.parse(f"s3://unit/results?{s3}")
    ckpt = root.join("run", "checkpoint_000010")
    assert str(ckpt) == f"s3://unit/results/run/checkpoint_000010?{s3}"
    assert ckpt.name == "checkpoint_000010" and str(ckpt.parent) == f"s3://unit/results/run?{s3}"
    # Ray hands back paths on the filesystem; `at` makes them locations again.
    assert str(root.at("unit/results/run/checkpoint_000020")) == f"s3://unit/results/run/checkpoint_000020?{s3}"
    local = Location.parse("~/x/../y")
    assert local.is_local and local.path == str(Path.home() / "y")


def test_ray_gets_the_configured_filesystem_and_the_path_on_it(s3, tmp_path):
    import pickle

    path, fs = Location.parse(f"s3://unit/ray/exp?{s3}").for_ray()
    assert path == "unit/ray/exp"
    # Ray ships it to every trial and worker: a pickled copy still reaches the endpoint.
    with pickle.loads(pickle.dumps(fs)).open_output_stream(path + "/marker") as f:
        f.write(b"x")
    assert Location.parse(f"s3://unit/ray/exp/marker?{s3}").read_bytes() == b"x"
    assert Location.parse(tmp_path).for_ray() == (str(tmp_path), None)


@pytest.mark.parametrize(("uri", "needle"), [
    ("ftp://host/x", "unknown storage scheme 'ftp'"),
    ("s3://AKIA:hunter2@bucket/x", "credentials in a URI"),
    ("s3://bucket/x?secret_key=hunter2", "carries secret_key"),
    ("s3:///x", "no bucket"),
])
def test_bad_uris_say_what_is_wrong_and_never_echo_a_secret(uri, needle):
    with pytest.raises(StorageError, match=needle) as info:
        Location.parse(uri)
    assert "hunter2" not in str(info.value)


def test_read_write_list_and_upload_on_s3(s3, tmp_path):
    root = Location.parse(f"s3://unit/rw?{s3}")
    root.join("a", "b.txt").write_text("hello")
    assert root.join("a", "b.txt").read_text() == "hello" and root.join("a").is_dir()
    assert root.join("missing.txt").read_text_or_none() is None and not root.join("missing.txt").exists()
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f.bin").write_bytes(b"\x00\x01")
    uploaded = root.join("up").upload(tmp_path / "d")
    assert set(uploaded) == {"e/f.bin"} and root.join("up").files() == ["e/f.bin"]
    assert root.list() == ["a", "up"]


def test_mtime_of_a_file_in_the_bucket_and_on_disk(s3, tmp_path):
    """/v1/models dates a served checkpoint by its manifest, wherever the checkpoint lives."""
    import time

    before = time.time()
    remote = Location.parse(f"s3://unit/mtime?{s3}").join("zerotune.json")
    remote.write_text("{}")
    local = Location.parse(tmp_path / "zerotune.json")
    local.write_text("{}")
    for loc in (remote, local):
        assert before - 5 <= loc.mtime() <= time.time() + 5, loc


def test_cached_copy_is_made_once_and_never_half_used(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROTUNE_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = Location.parse(f"s3://unit/ckpt?{s3}")
    ckpt.join("model", "w.bin").write_bytes(b"w" * 1000)
    ckpt.join("state", "big.pt").write_bytes(b"s" * 1000)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(cached_copy(ckpt, include=["model"])))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    copy = results[0]
    assert (copy / "model" / "w.bin").read_bytes() == b"w" * 1000 and not (copy / "state").exists()
    assert (copy / ".zerotune-complete").read_text() == str(ckpt)
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [copy.name]  # no partial left


def test_storage_errors_name_the_uri_and_the_fix(s3):
    with pytest.raises(StorageError, match=r"cannot write to cluster.storage_path s3://nope/x.*the bucket does not "
                                           r"exist.*endpoint_override"):
        resolve_storage(f"s3://nope/x?{s3}")
    with pytest.raises(StorageError, match="cannot write to cluster.storage_path s3://unit/x"):
        resolve_storage(f"s3://unit/x?endpoint_override=127.0.0.1:{free_port()}&scheme=http")


def test_a_bad_bucket_fails_the_cli_before_ray_starts(s3, tmp_path):
    canary = os.environ["AWS_SECRET_ACCESS_KEY"]
    r = subprocess.run([str(BIN / "zerotune"), "train", "examples/smoke.yaml",
                        f"cluster.storage_path=s3://nope/results?{s3}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "s3://nope/results" in r.stderr and "bucket does not exist" in r.stderr
    assert "Traceback" not in r.stderr and canary not in r.stdout + r.stderr
    assert "local Ray" not in r.stdout  # connect() never ran
