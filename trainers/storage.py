"""`Location`: every path a run reads or writes, as one value type over `pyarrow.fs`.

A location is a local directory or file, or a cloud URI: `s3://bucket/prefix` or `gs://bucket/prefix`.
An S3-compatible store (MinIO, moto, Ceph) is reached with pyarrow's query options, which every
join keeps: `s3://bucket/prefix?endpoint_override=host:9000&scheme=http`. Credentials come from
the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, ...),
never from a URI: a URI is written into specs, checkpoints, best.json and logs.

Ray Train and Tune take the URI as their storage path and hand back paths on the filesystem
(`bucket/prefix/...`, without the scheme); `Location.at` turns those back into locations.

This is the only module that tells local from remote.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from .errors import UserError, looks_secret

SCHEMES = ("s3", "gs")
CACHE_ENV = "ZEROTUNE_CACHE_DIR"
_COMPLETE = ".zerotune-complete"  # a cached copy is used only once this marker is in it


class StorageError(UserError):
    """A location that cannot be parsed, reached, read or written."""


@dataclass(frozen=True)
class Location:
    scheme: str  # "" for the local filesystem
    path: str  # an absolute local path, or bucket/key... on the cloud filesystem
    query: str = ""  # pyarrow's filesystem options, kept on every join

    # --- making one -------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | os.PathLike | Location) -> Location:
        if isinstance(text, Location):
            return text
        text = str(text)
        scheme, sep, rest = text.partition("://")
        if not sep:
            return cls("", str(Path(text).expanduser().resolve()))
        if scheme == "file":
            return cls("", str(Path(rest).expanduser().resolve()))
        if scheme not in SCHEMES:
            raise StorageError(f"{_shown(text)}: unknown storage scheme {scheme!r}; use a local path, "
                               f"{' or '.join(s + '://bucket/prefix' for s in SCHEMES)}")
        rest, _, query = rest.partition("?")
        bucket = rest.split("/", 1)[0]
        if "@" in bucket or ":" in bucket:
            raise StorageError(f"{scheme}://{bucket.rsplit('@', 1)[-1]}/...: credentials in a URI end up in specs, "
                               "checkpoints and logs; put them in the environment (AWS_ACCESS_KEY_ID, ...) instead")
        secret = [k for k, _ in parse_qsl(query) if looks_secret(k)]
        if secret:
            raise StorageError(f"{scheme}://{rest}: the URI carries {', '.join(secret)}; credentials go in the "
                               "environment, not in a URI that is written into specs and logs")
        if not bucket:
            raise StorageError(f"{_shown(text)}: no bucket; give {scheme}://bucket/prefix")
        return cls(scheme, rest.strip("/"), query)

    def at(self, fs_path: str) -> Location:
        """Another path on this location's filesystem (what Ray Train and Tune report)."""
        return Location(self.scheme, fs_path if self.scheme else str(Path(fs_path).resolve()), self.query)

    def join(self, *parts: str) -> Location:
        if self.is_local:
            return Location("", str(Path(self.path, *parts)))
        return Location(self.scheme, posixpath.join(self.path, *parts), self.query)

    def __str__(self) -> str:
        if self.is_local:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def __truediv__(self, part: str) -> Location:
        return self.join(part)

    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> Location:
        return self.at(posixpath.dirname(self.path.rstrip("/")) if self.scheme else str(Path(self.path).parent))

    def local(self) -> Path:
        """The local path (local locations only)."""
        if not self.is_local:
            raise StorageError(f"{self} is not on this machine's filesystem")
        return Path(self.path)

    # --- the filesystem ---------------------------------------------------------------------------

    def filesystem(self):
        """(pyarrow FileSystem, path on it)."""
        import pyarrow.fs

        if self.is_local:
            return pyarrow.fs.LocalFileSystem(), self.path
        try:
            fs, _ = pyarrow.fs.FileSystem.from_uri(f"{self.scheme}://{self.path.split('/', 1)[0]}"
                                                   + (f"?{self.query}" if self.query else ""))
        except (OSError, ValueError) as err:
            raise StorageError(f"{self}: {_first_line(err)}") from None
        return fs, self.path

    def for_ray(self):
        """(storage_path, storage_filesystem) for Ray Train's and Tune's RunConfig and restore: a cloud
        location passes the filesystem built here (endpoint and options applied) and the path on it,
        so Ray, its trials and its workers never re-parse the URI and its query themselves."""
        if self.is_local:
            return self.path, None
        fs, path = self.filesystem()
        return path, fs

    def _info(self):
        fs, path = self.filesystem()
        try:
            return fs.get_file_info(path)
        except OSError as err:
            raise StorageError(f"{self}: {_explain(err)}") from None

    def exists(self) -> bool:
        import pyarrow.fs

        return self._info().type != pyarrow.fs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs

        return self._info().type == pyarrow.fs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs

        return self._info().type == pyarrow.fs.FileType.Directory

    def mtime(self) -> float:
        """When the file was last written (seconds since the epoch; 0 where the store does not say)."""
        info = self._info()
        return info.mtime.timestamp() if info.mtime is not None else 0.0

    def list(self) -> list[str]:
        """Names directly under this directory, sorted ([] when it does not exist)."""
        import pyarrow.fs

        fs, path = self.filesystem()
        try:
            infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        except OSError as err:
            raise StorageError(f"{self}: {_explain(err)}") from None
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)

    def files(self) -> list[str]:
        """Every file under this directory, as paths relative to it."""
        import pyarrow.fs

        fs, path = self.filesystem()
        try:
            infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
        except OSError as err:
            raise StorageError(f"{self}: {_explain(err)}") from None
        root = path.rstrip("/") + "/"
        return sorted(i.path[len(root):] for i in infos if i.type == pyarrow.fs.FileType.File)

    def read_bytes(self) -> bytes:
        fs, path = self.filesystem()
        try:
            with fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as err:
            if "not found" in str(err).lower() or "does not exist" in str(err).lower():
                raise FileNotFoundError(str(self)) from None
            raise StorageError(f"{self}: {_explain(err)}") from None

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_text_or_none(self) -> str | None:
        """The file's text, or None when it does not exist."""
        return self.read_text() if self.is_file() else None

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file. Locally through a temporary file and a rename, so a reader never
        sees half of it; object stores make a completed upload visible at once."""
        if self.is_local:
            target = Path(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            return
        fs, path = self.filesystem()
        try:
            fs.create_dir(posixpath.dirname(path), recursive=True)
            with fs.open_output_stream(path) as f:
                f.write(data)
        except OSError as err:
            raise StorageError(f"{self}: {_explain(err)}") from None

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def upload(self, local_dir: Path) -> dict[str, Location]:
        """Copy every file under local_dir here (keeping sub-folders); {relative path: its location}."""
        out = {}
        for f in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            rel = f.relative_to(local_dir).as_posix()
            out[rel] = self.join(*rel.split("/"))
            out[rel].write_bytes(f.read_bytes())
        return out

    def remove_tree(self) -> None:
        """Delete this directory and everything under it (nothing there: nothing to do)."""
        if self.is_local:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        fs, path = self.filesystem()
        try:
            fs.delete_dir(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise StorageError(f"{self}: {_explain(err)}") from None

    def download(self, dest: Path, include: Iterable[str] | None = None) -> Path:
        """Copy the files under this directory into dest; `include`: only these top-level names."""
        wanted = set(include) if include is not None else None
        for rel in self.files():
            if wanted is not None and rel.split("/", 1)[0] not in wanted:
                continue
            target = Path(dest, *rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.join(*rel.split("/")).read_bytes())
        return dest

    def check_writable(self, what: str) -> None:
        """Write and remove a small object, so a wrong bucket, endpoint or credential fails now, with
        the location named, instead of in a worker."""
        probe = self.join(f".zerotune-write-test-{uuid.uuid4().hex}")
        try:
            probe.write_bytes(b"ok")
            fs, path = probe.filesystem()
            fs.delete_file(path)
        except (StorageError, OSError) as err:
            message = str(err) if isinstance(err, StorageError) else f"{probe}: {_explain(err)}"
            raise StorageError(f"cannot write to {what} {self}: {message.split(': ', 1)[-1]}. {_HINT}") from None


def is_uri(text: str) -> bool:
    """Whether text names something by URI (s3://, gs://, https:// ...) rather than a local path."""
    return "://" in text


def cached_copy(location: Location | str, include: Iterable[str] | None = None) -> Path:
    """A node-local copy of a remote directory (a local one is returned as it is), made once per node
    and URI: several processes on a node share it, and a half-written copy is never used (it is
    built in a temporary folder, marked complete, then renamed into place under a file lock)."""
    loc = Location.parse(location)
    if loc.is_local:
        return loc.local()
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "zerotune").expanduser()
    key = hashlib.sha256(str(loc).encode()).hexdigest()[:20]
    final = root / f"{loc.name}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one copier per node; the others wait, then reuse it
        if (final / _COMPLETE).is_file():
            return final
        shutil.rmtree(final, ignore_errors=True)
        tmp = root / f".{final.name}.{uuid.uuid4().hex}.partial"
        try:
            loc.download(tmp, include)
            (tmp / _COMPLETE).write_text(str(loc))
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


_HINT = ("Check the bucket exists, the endpoint (endpoint_override=host:port&scheme=http for an S3-compatible "
         "server) and the credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3, "
         "GOOGLE_APPLICATION_CREDENTIALS for gs)")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _explain(err: BaseException) -> str:
    """A short reason from pyarrow's error (which can name a request id, never a secret)."""
    text = _first_line(err)
    for needle, reason in (("NO_SUCH_BUCKET", "the bucket does not exist"),
                           ("allow_bucket_creation", "the bucket does not exist"),
                           ("InvalidAccessKeyId", "the access key is not valid"),
                           ("SignatureDoesNotMatch", "the secret key does not match the access key"),
                           ("ACCESS_DENIED", "access denied"), ("AccessDenied", "access denied"),
                           ("curlCode: 7", "nothing answers at the endpoint"),
                           ("Couldn't connect", "nothing answers at the endpoint")):
        if needle in text:
            return reason
    return text


def _shown(text: str) -> str:
    """A URI for a message, without any userinfo it may carry."""
    scheme, sep, rest = text.partition("://")
    return f"{scheme}{sep}{rest.split('@', 1)[-1]}" if sep else text
