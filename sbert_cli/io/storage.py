"""Object stores: an s3:// URL as a path, the S3 filesystem behind it, and a failed request as one line.

A `StorePath` answers the few pathlib calls sbert's outputs make (exists, iterdir, glob, read_text, unlink, ...)
over pyarrow's own S3 filesystem, so a directory output's manifest and shards are handled by the same code on a
disk and in a bucket. Credentials and region come from the standard AWS chain (environment, ~/.aws, an instance
role); `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`) points it at an S3-compatible service (MinIO, Alibaba OSS).
Nothing here imports pyarrow.fs until a URL is actually used: `sbert --help` stays light.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import os
import shutil
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sbert_cli.errors import InputDataError, OutputError, SbertError, UsageError
from sbert_cli.io.retry import RetryingFile, RetryingReader, retried

SCHEME = "s3://"
READ_BUFFER = 4 << 20  # bytes a text input is read ahead: one ranged GET per 4 MiB, not per line
DEFAULT_ATTEMPTS = 1  # the SDK's own tries a request (AWS_MAX_ATTEMPTS overrides it): sbert retries (io/retry.py)
CONNECT_TIMEOUT = 5.0  # seconds to open a connection
REQUEST_TIMEOUT = 30.0  # seconds a request may go without receiving a byte
NO_CREDENTIALS = (
    "no AWS credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials or an "
    "instance role); set them, e.g. export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=..."
)


def is_url(path: str) -> bool:
    return path[: len(SCHEME)].lower() == SCHEME


def location(path: str) -> Path | StorePath:
    """A local path or an object-store path, answering the same pathlib calls."""
    return StorePath.parse(path) if is_url(path) else Path(path)


@dataclass(frozen=True, order=True)
class StorePath:
    """`s3://bucket/key` as a path: pure path arithmetic on `bucket/key`, and the pathlib calls outputs make."""

    posix: PurePosixPath  # bucket/key, the form pyarrow's S3 filesystem takes

    @classmethod
    def parse(cls, url: str) -> StorePath:
        rest = url[len(SCHEME):].strip("/")
        if not rest:
            raise UsageError(f"{url}: names no bucket; write s3://BUCKET/KEY")
        return cls(PurePosixPath(rest))

    def __str__(self) -> str:
        return SCHEME + str(self.posix)

    def __truediv__(self, name: str) -> StorePath:
        return StorePath(self.posix / name)

    bucket = property(lambda self: self.posix.parts[0])
    key = property(lambda self: "/".join(self.posix.parts[1:]))
    name = property(lambda self: self.posix.name if self.key else "")
    stem = property(lambda self: self.posix.stem if self.key else "")
    suffix = property(lambda self: self.posix.suffix if self.key else "")
    parent = property(lambda self: StorePath(self.posix.parent) if self.key else self)

    def with_name(self, name: str) -> StorePath:
        return StorePath(self.posix.with_name(name))

    def with_suffix(self, suffix: str) -> StorePath:
        return StorePath(self.posix.with_suffix(suffix))

    def relative_to(self, other: StorePath) -> PurePosixPath:
        return self.posix.relative_to(other.posix)

    def is_relative_to(self, other: object) -> bool:
        return isinstance(other, StorePath) and self.posix.is_relative_to(other.posix)

    def resolve(self) -> StorePath:
        return self

    def require_bucket(self) -> None:
        if not StorePath(PurePosixPath(self.bucket)).is_dir():
            raise missing_bucket(str(self), self.bucket)

    @property
    def fs(self) -> Any:
        return filesystem(self.bucket, str(self))

    def info(self) -> Any:
        with store_errors(str(self), InputDataError):
            return self._retried(lambda: self.fs.get_file_info(str(self.posix)))

    def _retried(self, action: Any) -> Any:  # a request to this path's store, retried while it fails transiently
        return retried(action, self.bucket)

    def exists(self) -> bool:
        return self.info().type.name != "NotFound"

    def is_file(self) -> bool:
        return self.info().type.name == "File"

    def is_dir(self) -> bool:
        """A prefix holding objects (S3 has no folders); the bucket itself when the key is empty."""
        return self.info().type.name == "Directory"

    def iterdir(self) -> Iterator[StorePath]:
        from pyarrow.fs import FileSelector

        with store_errors(str(self), InputDataError):
            infos = self._retried(lambda: self.fs.get_file_info(FileSelector(str(self.posix), recursive=False, allow_not_found=True)))
        return iter(sorted(StorePath(PurePosixPath(info.path)) for info in infos))

    def glob(self, pattern: str) -> Iterator[StorePath]:
        """Direct children whose name matches `pattern` (no '/' in it)."""
        return (child for child in self.iterdir() if fnmatch.fnmatchcase(child.name, pattern))

    def read_text(self, encoding: str = "utf-8") -> str:
        with store_errors(str(self), InputDataError):
            return self._retried(lambda: _read_object(self.fs, str(self.posix))).decode(encoding)  # type: ignore[no-any-return]

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        """One PUT: the object appears whole, or not at all (all bytes are handed over in one write)."""
        with store_errors(str(self), OutputError):
            self._retried(lambda: _write_object(self.fs, str(self.posix), text.encode(encoding)))

    def unlink(self, missing_ok: bool = False) -> None:
        with store_errors(str(self), OutputError):
            try:
                self._retried(lambda: self.fs.delete_file(str(self.posix)))
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def rmdir(self) -> None:
        """The prefix and the folder marker a writer (Ray) may have made for it."""
        with store_errors(str(self), OutputError):
            self._retried(lambda: self.fs.delete_dir(str(self.posix)))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: a prefix exists once an object is under it (and a marker object would show in listings)."""


