"""``caption`` prompt extractor: any hub image-to-text model loadable through transformers.

Small captioners (BLIP: ``Salesforce/blip-image-captioning-base``) caption from the image alone;
chat VLMs (LLaVA-1.5: ``llava-hf/llava-1.5-7b-hf``, the paper's ablation) get ``instruction``
through the processor's chat template. The caption replaces the tags in the authors' format,
``"<caption>, <user prompt>,"``.
"""

from __future__ import annotations

import os

import torch
from PIL import Image

from ..checkpoint import MissingFile, ModelNotFoundError
from ..device import pick_device, pick_dtype
from ..fileio import first_line
from .base import compose_prompt
from .files import CAPTIONER_OPTION, DEFAULT_CAPTIONER, resolve_captioner

__all__ = ["DEFAULT_CAPTIONER", "CaptionExtractor", "create_caption_extractor"]
DEFAULT_INSTRUCTION = "Describe this image in one short sentence."


class CaptionExtractor:
    def __init__(self, model, processor, *, batch_size: int = 4, max_new_tokens: int = 40,
                 instruction: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = max_new_tokens
        self.instruction = instruction

    def _text(self) -> str | None:
        template = getattr(self.processor, "chat_template", None)
        if template is None:
            return self.instruction  # BLIP-style: an optional caption prefix, or none
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": self.instruction or DEFAULT_INSTRUCTION}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    @torch.inference_mode()
    def captions(self, images: list[Image.Image]) -> list[str]:
        out: list[str] = []
        device, dtype = self.model.device, self.model.dtype
        text = self._text()
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start:start + self.batch_size]]
            kwargs = {"text": [text] * len(batch), "padding": True} if text else {}
            inputs = self.processor(images=batch, return_tensors="pt", **kwargs).to(device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            prompt_ids = inputs.get("input_ids")
            # decoder-only VLMs echo the prompt; keep only what was generated after it
            if prompt_ids is not None and generated.shape[1] >= prompt_ids.shape[1] \
                    and torch.equal(generated[:, :prompt_ids.shape[1]], prompt_ids):
                generated = generated[:, prompt_ids.shape[1]:]
            out += [self._clean(t) for t in self.processor.batch_decode(generated, skip_special_tokens=True)]
        return out

    @staticmethod
    def _clean(caption: str) -> str:
        # one line without a final full stop: it is followed by ", <user prompt>," and saved as a line
        return " ".join(caption.split()).rstrip(".").strip()

    def __call__(self, images: list[Image.Image], user_prompt: str = "") -> list[str]:
        return [compose_prompt(c, user_prompt) for c in self.captions(images)]


def create_caption_extractor(*, model: str | os.PathLike = DEFAULT_CAPTIONER, device: str | torch.device | None = None,
                             dtype: str | torch.dtype | None = None, batch_size: int = 4,
                             max_new_tokens: int = 40, instruction: str | None = None,
                             local_files_only: bool = False) -> CaptionExtractor:
    """Load ``model`` (hub id or local folder) with its processor, in fp16 on GPU by default."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = resolve_captioner(model, local_files_only=local_files_only)
    target = pick_device(device)
    torch_dtype = pick_dtype(dtype, target)
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        network = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch_dtype, local_files_only=True)
    except (OSError, ValueError) as err:  # transformers: missing files (OSError), unknown architectures
        raise ModelNotFoundError([MissingFile(f"captioner {model!s}", "not a loadable image-to-text model "
                                              f"({first_line(err)})", CAPTIONER_OPTION)]) from None
    if getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"  # batched generation appends after the prompt
    return CaptionExtractor(network.to(target), processor, batch_size=batch_size,
                            max_new_tokens=max_new_tokens, instruction=instruction)
