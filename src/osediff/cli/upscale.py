"""``osediff upscale``: super-resolve files, folders and globs into an output folder.

Every option and input is checked, and every model file found, before a model loads. A bad input
is reported in one line and the batch goes on; outputs are written atomically; the exit status is
non-zero when any image failed. Under ``accelerate launch`` / ``torchrun`` every process takes its
own share of the inputs (RANK/WORLD_SIZE), one GPU each. With --engine ray the images are spread
over a Ray cluster (see the README's "Many images / a cluster").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..batch.config import BatchConfig
from ..batch.storage import parse_storage_options
from ..images import DEFAULT_MAX_PIXELS
from ..params import (
    ALIGN_METHODS,
    AUTO_VAE_DECODER_TILE,
    AUTO_VAE_ENCODER_TILE,
    LATENT_MODES,
    OUTPUT_FORMATS,
    VAE_MAPS,
    ParamError,
    TileConfig,
    UpscaleParams,
    parse_memory_size,
)
from ..prompts import available_prompt_extractors
from ..video.options import VideoOptions, parse_bitrate
from .options import add_model_options, model_options_from_args

TILES = TileConfig()  # the flags' defaults


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("upscale", help="super-resolve images and videos", description=__doc__,
                              allow_abbrev=False)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video files, folders or glob patterns (with --engine ray also s3://, gs://, "
                        "file:// URIs)")
    p.add_argument("-o", "--output", required=True, help="output folder (with --engine ray also a URI)")
    p.add_argument("-s", "--upscale", type=float, default=None,
                   help="upscale factor, any value >= 1 (default: the preset's, 4 for osediff)")
    p.add_argument("--prompt", default="", help="text prompt (added after extracted tags)")
    p.add_argument("--prompt-extractor", default="dape", choices=available_prompt_extractors(),
                   help="how each image's prompt is made. dape: the paper's degradation-aware RAM tags, the "
                        "prompts its published results were made with (hence the choice here; needs the 'dape' "
                        "extra); the RAM + DAPE weights are downloaded once, then read from the cache (with "
                        "--offline they must be cached). ram: plain RAM tags; caption: an image-to-text model; "
                        "text: --prompt only, no download; none: an empty prompt")
    p.add_argument("--prompt-fallback", choices=("none", "text"), default=None,
                   help="extractor to use if the chosen one's weights are unavailable (default: fail)")
    p.add_argument("--dape", default=None, help="DAPE.pth path or hf:// / URL spec")
    p.add_argument("--ram", default=None, help="ram_swin_large_14m.pth path or hf:// / URL spec")
    p.add_argument("--ram-tags", default=None, help="RAM tag list (folder or ram_tag_list.txt; default: cached)")
    p.add_argument("--captioner", default=None, help="hub id or folder of an image-to-text model (caption)")
    p.add_argument("--prompt-batch-size", type=int, default=8, help="images per prompt-extractor batch")
    p.add_argument("--prompts-from", type=Path, default=None,
                   help="folder of <stem>.txt prompts saved by an earlier run (skips extraction)")
    p.add_argument("--save-prompts", action="store_true", help="write the prompt used as <stem>.txt")
    p.add_argument("--align", choices=ALIGN_METHODS, default=None, metavar="METHOD",
                   help="colour alignment: %(choices)s (default: the preset's, adain for osediff)")
    p.add_argument("--latent", choices=LATENT_MODES, default="mode",
                   help="latent mean (deterministic) or a sample as the authors' code does")
    p.add_argument("--seed", type=int, default=None, help="seed for --latent sample")
    control = p.add_argument_group("fidelity against realism (no other weights)")
    control.add_argument("--strength", type=float, default=1.0,
                         help="1: the model's full detail; lower decodes part of the way from the encoded input "
                              "(0: the input itself, re-encoded), for results truer to the photo")
    control.add_argument("--guidance", type=float, default=1.0,
                         help="1: the prompt as trained; above 1 pushes away from --negative-prompt (one more UNet "
                              "pass per image: prompt and negative prompt as a batch of two)")
    control.add_argument("--negative-prompt", default="", help="what --guidance pushes away from, e.g. "
                         "'oversaturated, painting'")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images of one size that go through the model together (more memory, fewer passes)")
    tiles = p.add_argument_group("tiling (switches on automatically above the tile sizes)")
    tiles.add_argument("--no-tiling", action="store_true", help="never tile (needs memory for the whole image)")
    tiles.add_argument("--latent-tile", type=int, default=TILES.latent_tile,
                       help="UNet tile in latent pixels (x8 in pixels; default: the fewest even tiles of at most "
                            "144 that --memory-budget allows)")
    tiles.add_argument("--latent-overlap", type=int, default=None,
                       help=f"UNet tile overlap in latent pixels (default: {TILES.latent_overlap})")
    tiles.add_argument("--vae-encoder-tile", type=int, default=TILES.vae_encoder_tile,
                       help="VAE encoder tile in pixels (default: the whole image where --memory-budget holds it, "
                            f"else {AUTO_VAE_ENCODER_TILE})")
    tiles.add_argument("--vae-decoder-tile", type=int, default=TILES.vae_decoder_tile,
                       help="VAE decoder tile in latent pixels (default: the whole image where --memory-budget "
                            f"holds it, else {AUTO_VAE_DECODER_TILE})")
    tiles.add_argument("--memory-budget", type=_memory_size, default=TILES.memory_budget, metavar="SIZE",
                       help="memory the tiling may use beyond the model, e.g. 6G or 512M (default: auto, 3/4 of the "
                            "memory available when each stage starts); UNet tiles and which tiled-VAE maps are "
                            "recomputed instead of stored follow from it")
    tiles.add_argument("--tile-batch", type=int, default=TILES.tiles_per_pass, help="UNet tiles per forward pass")
    tiles.add_argument("--vae-maps", choices=VAE_MAPS, default=TILES.vae_maps, metavar="WHERE",
                       help="%(choices)s: where the tiled VAE keeps full-size feature maps; cpu bounds GPU memory "
                            "by one tile (slower); auto: cpu when they would fill over 1/4 of free GPU memory")
    model = add_model_options(p)
    model.add_argument("--no-merge", action="store_true", help="keep LoRA unmerged (peft layers)")
    model.add_argument("--decoder-dtype", default="auto",
                       help="VAE decoder dtype (auto: bf16 on CPUs with native bf16, else --dtype)")
    model.add_argument("--preview-decoder", default=None,
                       help="fast approximate decoder for previews: a TAESD hub id (madebyollin/taesd) or folder")
    model.add_argument("--compile", action="store_true", help="torch.compile the UNet (pays off on big batches)")
    out = p.add_argument_group("output")
    out.add_argument("--format", choices=(*OUTPUT_FORMATS, "jpg", "same"), default="png",
                     help="output format (same: each input's own)")
    out.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (1-100)")
    out.add_argument("--skip-existing", action="store_true",
                     help="skip inputs whose output exists (how an interrupted run, local or Ray, resumes)")
    out.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                     help="refuse inputs with more pixels than this")
    video = p.add_argument_group("videos (mp4, mov, m4v, mkv, webm, avi inputs; needs osediff[video])")
    video.add_argument("--video-codec", default="auto",
                       help="encoder (auto: H.264 where the container takes it, else the best installed; e.g. "
                            "libx264, libx265, libsvtav1, libvpx-vp9)")
    video.add_argument("--video-crf", type=int, default=None,
                       help="constant quality, lower is better (default 18 for H.264, 20 H.265, 30 VP9/AV1)")
    video.add_argument("--video-bitrate", default=None, help="bits/s instead of --video-crf, e.g. 8M or 2500k")
    video.add_argument("--segment-seconds", type=float, default=5.0,
                       help="work is done and kept in segments of about this long (cut on keyframes): an "
                            "interrupted run resumes from the first missing one")
    video.add_argument("--prompt-every", type=int, default=None, metavar="N",
                       help="a new extracted prompt every N frames (default: one prompt per clip, from "
                            "--prompt-frames frames spread over it)")
    video.add_argument("--prompt-frames", type=int, default=3, help="frames sampled for the clip's prompt")
    video.add_argument("--start", type=float, default=0.0, help="seconds of each video to skip")
    video.add_argument("--duration", type=float, default=None, help="seconds of each video to do")
    video.add_argument("--max-frames", type=int, default=None, help="frames of each video to do, at most")
    engine = p.add_argument_group("engine")
    engine.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process (one share per process under accelerate); ray: Ray Data over a "
                             "cluster, with a manifest, retries of dead workers and resume (needs osediff[ray])")
    engine.add_argument("--ray-address", default=None,
                        help="Ray cluster to join (auto: the one `ray start --head` started here); default: start "
                             "a local Ray instance")
    engine.add_argument("--ray-cpus-per-replica", type=int, default=8,
                        help="CPUs per model replica on clusters without GPUs (one replica per GPU otherwise)")
    engine.add_argument("--manifest", default=None,
                        help="--engine ray: JSONL manifest, one row per input with the run's id, below the rows "
                             "of earlier runs (default: OUTPUT/manifest.jsonl)")
    engine.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="--engine ray: an option of the s3:// / gs:// store of every input and output URI, "
                             "for the driver and every node (repeat it): endpoint_override=http://host:9000, "
                             "region=..., anonymous=true, scheme=http, ...; credentials name an environment "
                             "variable of this shell: access_key_env=VAR, secret_key_env=VAR, session_token_env=VAR")
    p.set_defaults(run=run)


def _memory_size(text: str) -> int | None:
    try:
        return parse_memory_size(text)
    except ParamError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("tiles.memory_budget ")) from None


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    """The batch job the flags describe; this process's share under accelerate/torchrun."""
    from ..presets import get_preset

    overlap = TILES.latent_overlap if args.latent_overlap is None else args.latent_overlap
    # the tile is the flag that was given
    if args.latent_overlap is None and args.latent_tile is not None and 1 <= args.latent_tile <= overlap:
        raise ParamError(f"must be above the --latent-overlap of {overlap} (or pass a smaller --latent-overlap), "
                         f"got {args.latent_tile}", argument="tiles.latent_tile")
    tiles = TileConfig(enabled=not args.no_tiling, latent_tile=args.latent_tile, latent_overlap=overlap,
                       vae_encoder_tile=args.vae_encoder_tile, vae_decoder_tile=args.vae_decoder_tile,
                       tiles_per_pass=args.tile_batch, vae_maps=args.vae_maps, memory_budget=args.memory_budget)
    model = model_options_from_args(args)
    preset = get_preset(model.preset)
    params = UpscaleParams(upscale=preset.upscale if args.upscale is None else args.upscale,
                           align=args.align or preset.align, prompt=args.prompt, prompt_extractor=args.prompt_extractor,
                           latent=args.latent, seed=args.seed, tiles=tiles, format=args.format, quality=args.quality,
                           strength=args.strength, guidance=args.guidance, negative_prompt=args.negative_prompt)
    return BatchConfig(inputs=list(args.inputs), output=args.output if "://" in args.output else Path(args.output),
                       params=params, model=model, prompt_fallback=args.prompt_fallback,
                       prompts_from=args.prompts_from, save_prompts=args.save_prompts,
                       skip_existing=args.skip_existing, max_pixels=args.max_pixels, batch_size=args.batch_size,
                       rank=int(os.environ.get("RANK", 0)), world=int(os.environ.get("WORLD_SIZE", 1)),
                       storage_options=parse_storage_options(args.storage_option),
                       video=VideoOptions(codec=args.video_codec, crf=args.video_crf,
                                          bitrate=args.video_bitrate and parse_bitrate(args.video_bitrate),
                                          segment_seconds=args.segment_seconds, prompt_every=args.prompt_every,
                                          prompt_frames=args.prompt_frames, start=args.start, duration=args.duration,
                                          max_frames=args.max_frames))


