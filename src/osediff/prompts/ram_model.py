"""The RAM image tagger (Recognize Anything, Swin-L 384) and its DAPE variant (RAM + LoRA).

Only the tagging path is built: Swin image encoder -> ``image_proj`` -> a two-layer
Query2Label-style decoder whose queries are the per-tag ``label_embed`` rows -> ``fc`` logits.
RAM's Tag2Text encoder/decoder (captioning) never run when tagging and are left out; see
:mod:`osediff.prompts.ram_weights` for how their checkpoint keys are accounted for.

Parts come from maintained libraries: timm's ``SwinTransformer`` (same maths and parameter
layout as the original Swin code RAM vendors) and transformers' BERT attention/FFN blocks.
DAPE adds loralib-style LoRA (``lora_alpha`` 1, so scale 1/r) to every Swin ``qkv`` (q and v
rows only) and to the tagging head's cross-attention ``query``/``key``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class RAMConfig:
    """Architecture of the tagger. Defaults are the published ``ram_swin_large_14m`` model."""

    image_size: int = 384
    patch_size: int = 4
    embed_dim: int = 192  # Swin stage-0 width; doubles per stage
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    embed_width: int = 512  # image_proj output = label_embed width = cross-attn key/value input
    hidden_size: int = 768  # tagging head (q2l_config)
    head_layers: int = 2
    head_heads: int = 4
    intermediate_size: int = 3072
    num_classes: int = 4585
    lora_rank: int = 0  # 0: plain RAM; DAPE uses 8
    lora_alpha: float = 1.0  # loralib default; the delta is scaled by alpha / rank

    @property
    def vision_width(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def with_lora(self, rank: int = 8) -> RAMConfig:
        return replace(self, lora_rank=rank)

    @classmethod
    def tiny(cls, num_classes: int = 12, lora_rank: int = 0) -> RAMConfig:
        """Every block type at a few channels: 32 px input, 8x8 tokens, two stages, window 4.

        As in the full model the last stage's grid equals the window (no shift there) while the
        first stage is shifted and masked.
        """
        return cls(image_size=32, embed_dim=8, depths=(2, 2), num_heads=(2, 4), window_size=4,
                   embed_width=12, hidden_size=16, head_layers=2, head_heads=4, intermediate_size=24,
                   num_classes=num_classes, lora_rank=lora_rank)


class LoRALinear(nn.Linear):
    """``y = x Wᵀ + b + (alpha/r) · x Aᵀ Bᵀ``, optionally for only some row blocks of ``W``.

    ``parts`` splits the output rows into equal blocks (q, k, v for a fused ``qkv``); each enabled
    block gets its own rank-r pair, stacked in ``lora_A`` [r·n, in] and ``lora_B`` [rows·n, r]
    exactly as loralib's ``MergedLinear`` stores them, so DAPE's tensors load as they are.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float = 1.0,
                 bias: bool = True, parts: tuple[bool, ...] = (True,), device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if out_features % len(parts) or not any(parts):
            raise ValueError(f"cannot split {out_features} rows into LoRA parts {parts}")
        self.rank = rank
        self.scaling = alpha / rank
        self.parts = parts
        self.block_rows = out_features // len(parts)
        enabled = sum(parts)
        self.lora_A = nn.Parameter(torch.empty(rank * enabled, in_features, device=device, dtype=dtype))
        # B starts at zero (as in loralib), so an untrained adapter leaves the layer unchanged
        self.lora_B = nn.Parameter(torch.zeros(self.block_rows * enabled, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.enabled_blocks = [i for i, on in enumerate(parts) if on]
        self.merged = False

    def _pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.enabled_blocks)
        return self.lora_A.view(n, self.rank, -1), self.lora_B.view(n, self.block_rows, self.rank)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (alpha/r) · B_g A_g placed in each enabled row block g, zeros elsewhere."""
        a, b = self._pairs()
        blocks = torch.zeros(len(self.parts), self.block_rows, self.in_features,
                             device=self.weight.device, dtype=self.weight.dtype)
        blocks[self.enabled_blocks] = torch.bmm(b, a) * self.scaling
        return blocks.view(self.out_features, self.in_features)

    @torch.no_grad()
    def merge_(self) -> None:
        """Fold ΔW into ``weight`` and zero ``B``: same function, plain-linear cost.

        Zeroing ``B`` (rather than dropping the tensors) keeps the published key layout, and a
        state dict saved afterwards still describes the same function.
        """
        self.weight += self.delta_weight()
        self.lora_B.zero_()
        self.merged = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.merged:
            return out
        a, b = self._pairs()
        low = F.linear(x, self.lora_A).unflatten(-1, (len(a), self.rank))  # [..., n, r]
        up = torch.einsum("...nr,nor->...no", low, b) * self.scaling  # [..., n, rows]
        out = out.unflatten(-1, (len(self.parts), self.block_rows))
        index = torch.tensor(self.enabled_blocks, device=out.device)
        return out.index_add(-2, index, up.to(out.dtype)).flatten(-2)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        # fresh weights and adapters arrive unmerged
        super()._load_from_state_dict(*args, **kwargs)
        self.merged = False


def _lora_like(linear: nn.Linear, rank: int, alpha: float, parts: tuple[bool, ...] = (True,)) -> LoRALinear:
    return LoRALinear(linear.in_features, linear.out_features, rank, alpha, bias=linear.bias is not None,
                      parts=parts, device=linear.weight.device, dtype=linear.weight.dtype)


class TaggingLayer(nn.Module):
    """One Query2Label decoder layer: cross-attention (post-LN) then FFN (post-LN), no self-attention."""

    def __init__(self, cfg: RAMConfig):
        super().__init__()
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput

        bert = BertConfig(hidden_size=cfg.hidden_size, num_attention_heads=cfg.head_heads,
                          intermediate_size=cfg.intermediate_size, hidden_act="gelu", layer_norm_eps=1e-12,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        bert._attn_implementation = "sdpa"
        self.crossattention = BertAttention(bert, is_cross_attention=True)
        attn = self.crossattention.self
        # transformers' BERT assumes encoder width == hidden size; RAM's keys/values read 512-d image embeds
        attn.key = nn.Linear(cfg.embed_width, cfg.hidden_size)
        attn.value = nn.Linear(cfg.embed_width, cfg.hidden_size)
        if cfg.lora_rank:
            attn.query = _lora_like(attn.query, cfg.lora_rank, cfg.lora_alpha)
            attn.key = _lora_like(attn.key, cfg.lora_rank, cfg.lora_alpha)
        self.intermediate = BertIntermediate(bert)
        self.output = BertOutput(bert)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        # RAM's image attention mask is all ones, i.e. no mask
        attended = self.crossattention(queries, encoder_hidden_states=image_embeds)[0]
        return self.output(self.intermediate(attended), attended)


def build_swin(cfg: RAMConfig) -> nn.Module:
    """timm Swin without classifier; stage i+1 starts with the patch merging RAM runs at the end of i."""
    from timm.models.swin_transformer import SwinTransformer

    swin = SwinTransformer(img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=3, num_classes=0,
                           global_pool="", embed_dim=cfg.embed_dim, depths=cfg.depths,
                           num_heads=cfg.num_heads, window_size=cfg.window_size, mlp_ratio=4.0,
                           qkv_bias=True, drop_path_rate=0.0)
    if cfg.lora_rank:
        for stage in swin.layers:
            for block in stage.blocks:
                # DAPE adapts q and v of the fused projection, not k
                block.attn.qkv = _lora_like(block.attn.qkv, cfg.lora_rank, cfg.lora_alpha,
                                            parts=(True, False, True))
    return swin


class RAMTagger(nn.Module):
    """Image (ImageNet-normalised, ``image_size``²) -> one logit per tag."""

    def __init__(self, cfg: RAMConfig):
        super().__init__()
        self.config = cfg
        self.visual_encoder = build_swin(cfg)
        self.image_proj = nn.Linear(cfg.vision_width, cfg.embed_width)
        self.label_embed = nn.Parameter(torch.zeros(cfg.num_classes, cfg.embed_width))
        self.wordvec_proj = nn.Linear(cfg.embed_width, cfg.hidden_size)
        self.tagging_head = nn.ModuleList(TaggingLayer(cfg) for _ in range(cfg.head_layers))
        self.fc = nn.Linear(cfg.hidden_size, 1)

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 1 + N, embed_width]: the mean of the N final Swin tokens first, then the tokens."""
        tokens = self.visual_encoder.forward_features(pixels).flatten(1, 2)  # NHWC -> [B, N, C], normed
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return self.image_proj(tokens)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        image_embeds = self.image_embeds(pixels)
        queries = F.relu(self.wordvec_proj(self.label_embed))
        queries = queries.unsqueeze(0).expand(pixels.shape[0], -1, -1)
        for layer in self.tagging_head:
            queries = layer(queries, image_embeds)
        return self.fc(queries).squeeze(-1)

    def lora_layers(self) -> list[LoRALinear]:
        return [m for m in self.modules() if isinstance(m, LoRALinear)]

    def merge_lora_(self) -> RAMTagger:
        for layer in self.lora_layers():
            layer.merge_()
        return self


def build_ram(cfg: RAMConfig, *, device: torch.device | str = "cpu") -> RAMTagger:
    """Uninitialised-storage model on ``device`` (weights are expected to be loaded next).

    Building on the meta device skips the random init of ~200 M parameters; timm's window
    buffers (relative position index, shift masks) are then recomputed for real. ``device="meta"``
    keeps everything abstract (shape checks).
    """
    with torch.device("meta"):
        model = RAMTagger(cfg)
    if torch.device(device).type == "meta":
        return model
    windowed = [m for m in model.visual_encoder.modules() if hasattr(m, "relative_position_index")
                or hasattr(m, "attn_mask")]
    if not all(hasattr(m, "init_non_persistent_buffers") for m in windowed):
        # a timm without buffer re-initialisation: build for real rather than keep meta buffers
        return RAMTagger(cfg).to(device)
    model.to_empty(device=device)
    for module in windowed:
        module.init_non_persistent_buffers()
    return model


def resize_for_ram(pixels: torch.Tensor, image_size: int, *, antialias: bool = False) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> float32 ``image_size``² by bilinear resize (aspect ratio not kept).

    The authors resize with torchvision on tensors under torch 2.0 / torchvision 0.15, where
    antialias is off by default, so ``antialias=False`` reproduces their inputs (and DAPE's
    training inputs).
    """
    pixels = pixels.float()
    if tuple(pixels.shape[-2:]) == (image_size, image_size):
        return pixels
    return F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False,
                         antialias=antialias)


def imagenet_normalise(pixels: torch.Tensor) -> torch.Tensor:
    mean = pixels.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = pixels.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std
