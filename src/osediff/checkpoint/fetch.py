"""One file over HTTP into place: resumable, checked, and renamed only once whole.

:func:`fetch` streams a URL into a hidden ``.NAME.<url hash>.part`` file beside the target. A
``.part`` left by an earlier attempt (a dropped connection, a killed process) is continued with an
HTTP ``Range`` request instead of being fetched again; a connection that drops mid-file is resumed
the same way within the call. Once the size is complete the file's sha256 is computed and compared
with the expected one (when given): a mismatch deletes the ``.part`` and raises, so a bad file is
never kept; a match renames it over the target in one step. Hub files are addressed as
``{endpoint}/{repo}/resolve/main/{path}`` (:func:`hub_url`; ``HF_ENDPOINT`` sets the endpoint), and
:func:`hub_tree` lists a hub folder with each file's size and, for LFS files, its sha256.

No torch, and no huggingface_hub beyond its constants and saved token.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..fileio import _read_umask, file_sha256, first_line

CHUNK = 1 << 20
TIMEOUT_S = 60.0
ATTEMPTS = 4  # per call, as long as each attempt gets further than the one before
_SHA256 = re.compile(r"[0-9a-f]{64}")
Progress = Callable[[int, "int | None"], None]  # (bytes on disk, expected total or None)


class FetchError(Exception):
    """A file that could not be fetched: the one-line reason (``"HTTP 404"``, ``"checksum mismatch ..."``).

    ``missing``: the server says the file does not exist there (another source may have it).
    """

    def __init__(self, why: str, *, missing: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.missing = missing


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch` put in place: its ``size`` and ``sha256``, the offset it resumed from (0: a
    fresh download) and the bytes that came over the network this time."""

    path: Path
    size: int
    sha256: str
    resumed_from: int
    received: int


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def split_hub_spec(spec: str) -> tuple[str, str]:
    """``hf://owner/repo/path/to/file`` -> ``("owner/repo", "path/to/file")``."""
    parts = spec[len("hf://"):].split("/")
    if not spec.startswith("hf://") or len(parts) < 3 or not all(parts):
        raise ValueError(f"expected hf://owner/repo/path/to/file, got {spec!r}")
    return "/".join(parts[:2]), "/".join(parts[2:])


def hub_url(repo_id: str, path: str, revision: str = "main") -> str:
    """The download URL of one file of a hub model repository."""
    return f"{hub_endpoint()}/{repo_id}/resolve/{revision}/{urllib.parse.quote(path)}"


def source_url(spec: str) -> str:
    """The URL a spec is fetched from: ``hf://`` specs through the hub endpoint, URLs as they are."""
    if spec.startswith("hf://"):
        return hub_url(*split_hub_spec(spec))
    return spec


def is_hub_url(url: str) -> bool:
    return urllib.parse.urlsplit(url).netloc == urllib.parse.urlsplit(hub_endpoint()).netloc


def _headers(url: str) -> dict[str, str]:
    from .. import __version__

    headers = {"User-Agent": f"osediff/{__version__}"}
    if is_hub_url(url):
        try:
            from huggingface_hub import get_token

            token = get_token()  # HF_TOKEN or the saved login; read from disk, no request
        except Exception:
            token = None
        if token:
            headers["Authorization"] = f"Bearer {token}"
    return headers


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects (the hub sends LFS files to its CDN), never taking a hub token to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            for key in ("Authorization",):
                new.headers.pop(key, None)
                new.unredirected_hdrs.pop(key, None)
        return new


_opener = urllib.request.build_opener(_Redirects)


def _open(url: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, headers={**_headers(url), **(headers or {})})
    return _opener.open(request, timeout=TIMEOUT_S)


