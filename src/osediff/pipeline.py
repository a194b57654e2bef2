"""The OSEDiff one-step super-resolution pipeline.

    x_L  = bicubic(LQ, s)                              pre-upscale by the factor s
    z_L  = sf * E_lora(x_L)                            VAE latent (mean, or a seeded sample)
    eps  = UNet_lora(z_L, t=999, c_prompt)             the only UNet call
    z_H  = (z_L - sqrt(1 - abar_999) eps) / sqrt(abar_999)
    x_H  = D(z_H / sf).clamp(-1, 1)                    frozen decoder
    out  = align_colours(x_H, x_L)

with sf the VAE scaling factor and abar_999 the DDPM cumulative alpha at the last timestep.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .acceleration import COMPILE_MODES, optimize_models
from .checkpoint.hub import DEFAULT_WEIGHTS, resolve_base
from .checkpoint.weights import OSEDiffWeights
from .color import ALIGN_METHODS, align_colors
from .components import BaseComponents, encode_text, load_base_components, load_text_encoder
from .device import pick_decoder_dtype, pick_device, pick_dtype, release_free_heap
from .diffusion import ONE_STEP_TIMESTEP, predict_x0
from .errors import OSEDiffError
from .lora import VAE_ADAPTER, attach_lora_adapters, merge_lora
from .presets import resolve_weights
from .prompts.base import PromptExtractor
from .quiet import quiet_loading
from .tiling.latent import tiled_apply
from .tiling.memory import decoded_pixels, vae_map_store

LatentMode = Literal["mode", "sample"]


class PipelineInputError(OSEDiffError, ValueError):
    """An argument of the pipeline's methods that cannot work (a factor, alignment, list length, ...)."""


class PromptNotEncodedError(OSEDiffError, RuntimeError):
    """A prompt that cannot be encoded any more: the text encoder was freed after loading."""


@dataclass
class TileConfig:
    """When and how to tile; every size is the largest processed in one piece.

    Defaults follow the authors' test script (latent tiles of 96 with overlap 32, VAE encoder
    tiles of 1024 px, decoder tiles of 224 latent px). ``vae_maps`` is where the tiled VAE keeps
    its full-size feature maps between layers: ``"cpu"`` bounds GPU memory by one tile's work
    (slower: every layer's map crosses PCIe), ``"auto"`` picks it on a GPU when the maps of
    this image would take over a quarter of the free GPU memory.
    """

    enabled: bool = True
    latent_tile: int = 96
    latent_overlap: int = 32
    vae_encoder_tile: int = 1024
    vae_decoder_tile: int = 224
    batch_size: int = 4
    vae_maps: Literal["auto", "device", "cpu"] = "auto"

    def vae_store(self, device: torch.device, pixels: int, dtype: torch.dtype) -> torch.device:
        """Where the tiled VAE of a ``pixels``-pixel image keeps its maps (see the class docstring)."""
        return vae_map_store(self.vae_maps, device, pixels, dtype)


@dataclass
class SRResult:
    image: Image.Image | torch.Tensor
    prompt: str
    timings: dict[str, float] = field(default_factory=dict)