def _read_object(fs: Any, key: str) -> bytes:
    with fs.open_input_stream(key, compression=None) as stream:
        return bytes(stream.read())


def _write_object(fs: Any, key: str, data: bytes) -> None:
    with fs.open_output_stream(key, compression=None) as stream:
        stream.write(data)


def open_input(path: StorePath, random_access: bool) -> IO[bytes]:
    """A Parquet file needs random access (its footer first); text is read as one stream, 4 MiB ahead. Either goes on
    after a transient failure (io/retry.py): a read is retried, a lost stream opened again where it stopped."""
    key = str(path.posix)

    def open_at(offset: int) -> Any:
        if offset == 0:
            return path.fs.open_input_stream(key, compression=None)
        native = path.fs.open_input_file(key)
        native.seek(offset)
        return native

    with store_errors(str(path), InputDataError):
        if random_access:
            return RetryingFile(path._retried(lambda: path.fs.open_input_file(key)), path.bucket)  # type: ignore[return-value]
        return io.BufferedReader(RetryingReader(open_at, path.bucket), READ_BUFFER)


def upload(local: str, target: StorePath) -> None:
    """Copy a finished local file to `target` in one call into Arrow's C++ (no Python code runs in between, so no
    exception can interrupt it half-way): S3 creates the object only with the upload's last request, once every
    byte is sent. A run killed before that leaves nothing under the name. Its OSError is the caller's to turn into
    a line that also says what the run kept (writers.output_errors).

    One case escapes S3's rule: should reading the local file fail mid-copy, Arrow's stream completes the upload
    with what it sent when it is destroyed. The sizes tell that object apart (one HEAD before and after), and it
    is removed at once."""
    from pyarrow.fs import LocalFileSystem, copy_files

    key = str(target.posix)

    def size_now() -> int | None:
        info = target.fs.get_file_info(key)
        return None if info.type.name == "NotFound" else info.size

    def remove() -> None:
        try:
            target.fs.delete_file(key)
        except FileNotFoundError:
            pass

    size, before = os.path.getsize(local), target._retried(size_now)

    def send() -> None:
        try:
            copy_files(local, key, source_filesystem=LocalFileSystem(), destination_filesystem=target.fs)
        except OSError:
            if size_now() not in (None, before, size):
                remove()
            raise
        if size_now() != size:  # a part's upload failed, and Arrow completed the upload without it
            remove()
            raise OSError(f"{target}: the uploaded object's size differs from the file sent")

    target._retried(send)  # the whole upload again after a transient failure: the object appears whole or not at all


def move(source: Path | StorePath, target: Path | StorePath) -> None:
    """A finished file to its final name: a rename on a disk; in a store, one server-side copy (the object appears
    whole) and the source's removal."""
    if isinstance(source, StorePath) and isinstance(target, StorePath):
        with store_errors(str(target), OutputError):
            source._retried(lambda: source.fs.move(str(source.posix), str(target.posix)))
    else:
        os.replace(source, target)  # type: ignore[arg-type]


def remove_tree(path: Path | StorePath) -> None:
    """A folder (a store's prefix) and everything under it; one already gone is fine."""
    if isinstance(path, StorePath):
        try:
            path.fs.delete_dir(str(path.posix))
        except OSError:
            pass  # absent
        return
    shutil.rmtree(path, ignore_errors=True)


def size_of(path: Path | StorePath) -> int | None:
    """A file's or object's size in bytes; None when there is none."""
    if isinstance(path, StorePath):
        return path.info().size if path.is_file() else None
    return path.stat().st_size if path.is_file() else None


def readable_locally(path: Path | StorePath) -> bool:
    """Whether reading the whole file costs no more than a local read (a store's would download it)."""
    return not isinstance(path, StorePath)


def arrow_filesystem(path: Path | StorePath) -> tuple[Any, str]:
    """The pyarrow filesystem that holds `path` (None: the local one pyarrow picks itself) and the path it takes."""
    if isinstance(path, StorePath):
        return path.fs, str(path.posix)
    return None, str(path)


