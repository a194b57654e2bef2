"""OSEDiff generator weights: the authors' ``osediff.pkl`` and our safetensors format.

Both hold the same content: LoRA tensors for the UNet (three adapters) and the VAE encoder, the
fine-tuned UNet ``conv_in``, the ranks, and the module lists. Tensor names stay peft's, so the two
formats convert into each other without changing what the model computes.

Our format is a safetensors file whose tensors are prefixed ``unet.`` / ``vae.`` and whose
metadata holds a small JSON header (``osediff_header``) with the format version, ranks, alpha,
target lists and ``extra`` (free-form strings).

The authors' ``.pkl`` has no alpha: their loader applies peft's default ``lora_alpha`` 8. Saving
weights with another alpha to ``.pkl`` therefore folds ``alpha / 8`` into every ``lora_B`` tensor,
so each delta ``alpha / rank * B @ A`` is unchanged when read back with alpha 8 (the tensors then
differ from the originals, the merged model does not). ``extra`` is kept in the ``.pkl`` under the
additional key ``osediff_extra``, which the authors' loader (it reads fixed keys) ignores, and is
read back from it; a file without extra strings has the authors' eight keys only.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import OSEDiffError
from ..fileio import atomic_write, first_line
from ..lora import LORA_ALPHA, UNET_ADAPTERS

FORMAT_NAME = "osediff-lora"
FORMAT_VERSION = 1
# the .pkl key for ``extra``; the authors' loader reads its fixed keys and ignores this one
EXTRA_KEY = "osediff_extra"
# the extensions save() writes: ours, and the authors' torch.save format (.pt: the same)
SAVE_SUFFIXES = (".safetensors", ".pkl", ".pt")


class CheckpointError(OSEDiffError, ValueError):
    """A weights file that cannot be read as an OSEDiff checkpoint."""


@dataclass
class OSEDiffWeights:
    """Everything the generator adds to a Stable Diffusion 2.1-base model."""

    rank_unet: int
    rank_vae: int
    unet_targets: dict[str, list[str]]
    vae_targets: list[str]
    unet_state: dict[str, torch.Tensor]
    vae_state: dict[str, torch.Tensor]
    lora_alpha: float = LORA_ALPHA
    extra: dict[str, str] = field(default_factory=dict)

    # -- authors' format -------------------------------------------------------------------
    @classmethod
    def from_official_dict(cls, sd: dict, source: str = "<dict>") -> OSEDiffWeights:
        """The authors' dict (alpha 8 implied); ``extra`` from :data:`EXTRA_KEY` where present."""
        required = ("rank_unet", "rank_vae", "state_dict_unet", "state_dict_vae", "vae_lora_encoder_modules")
        missing = [key for key in required if key not in sd]
        if missing:
            raise CheckpointError(f"{source}: not an OSEDiff checkpoint (missing {', '.join(missing)})")
        targets = {a: list(sd.get(f"unet_lora_{a.removeprefix('default_')}_modules", [])) for a in UNET_ADAPTERS}
        return cls(
            rank_unet=int(sd["rank_unet"]),
            rank_vae=int(sd["rank_vae"]),
            unet_targets=targets,
            # the authors' list repeats a name once per matching pattern; order-preserving dedupe
            vae_targets=list(dict.fromkeys(sd["vae_lora_encoder_modules"])),
            unet_state=dict(sd["state_dict_unet"]),
            vae_state=dict(sd["state_dict_vae"]),
            extra=_extra(sd.get(EXTRA_KEY), source),
        )

    def to_official_dict(self) -> dict:
        """The authors' layout, which implies alpha 8: another ``lora_alpha`` is folded into ``lora_B``.

        ``extra``, when not empty, goes under :data:`EXTRA_KEY`.
        """
        factor = self.lora_alpha / LORA_ALPHA
        official = {
            "rank_unet": self.rank_unet,
            "rank_vae": self.rank_vae,
            "unet_lora_encoder_modules": self.unet_targets["default_encoder"],
            "unet_lora_decoder_modules": self.unet_targets["default_decoder"],
            "unet_lora_others_modules": self.unet_targets["default_others"],
            "vae_lora_encoder_modules": self.vae_targets,
            "state_dict_unet": _scale_lora_b(self.unet_state, factor),
            "state_dict_vae": _scale_lora_b(self.vae_state, factor),
        }
        if self.extra:
            official[EXTRA_KEY] = dict(self.extra)
        return official

    # -- files -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> OSEDiffWeights:
        """Read ``.safetensors`` (ours) or a ``torch.save`` file (the authors' ``.pkl``) safely."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: weights file not found")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: weights file is empty")
        with open(path, "rb") as fh:
            magic = fh.read(8)
        if zipfile.is_zipfile(path) or magic[:2] == b"\x80\x02":
            return cls._load_torch(path)
        return cls._load_safetensors(path)

    @classmethod
    def _load_torch(cls, path: Path) -> OSEDiffWeights:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise CheckpointError(f"{path}: cannot read as a weights-only torch file ({first_line(err)})") from None
        if not isinstance(sd, dict):
            raise CheckpointError(f"{path}: expected a dict, found {type(sd).__name__}")
        return cls.from_official_dict(sd, source=str(path))

    @classmethod
    def _load_safetensors(cls, path: Path) -> OSEDiffWeights:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a safetensors or torch weights file ({err})") from None
        if "osediff_header" not in metadata:
            raise CheckpointError(f"{path}: safetensors file lacks the osediff header; convert it first")
        header = json.loads(metadata["osediff_header"])
        if header.get("format") != FORMAT_NAME or header.get("version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: unsupported format {header.get('format')!r} v{header.get('version')}")
        return cls(
            rank_unet=int(header["rank_unet"]),
            rank_vae=int(header["rank_vae"]),
            unet_targets={k: list(v) for k, v in header["unet_targets"].items()},
            vae_targets=list(header["vae_targets"]),
            unet_state={k[5:]: t for k, t in tensors.items() if k.startswith("unet.")},
            vae_state={k[4:]: t for k, t in tensors.items() if k.startswith("vae.")},
            lora_alpha=float(header.get("lora_alpha", LORA_ALPHA)),
            extra=dict(header.get("extra", {})),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically; the extension picks the format (``.safetensors`` or ``.pkl``/``.pt``), any
        other is refused (:func:`check_weights_suffix`).

        ``.pkl`` is the authors' format: ``lora_alpha`` is folded into the ``lora_B`` tensors and
        ``extra`` kept under :data:`EXTRA_KEY` (see the module's docstring).
        """
        if check_weights_suffix(path) == ".safetensors":
            return atomic_write(path, self._save_safetensors)
        return atomic_write(path, lambda tmp: torch.save(self.to_official_dict(), tmp))

    def _save_safetensors(self, path: Path) -> None:
        from safetensors.torch import save_file

        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "rank_unet": self.rank_unet,
            "rank_vae": self.rank_vae,
            "lora_alpha": self.lora_alpha,
            "unet_targets": self.unet_targets,
            "vae_targets": self.vae_targets,
            "extra": self.extra,
        }
        tensors = {f"unet.{k}": v.contiguous() for k, v in self.unet_state.items()}
        tensors.update({f"vae.{k}": v.contiguous() for k, v in self.vae_state.items()})
        save_file(tensors, str(path), metadata={"osediff_header": json.dumps(header)})


