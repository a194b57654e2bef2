"""NIQE's pristine-image model without a model hub.

pyiqa's NIQE needs ``niqe_modelparameters.mat`` (the mean and covariance of natural-scene statistics
fitted by Mittal et al.), which it downloads from the Hugging Face hub. The same parameters ship on
PyPI inside the source distribution of BasicSR (``basicsr/metrics/niqe_pris_params.npz``), which
``pip download --no-deps basicsr==1.4.2`` fetches without installing anything. We read that member
straight out of the archive (no extraction, no pickle) and write the .mat layout pyiqa expects.

Where the parameters come from, first match wins:
1. the ``niqe_params`` argument (``osediff eval --niqe-params``) / ``$OSEDIFF_NIQE_PARAMS``: a .mat,
   a .npz or a BasicSR sdist (.tar.gz);
2. pyiqa's own cache (``<torch hub>/pyiqa/niqe_modelparameters.mat``), from an earlier download;
3. our converted copy in ``<osediff cache>/niqe/``;
4. a ``basicsr-*.tar.gz`` left in the osediff cache folder (e.g. by ``pip download -d``);
5. nothing: pyiqa tries its download.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..checkpoint.hub import cache_dir
from ..errors import OSEDiffError, as_python_argument
from ..fileio import atomic_write

ENV_VAR = "OSEDIFF_NIQE_PARAMS"
PYIQA_FILE = "niqe_modelparameters.mat"
SDIST_MEMBER = "basicsr/metrics/niqe_pris_params.npz"
FEATURES = 36  # NIQE's feature vector: 18 per scale, 2 scales


def how_to(name_of: Callable[[str], str] = as_python_argument) -> str:
    """The one-line fix shown when NIQE has no parameters, naming the argument through ``name_of``."""
    return (f"pip download --no-deps basicsr==1.4.2 -d {cache_dir()} (found there automatically), "
            f"or pass the .tar.gz as {name_of('niqe_params')} / ${ENV_VAR}")


class NiqeParamsError(OSEDiffError, ValueError):
    """A parameter file that is missing or does not hold NIQE's pristine model."""


def pyiqa_cached_file() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "pyiqa" / PYIQA_FILE


def converted_file() -> Path:
    return cache_dir() / "niqe" / PYIQA_FILE


def find_niqe_params(explicit: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """(path of a pyiqa-ready .mat or None, a few words on where it came from)."""
    explicit = explicit or os.environ.get(ENV_VAR) or None
    if explicit:
        source = Path(explicit).expanduser()
        if source.suffix.lower() == ".mat":
            check_mat(source)
            return source, str(source)
        return write_mat(*read_params(source), converted_file()), f"converted from {source}"
    for candidate, note in ((pyiqa_cached_file(), "pyiqa cache"), (converted_file(), "osediff cache")):
        if candidate.is_file():
            return candidate, f"{note} ({candidate})"
    sdists = sorted(cache_dir().glob("basicsr-*.tar.gz"))
    if sdists:
        return write_mat(*read_params(sdists[-1]), converted_file()), f"converted from {sdists[-1]}"
    return None, "pyiqa download"


def read_params(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, cov) from a BasicSR sdist or a .npz; validates shapes and values."""
    if not path.is_file():
        raise NiqeParamsError(f"{path}: NIQE parameter file not found")
    if path.name.endswith((".tar.gz", ".tgz")):
        data = _npz_from_sdist(path)
    elif path.suffix.lower() == ".npz":
        data = path.read_bytes()
    else:
        raise NiqeParamsError(f"{path}: expected a .mat, a .npz or a basicsr-*.tar.gz source archive")
    try:
        # allow_pickle=False: a parameter file must never be able to run code
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError) as err:
        raise NiqeParamsError(f"{path}: not a readable .npz ({err})") from None
    mu = arrays.get("mu_pris_param", arrays.get("mu_prisparam"))
    cov = arrays.get("cov_pris_param", arrays.get("cov_prisparam"))
    if mu is None or cov is None:
        raise NiqeParamsError(f"{path}: no mu_pris_param/cov_pris_param arrays (has {sorted(arrays)})")
    return _validated(path, mu, cov)


def _npz_from_sdist(path: Path) -> bytes:
    try:
        with tarfile.open(path, "r:gz") as archive:
            # read the one member into memory: nothing is extracted, so archive paths can't escape
            member = next((m for m in archive.getmembers() if m.isfile() and m.name.endswith(SDIST_MEMBER)),
                          None)
            if member is None:
                raise NiqeParamsError(f"{path}: no {SDIST_MEMBER} inside (is this a BasicSR sdist?)")
            handle = archive.extractfile(member)
            if handle is None:
                raise NiqeParamsError(f"{path}: {member.name} cannot be read")
            return handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise NiqeParamsError(f"{path}: not a readable .tar.gz ({err})") from None


def _validated(path: Path, mu: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, cov = np.asarray(mu, dtype=np.float64).ravel(), np.asarray(cov, dtype=np.float64)
    if mu.shape != (FEATURES,) or cov.shape != (FEATURES, FEATURES):
        raise NiqeParamsError(f"{path}: expected a {FEATURES}-vector and a {FEATURES}x{FEATURES} matrix, "
                              f"got {mu.shape} and {cov.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(cov).all()):
        raise NiqeParamsError(f"{path}: NIQE parameters contain NaN or infinity")
    return mu, cov


def check_mat(path: Path) -> None:
    """Fail early, naming the file, rather than deep inside pyiqa."""
    import scipy.io

    if not path.is_file():
        raise NiqeParamsError(f"{path}: NIQE parameter file not found")
    try:
        params = scipy.io.loadmat(path)
    except (ValueError, OSError, TypeError) as err:
        raise NiqeParamsError(f"{path}: not a readable .mat file ({err})") from None
    if "mu_prisparam" not in params or "cov_prisparam" not in params:
        raise NiqeParamsError(f"{path}: no mu_prisparam/cov_prisparam in this .mat file")
    _validated(path, params["mu_prisparam"], params["cov_prisparam"])


def write_mat(mu: np.ndarray, cov: np.ndarray, dst: Path) -> Path:
    """pyiqa's .mat layout, written atomically so a parallel run never reads half a file."""
    import scipy.io

    arrays = {"mu_prisparam": mu.reshape(1, -1), "cov_prisparam": cov}
    # appendmat=False: the temporary file is the one to fill, whatever its suffix
    return atomic_write(dst, lambda tmp: scipy.io.savemat(str(tmp), arrays, appendmat=False))
