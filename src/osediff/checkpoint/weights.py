"""OSEDiff generator weights: the authors' ``osediff.pkl`` and our safetensors format.

Both hold the same content: LoRA tensors for the UNet (three adapters) and the VAE encoder, the
fine-tuned UNet ``conv_in``, the ranks, and the module lists. Tensor names stay peft's, so the two
formats convert into each other without loss.

Our format is a safetensors file whose tensors are prefixed ``unet.`` / ``vae.`` and whose
metadata holds a small JSON header (``osediff_header``) with the format version, ranks, alpha and
target lists.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import OSEDiffError
from ..lora import LORA_ALPHA, UNET_ADAPTERS

FORMAT_NAME = "osediff-lora"
FORMAT_VERSION = 1


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
        )

    def to_official_dict(self) -> dict:
        return {
            "rank_unet": self.rank_unet,
            "rank_vae": self.rank_vae,
            "unet_lora_encoder_modules": self.unet_targets["default_encoder"],
            "unet_lora_decoder_modules": self.unet_targets["default_decoder"],
            "unet_lora_others_modules": self.unet_targets["default_others"],
            "vae_lora_encoder_modules": self.vae_targets,
            "state_dict_unet": self.unet_state,
            "state_dict_vae": self.vae_state,
        }

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
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: cannot read as a weights-only torch file ({first_line})") from None
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
        """Write atomically; the extension picks the format (``.safetensors`` or ``.pkl``/``.pt``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            if path.suffix == ".safetensors":
                self._save_safetensors(Path(tmp))
            else:
                official = self.to_official_dict()
                official["state_dict_unet"] = {k: v.contiguous() for k, v in self.unet_state.items()}
                torch.save(official, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

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


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert between ``osediff.pkl`` and ``.safetensors`` (direction from the extensions)."""
    return OSEDiffWeights.load(src).save(dst)
