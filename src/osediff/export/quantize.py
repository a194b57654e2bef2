"""int8: NNCF post-training quantisation of an fp32 OpenVINO export, calibrated on real photos.

Calibration: each low-quality photo of the calibration folder (``examples/`` by default: RealSR x4
inputs), cut to at most ``CALIBRATION_SIDE`` px a side, and its mirror image are upscaled as at run
time and go through the fp32 graphs; the encoder's input, the UNet's (z_L, the CLIP context of one
of ``CALIBRATION_PROMPTS``) and the decoder's z_H = x0(z_L, eps) are the samples each graph's
activation ranges are measured on. The text encoder stays fp32: it runs once per prompt.

Some layers stay fp32 (``KEEP_FP32``, node-name patterns per graph): the one-step update multiplies
the UNet's error by 1 / sqrt(abar_999) ~ 14.6, and the few layers that carry most of the int8 error
are kept out of it, as measured by ``benchmarks/drift.py --int8``.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import OptionError
from ..images import ImageLoadError, list_images, load_image
from .folder import METADATA, ExportError, graph_path, read_metadata, write_metadata
from .openvino import save_graph

CALIBRATION_SIDE = 128
CALIBRATION_PROMPTS = ("", "a photo", "building, city, street, sky, tree, car, window",
                       "person, face, portrait, hair, smile, shirt", "flower, plant, leaf, green, garden, close-up")
QUANTISED = ("vae_encoder", "unet", "vae_decoder")
# node-name patterns (regular expressions) of the layers each graph keeps in fp32; see the module's doc
# (measured on the full-size random model by benchmarks/drift.py --int8: keeping each graph's first and
# last convolutions and the UNet's time embedding took the encoder's error from 20 % to 7 % of its
# output's spread and the image's from 23 to 11 levels (PSNR 17.7 -> 24.2 dB) for ~5 % of the time;
# keeping every attention layer changed nothing: the UNet's error is spread over its convolutions)
FIRST_AND_LAST = [".*conv_in.*", ".*conv_out.*"]
KEEP_FP32: dict[str, list[str]] = {
    "vae_encoder": FIRST_AND_LAST,
    "unet": [*FIRST_AND_LAST, ".*time_emb.*"],
    "vae_decoder": FIRST_AND_LAST,
}


def calibration_images(folder: Path | str) -> list[Image.Image]:
    """The photos of ``folder`` (RGB), each cut to its centre ``CALIBRATION_SIDE`` px square at most."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OptionError(f"{folder}: not a folder of calibration photos", argument="calibration")
    images = []
    for path in list_images(folder):
        try:
            image = load_image(path).rgb
        except ImageLoadError:
            continue  # a folder of photos with a stray bad file still calibrates
        side_w, side_h = min(image.width, CALIBRATION_SIDE), min(image.height, CALIBRATION_SIDE)
        left, top = (image.width - side_w) // 2, (image.height - side_h) // 2
        images.append(image.crop((left, top, left + side_w, top + side_h)))
    if not images:
        raise OptionError(f"{folder}: no readable image to calibrate int8 on", argument="calibration")
    return images


def calibration_samples(folder: Path, images: Sequence[Image.Image], upscale: float = 4.0
                        ) -> dict[str, list[dict[str, np.ndarray]]]:
    """Each quantised graph's inputs for ``images`` and their mirrors, made by the fp32 graphs of ``folder``."""
    import torch

    from ..diffusion import predict_x0
    from ..pipeline.model import VAE_MULTIPLE, pad_to_multiple
    from ..pipeline.step import bicubic_upscale, image_tensor
    from .runtime import OpenVinoOneStepModel

    model = OpenVinoOneStepModel(folder)
    samples: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in QUANTISED}
    photos = [variant for image in images for variant in (image, ImageOps.mirror(image))]
    with torch.no_grad():
        for index, photo in enumerate(photos):
            x_l = image_tensor(bicubic_upscale(photo, upscale))
            samples["vae_encoder"].append({"x": pad_to_multiple(x_l * 2 - 1, VAE_MULTIPLE).numpy()})
            z_l = model.encode_latent(x_l)
            context = model.encode_prompt(CALIBRATION_PROMPTS[index % len(CALIBRATION_PROMPTS)])
            samples["unet"].append({"z": z_l.numpy(), "context": context.numpy()})
            z_h = predict_x0(z_l, model._unet(z_l, context), model.alpha_bar)
            samples["vae_decoder"].append({"z": z_h.numpy()})
    return samples


def quantize_folder(folder: Path, images: Sequence[Image.Image], *, upscale: float = 4.0,
                    keep_fp32: Mapping[str, Sequence[str]] = KEEP_FP32) -> dict:
    """Turn the fp32 OpenVINO export ``folder`` into int8, in place; returns its metadata.

    The metadata file goes first and comes back last, so an interrupted run leaves a folder that
    no loader takes for a finished export.
    """
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    folder = Path(folder)
    metadata = read_metadata(folder)
    if (metadata["format"], metadata["precision"]) != ("openvino", "fp32"):
        raise ExportError(f"{folder}: int8 is made from an fp32 openvino export, not {metadata['format']} "
                          f"{metadata['precision']}")
    samples = calibration_samples(folder, images, upscale)
    gc.collect()
    (folder / METADATA).unlink()
    core = ov.Core()
    for name in QUANTISED:
        model = core.read_model(str(folder / graph_path(name, "openvino")))
        quantised = nncf.quantize(
            model, nncf.Dataset(samples[name]), subset_size=len(samples[name]), model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(patterns=list(keep_fp32.get(name, ())), validate=False),
            # SmoothQuant would move scale into weights the LoRA merge tuned; measured worse here
            advanced_parameters=AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)))
        save_graph(quantised, folder / name)
        del model, quantised
        gc.collect()
    metadata.update(precision="int8", nncf=nncf.__version__,
                    calibration={"photos": len(images), "samples": len(samples["unet"]), "upscale": upscale,
                                 "keep_fp32": {name: list(keep_fp32.get(name, ())) for name in QUANTISED}})
    write_metadata(folder, metadata)
    return metadata
