"""The OSEDiff one-step super-resolution model: SD-2.1-base components with the generator's LoRA.

    x_L  = bicubic(LQ, s)                              pre-upscale by the factor s (osediff.pipeline.step)
    z_L  = sf * E_lora(x_L)                            VAE latent (mean, or a seeded sample)
    eps  = UNet_lora(z_L, t=999, c_prompt)             the only UNet call
    z_H  = (z_L - sqrt(1 - abar_999) eps) / sqrt(abar_999)
    x_H  = D(z_H / sf).clamp(-1, 1)                    frozen decoder

with sf the VAE scaling factor and abar_999 the DDPM cumulative alpha at the last timestep. The
model keeps nothing between calls: tiling is chosen per call, prompt embeddings are computed on
request (callers keep their own cache, see :class:`osediff.pipeline.step.Upscaler`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..acceleration import COMPILE_MODES, optimize_models
from ..checkpoint.hub import DEFAULT_WEIGHTS, ModelNotFoundError
from ..checkpoint.weights import OSEDiffWeights
from ..components import BaseComponents, encode_text, load_base_components, load_text_encoder
from ..device import pick_decoder_dtype, pick_device, pick_dtype
from ..diffusion import ONE_STEP_TIMESTEP, predict_x0
from ..errors import OSEDiffError
from ..lora import VAE_ADAPTER, attach_lora_adapters, merge_lora
from ..params import LatentMode, TileConfig
from ..quiet import quiet_loading
from ..tiling.budget import unet_tiling_for, vae_tile
from ..tiling.latent import tiled_apply
from ..tiling.memory import decoded_pixels, vae_maps_plan
from .step import PipelineInputError, SRResult, Upscaler
from .timing import timed

if TYPE_CHECKING:
    from PIL import Image

    from ..prompts.base import PromptExtractor

VAE_MULTIPLE = 8  # the SD VAE halves each side three times


class PromptNotEncodedError(OSEDiffError, RuntimeError):
    """A prompt that cannot be encoded: the pipeline was loaded for a fixed set of prompts only."""


class OSEDiffPipeline:
    """Coordinates the SD-2.1-base components and the OSEDiff generator weights.

    ``prompt_embeds`` are CLIP embeddings of prompts encoded at load time, for a pipeline loaded
    without its text encoder (:meth:`from_pretrained` with ``prompts``); they never change.
    """

    COMPILE_MODES = COMPILE_MODES

    def __init__(self, components: BaseComponents, *, preview_decoder: torch.nn.Module | None = None,
                 prompt_embeds: Mapping[str, torch.Tensor] | None = None) -> None:
        self.vae = components.vae
        self.unet = components.unet
        self.text_encoder = components.text_encoder
        self.tokenizer = components.tokenizer
        self.scheduler = components.scheduler
        self.preview_decoder = preview_decoder
        self.prompt_embeds: Mapping[str, torch.Tensor] = MappingProxyType(dict(prompt_embeds or {}))
        self.alpha_bar = float(self.scheduler.alphas_cumprod[ONE_STEP_TIMESTEP])

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, base: str | os.PathLike | None = None,
                        weights: str | os.PathLike | OSEDiffWeights | None = DEFAULT_WEIGHTS, *,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                        merge_lora: bool = True, local_files_only: bool = False,
                        prompts: Sequence[str] | None = None, optimize: bool = True,
                        decoder_dtype: str | torch.dtype | None = "auto",
                        preview_decoder: torch.nn.Module | None = None,
                        models_dir: str | os.PathLike | None = None) -> OSEDiffPipeline:
        """Load SD-2.1-base (``base``: folder or hub id; None = known mirrors) and OSEDiff ``weights``.

        ``weights`` is a path to ``osediff.pkl`` / ``.safetensors``, an ``hf://`` or URL spec, an
        :class:`OSEDiffWeights`, or ``None`` for the plain base model. LoRA is merged into the base
        weights unless ``merge_lora=False`` keeps peft adapters (the authors' runtime form).
        With ``prompts``, only those prompts can be used: they are encoded first and the text encoder
        is freed before the UNet loads, which lowers peak memory by its 1.4 GB. ``models_dir`` is the
        models folder read before the caches and the network (default ``$OSEDIFF_MODELS``, else
        ``~/.cache/osediff/models``; filled by ``osediff models download``, see
        :mod:`osediff.checkpoint.store`).

        By default the pipeline gets the settings measured fastest for the device, as the CLI
        does: channels_last VAE and ``decoder_dtype="auto"`` (bf16 decoder on CPUs with native
        bf16, else the pipeline's dtype); ``optimize=False`` or ``decoder_dtype=torch.float32``
        opts out. Every file is found before anything loads (a miss of the base and of the weights
        is reported in one error), and the libraries' load bars and notes are silenced while
        loading only.
        """
        from ..model_files import ModelOptions, find_model_files

        device = pick_device(device)
        dtype = pick_dtype(dtype, device)
        given = weights if isinstance(weights, OSEDiffWeights) else None
        spec = None if given is not None or weights is None else str(weights)
        try:
            files = find_model_files(ModelOptions(base=None if base is None else str(base), weights=spec,
                                                  offline=local_files_only,
                                                  models_dir=None if models_dir is None else os.fspath(models_dir)),
                                     with_weights=spec is not None)
        except ModelNotFoundError as err:  # from here, not from deep inside the resolution
            raise err.with_traceback(None) from None
        with quiet_loading():
            embeddings = {}
            if prompts is not None:
                text_encoder, tokenizer = load_text_encoder(files.base)
                embeddings = {prompt: encode_text(tokenizer, text_encoder, prompt) for prompt in prompts}
                del text_encoder
            components = load_base_components(files.base, text_encoder=prompts is None)
            pipe = cls(components, prompt_embeds=embeddings)
            if given is not None or files.weights is not None:
                pipe.load_weights(given or OSEDiffWeights.load(files.weights), merge=merge_lora)
            pipe.to(device, dtype)
        if preview_decoder is not None:
            pipe.use_preview_decoder(preview_decoder)
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
        for model in (self.vae, self.unet, self.text_encoder, self.preview_decoder):
            if model is not None:
                model.to(device=device, dtype=dtype)
        self.prompt_embeds = MappingProxyType({prompt: embedding.to(device=device, dtype=dtype)
                                               for prompt, embedding in self.prompt_embeds.items()})
        return self

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

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # -- steps ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """CLIP last hidden state (1, 77, d) of ``prompt`` on the pipeline's device and dtype."""
        if prompt in self.prompt_embeds:
            return self.prompt_embeds[prompt]
        if self.text_encoder is None:
            raise PromptNotEncodedError(f"prompt {prompt!r} was not among the prompts encoded at load time")
        return encode_text(self.tokenizer, self.text_encoder, prompt).to(self.device, self.dtype)

    def encode_latent(self, x: torch.Tensor, tiles: TileConfig, latent: LatentMode = "mode",
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """z_L = sf * E(x); ``x`` in [-1, 1] with sides a multiple of 8."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        x = x.to(self.device, self.vae.dtype)
        pixels = x.shape[-2] * x.shape[-1]
        tile = vae_tile(tiles, "encoder", max(x.shape[-2:]), pixels, x.element_size(), self.device)
        if tile is not None:
            from ..tiling.vae import tiled_encode

            store, recompute = vae_maps_plan(tiles, self.device, pixels, self.vae.dtype)
            dist = DiagonalGaussianDistribution(tiled_encode(self.vae, x, tile_size=tile,
                                                             offload_device=store, recompute_above=recompute))
        else:
            dist = self.vae.encode(x).latent_dist
        z = dist.mode() if latent == "mode" else dist.sample(generator)
        return z * self.vae.config.scaling_factor

    def predict_noise(self, z: torch.Tensor, embedding: torch.Tensor, tiles: TileConfig, *,
                      guidance: float = 1.0, negative: torch.Tensor | None = None) -> torch.Tensor:
        """eps = UNet(z, 999, c); ``embedding`` holds one prompt for all of ``z`` or one per sample.

        With ``guidance`` W != 1, eps = eps(negative) + W (eps(c) - eps(negative)): the negative and
        the positive prompt go through the UNet as one batch of two, in every tile alike.
        """
        timestep = torch.tensor([ONE_STEP_TIMESTEP], device=self.device)
        return guided_noise(lambda latents, context: self.unet(latents.to(self.dtype), timestep,
                                                               encoder_hidden_states=context).sample,
                            z, embedding, tiles, guidance=guidance, negative=negative)

    def denoise(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """One DDPM step from t=999 straight to x0, in fp32: eps errors are amplified 1/sqrt(abar)."""
        return predict_x0(z, eps, self.alpha_bar)

    def decode_latent(self, z: torch.Tensor, tiles: TileConfig) -> torch.Tensor:
        """x = D(z / sf).clamp(-1, 1), in tiles where :func:`osediff.tiling.budget.vae_tile` says so."""
        if self.preview_decoder is not None:
            # TAESD's own tiling, chosen per call (its enable_tiling() switch would outlive the call)
            decoder, z = self.preview_decoder, z.to(self.dtype)
            tile = vae_tile(tiles, "decoder", max(z.shape[-2:]), decoded_pixels(z), z.element_size(), self.device)
            return (decoder._tiled_decode(z) if tile is not None else decoder.decoder(z)).float().clamp(-1, 1)
        z = (z / self.vae.config.scaling_factor).to(self.vae.decoder.conv_out.weight.dtype)
        pixels = decoded_pixels(z)
        tile = vae_tile(tiles, "decoder", max(z.shape[-2:]), pixels, z.element_size(), self.device)
        if tile is not None:
            from ..tiling.vae import tiled_decode

            store, recompute = vae_maps_plan(tiles, self.device, pixels, z.dtype)
            x = tiled_decode(self.vae, z, tile_size=tile, offload_device=store,
                             recompute_above=recompute)
        else:
            x = self.vae.decode(z).sample
        return x.float().clamp(-1, 1)

    @torch.no_grad()
    def super_resolve(self, x_l: torch.Tensor, embedding: torch.Tensor, *, tiles: TileConfig,
                      latent: LatentMode = "mode", seed: int | None = None, strength: float = 1.0,
                      guidance: float = 1.0, negative: torch.Tensor | None = None,
                      timings: dict[str, float] | None = None) -> torch.Tensor:
        """x_L (N, 3, H, W) in [0, 1], any size -> x_H (N, 3, H, W) in [0, 1] on the pipeline's device.

        ``embedding`` is one prompt's (1, 77, d) for all images or (N, 77, d); ``latent="sample"``
        draws the whole batch from one generator seeded with ``seed``. ``strength`` S decodes
        z_L + S (z_H - z_L) (S = 1: z_H itself); ``guidance`` and ``negative`` are those of
        :meth:`predict_noise`. Seconds per stage are added to ``timings``.
        """
        timings = {} if timings is None else timings
        height, width = x_l.shape[-2:]
        padded = pad_to_multiple(x_l * 2 - 1, VAE_MULTIPLE)
        with timed(timings, "vae_encode", self.device):
            generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
            z_l = self.encode_latent(padded, tiles, latent, generator)
        with timed(timings, "unet", self.device):
            z_h = self.denoise(z_l, self.predict_noise(z_l, embedding, tiles, guidance=guidance, negative=negative))
            if strength != 1.0:  # fidelity: part of the way from the encoded input to the model's latent
                z_h = z_l.float() + strength * (z_h - z_l.float())
        with timed(timings, "vae_decode", self.device):
            x_h = self.decode_latent(z_h, tiles)[..., :height, :width]
        return (x_h + 1) / 2

    # -- the whole thing, for Python callers (every front end goes through osediff.pipeline.step) --
    def __call__(self, image: Any, upscale: float = 4.0, prompt: str | Sequence[str] | None = None,
                 **options: Any) -> Image.Image | torch.Tensor | list:
        """Super-resolve an image or a list of images; each is a PIL image, a path, an HxWxC uint8
        array or a CxHxW float tensor in [0, 1]. RGBA keeps its alpha (upscaled separately).

        ``prompt`` is one text for all images or one per image; ``options`` are those of
        :meth:`run_batch`. A list gives a list.
        """
        single = not isinstance(image, list | tuple)
        images = [image] if single else list(image)
        prompts = [prompt] * len(images) if prompt is None or isinstance(prompt, str) else list(prompt)
        results = self.run_batch(images, upscale, prompts, **options)
        outputs = [result.image for result in results]
        return outputs[0] if single else outputs

    def run(self, image: Any, upscale: float = 4.0, prompt: str | None = None, *,
            alpha: Image.Image | None = None, **options: Any) -> SRResult:
        """One image: the result with the prompt used and seconds per stage."""
        return self.run_batch([image], upscale, [prompt], alphas=[alpha], **options)[0]

    def run_batch(self, images: Sequence[Any], upscale: float = 4.0, prompts: Sequence[str | None] | None = None,
                  *, align: str = "adain", tiles: TileConfig | None = None, latent: LatentMode = "mode",
                  seed: int | None = None, prompt_extractor: str | PromptExtractor = "text",
                  strength: float = 1.0, guidance: float = 1.0, negative_prompt: str = "",
                  alphas: Sequence[Image.Image | None] | None = None,
                  output_type: str = "pil") -> list[SRResult]:
        """Images of one size go through the model together; the results keep the input order.

        ``strength`` (0 to 1) trades the model's detail for fidelity to the input, ``guidance`` with
        ``negative_prompt`` weighs the prompt (see :class:`~osediff.params.UpscaleParams`).

        ``prompt_extractor`` is ``text`` (the prompt as given), ``none``, or a callable
        ``(images, user_prompt) -> prompts`` (e.g. ``osediff.prompts.create_prompt_extractor("dape")``)
        that sees each bicubic-upscaled image. For many calls, an :class:`~osediff.pipeline.Upscaler`
        keeps the prompt embeddings between them.
        """
        from ..images import as_loaded_image
        from ..params import UpscaleParams
        from ..prompts.offered import PromptExtractors

        images = list(images)
        prompts = list(prompts) if prompts is not None else [None] * len(images)
        alphas = list(alphas) if alphas is not None else [None] * len(images)
        if not len(images) == len(prompts) == len(alphas):
            raise PipelineInputError(f"{len(images)} images, {len(prompts)} prompts and {len(alphas)} alphas "
                                     "differ in number")
        custom = not isinstance(prompt_extractor, str)
        offered = PromptExtractors(built={"custom": prompt_extractor} if custom else None)
        params = UpscaleParams(upscale, align, prompt_extractor="custom" if custom else prompt_extractor,
                               latent=latent, seed=seed, tiles=tiles or TileConfig(), strength=strength,
                               guidance=guidance, negative_prompt=negative_prompt)
        loaded = [as_loaded_image(image, alpha) for image, alpha in zip(images, alphas, strict=True)]
        requests = [(image, params.replace(prompt=prompt or "")) for image, prompt in zip(loaded, prompts, strict=True)]
        return Upscaler(self, offered).upscale(requests, output_type=output_type)


def guided_noise(unet: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor,
                 embedding: torch.Tensor, tiles: TileConfig, *, guidance: float = 1.0,
                 negative: torch.Tensor | None = None) -> torch.Tensor:
    """eps over ``z`` from ``unet(latents, contexts)`` (any runtime's UNet at t = 999), in latent tiles
    sized from ``tiles`` and its memory budget (osediff.tiling.budget); with ``guidance`` W != 1 the
    negative and the positive prompt run as one batch of two and eps = eps(negative) + W (eps(c) - eps(negative))."""
    if guidance != 1.0 and negative is None:
        raise PromptNotEncodedError("guidance other than 1 needs the negative prompt's embedding")

    def eps(latents: torch.Tensor) -> torch.Tensor:
        count = latents.shape[0]
        if guidance == 1.0:
            return unet(latents, prompt_contexts(embedding, count))
        both = torch.cat([prompt_contexts(negative, count), prompt_contexts(embedding, count)])
        eps_negative, eps_prompt = unet(torch.cat([latents, latents]), both).float().chunk(2)
        return eps_negative + guidance * (eps_prompt - eps_negative)

    if not tiles.enabled:
        return eps(z)
    plan = unet_tiling_for(tiles, z, batch=z.shape[0] * (1 if guidance == 1.0 else 2))
    return tiled_apply(eps, z, plan.tile, plan.overlap, plan.per_pass)


def prompt_contexts(prompts: torch.Tensor, count: int) -> torch.Tensor:
    """The UNet's context for ``count`` latents: tiles arrive as whole copies of the batch, one after
    the other, and ``prompts`` holds one prompt for all or one per image of the batch."""
    return prompts.expand(count, -1, -1) if prompts.shape[0] == 1 else prompts.repeat(count // prompts.shape[0], 1, 1)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad right/bottom so both sides divide ``multiple``; reflection keeps edge statistics natural."""
    pad_h, pad_w = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
