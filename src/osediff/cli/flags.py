"""The one place where the library's argument names become command-line flags.

Library errors name the Python argument at fault (``OSEDiffError.argument``, e.g.
``tiles.latent_overlap``); the CLI's error handler shows it as the flag that sets it
(``--latent-overlap``). An argument without a flag is shown as it is.
"""

from __future__ import annotations

FLAGS: dict[str, str] = {
    # what to upscale and how (osediff.params.UpscaleParams)
    "upscale": "--upscale",
    "align": "--align",
    "prompt": "--prompt",
    "prompt_extractor": "--prompt-extractor",
    "latent": "--latent",
    "seed": "--seed",
    "format": "--format",
    "quality": "--quality",
    "strength": "--strength",
    "guidance": "--guidance",
    "negative_prompt": "--negative-prompt",
    "tiles.enabled": "--no-tiling",
    "tiles.latent_tile": "--latent-tile",
    "tiles.latent_overlap": "--latent-overlap",
    "tiles.vae_encoder_tile": "--vae-encoder-tile",
    "tiles.vae_decoder_tile": "--vae-decoder-tile",
    "tiles.tiles_per_pass": "--tile-batch",
    "tiles.vae_maps": "--vae-maps",
    "tiles.memory_budget": "--memory-budget",
    # the batch job (osediff.batch.BatchConfig)
    "inputs": "INPUT",
    "output": "--output",
    "max_pixels": "--max-pixels",
    "batch_size": "--batch-size",
    "prompt_batch_size": "--prompt-batch-size",
    "prompts_from": "--prompts-from",
    "prompt_fallback": "--prompt-fallback",
    "skip_existing": "--skip-existing",
    "engine": "--engine",
    "address": "--ray-address",
    "storage_options": "--storage-option",
    "cpus_per_replica": "--ray-cpus-per-replica",
    "manifest": "--manifest",
    "video.codec": "--video-codec",
    "video.crf": "--video-crf",
    "video.bitrate": "--video-bitrate",
    "video.segment_seconds": "--segment-seconds",
    "video.prompt_every": "--prompt-every",
    "video.prompt_frames": "--prompt-frames",
    "video.start": "--start",
    "video.duration": "--duration",
    "video.max_frames": "--max-frames",
    # the model (osediff.loading.ModelOptions) and its files
    "base": "--base",
    "weights": "--weights",
    "preset": "--preset",
    "device": "--device",
    "dtype": "--dtype",
    "decoder_dtype": "--decoder-dtype",
    "preview_decoder": "--preview-decoder",
    "ram": "--ram",
    "ram_path": "--ram",
    "dape": "--dape",
    "dape_path": "--dape",
    "ram_tags": "--ram-tags",
    "tags_path": "--ram-tags",
    "captioner": "--captioner",
    "models_dir": "--models-dir",
    "backend": "--backend",
    "export_dir": "--export-dir",
    "precision": "--precision",
    "calibration": "--calibration",
    # per-request limits of the demo and the service (osediff.limits.RequestLimits)
    "max_bytes": "--max-upload-mb",
    "max_output_pixels": "--max-output-pixels",
    "max_upscale": "--max-upscale",
    "examples": "--examples",
    # the demo's server (osediff demo) and the comparison figure (osediff compare)
    "port": "--port",
    "concurrency": "--concurrency",
    "queue_size": "--queue-size",
    "panel_width": "--panel-width",
    "limit": "--limit",
    "autoscale": "--autoscale",
    # the HTTP service's clients (osediff.serve.edge.EdgeSettings)
    "read_timeout_s": "--read-timeout-s",
    "body_timeout_s": "--body-timeout-s",
    "request_timeout_s": "--request-timeout-s",
    "keep_alive_s": "--keep-alive-s",
    "max_per_client": "--max-requests-per-client",
    "grace_s": "--grace-period-s",
    "log_format": "--log-format",
    # the weights files of osediff convert (osediff.checkpoint.convert_weights)
    "src": "SRC",
    "dst": "DST",
    # evaluation, figures and training
    "gt": "--gt",
    "names": "--names",
    "niqe_params": "--niqe-params",
    "ignore_unmatched": "--ignore-unmatched",
    "crop": "--crop",
    "zoom": "--zoom",
    "config": "--config",
    "resume": "--resume",
    "export_only": "--export-only",
    "max_steps": "--max-steps",
}


def flag_for(argument: str) -> str:
    """The flag that sets ``argument``, or the argument itself where no flag does."""
    return FLAGS.get(argument, argument)