class OSEDiffPipeline:
    """Coordinates the SD-2.1-base components and the OSEDiff generator weights."""

    def __init__(self, components: BaseComponents, prompt_extractor: PromptExtractor | None = None,
                 prompt_cache_size: int = 64) -> None:
        self.vae = components.vae
        self.unet = components.unet
        self.text_encoder = components.text_encoder
        self.tokenizer = components.tokenizer
        self.scheduler = components.scheduler
        self.prompt_extractor = prompt_extractor
        self.preview_decoder: torch.nn.Module | None = None
        self.alpha_bar = float(self.scheduler.alphas_cumprod[ONE_STEP_TIMESTEP])
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._prompt_cache_size = prompt_cache_size
        # one pipeline may serve several threads (demo, server): the cache is read and changed under it
        self._prompt_lock = threading.RLock()

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, base: str | os.PathLike | None = None,
                        weights: str | os.PathLike | OSEDiffWeights | None = DEFAULT_WEIGHTS, *,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                        merge_lora: bool = True, local_files_only: bool = False,
                        prompt_extractor: PromptExtractor | None = None,
                        prompts: Sequence[str] | None = None, optimize: bool = True,
                        decoder_dtype: str | torch.dtype | None = "auto") -> OSEDiffPipeline:
        """Load SD-2.1-base (``base``: folder or hub id; None = known mirrors) and OSEDiff ``weights``.

        ``weights`` is a path to ``osediff.pkl`` / ``.safetensors``, an ``hf://`` or URL spec, an
        :class:`OSEDiffWeights`, or ``None`` for the plain base model. LoRA is merged into the base
        weights unless ``merge_lora=False`` keeps peft adapters (the authors' runtime form).
        With ``prompts``, only those prompts can be used: they are encoded first and the text encoder
        is freed before the UNet loads, which lowers peak memory by its 1.4 GB.

        By default the pipeline gets the settings measured fastest for the device, as the CLI
        does: channels_last VAE and ``decoder_dtype="auto"`` (bf16 decoder on CPUs with native
        bf16, else the pipeline's dtype); ``optimize=False`` or ``decoder_dtype=torch.float32``
        opts out. Every file is found before anything loads, and the libraries' load bars and
        notes are silenced while loading only.
        """
        device = pick_device(str(device) if device is not None else None)
        dtype = pick_dtype(dtype, device)
        folder = resolve_base(base, local_files_only=local_files_only)  # once: a hub id costs a request
        if weights is not None and not isinstance(weights, OSEDiffWeights):
            weights = resolve_weights(weights, local_files_only=local_files_only)
        with quiet_loading():
            embeddings = {}
            if prompts is not None:
                text_encoder, tokenizer = load_text_encoder(folder)
                embeddings = {prompt: encode_text(tokenizer, text_encoder, prompt) for prompt in prompts}
                del text_encoder
            components = load_base_components(folder, text_encoder=prompts is None)
            pipe = cls(components, prompt_extractor=prompt_extractor)
            pipe._prompt_cache.update(embeddings)
            if weights is not None:
                pipe.load_weights(weights if isinstance(weights, OSEDiffWeights) else OSEDiffWeights.load(weights),
                                  merge=merge_lora)
            pipe.to(device, dtype)
        if optimize:
            pipe.optimize(channels_last=True, decoder_dtype=pick_decoder_dtype(decoder_dtype, device, dtype))
        return pipe

    def load_weights(self, weights: OSEDiffWeights, merge: bool = True) -> None:
        """Apply generator weights; merging costs nothing at inference, unmerged keeps peft layers."""
        if merge:
            merge_lora(self.unet, weights.unet_state, weights.rank_unet, weights.lora_alpha)
            merge_lora(self.vae, weights.vae_state, weights.rank_vae, weights.lora_alpha)
        else:
            attach_lora_adapters(self.unet, weights.unet_targets, weights.unet_state, weights.rank_unet,
                                 weights.lora_alpha)
            attach_lora_adapters(self.vae, {VAE_ADAPTER: weights.vae_targets}, weights.vae_state,
                                 weights.rank_vae, weights.lora_alpha)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> OSEDiffPipeline:
        for model in (self.vae, self.unet, self.text_encoder):
            if model is not None:
                model.to(device=device, dtype=dtype)
        with self._prompt_lock:
            for prompt, embedding in self._prompt_cache.items():
                self._prompt_cache[prompt] = embedding.to(device=device, dtype=dtype)
        return self

    COMPILE_MODES = COMPILE_MODES

    def optimize(self, channels_last: bool = True, compile_unet: bool = False,
                 decoder_dtype: torch.dtype | None = None, *, compile_vae: bool = False,
                 compile_mode: str = "default", compile_backend: str | Callable = "inductor",
                 upcast_decoder: bool = False) -> OSEDiffPipeline:
        """Speed-ups applied in place to the VAE and UNet; see :func:`osediff.acceleration.optimize_models`."""
        optimize_models(self.vae, self.unet, self.device, channels_last=channels_last, compile_unet=compile_unet,
                        decoder_dtype=decoder_dtype, compile_vae=compile_vae, compile_mode=compile_mode,
                        compile_backend=compile_backend, upcast_decoder=upcast_decoder)
        return self

    def use_preview_decoder(self, decoder: torch.nn.Module | None) -> None:
        """Decode with a fast approximate decoder (diffusers' AutoencoderTiny, i.e. TAESD) for
        previews, or ``None`` for the SD decoder. TAESD reads the scaled latent z_H directly."""
        self.preview_decoder = decoder.to(self.device, self.dtype).eval() if decoder is not None else None

    def clear_prompt_cache(self) -> None:
        with self._prompt_lock:
            self._prompt_cache.clear()

    def keep_only_prompts(self, prompts: Iterable[str]) -> None:
        """Encode ``prompts`` now, then free the prompt extractor and the text encoder.

        For the end of a batch: the last images' prompts are known, so the models that make and
        encode prompts (DAPE's RAM-Swin-L and CLIP's text encoder, ~2.9 GB in fp32) need not stay
        resident while the UNet and VAE run. Afterwards only cached prompts can be used.
        """
        prompts = list(dict.fromkeys(prompts))
        self._prompt_cache_size = max(self._prompt_cache_size, len(prompts))
        for prompt in prompts:
            self.encode_prompt(prompt)
        self.prompt_extractor = None
        self.text_encoder = None
        gc.collect()
        release_free_heap()

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # -- steps ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """CLIP last hidden state (1, 77, d); cached, since batches usually repeat one prompt."""
        # encoding under the lock too: threads asking for one new prompt encode it once
        with self._prompt_lock:
            if prompt in self._prompt_cache:
                self._prompt_cache.move_to_end(prompt)
                return self._prompt_cache[prompt]
            if self.text_encoder is None:
                raise PromptNotEncodedError(f"prompt {prompt!r} was not among the prompts encoded at load time")
            embedding = encode_text(self.tokenizer, self.text_encoder, prompt).to(self.device, self.dtype)
            self._prompt_cache[prompt] = embedding
            if len(self._prompt_cache) > self._prompt_cache_size:
                self._prompt_cache.popitem(last=False)
            return embedding

    def encode_latent(self, x: torch.Tensor, tiles: TileConfig, latent: LatentMode = "mode",
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """z_L = sf * E(x); ``x`` in [-1, 1] with sides a multiple of 8."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        x = x.to(self.device, self.vae.dtype)
        if tiles.enabled and max(x.shape[-2:]) > tiles.vae_encoder_tile:
            from .tiling.vae import tiled_encode

            store = tiles.vae_store(self.device, x.shape[-2] * x.shape[-1], self.vae.dtype)
            dist = DiagonalGaussianDistribution(tiled_encode(self.vae, x, tile_size=tiles.vae_encoder_tile,
                                                             offload_device=store))
        else:
            dist = self.vae.encode(x).latent_dist
        z = dist.mode() if latent == "mode" else dist.sample(generator)
        return z * self.vae.config.scaling_factor

    def predict_noise(self, z: torch.Tensor, embedding: torch.Tensor, tiles: TileConfig) -> torch.Tensor:
        """eps = UNet(z, 999, c); ``embedding`` holds one prompt for all of ``z`` or one per sample."""
        timestep = torch.tensor([ONE_STEP_TIMESTEP], device=self.device)

        def unet(latents: torch.Tensor) -> torch.Tensor:
            # tiles arrive as whole copies of the batch, one after the other
            repeats = latents.shape[0] // embedding.shape[0]
            context = (embedding.expand(latents.shape[0], -1, -1) if embedding.shape[0] == 1
                       else embedding.repeat(repeats, 1, 1))
            return self.unet(latents.to(self.dtype), timestep, encoder_hidden_states=context).sample

        if not tiles.enabled:
            return unet(z)
        return tiled_apply(unet, z, tiles.latent_tile, tiles.latent_overlap, tiles.batch_size)

    def denoise(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """One DDPM step from t=999 straight to x0, in fp32: eps errors are amplified 1/sqrt(abar)."""
        return predict_x0(z, eps, self.alpha_bar)

    def decode_latent(self, z: torch.Tensor, tiles: TileConfig) -> torch.Tensor:
        """x = D(z / sf).clamp(-1, 1)."""
        if self.preview_decoder is not None:
            if tiles.enabled and max(z.shape[-2:]) > tiles.vae_decoder_tile:
                self.preview_decoder.enable_tiling()
            return self.preview_decoder.decode(z.to(self.dtype)).sample.float().clamp(-1, 1)
        z = (z / self.vae.config.scaling_factor).to(self.vae.decoder.conv_out.weight.dtype)
        if tiles.enabled and max(z.shape[-2:]) > tiles.vae_decoder_tile:
            from .tiling.vae import tiled_decode

            store = tiles.vae_store(self.device, decoded_pixels(z), z.dtype)
            x = tiled_decode(self.vae, z, tile_size=tiles.vae_decoder_tile, offload_device=store)
        else:
            x = self.vae.decode(z).sample
        return x.float().clamp(-1, 1)

    # -- the whole thing ---------------------------------------------------------------------
    def check_inputs(self, upscale: float, align: str, latent: str) -> None:
        if not upscale >= 1:
            raise PipelineInputError(f"upscale factor must be >= 1, got {upscale}")
        if align not in ALIGN_METHODS:
            raise PipelineInputError(f"unknown colour alignment {align!r}; choose one of {', '.join(ALIGN_METHODS)}")
        if latent not in ("mode", "sample"):
            raise PipelineInputError(f"latent must be 'mode' or 'sample', got {latent!r}")

    @torch.no_grad()
    def run(self, image: Image.Image, upscale: float = 4.0, prompt: str | None = None, *,
            alpha: Image.Image | None = None, **kwargs) -> SRResult:
        """Super-resolve one RGB image; returns the image, the prompt used and per-stage seconds.

        Keyword arguments are those of :meth:`run_batch`. With ``extract_prompt=False`` the prompt
        extractor is bypassed and ``prompt`` used as is (e.g. a prompt saved by an earlier run).
        """
        return self.run_batch([image], upscale, [prompt], alphas=[alpha], **kwargs)[0]

    @torch.no_grad()
    def run_batch(self, images: Sequence[Image.Image], upscale: float = 4.0,
                  prompts: Sequence[str | None] | None = None, *, align: str = "adain",
                  tiles: TileConfig | None = None, latent: LatentMode = "mode", seed: int | None = None,
                  alphas: Sequence[Image.Image | None] | None = None, extract_prompt: bool = True,
                  output_type: Literal["pil", "pt"] = "pil") -> list[SRResult]:
        """Super-resolve RGB images of one size together: one VAE encode, one UNet and one decode call.

        ``prompts`` (one per image) are the user's text; the timings of each result are the batch's.
        ``latent="sample"`` with ``seed`` draws the whole batch from one seeded generator.
        """
        self.check_inputs(upscale, align, latent)
        images = list(images)
        prompts = list(prompts) if prompts is not None else [None] * len(images)
        alphas = list(alphas) if alphas is not None else [None] * len(images)
        if not (len(images) == len(prompts) == len(alphas)):
            raise PipelineInputError(f"{len(images)} images, {len(prompts)} prompts and {len(alphas)} alphas "
                                     "differ in number")
        if len({image.size for image in images}) > 1:
            raise PipelineInputError(f"run_batch needs images of one size, got {sorted({i.size for i in images})}")
        if not images:
            return []
        tiles = tiles or TileConfig()
        timings: dict[str, float] = {}

        # 1. bicubic pre-upscale to exactly round(s * size), then pad to the VAE's multiple of 8
        upscaled = [bicubic_upscale(image, upscale) for image in images]
        width, height = upscaled[0].size
        x_l = torch.cat([_to_tensor(image) for image in upscaled])
        padded = _pad_to_multiple(x_l * 2 - 1, 8)

        # 2. prompts: the user's text, or an extractor looking at the pre-upscaled images
        with _timed(timings, "prompt", self.device):
            if self.prompt_extractor is not None and extract_prompt:
                prompts = self._extract_prompts(upscaled, prompts)
            prompts = [prompt or "" for prompt in prompts]
            embedding = self._prompt_embeddings(prompts)

        # 3. z_L = sf * E(x_L)
        with _timed(timings, "vae_encode", self.device):
            generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
            z_l = self.encode_latent(padded, tiles, latent, generator)

        # 4. one UNet call at t=999, then straight to x0
        with _timed(timings, "unet", self.device):
            eps = self.predict_noise(z_l, embedding, tiles)
            z_h = self.denoise(z_l, eps)

        # 5. decode, crop the padding away, colour-align to the pre-upscaled input
        with _timed(timings, "vae_decode", self.device):
            x_h = self.decode_latent(z_h, tiles)[..., :height, :width]
            out = align_colors((x_h + 1) / 2, x_l.to(x_h.device), align).clamp(0, 1).cpu()
        if output_type == "pt":
            return [SRResult(sample, prompt, dict(timings)) for sample, prompt in zip(out, prompts, strict=True)]
        pixels = (out.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        results = []
        for array, prompt, alpha in zip(pixels, prompts, alphas, strict=True):
            result = Image.fromarray(array)
            if alpha is not None:
                result.putalpha(alpha.resize((width, height), Image.BICUBIC))
            results.append(SRResult(result, prompt, dict(timings)))
        return results

    def _extract_prompts(self, upscaled: list[Image.Image], user_prompts: list[str | None]) -> list[str]:
        """One extractor call per distinct user prompt (usually one for the whole batch)."""
        extracted: list[str] = [""] * len(upscaled)
        for user_prompt in dict.fromkeys(user_prompts):
            indices = [i for i, p in enumerate(user_prompts) if p == user_prompt]
            for i, prompt in zip(indices, self.prompt_extractor([upscaled[i] for i in indices], user_prompt or ""),
                                 strict=True):
                extracted[i] = prompt
        return extracted

    def _prompt_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """(1, 77, d) when every image has the same prompt, else (n, 77, d)."""
        if len(set(prompts)) == 1:
            return self.encode_prompt(prompts[0])
        return torch.cat([self.encode_prompt(prompt) for prompt in prompts])

    def __call__(self, image: Image.Image | Sequence[Image.Image], upscale: float = 4.0,
                 prompt: str | None = None, **kwargs) -> Image.Image | list[Image.Image]:
        """Super-resolve an image or a list of images (RGBA keeps its alpha, upscaled separately)."""
        images = [image] if isinstance(image, Image.Image) else list(image)
        outputs = []
        for img in images:
            alpha = img.getchannel("A") if img.mode == "RGBA" else None
            outputs.append(self.run(img, upscale, prompt, alpha=alpha, **kwargs).image)
        return outputs[0] if isinstance(image, Image.Image) else outputs


@contextmanager
def _timed(sink: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    """Add the wall seconds of the block to ``sink[name]``, synchronising CUDA so GPU work counts."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    sink[name] = sink.get(name, 0.0) + time.perf_counter() - start


def bicubic_upscale(image: Image.Image, upscale: float) -> Image.Image:
    """The model's input and colour reference: RGB, bicubic, exactly round(s * size)."""
    width, height = (max(1, round(side * upscale)) for side in image.size)
    return image.convert("RGB").resize((width, height), Image.BICUBIC)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad right/bottom so both sides divide ``multiple``; reflection keeps edge statistics natural."""
    pad_h, pad_w = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
