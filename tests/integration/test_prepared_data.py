"""Prepared data on a real local Ray: the workers of one Ray Train run each read their own shard of
what the driver prepared, and together they cover the train split exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny import make_model, sentiment_rows, write_csv
from trainers.config import TrainSection

pytestmark = pytest.mark.integration


def _read_my_shard(config: dict) -> None:
    import ray.train

    from trainers.prepared import load_prepared, train_shard

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rows = train_shard(load_prepared(config["data"]), rank, world)
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps([r["row"] for r in rows]))


def test_workers_of_one_run_read_disjoint_shards_that_cover_the_split(ray_cluster, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainers.prepared import prepare_data, read_rows

    model = make_model(tmp_path / "m", "sequence-classification")
    spec = TrainSection.model_validate({"model": {"name_or_path": model, "task": "sequence-classification"},
                                        "data": {"train": write_csv(tmp_path / "d.csv", sentiment_rows(101)),
                                                 "validation_fraction": 0.2}})
    _, data = prepare_data(spec, tmp_path / "results" / "prepared")
    out = tmp_path / "shards"
    out.mkdir()
    TorchTrainer(_read_my_shard, train_loop_config={"data": str(data.location), "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(name="shards", storage_path=str(tmp_path / "results"))).fit()
    shards = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    n = data.manifest.rows["train"]
    assert n == 81
    everything = [r["row"] for r in read_rows(data.location, "train", 0, n)]
    assert len(shards[0]) == len(shards[1]) == 41  # equal steps on every rank: one row repeats
    own = shards[0] + shards[1][:40]
    assert sorted(own) == sorted(everything) and len(set(own)) == n  # disjoint, covering
    assert shards[1][40] == everything[0]  # the padding row wraps around, as DistributedSampler's
