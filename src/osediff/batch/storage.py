"""Where a batch reads and writes: a local folder, or any URI pyarrow.fs opens (``s3://``, ``gs://``, ``file://``).

Local outputs are written through a temporary file and a rename; object stores make an object
visible only once its upload completes, which gives remote outputs the same all-or-nothing property.

Object stores take options (``storage_options``: ``endpoint_override``, ``region``, ``anonymous``,
credentials, ...; :data:`OPTIONS` lists them). A job's options apply to each of its ``s3://`` and
``gs://`` URIs (those the scheme knows); a URI's own query adds options for that URI alone
(``s3://bucket/lr/?endpoint_override=http://host:9000``) and stays with every file listed under it.
The options are plain values in the job's config, so they reach every node with it; secrets are
read from the driver's environment (:func:`parse_storage_options`), never from the command line.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from ..fileio import atomic_temporary_parts, first_line, write_text_atomic
from ..images import IMAGE_SUFFIXES, collect_inputs, save_image_atomic
from ..outputs import for_format, save_options
from .config import GLOB_CHARS, BatchConfigError, is_uri

# pyarrow's S3FileSystem / GcsFileSystem keyword arguments that take a plain value, and their types;
# retry_attempts (S3) stands for retry_strategy=AwsStandardS3RetryStrategy(max_attempts=N)
S3_OPTIONS: dict[str, type] = {
    "endpoint_override": str, "region": str, "scheme": str, "anonymous": bool,
    "access_key": str, "secret_key": str, "session_token": str,
    "role_arn": str, "session_name": str, "external_id": str, "load_frequency": int,
    "request_timeout": float, "connect_timeout": float, "retry_attempts": int, "proxy_options": str,
    "background_writes": bool, "allow_bucket_creation": bool, "allow_bucket_deletion": bool,
    "check_directory_existence_before_creation": bool, "force_virtual_addressing": bool, "tls_ca_file_path": str,
}
GCS_OPTIONS: dict[str, type] = {
    "endpoint_override": str, "scheme": str, "anonymous": bool, "access_token": str, "project_id": str,
    "target_service_account": str, "default_bucket_location": str, "retry_time_limit": float,
}
OPTIONS: dict[str, dict[str, type]] = {"s3": S3_OPTIONS, "gs": GCS_OPTIONS, "gcs": GCS_OPTIONS}
SECRETS = ("access_key", "secret_key", "session_token", "access_token")
ENV = "_env"  # access_key_env=NAME: the value is read from the environment variable NAME
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_QUERY_PAIR = re.compile(r"[A-Za-z_]+=.*", re.DOTALL)


class Secret(str):
    """A credential: itself to pyarrow, ``***`` in any repr (configs, error messages, logs)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