def _scale_lora_b(state: Mapping[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    """``state`` with every ``lora_B`` tensor times ``factor`` (computed in float32), all contiguous."""
    if factor == 1.0:
        return {k: v.contiguous() for k, v in state.items()}
    return {k: (v.float() * factor).to(v.dtype).contiguous() if ".lora_B." in k else v.contiguous()
            for k, v in state.items()}


def _extra(stored: object, source: str) -> dict[str, str]:
    if stored is None:
        return {}
    if not isinstance(stored, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in stored.items()):
        raise CheckpointError(f"{source}: {EXTRA_KEY} is not a dict of strings; remove it or save the file again")
    return dict(stored)


def check_weights_suffix(path: str | os.PathLike, argument: str = "path") -> str:
    """The format ``path``'s extension names (``.safetensors``, or ``.pkl``/``.pt`` for the authors'
    format); a :class:`CheckpointError` naming ``argument`` for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in SAVE_SUFFIXES:
        raise CheckpointError(f"{path}: must end in .safetensors (ours) or .pkl (the authors' format), which "
                              "picks the format", argument=argument)
    return suffix


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert between ``osediff.pkl`` and ``.safetensors`` (direction from the extensions); ``dst``'s
    extension is checked before ``src`` is read."""
    check_weights_suffix(dst, argument="dst")
    return OSEDiffWeights.load(src).save(dst)
