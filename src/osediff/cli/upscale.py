"""``osediff upscale``: super-resolve files, folders and globs into an output folder.

A bad input is reported in one line and the batch goes on; outputs are written atomically; the
exit status is non-zero when any image failed. Under ``accelerate launch`` / ``torchrun`` every
process takes its own share of the inputs (``RANK``/``WORLD_SIZE``), one GPU each.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .options import add_model_options

OUTPUT_FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("upscale", help="super-resolve images", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("-s", "--upscale", type=float, default=4.0, help="upscale factor, any value >= 1 (default 4)")
    p.add_argument("--prompt", default="", help="text prompt (added after extracted tags)")
    p.add_argument("--prompt-extractor", default="dape",
                   help="dape (the paper's degradation-aware RAM tags; default) | ram | caption | "
                        "text (--prompt only) | none (empty prompt)")
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
    p.add_argument("--align", choices=("adain", "wavelet", "none"), default="adain", help="colour alignment")
    p.add_argument("--latent", choices=("mode", "sample"), default="mode",
                   help="latent mean (deterministic) or a sample as the authors' code does")
    p.add_argument("--seed", type=int, default=None, help="seed for --latent sample")
    tiles = p.add_argument_group("tiling (switches on automatically above the tile sizes)")
    tiles.add_argument("--no-tiling", action="store_true", help="never tile (needs memory for the whole image)")
    tiles.add_argument("--latent-tile", type=int, default=96, help="UNet tile in latent pixels (x8 in pixels)")
    tiles.add_argument("--latent-overlap", type=int, default=32, help="UNet tile overlap in latent pixels")
    tiles.add_argument("--vae-encoder-tile", type=int, default=1024, help="VAE encoder tile in pixels")
    tiles.add_argument("--vae-decoder-tile", type=int, default=224, help="VAE decoder tile in latent pixels")
    tiles.add_argument("--tile-batch", type=int, default=4, help="UNet tiles per forward pass")
    tiles.add_argument("--vae-maps", choices=("auto", "device", "cpu"), default="auto",
                       help="where the tiled VAE keeps full-size feature maps; cpu bounds GPU memory by one "
                            "tile (slower); auto: cpu when they would fill over 1/4 of free GPU memory")
    model = add_model_options(p)
    model.add_argument("--no-merge", action="store_true", help="keep LoRA unmerged (peft layers)")
    model.add_argument("--decoder-dtype", default="auto",
                       help="VAE decoder dtype (auto: bf16 on CPUs with native bf16, else --dtype)")
    model.add_argument("--preview-decoder", default=None,
                       help="fast approximate decoder for previews: a TAESD hub id (madebyollin/taesd) or folder")
    model.add_argument("--compile", action="store_true", help="torch.compile the UNet (pays off on big batches)")
    out = p.add_argument_group("output")
    out.add_argument("--format", choices=(*OUTPUT_FORMATS, "same"), default="png", help="output format")
    out.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality")
    out.add_argument("--skip-existing", action="store_true", help="skip inputs whose output exists")
    out.add_argument("--max-pixels", type=int, default=4096 * 4096,
                     help="refuse inputs with more pixels than this (default 4096*4096)")
    p.set_defaults(run=run)


def output_path(src: Path, outdir: Path, fmt: str) -> Path:
    suffix = src.suffix.lower() if fmt == "same" else OUTPUT_FORMATS[fmt]
    if fmt == "same" and suffix in (".gif", ".bmp", ".jpeg"):
        suffix = {".gif": ".png", ".bmp": ".png", ".jpeg": ".jpg"}[suffix]
    return outdir / f"{src.stem}{suffix}"


def output_clashes(files: list[Path], outdir: Path, fmt: str) -> dict[Path, Path]:
    """Inputs whose output file an earlier input already claims (a.png and a.jpg, or one name in
    two folders), mapped to that earlier input: writing them would replace its result."""
    owner: dict[Path, Path] = {}
    clashes = {}
    for src in files:
        dst = output_path(src, outdir, fmt)
        if dst in owner:
            clashes[src] = owner[dst]
        else:
            owner[dst] = src
    return clashes


def shard(items: list[Path]) -> tuple[list[Path], int, int]:
    """This process's share under accelerate/torchrun; all of it otherwise."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return items[rank::world], rank, world


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..images import ImageLoadError, collect_inputs, load_image, save_image_atomic, write_text_atomic

    inputs = collect_inputs(args.inputs)
    clashes = output_clashes(inputs, args.output, args.format)  # over all inputs: ranks must agree
    files, rank, world = shard(inputs)
    if not files:
        print("error: no input images found", file=sys.stderr)
        return 2
    todo = [f for f in files if not (args.skip_existing and output_path(f, args.output, args.format).exists())]
    skipped = len(files) - len(todo)
    if not todo:
        print(f"all {len(files)} outputs exist in {args.output}; nothing to do")
        return 0
    try:
        pipe, tiles, user_prompt = _build_pipeline(args, rank, world)
    except (RuntimeError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    failures: list[str] = []
    seconds: list[float] = []
    bar = tqdm(total=len(todo), unit="img", disable=rank != 0 and world > 1, dynamic_ncols=True)

    def fail(message: str) -> None:
        failures.append(message)
        tqdm.write(f"error: {message}", file=sys.stderr)
        bar.update()

    # prompt extractors run batched over a chunk of decoded images, then each image is super-resolved
    chunk_size = max(1, args.prompt_batch_size) if pipe.prompt_extractor is not None else 1
    for first in range(0, len(todo), chunk_size):
        images = {}
        for src in todo[first:first + chunk_size]:
            if src in clashes:
                fail(f"{src}: its output {output_path(src, args.output, args.format)} is already that of "
                     f"{clashes[src]}; rename one of them or run it separately")
                continue
            try:
                images[src] = load_image(src, max_pixels=args.max_pixels)
            except ImageLoadError as err:
                fail(str(err))
        try:
            prompts = _chunk_prompts(pipe, images, args, user_prompt)
            if pipe.prompt_extractor is not None and first + chunk_size >= len(todo):
                pipe.keep_only_prompts(prompts.values())  # last chunk: free DAPE and CLIP before the SR
        except (RuntimeError, ValueError, OSError) as err:
            for src in images:
                fail(f"{src}: {_first_line(err)}")
            continue
        for src, loaded in images.items():
            bar.set_description(src.name)
            started = time.perf_counter()
            try:
                prompt = prompts[src] if src in prompts else _saved_prompt(args.prompts_from, src)
                result = pipe.run(loaded.rgb, args.upscale, prompt, extract_prompt=False, align=args.align,
                                  tiles=tiles, latent=args.latent, seed=args.seed, alpha=loaded.alpha)
                dst = output_path(src, args.output, args.format)
                save_kwargs = {"quality": args.quality} if dst.suffix in (".jpg", ".webp") else {}
                image = result.image.convert("RGB") if dst.suffix == ".jpg" else result.image
                save_image_atomic(image, dst, **save_kwargs)
                if args.save_prompts:
                    write_text_atomic(result.prompt + "\n", dst.with_suffix(".txt"))
            except (RuntimeError, ValueError, OSError) as err:
                fail(f"{src}: {_first_line(err)}")
                continue
            seconds.append(time.perf_counter() - started)
            bar.update()
            bar.set_postfix(sec=f"{seconds[-1]:.2f}")
    bar.close()
    done = len(seconds)
    mean = sum(seconds) / done if done else 0.0
    shard_note = f" [process {rank + 1}/{world}]" if world > 1 else ""
    print(f"done{shard_note}: {done} written to {args.output}, {len(failures)} failed, {skipped} skipped; "
          f"{sum(seconds):.1f} s total, {mean:.2f} s/image")
    return 1 if failures else 0


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _chunk_prompts(pipe, images: dict, args: argparse.Namespace, user_prompt: str) -> dict[Path, str]:
    """Prompts for a chunk: saved ones (--prompts-from), else one batched extractor call, else the text."""
    from ..pipeline import bicubic_upscale

    if args.prompts_from is not None:
        return {}  # read per image, so one missing file fails only its image
    if pipe.prompt_extractor is None or not images:
        return dict.fromkeys(images, user_prompt)
    upscaled = [bicubic_upscale(loaded.rgb, args.upscale) for loaded in images.values()]
    return dict(zip(images, pipe.prompt_extractor(upscaled, user_prompt), strict=True))


def _saved_prompt(folder: Path, src: Path) -> str:
    path = folder / f"{src.stem}.txt"
    if not path.is_file():
        raise ValueError(f"no saved prompt {path}")
    return path.read_text(encoding="utf-8").rstrip("\n")


def _build_pipeline(args: argparse.Namespace, rank: int, world: int):
    import torch

    from ..checkpoint import DEFAULT_WEIGHTS
    from ..device import pick_decoder_dtype, pick_device, pick_dtype
    from ..pipeline import OSEDiffPipeline, TileConfig

    device = pick_device(args.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    dtype = pick_dtype(args.dtype, device)
    user_prompt = "" if args.prompt_extractor == "none" else args.prompt
    # one fixed prompt for the whole batch: encoded while loading, then the text encoder is freed
    fixed = args.prompt_extractor in ("none", "text") and args.prompts_from is None
    pipe = OSEDiffPipeline.from_pretrained(
        args.base, args.weights or DEFAULT_WEIGHTS, device=device, dtype=dtype, merge_lora=not args.no_merge,
        local_files_only=args.offline, prompts=[user_prompt] if fixed else None,
    )
    pipe.optimize(channels_last=True, compile_unet=args.compile,
                  decoder_dtype=pick_decoder_dtype(args.decoder_dtype, device, dtype))
    if args.preview_decoder:
        from diffusers import AutoencoderTiny

        pipe.use_preview_decoder(AutoencoderTiny.from_pretrained(args.preview_decoder,
                                                                 local_files_only=args.offline))
    if args.prompt_extractor not in ("none", "text") and args.prompts_from is None:
        pipe.prompt_extractor = _build_extractor(args, device, dtype)
    tiles = TileConfig(enabled=not args.no_tiling, latent_tile=args.latent_tile,
                       latent_overlap=args.latent_overlap, vae_encoder_tile=args.vae_encoder_tile,
                       vae_decoder_tile=args.vae_decoder_tile, batch_size=args.tile_batch,
                       vae_maps=args.vae_maps)
    return pipe, tiles, user_prompt


def _build_extractor(args: argparse.Namespace, device, dtype):
    """The chosen image-to-prompt model; a missing model fails unless --prompt-fallback says otherwise."""
    import torch

    from ..checkpoint import ModelNotFoundError
    from ..prompts import create_prompt_extractor

    name = args.prompt_extractor
    dtype_name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
    common = {"device": str(device), "dtype": dtype_name, "batch_size": args.prompt_batch_size,
              "local_files_only": args.offline}
    kwargs: dict = {}
    if name == "dape":
        kwargs = {"ram_path": args.ram, "dape_path": args.dape, "tags_path": args.ram_tags, **common}
    elif name == "ram":
        kwargs = {"ram_path": args.ram, "tags_path": args.ram_tags, **common}
    elif name == "caption":
        kwargs = {"model": args.captioner, **common}
    try:
        return create_prompt_extractor(name, **kwargs)
    except ModelNotFoundError as err:
        if args.prompt_fallback is None:
            raise RuntimeError(f"prompt extractor {name!r}: {err} (pass --prompt-fallback text to go on "
                               "without it)") from None
        print(f"warning: prompt extractor {name!r} unavailable ({err}); using {args.prompt_fallback!r}",
              file=sys.stderr)
        return create_prompt_extractor(args.prompt_fallback)
