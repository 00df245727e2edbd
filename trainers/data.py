"""Read, check and split the data a spec names.

`load_splits` is deterministic (seeded), so the driver can check everything before any worker
starts (a missing column names the columns that exist; a bad label names its row) and every
worker then reads the very same splits. Rows are plain dicts; tokenization lives in encode.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .config import DataSection
from .errors import DataError
from .model import resolve_package_path
from .storage import Location, StorageError
from .tasks import Task

ROW = "_row"  # 1-based record number in its source file, for error messages


@dataclass(frozen=True)
class Splits:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    test: list[dict[str, Any]]
    labels: list[str] | None = None


def _format_of(uri: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = uri.split("?")[0].lower()
    for ext, kind in ((".csv", "csv"), (".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"),
                      (".pq", "parquet")):
        if name.endswith(ext):
            return kind
    raise DataError(f"{uri}: cannot tell the file format from its name; set train.data.format "
                    "(csv, jsonl or parquet)")


def _open_table(uri: str, fmt: str):
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    if uri.startswith("pkg://"):
        try:
            uri = str(resolve_package_path(uri))
        except Exception as err:  # ModelNotFoundError's wording names the package; keep it
            raise DataError(str(err)) from None
    try:
        loc = Location.parse(uri)
        found = loc.is_file()
    except StorageError as err:
        raise DataError(str(err)) from None
    if not found:
        near = loc.parent.list()[:10]
        raise DataError(f"data file {uri!r} not found (looked at {loc})."
                        + (f" That folder has: {', '.join(near)}" if near else ""))
    fs, path = loc.filesystem()
    kind = _format_of(uri, fmt)
    try:
        with fs.open_input_file(path) as f:
            if kind == "csv":
                return pcsv.read_csv(f)
            if kind == "jsonl":
                return pjson.read_json(f)
            return pq.read_table(f)
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"{uri}: could not read it as {kind}: {err}") from None


def _decode(value: Any) -> Any:
    # Invalid UTF-8 in a text column makes pyarrow type it binary; keep the rows, replace bad bytes.
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def read_rows(uri: str, fmt: str = "auto") -> list[dict[str, Any]]:
    if uri.startswith("hf://"):
        return _read_hub(uri)
    table = _open_table(uri, fmt)
    columns = {name: [_decode(v) for v in table.column(name).to_pylist()] for name in table.column_names}
    return [{ROW: i + 1, **{c: columns[c][i] for c in columns}} for i in range(table.num_rows)]


def _read_hub(uri: str) -> list[dict[str, Any]]:
    """hf://<dataset>[#split] for clusters with network access."""
    name, _, split = uri.removeprefix("hf://").partition("#")
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as err:
        raise DataError(f"{uri}: could not load dataset {name!r}: {err}") from None
    # Class-label columns hold ids; the names are what specs, checkpoints and responses use.
    names = {}
    for col, feature in ds.features.items():
        inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) for NER tags
        if isinstance(feature, datasets.ClassLabel):
            names[col] = (feature.int2str, False)
        elif isinstance(inner, datasets.ClassLabel):
            names[col] = (inner.int2str, True)
    rows = []
    for i, row in enumerate(ds):
        for col, (to_str, is_list) in names.items():
            row[col] = [to_str(v) for v in row[col]] if is_list else to_str(row[col])
        rows.append({ROW: i + 1, **row})
    return rows


def _check_rows(rows: list[dict], data: DataSection, task: Task, name: str, source: str) -> list[dict]:
    """Only the task's columns, normalised, every row checked; errors name the row."""
    if not rows:
        raise DataError(f"{name} data ({source}) is empty")
    want = task.columns(data)
    have = [c for c in rows[0] if c != ROW]
    missing = [c for c in want if c not in rows[0]]
    if missing:
        raise DataError(f"{name} data ({source}) has no column {', '.join(map(repr, missing))}. "
                        f"These columns exist: {', '.join(have)}. Set the train.data.*_column fields to match.")
    return [{ROW: row[ROW], **task.clean_row(row, data, f"{name} data ({source}) row {row[ROW]}")} for row in rows]


def _resolve_labels(train: list[dict], data: DataSection, task: Task, given: list[str] | None) -> list[str] | None:
    if not task.has_labels:
        return None
    if given:
        return list(given)
    names = sorted({x for r in train for x in task.labels_in(r, data)})
    if len(names) < 2:
        raise DataError(f"training data has a single label {names}; classification needs at least 2")
    return names


def _check_labels(rows: list[dict], data: DataSection, task: Task, labels: list[str], name: str, source: str) -> None:
    allowed = set(labels)
    for r in rows:
        for value in task.labels_in(r, data):
            if value not in allowed:
                raise DataError(f"{name} data ({source}) row {r[ROW]}: label {value!r} is not one of {labels}. "
                                "Fix the row, or list every label in train.model.labels.")


def load_splits(data: DataSection, task: Task, labels: list[str] | None = None) -> Splits:
    """Train/validation/test rows, checked. Deterministic for a given spec."""
    rng = random.Random(data.seed)
    train = _check_rows(read_rows(data.train, data.format), data, task, "train", data.train)
    sources = {"train": data.train}
    order = list(range(len(train)))
    rng.shuffle(order)
    n = len(order)
    n_test = 0 if data.test else int(n * data.test_fraction)
    n_val = 0 if data.validation else int(n * data.validation_fraction)
    test = [train[i] for i in order[:n_test]]
    validation = [train[i] for i in order[n_test:n_test + n_val]]
    train_rows = [train[i] for i in order[n_test + n_val:]]
    for name, uri in (("validation", data.validation), ("test", data.test)):
        if uri:
            rows = _check_rows(read_rows(uri, data.format), data, task, name, uri)
            validation, test = (rows, test) if name == "validation" else (validation, rows)
            sources[name] = uri
        else:
            sources[name] = f"{data.train} (seeded split)"
    if data.max_train_samples:
        train_rows = train_rows[: data.max_train_samples]
    if data.max_eval_samples:
        validation, test = validation[: data.max_eval_samples], test[: data.max_eval_samples]
    if not train_rows:
        raise DataError(f"the train split of {data.train} is empty after holding out validation/test rows")
    if not validation:
        raise DataError("the validation split is empty: give train.data.validation, or set "
                        "train.data.validation_fraction above 0 with enough rows to split")
    resolved = _resolve_labels(train_rows, data, task, labels)
    if resolved:
        for name, rows in (("train", train_rows), ("validation", validation), ("test", test)):
            _check_labels(rows, data, task, resolved, name, sources[name])
    return Splits(train=train_rows, validation=validation, test=test, labels=resolved)