def aws_environment() -> dict[str, str]:
    """The AWS settings of this process's environment, for workers started elsewhere (Ray)."""
    return {name: value for name, value in os.environ.items() if name.startswith("AWS_")}


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(bucket: str, shown: str) -> Any:
    """The S3 filesystem for a bucket, configured from the environment as it is now (tests change it). With no
    credentials anywhere the chain looks without the network, and the instance role switched off, nothing can sign."""
    if not _credentials_visible() and os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        raise UsageError(f"{shown}: {NO_CREDENTIALS}")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    return _filesystem(bucket, endpoint_url(), region, _attempts(), os.environ.get("AWS_ACCESS_KEY_ID"), _virtual_hosting())


def _virtual_hosting() -> bool:
    """bucket.host/key instead of host/bucket/key: what Alibaba OSS requires (detected from its endpoint), or
    SBERT_S3_ADDRESSING=virtual for another service that does; AWS itself chooses on its own."""
    style = os.environ.get("SBERT_S3_ADDRESSING", "").lower()
    return style == "virtual" or (not style and (endpoint_url() or "").rstrip("/").endswith(".aliyuncs.com"))


def _attempts() -> int:
    value = os.environ.get("AWS_MAX_ATTEMPTS", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_ATTEMPTS


@functools.lru_cache(maxsize=16)
def _filesystem(bucket: str, endpoint: str | None, region: str | None, attempts: int, key_id: str | None, virtual: bool) -> Any:
    """One filesystem per bucket and settings; `key_id` only keys the cache (the SDK reads the chain itself)."""
    from pyarrow.fs import AwsStandardS3RetryStrategy, S3FileSystem, resolve_s3_region

    options: dict[str, Any] = {"force_virtual_addressing": True} if virtual else {}
    if endpoint is not None:
        match = re.fullmatch(r"(https?)://([^/]+)/?", endpoint.strip())
        if match is None:
            raise UsageError(f"AWS_ENDPOINT_URL={endpoint}: expected http://HOST[:PORT] or https://HOST[:PORT]")
        options.update(scheme=match.group(1), endpoint_override=match.group(2))
    elif region is None:
        with store_errors(SCHEME + bucket, InputDataError):
            region = resolve_s3_region(bucket)  # AWS itself: a bucket answers only in its own region
    return S3FileSystem(
        region=region, connect_timeout=CONNECT_TIMEOUT, request_timeout=REQUEST_TIMEOUT,
        retry_strategy=AwsStandardS3RetryStrategy(max_attempts=attempts), **options,
    )


def _credentials_visible() -> bool:
    """Whether the AWS chain has credentials it can find without asking the network (the instance role needs it)."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(os.environ.get(name) for name in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")):
        return True
    home = Path.home() / ".aws"
    files = (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / "credentials", os.environ.get("AWS_CONFIG_FILE") or home / "config")
    return any(Path(name).is_file() for name in files)


def describe_endpoint() -> str:
    return endpoint_url() or "AWS S3"


def missing_bucket(shown: str, bucket: str) -> UsageError:
    return UsageError(f"{shown}: bucket '{bucket}' does not exist at {describe_endpoint()}; check the name, or create it")


@contextmanager
def store_errors(shown: str, runtime: type[SbertError]) -> Iterator[None]:
    """A failed request to the store -> one line naming the URL and the fix; `runtime` is the error class of a
    failure the user cannot fix by changing the command (InputDataError reading, OutputError writing)."""
    try:
        yield
    except OSError as exc:
        error = store_error(exc, shown, runtime)
        if error is None:
            raise
        raise error from None


_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))? during (\w+) operation: ?(.*)")


def store_error(exc: OSError, shown: str, runtime: type[SbertError]) -> SbertError | None:
    """The one-line error for a store request's failure, or None when `exc` is not one (a local disk's)."""
    if not is_url(shown):
        return None
    bucket = StorePath.parse(shown).bucket
    if isinstance(exc, FileNotFoundError):
        return UsageError(f"{shown}: no such key in bucket '{bucket}'; check the path")
    match = _AWS_ERROR.search(str(exc))
    code, status, detail = (match.group(1), match.group(2), match.group(4)) if match else ("", None, str(exc))
    detail = detail.split(" (Request ID")[0].strip().splitlines()[0] if detail.strip() else code
    if code == "NO_SUCH_BUCKET":
        return missing_bucket(shown, bucket)
    if code in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH") or status == "403":
        if not _credentials_visible():
            return UsageError(f"{shown}: access denied; {NO_CREDENTIALS}")
        return runtime(f"{shown}: access denied ({code or 'HTTP 403'}); check that these credentials may use bucket '{bucket}'")
    retried_for = getattr(exc, "sbert_retried", None)
    tried = f" for {retried_for:.0f} s of retries" if retried_for is not None else ""
    if code == "NETWORK_CONNECTION":
        reason = re.sub(r"^curlCode: \d+, ", "", detail.split("; Details")[0])
        return runtime(f"{shown}: {describe_endpoint()} does not answer ({reason}){tried}; check AWS_ENDPOINT_URL and the network")
    if retried_for is not None:
        return runtime(f"{shown}: the store kept failing ({code or 'error'}: {detail[:200]}){tried}")
    return runtime(f"{shown}: the store refused the request ({code or 'error'}: {detail[:200]})")
