"""Data prepared once per run or sweep: read, check, split and tokenize on the driver, store the
result as Parquet beside the run's results, and let each worker read only its own shard.

Layout under the prepared-data root (`<storage>/prepared/` for a run, `<sweep>/prepared/` for a
sweep), one folder per key:

    <key>/train.parquet, validation.parquet   source row, token ids, attention mask, labels (row groups of ROW_GROUP)
    <key>/manifest.json                       written last: its presence means the folder is complete
    <key>/builds/<build_id>.json              one file per preparation (a second one means it was redone)

The key hashes what the tokenized rows depend on: the data section (files, columns, split, seed,
max_length), the source files' size and modification time, the task, the labels given, and the
tokenizer (`datasets`' Hasher, as Dataset.map fingerprints its functions). Any trial, rerun or
resumed sweep with the same key reuses the folder and tokenizes nothing.

Why Hugging Face `datasets` and not Ray Data: the task encoders are plain Python over rows, which
`Dataset.map` batches as they are, with no cluster tasks to schedule, while a sweep's trials compete
for this machine's CPUs; the result is one Parquet file per split that any worker reads with
pyarrow from local disk or object storage. Why it scales: the driver tokenizes once per sweep (not
once per trial and worker, as before), and a worker reads only the row groups of its contiguous
shard, so per-worker I/O and memory are 1/world of the split, whatever the number of trials. What
does not scale is the one driver pass: corpora that take the driver hours to tokenize or do not fit
its disk belong in a Ray Data pipeline (read_parquet -> map_batches -> `ray.train.get_dataset_shard`
streaming into the workers), at the price of exact mid-epoch resume, which a fixed shard keeps.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .config import TrainSection, with_values
from .data import ROW, load_splits
from .errors import UserError
from .model import load_tokenizer, resolve_model_path
from .storage import Location
from .tasks import Task, get_task

FORMAT = 1  # bump when the stored columns change, so old folders are not read as new ones
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")  # what workers read; the test split stays with the evaluators
ROW_GROUP = 1024  # rows per Parquet row group: the unit a worker's shard read skips by


class PreparedManifest(BaseModel):
    """What a prepared-data folder holds (written last, so a reader never sees half a folder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = FORMAT
    key: str
    build_id: str = Field(description="This preparation; a re-preparation writes a new one.")
    task: str
    labels: list[str] | None
    rows: dict[str, int] = Field(description="Rows per split.")
    seconds: float = Field(description="How long reading, checking, splitting and tokenizing took.")


@dataclass(frozen=True)
class PreparedData:
    location: Location  # <root>/<key>
    manifest: PreparedManifest
    reused: bool  # found in storage: nothing was read or tokenized


def given_labels(train: TrainSection) -> list[str] | None:
    """The labels the spec gives, or those of the checkpoint it continues (checked against the task)."""
    from .checkpoint import read_manifest

    labels = train.model.labels
    if train.model.init_from:
        manifest = read_manifest(train.model.init_from)
        if manifest.task != train.model.task:
            raise UserError(f"train.model.init_from is a {manifest.task} checkpoint; this run is {train.model.task}")
        labels = labels or manifest.labels
    return labels


def data_key(train: TrainSection, labels: list[str] | None, tokenizer: Any) -> str:
    from datasets.fingerprint import Hasher

    data = train.data
    doc = {
        "format": FORMAT, "task": train.model.task, "labels": labels, "data": data.model_dump(mode="json"),
        "sources": {uri: _stamp(uri) for uri in (data.train, data.validation, data.test) if uri},
        "tokenizer": Hasher.hash(tokenizer),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def _stamp(uri: str) -> str:
    """Size and modification time of a data file, so an edited file gets a new key (hub data: its name)."""
    if uri.startswith("hf://"):
        return uri
    if uri.startswith("pkg://"):
        from .model import resolve_package_path

        uri = str(resolve_package_path(uri))
    fs, path = Location.parse(uri).filesystem()
    info = fs.get_file_info(path)
    mtime = info.mtime.timestamp() if info.mtime is not None else None
    return f"{info.size}:{mtime}"


def prepare_data(train: TrainSection, root: str | Location) -> tuple[TrainSection, PreparedData]:
    """The spec with its labels resolved, and its prepared data under `root` (made now if missing).
    Data errors (missing file or column, bad label, empty split) are raised here, on the driver."""
    root = Location.parse(root)
    task = get_task(train.model.task)
    labels = given_labels(train)
    tokenizer = load_tokenizer(resolve_model_path(train.model.name_or_path),
                               trust_remote_code=train.model.trust_remote_code, revision=train.model.revision)
    key = data_key(train, labels, tokenizer)
    loc = root.join(key)
    text = loc.join(MANIFEST).read_text_or_none()
    if text is not None:
        manifest = PreparedManifest.model_validate_json(text)
        return with_values(train, {"model.labels": manifest.labels}), PreparedData(loc, manifest, reused=True)
    manifest = _build(train, task, labels, tokenizer, key, loc)
    return with_values(train, {"model.labels": manifest.labels}), PreparedData(loc, manifest, reused=False)


def _build(train: TrainSection, task: Task, labels: list[str] | None, tokenizer: Any, key: str,
           loc: Location) -> PreparedManifest:
    import pyarrow.parquet as pq

    started = time.time()
    splits = load_splits(train.data, task, labels)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="zerotune-prepared-") as tmp:
        for name in SPLITS:
            table = _tokenize(getattr(splits, name), task, tokenizer, train, splits.labels, f"{key}-{name}")
            pq.write_table(table, Path(tmp, f"{name}.parquet"), row_group_size=ROW_GROUP)
            rows[name] = table.num_rows
        loc.upload(Path(tmp))
    manifest = PreparedManifest(key=key, build_id=uuid.uuid4().hex, task=train.model.task, labels=splits.labels,
                                rows=rows, seconds=round(time.time() - started, 3))
    loc.join("builds", f"{manifest.build_id}.json").write_text(manifest.model_dump_json())
    loc.join(MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return manifest


def _tokenize(rows: list[dict], task: Task, tokenizer: Any, train: TrainSection, labels: list[str] | None,
              fingerprint: str):
    """Clean rows -> an Arrow table of input_ids / attention_mask / labels, through Dataset.map."""
    import datasets

    from .console import verbose

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = task.encode([dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)],
                              tokenizer, train.data, labels)
        # "row": the record number in its source file (data.ROW), to name a row and to check shards.
        return {"row": batch[ROW], **{k: [r[k] for r in encoded] for k in ("input_ids", "attention_mask", "labels")}}

    if not verbose():
        datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(rows)
    # new_fingerprint: our key already names the result, so datasets need not hash the tokenizer again.
    ds = ds.map(encode, batched=True, batch_size=1000, remove_columns=ds.column_names, keep_in_memory=True,
                new_fingerprint=fingerprint)
    return ds.data.table


# --- the worker's side ------------------------------------------------------------------------------


def shard_range(n: int, index: int, num_shards: int) -> range:
    """Rows [start, stop) of shard `index` of `num_shards`, as datasets' Dataset.shard(contiguous=True)
    cuts them: disjoint, covering all n rows, sizes differing by one at most."""
    div, mod = divmod(n, num_shards)
    start = div * index + min(index, mod)
    return range(start, start + div + (1 if index < mod else 0))


def read_rows(loc: Location, split: str, start: int, stop: int) -> list[dict[str, Any]]:
    """Rows [start, stop) of a prepared split, reading only the row groups that hold them."""
    import pyarrow.parquet as pq

    if stop <= start:
        return []
    fs, path = loc.join(f"{split}.parquet").filesystem()
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        meta = parquet.metadata
        groups, first, offset = [], 0, 0
        for g in range(meta.num_row_groups):
            size = meta.row_group(g).num_rows
            if offset < stop and offset + size > start:
                if not groups:
                    first = offset
                groups.append(g)
            offset += size
        table = parquet.read_row_groups(groups)
    return table.slice(start - first, stop - start).to_pylist()


def train_shard(data: PreparedData, rank: int, world: int) -> list[dict[str, Any]]:
    """This rank's contiguous shard of the train split, padded to the same length on every rank with
    rows from the split's start (as DistributedSampler pads): every rank must run as many steps."""
    n = data.manifest.rows["train"]
    mine = shard_range(n, rank, world)
    rows = read_rows(data.location, "train", mine.start, mine.stop)
    missing = math.ceil(n / world) - len(rows)
    return rows + (_cycle(read_rows(data.location, "train", 0, min(missing, n)), missing) if missing else [])


def _cycle(rows: list[dict], k: int) -> list[dict]:
    return [rows[i % len(rows)] for i in range(k)]


def validation_shard(data: PreparedData, rank: int, world: int, task: Task, head: list[dict]) -> list[dict]:
    """This rank's contiguous shard of the validation split, padded to the same length on every rank
    with a row that counts for nothing (all labels ignored): under ZeRO-3 every rank runs the same
    forward passes. `head`: the split's first rows (the probe), whose first row makes the filler."""
    n = data.manifest.rows["validation"]
    mine = shard_range(n, rank, world)
    rows = read_rows(data.location, "validation", mine.start, mine.stop)
    filler = {**head[0], "labels": task.ignored_labels(head[0])}
    return rows + [filler] * (math.ceil(n / world) - len(rows))


def load_prepared(uri: str) -> PreparedData:
    """The prepared data a worker was pointed at (its manifest read from storage)."""
    loc = Location.parse(uri)
    return PreparedData(loc, PreparedManifest.model_validate_json(loc.join(MANIFEST).read_text()), reused=True)