def run(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        from ..batch.ray_engine import RayOptions, import_ray, run_on_ray

        import_ray()  # the install hint before anything slow
    config = config_from_args(args)
    if args.engine == "ray":
        return run_on_ray(config, RayOptions(address=args.ray_address, manifest=args.manifest,
                                             cpus_per_replica=args.ray_cpus_per_replica))
    return run_local(config)


def run_local(config: BatchConfig) -> int:
    """The batch in this process with a progress bar; the exit status (1 when any image failed)."""
    from tqdm import tqdm

    from ..batch import FAILED, WRITTEN
    from ..batch import run as run_batch

    quiet = config.rank != 0 and config.world > 1
    bar = None

    def start(total: int) -> None:  # once the model is loaded: nothing is drawn before errors about it
        nonlocal bar
        bar = tqdm(total=total, unit="img", disable=quiet, dynamic_ncols=True)

    def report(record) -> None:
        if record.status == FAILED:
            tqdm.write(f"error: {record.error}", file=sys.stderr)
        elif record.status == WRITTEN:
            bar.set_description(Path(record.input).name)
            bar.set_postfix(sec=f"{record.seconds:.2f}")
        bar.update()

    try:
        summary = run_batch(config, on_start=start, on_record=report)
    finally:
        if bar is not None:
            bar.close()
    if summary.skipped == len(summary.records):
        print(f"all {summary.skipped} outputs exist in {config.output}; nothing to do")
        return 0
    done = summary.written
    mean = summary.image_seconds / done if done else 0.0
    shard_note = f" [process {config.rank + 1}/{config.world}]" if config.world > 1 else ""
    print(f"done{shard_note}: {done} written to {config.output}, {summary.failed} failed, {summary.skipped} skipped; "
          f"{summary.image_seconds:.1f} s total, {mean:.2f} s/image")
    return 1 if summary.failed else 0