def describe(err: BaseException) -> str:
    """One line for an error of urllib or the socket: ``"HTTP 404 Not Found"``, ``"timed out"``."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}".strip()
    reason = getattr(err, "reason", err)  # a URLError wraps the socket error
    return first_line(reason) if isinstance(reason, BaseException) else first_line(str(reason))


@dataclass(frozen=True)
class TreeEntry:
    """One file of a hub folder listing: its path in the repository, size and (LFS files) sha256."""

    path: str
    size: int | None
    sha256: str | None


def hub_tree(repo_id: str, folder: str = "", *, recursive: bool = True) -> list[TreeEntry]:
    """The files under ``folder`` of a hub model repository (``main``), from the hub's tree API.

    Raises :class:`FetchError` (``missing`` when the repository or folder does not exist).
    """
    url = f"{hub_endpoint()}/api/models/{repo_id}/tree/main"
    if folder:
        url += "/" + urllib.parse.quote(folder.strip("/"))
    url += "?" + urllib.parse.urlencode({"recursive": str(recursive).lower(), "expand": "false"})
    found: list[TreeEntry] = []
    while url:
        try:
            with _open(url) as response:
                entries = json.loads(response.read().decode("utf-8"))
                url = _next_link(response.headers.get("Link", ""))
        except urllib.error.HTTPError as err:
            raise FetchError(f"listing failed ({describe(err)})", missing=err.code == 404) from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise FetchError(f"listing failed ({describe(err)})") from None
        for entry in entries:
            if entry.get("type") != "file":
                continue
            lfs = entry.get("lfs") or {}
            oid = str(lfs.get("oid") or "").lower()
            found.append(TreeEntry(entry["path"], entry.get("size"), oid if _SHA256.fullmatch(oid) else None))
    return found


def _next_link(header: str) -> str | None:
    for part in header.split(","):
        match = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', part)
        if match:
            return match[1]
    return None


def part_path(target: Path, url: str) -> Path:
    """Where a download of ``url`` into ``target`` collects its bytes until it is complete and checked."""
    key = hashlib.sha256(url.encode()).hexdigest()[:8]
    return target.with_name(f".{target.name}.{key}.part")


def fetch(url: str, target: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
          progress: Progress | None = None, attempts: int = ATTEMPTS) -> Fetched:
    """Download ``url`` into ``target``, resuming a ``.part`` left before; checked against ``sha256``
    and ``size`` when given. The target appears whole and checked, or not at all: a checksum mismatch
    deletes what was downloaded; an interruption keeps it for the next call to resume."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target, url)
    resumed_from: int | None = None
    received = 0
    for attempt in range(attempts):
        have = part.stat().st_size if part.is_file() else 0
        if size is not None and have > size:  # not the file we expect: start again
            part.unlink()
            have = 0
        if size is not None and have == size:
            resumed_from = have if resumed_from is None else resumed_from
            break
        offset, got, complete = _one_request(url, part, size, progress)
        resumed_from = offset if resumed_from is None else resumed_from
        received += got
        if complete:
            break
        if attempt == attempts - 1:
            have = part.stat().st_size if part.is_file() else 0
            total = f" of {format_size(size)}" if size else ""
            raise FetchError(f"interrupted after {format_size(have)}{total}; run it again to resume from there")
    have = part.stat().st_size
    if size is not None and have != size:
        part.unlink(missing_ok=True)
        raise FetchError(f"size {have} bytes, expected {size}, so the download was deleted")
    digest = file_sha256(part)
    if sha256 and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise FetchError(f"checksum mismatch (sha256 {digest[:12]}..., expected {sha256.lower()[:12]}...), "
                         "so the download was deleted")
    os.chmod(part, 0o666 & ~_read_umask())
    os.replace(part, target)
    for stale in target.parent.glob(f".{glob_escape(target.name)}.*.part"):  # other sources' leftovers
        stale.unlink(missing_ok=True)
    return Fetched(target, have, digest, resumed_from or 0, received)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _one_request(url: str, part: Path, size: int | None, progress: Progress | None) -> tuple[int, int, bool]:
    """One GET, appended to ``part`` from where it ends: (the offset it wrote from, bytes received,
    whether the file is complete)."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = _open(url, headers)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after what we have: complete if the sizes agree
            total = _content_range_total(err.headers.get("Content-Range", ""))
            if total == have or (total is None and size == have):
                return have, 0, True
            part.unlink()
            return 0, 0, False
        raise FetchError(describe(err), missing=err.code in (404, 410)) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise FetchError(f"download failed ({describe(err)})") from None
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start != have:  # a range we did not ask for: start over
                response.close()
                part.unlink(missing_ok=True)
                return 0, 0, False
            mode = "ab"
        else:  # 200: the server sends the whole file (it ignores ranges)
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        total = total if total is not None else size
        got = 0
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException):  # the connection dropped: keep what arrived
                        return have, got, False
                    if not chunk:
                        break
                    out.write(chunk)
                    got += len(chunk)
                    if progress is not None:
                        progress(have + got, total)
        except OSError as err:
            raise FetchError(f"could not write {part.parent} ({describe(err)})") from None
    return have, got, total is None or have + got >= total


def _content_range(header: str) -> tuple[int | None, int | None]:
    match = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)", header)
    if not match:
        return None, None
    return int(match[1]), None if match[3] == "*" else int(match[3])


def _content_range_total(header: str) -> int | None:
    match = re.match(r"\s*bytes\s+\*/(\d+)", header)
    return int(match[1]) if match else None


def format_size(n: int | None) -> str:
    """``1536`` -> ``"1.5 KB"``; ``None`` -> ``"-"`` (decimal units, as download pages show them)."""
    if n is None:
        return "-"
    if n < 1000:
        return f"{n} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if n < 100 else f"{n:.0f} {unit}"
    raise AssertionError("unreachable")
