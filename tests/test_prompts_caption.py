"""``caption`` extractor wiring, on a tiny random BLIP built and saved here (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from osediff.checkpoint import ModelNotFoundError
from osediff.prompts import create_prompt_extractor

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "cat", "dog", "red", "house",
         *(f"w{i}" for i in range(19))]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("blip")
    (folder / "vocab.txt").write_text("\n".join(VOCAB))
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    text = dict(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=64, bos_token_id=5, pad_token_id=0,
                sep_token_id=3, encoder_hidden_size=16)
    vision = dict(hidden_size=16, image_size=32, patch_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16))
    with torch.no_grad():  # larger weights than the default init, so captions depend on the image
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.3)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    return folder / "model"


def pictures() -> list[Image.Image]:
    generator = torch.Generator().manual_seed(3)
    noise = [(torch.rand(h, w, 3, generator=generator) * 255).to(torch.uint8).numpy() for h, w in ((30, 40), (48, 32))]
    return [*(Image.fromarray(n) for n in noise), Image.new("L", (20, 20), 128)]


def test_caption_extractor_matches_direct_generation(tiny_blip):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    extract = create_prompt_extractor("caption", model=tiny_blip, device="cpu", batch_size=2, max_new_tokens=6)
    prompts = extract(pictures(), "high quality")
    processor = AutoProcessor.from_pretrained(tiny_blip)
    model = AutoModelForImageTextToText.from_pretrained(tiny_blip).eval()
    inputs = processor(images=[p.convert("RGB") for p in pictures()], return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    captions = [" ".join(c.split()) for c in processor.batch_decode(ids, skip_special_tokens=True)]
    assert all(captions) and len(set(captions)) > 1
    assert prompts == [f"{c}, high quality," for c in captions]


def test_caption_model_missing_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"captioner .*nowhere.*image-to-text model"):
        create_prompt_extractor("caption", model=tmp_path / "nowhere", device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    """A LLaVA-1.5-shaped chat VLM (CLIP vision tower + Llama) with a word-level tokenizer and chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:", "Describe", "this", "image",
             *(f"w{i}" for i in range(22))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>",
                                        extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %} ASSISTANT:{% endif %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, chat_template=template, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    text = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=4,
                                                      vision_feature_select_strategy="default"))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("llava")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_chat_vlm_gets_instruction_and_its_echo_is_removed(tiny_llava):
    batched = create_prompt_extractor("caption", model=tiny_llava, device="cpu", batch_size=2, max_new_tokens=5,
                                      instruction="Describe this image")
    assert batched._text() == "USER: <image> Describe this image ASSISTANT:"
    captions = batched.captions(pictures())
    assert all(captions) and len(set(captions)) > 1
    # word-level tokenizer: at most 5 new words each, so an echoed prompt (5 words + image) would show
    assert all(len(c.split()) <= 5 for c in captions)
    single = create_prompt_extractor("caption", model=tiny_llava, device="cpu", batch_size=1, max_new_tokens=5,
                                     instruction="Describe this image")
    assert single.captions(pictures()) == captions
