"""Small files beside a sweep, on a local path or a cloud URI (s3://, gs://), through pyarrow's
filesystems, which Ray Tune and Train use for the same storage."""

from __future__ import annotations

import posixpath
from pathlib import Path


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts) if "://" in root else str(Path(root, *parts))


def _fs(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def write_bytes(path: str, data: bytes) -> None:
    fs, p = _fs(path)
    fs.create_dir(posixpath.dirname(p), recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    import pyarrow.fs

    fs, p = _fs(path)
    if fs.get_file_info(p).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def publish(local_dir: Path, dest: str) -> dict[str, str]:
    """Copy every file in local_dir to dest; {file name: its path there}."""
    out = {}
    for f in sorted(local_dir.iterdir()):
        if f.is_file():
            out[f.name] = join(dest, f.name)
            write_bytes(out[f.name], f.read_bytes())
    return out