def parse_storage_options(pairs: Sequence[str], environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``KEY=VALUE`` words (``--storage-option``) as storage options, each value of its option's type.

    Credentials come as ``access_key_env=NAME`` (also ``secret_key``, ``session_token``,
    ``access_token``): the value of the environment variable ``NAME`` here, on the driver, which then
    travels with the job; given as values they are refused (a command line is visible to every user
    of the machine and kept in shell history).
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BatchConfigError(f"expected KEY=VALUE, got {pair!r}", argument="storage_options")
        if key.endswith(ENV) and key.removesuffix(ENV) in SECRETS:
            key = key.removesuffix(ENV)
            if value not in environ:
                raise BatchConfigError(f"{key}{ENV}={value}: the environment variable {value} is not set",
                                       argument="storage_options")
            options[key] = Secret(environ[value])
            continue
        if key in SECRETS:
            raise BatchConfigError(f"{key}: give the name of the environment variable that holds it, as "
                                   f"{key}{ENV}=NAME, not the secret itself", argument="storage_options")
        options[key] = _convert(key, value, _option_type(key), "storage_options")
    return options


def check_storage_options(options: Mapping[str, Any], locations: Iterable[str | os.PathLike]) -> None:
    """Refuse options that none of the job's URIs (``locations``) takes, or values of the wrong kind."""
    if not isinstance(options, Mapping):
        raise BatchConfigError(f"must be a mapping of option names to values, got {options!r}",
                               argument="storage_options")
    schemes = {_scheme(str(loc)) for loc in locations if is_uri(loc)} & set(OPTIONS)
    if options and not schemes:
        raise BatchConfigError("applies to s3:// and gs:// URIs, and no input or output is one",
                               argument="storage_options")
    for key, value in options.items():
        kinds = [OPTIONS[scheme][key] for scheme in schemes if key in OPTIONS[scheme]]
        if not kinds:
            raise BatchConfigError(f"{key!r} is not an option of {' or '.join(sorted(s + '://' for s in schemes))} "
                                   f"URIs; choose from {', '.join(sorted({k for s in schemes for k in OPTIONS[s]}))}",
                                   argument="storage_options")
        _convert(key, value, kinds[0], "storage_options")


def split_query(uri: str) -> tuple[str, dict[str, Any]]:
    """An ``s3://``/``gs://`` URI without its query of storage options, and those options.

    A ``?`` followed by ``KEY=VALUE`` pairs only is a query; any other ``?`` is a glob character
    (``s3://bucket/im?.png``, ``s3://bucket/im?.png?region=eu-west-1``). Every key must be an option
    of the scheme (credentials excepted).
    """
    scheme = _scheme(uri)
    if scheme not in OPTIONS:
        return uri, {}
    for match in re.finditer(r"\?", uri):  # the first '?' that only KEY=VALUE pairs follow
        base, query = uri[:match.start()], uri[match.end():]
        if all(_QUERY_PAIR.fullmatch(pair) for pair in query.split("&")):
            break
    else:
        return uri, {}
    options: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key in SECRETS or key.removesuffix(ENV) in SECRETS:
            raise BatchConfigError(f"{uri}: {key} cannot be given in a URI; pass --storage-option "
                                   f"{key.removesuffix(ENV)}{ENV}=NAME (an environment variable)")
        if key not in OPTIONS[scheme]:
            raise BatchConfigError(f"{uri}: {key!r} is not an option of {scheme}:// URIs; choose from "
                                   f"{', '.join(sorted(k for k in OPTIONS[scheme] if k not in SECRETS))}")
        options[key] = _convert(key, value, OPTIONS[scheme][key], None, where=uri)
    return base, options


def strip_query(uri: str) -> str:
    """The URI without a query of storage options: what names its outputs and its manifest rows."""
    return split_query(uri)[0] if is_uri(uri) else uri


def _query_of(uri: str) -> str:
    base = split_query(uri)[0]
    return uri[len(base):]  # "" or "?key=value..." exactly as given


def _scheme(uri: str) -> str:
    return uri.partition("://")[0].lower()


def _option_type(key: str) -> type:
    for table in OPTIONS.values():
        if key in table:
            return table[key]
    known = sorted({k for table in OPTIONS.values() for k in table if k not in SECRETS})
    raise BatchConfigError(f"{key!r} is not a storage option; choose from {', '.join(known)} "
                           f"(credentials: {', '.join(s + ENV for s in SECRETS)})", argument="storage_options")


def _convert(key: str, value: Any, kind: type, argument: str | None, where: str = "") -> Any:
    """``value`` (a string from a flag or a query, or already typed) as ``kind``."""
    def refuse(expected: str) -> BatchConfigError:
        prefix = f"{where}: " if where else ""
        return BatchConfigError(f"{prefix}{key} must be {expected}, got {value!r}", argument=argument)

    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in _TRUE + _FALSE:
            return str(value).strip().lower() in _TRUE
        raise refuse("true or false")
    if kind in (int, float):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise refuse("an integer" if kind is int else "a number") from None
        if number < 0 or isinstance(value, bool):
            raise refuse("a number >= 0")
        return number
    if not isinstance(value, str):
        raise refuse("a string")
    return value


def _filesystem(uri: str, options: Mapping[str, Any] | None = None):
    """``(filesystem, path)`` for ``uri``: the job's ``options`` that its scheme takes, then its query's."""
    base, query = split_query(uri)
    scheme = _scheme(base)
    table = OPTIONS.get(scheme, {})
    merged = {key: _convert(key, value, table[key], "storage_options")
              for key, value in (options or {}).items() if key in table}
    merged.update(query)
    try:
        if not merged:
            from pyarrow import fs

            return fs.FileSystem.from_uri(base)
        parsed = urllib.parse.urlsplit(base)
        bucket = parsed.hostname or ""
        if parsed.username:  # s3://KEY:SECRET@bucket/..., as pyarrow's own URIs allow
            merged.setdefault("access_key", Secret(urllib.parse.unquote(parsed.username)))
            merged.setdefault("secret_key", Secret(urllib.parse.unquote(parsed.password or "")))
        filesystem = _open_filesystem(scheme, bucket, tuple(sorted(merged.items())))
        return filesystem, f"{bucket}{parsed.path}".rstrip("/") or bucket
    except BatchConfigError:
        raise
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for unknown schemes, bad URIs, no network
        raise BatchConfigError(f"{strip_query(uri)}: cannot open ({first_line(err)})") from None


@functools.lru_cache(maxsize=32)
def _open_filesystem(scheme: str, bucket: str, options: tuple[tuple[str, Any], ...]):
    """One filesystem per store and options in each process (a worker reads many files through it)."""
    from pyarrow import fs

    kwargs = dict(options)
    if scheme == "s3":
        attempts = kwargs.pop("retry_attempts", None)
        if attempts is not None:
            kwargs["retry_strategy"] = fs.AwsStandardS3RetryStrategy(max_attempts=attempts)
        if not kwargs.get("region") and not kwargs.get("endpoint_override") and bucket:
            kwargs["region"] = fs.resolve_s3_region(bucket)  # as pyarrow's own s3:// URIs do
        return fs.S3FileSystem(**kwargs)
    import datetime

    if "retry_time_limit" in kwargs:
        kwargs["retry_time_limit"] = datetime.timedelta(seconds=kwargs["retry_time_limit"])
    return fs.GcsFileSystem(**kwargs)


class Folder:
    """An output folder: a local path or a URI (with the job's storage ``options``)."""

    def __init__(self, location: str | os.PathLike, options: Mapping[str, Any] | None = None) -> None:
        self.location = str(location)
        if self.location.startswith("file://"):  # a local folder: keep the atomic local writes
            self.location = urllib.parse.unquote(urllib.parse.urlparse(self.location).path)
        self.remote = is_uri(self.location)
        self.options = dict(options or {})  # with the location's own query: what a sibling file needs
        if self.remote:
            query = _query_of(self.location)
            self.location, own = split_query(self.location)
            self.options.update(own)
            self._fs, self._root = _filesystem(self.location.rstrip("/") + query, options)

    def path(self, name: str) -> str:
        return f"{self.location.rstrip('/')}/{name}" if self.remote else str(Path(self.location) / name)

    def exists(self, name: str) -> bool:
        if not self.remote:
            return (Path(self.location) / name).exists()
        from pyarrow import fs

        return self._fs.get_file_info(f"{self._root}/{name}").type != fs.FileType.NotFound

    def read_text(self, name: str) -> str | None:
        """The text of file ``name``, or None when there is none."""
        if not self.remote:
            try:
                return (Path(self.location) / name).read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
        if not self.exists(name):
            return None
        with self._fs.open_input_stream(f"{self._root}/{name}") as fh:
            return fh.read().decode("utf-8")

    def write_image(self, name: str, image: Image.Image, quality: int) -> str:
        image, options = for_format(image, name), save_options(name, quality)
        if not self.remote:
            return str(save_image_atomic(image, Path(self.location) / name, **options))
        buffer = io.BytesIO()
        image.save(buffer, format=Image.registered_extensions()[PurePosixPath(name).suffix.lower()], **options)
        return self.write_bytes(name, buffer.getvalue())

    def write_text(self, name: str, text: str) -> str:
        if not self.remote:
            return str(write_text_atomic(text, Path(self.location) / name))
        return self.write_bytes(name, text.encode("utf-8"))

    def write_bytes(self, name: str, data: bytes) -> str:
        """Remote folders only (local writes go through the atomic helpers of ``osediff.fileio``)."""
        self._fs.create_dir(self._root, recursive=True)
        with self._fs.open_output_stream(f"{self._root}/{name}") as out:
            out.write(data)
        return self.path(name)

    def remove_stale_temporaries(self, names: Iterable[str], before: float) -> list[str]:
        """Delete the hidden temporaries that atomic writes of ``names`` left here (a killed run's
        ``.<stem>.<random><suffix>``) and that were last changed before ``before`` (a time.time());
        no other file. The names deleted; a remote folder has none (uploads are whole or absent)."""
        if self.remote:
            return []
        targets = {(PurePosixPath(name).stem, PurePosixPath(name).suffix or ".tmp") for name in names}
        removed = []
        try:
            entries = list(os.scandir(self.location))
        except OSError:  # no folder yet: nothing to clean
            return []
        for entry in entries:
            if not entry.name.startswith(".") or atomic_temporary_parts(entry.name) not in targets:
                continue
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < before:
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except OSError:  # gone meanwhile, or not ours to delete: leave it
                continue
        return sorted(removed)


def read_bytes(uri: str, options: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of a local file or a URI."""
    if not is_uri(uri):
        return Path(uri).read_bytes()
    filesystem, path = _filesystem(uri, options)
    with filesystem.open_input_file(path) as fh:
        return fh.read()


def collect_any(specs: list[str], options: Mapping[str, Any] | None = None) -> list[str]:
    """Like :func:`osediff.images.collect_inputs`, also for URIs: files, folders and globs, in order.

    A URI's query of storage options is kept on every file found under it (:func:`strip_query`
    gives the bare URI).
    """
    found: list[str] = []
    for spec in specs:
        if not is_uri(spec):
            found.extend(str(p) for p in collect_inputs([spec]))
            continue
        from pyarrow import fs

        bare, query = strip_query(spec), _query_of(spec)
        pattern = bare if any(ch in bare for ch in GLOB_CHARS) else None
        folder = bare.rsplit("/", 1)[0] if pattern else bare.rstrip("/")
        filesystem, root = _filesystem(folder + query, options)
        try:
            info = filesystem.get_file_info(root)
            if info.type == fs.FileType.File:
                found.append(spec)
                continue
            if info.type == fs.FileType.NotFound:
                raise BatchConfigError(f"{bare}: no such file or folder")
            entries = filesystem.get_file_info(fs.FileSelector(root))
        except OSError as err:
            raise BatchConfigError(f"{bare}: cannot list ({first_line(err)})") from None
        names = sorted(entry.base_name for entry in entries
                       if entry.type == fs.FileType.File and not entry.base_name.startswith("."))
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n, pattern.rsplit("/", 1)[1])]
        else:
            names = [n for n in names if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES]
        found.extend(f"{folder}/{name}{query}" for name in names)
    return list(dict.fromkeys(found))
