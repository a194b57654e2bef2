"""The library parts inside the RAM tagger against hand-written maths, and DAPE's LoRA.

timm's Swin and transformers' BERT blocks are reused; these tests pin them to the computation
RAM's own code performs (patch embedding, patch-merging order, shifted-window attention with its
mask and relative position bias, the post-LN cross-attention decoder layer, loralib's LoRA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from osediff.prompts.ram_model import LoRALinear, RAMConfig, RAMTagger, TaggingLayer

torch.manual_seed(0)
CFG = RAMConfig.tiny(num_classes=6)


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor | float = 0.0):
    """softmax(q kᵀ / √d + bias) v per head; q [N, C], k/v [M, C]."""
    d = q.shape[-1] // heads
    q, k, v = (t.view(t.shape[0], heads, d).transpose(0, 1) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
    return (weights @ v).transpose(0, 1).reshape(q.shape[1], heads * d)


def test_tagging_layer_is_post_ln_cross_attention():
    layer = TaggingLayer(CFG).eval()
    queries, image = torch.randn(2, 7, CFG.hidden_size), torch.randn(2, 5, CFG.embed_width)
    got = layer(queries, image)
    attn, out = layer.crossattention, layer.output
    for b in range(2):
        x, e = queries[b], image[b]
        ctx = attention(F.linear(x, attn.self.query.weight, attn.self.query.bias),
                        F.linear(e, attn.self.key.weight, attn.self.key.bias),
                        F.linear(e, attn.self.value.weight, attn.self.value.bias), CFG.head_heads)
        h = layer_norm(x + F.linear(ctx, attn.output.dense.weight, attn.output.dense.bias), attn.output.LayerNorm)
        ffn = F.linear(gelu(F.linear(h, layer.intermediate.dense.weight, layer.intermediate.dense.bias)),
                       out.dense.weight, out.dense.bias)
        torch.testing.assert_close(got[b], layer_norm(h + ffn, out.LayerNorm), atol=1e-5, rtol=1e-5)


def test_patch_embed_and_merging_match_ram_order():
    swin = RAMTagger(CFG).visual_encoder.eval()
    image = torch.randn(1, 3, 32, 32)
    p = CFG.patch_size
    # patch embedding = a linear map of each 4x4x3 patch, then LayerNorm
    patches = image.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(1, 8, 8, -1)
    proj = swin.patch_embed.proj
    manual = layer_norm(patches @ proj.weight.reshape(proj.out_channels, -1).T + proj.bias, swin.patch_embed.norm)
    tokens = swin.patch_embed(image)
    torch.testing.assert_close(tokens, manual, atol=1e-5, rtol=1e-5)
    # RAM's PatchMerging concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]
    merge = swin.layers[1].downsample
    x = torch.randn(1, 8, 8, CFG.embed_dim)
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    torch.testing.assert_close(merge(x), layer_norm(cat, merge.norm) @ merge.reduction.weight.T, atol=1e-5,
                               rtol=1e-5)


def window_bias_and_mask(table: torch.Tensor, size: int, window: int, shift: int) -> tuple[torch.Tensor, list]:
    """Swin's relative position bias [heads, w², w²] and, per window, its -100 shift mask [w², w²]."""
    coords = [(i, j) for i in range(window) for j in range(window)]
    index = torch.tensor([[(a[0] - b[0] + window - 1) * (2 * window - 1) + a[1] - b[1] + window - 1
                           for b in coords] for a in coords])
    bias = table[index].permute(2, 0, 1)
    region = torch.zeros(size, size)
    if shift:
        bounds = ((0, size - window), (size - window, size - shift), (size - shift, size))
        for n, (r0, r1) in enumerate(bounds):
            for m, (c0, c1) in enumerate(bounds):
                region[r0:r1, c0:c1] = 3 * n + m
    masks = []
    for wi in range(0, size, window):
        for wj in range(0, size, window):
            label = region[wi:wi + window, wj:wj + window].reshape(-1)
            masks.append((label[:, None] != label[None, :]).float() * -100.0)
    return bias, masks


def test_shifted_window_block_matches_swin_maths():
    swin = RAMTagger(CFG).visual_encoder.eval()
    block = swin.layers[0].blocks[1]  # odd block: shifted by window // 2, masked
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
    size, window, shift, heads = 8, CFG.window_size, CFG.window_size // 2, CFG.num_heads[0]
    assert block.shift_size == (shift, shift) and swin.layers[1].blocks[1].shift_size == (0, 0)
    x = torch.randn(1, size, size, CFG.embed_dim)
    bias, masks = window_bias_and_mask(block.attn.relative_position_bias_table, size, window, shift)
    h = torch.roll(layer_norm(x, block.norm1), shifts=(-shift, -shift), dims=(1, 2))[0]
    out = torch.empty_like(h)
    qkv = block.attn.qkv
    for n, (wi, wj) in enumerate((i, j) for i in range(0, size, window) for j in range(0, size, window)):
        tokens = h[wi:wi + window, wj:wj + window].reshape(-1, CFG.embed_dim)
        q, k, v = F.linear(tokens, qkv.weight, qkv.bias).chunk(3, dim=-1)
        ctx = attention(q, k, v, heads, bias + masks[n])
        out[wi:wi + window, wj:wj + window] = F.linear(ctx, block.attn.proj.weight, block.attn.proj.bias).view(
            window, window, -1)
    y = x + torch.roll(out, shifts=(shift, shift), dims=(0, 1))[None]
    mlp = block.mlp
    y = y + F.linear(gelu(F.linear(layer_norm(y, block.norm2), mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight,
                     mlp.fc2.bias)
    torch.testing.assert_close(block(x), y, atol=1e-5, rtol=1e-5)


def test_image_embeds_put_the_mean_token_first():
    model = RAMTagger(CFG).eval()
    image = torch.randn(2, 3, 32, 32)
    tokens = model.visual_encoder.forward_features(image).flatten(1, 2)
    embeds = model.image_embeds(image)
    assert embeds.shape == (2, 1 + 16, CFG.embed_width)
    torch.testing.assert_close(embeds[:, 0], model.image_proj(tokens.mean(1)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embeds[:, 1:], model.image_proj(tokens), atol=1e-5, rtol=1e-5)


def test_lora_qkv_delta_merge_and_unmerged_agree():
    d, r = 6, 2
    layer = LoRALinear(d, 3 * d, rank=r, parts=(True, False, True))
    x = torch.randn(4, d)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))  # B = 0 at init: no change
    with torch.no_grad():
        layer.lora_B.normal_()
    a, b = layer.lora_A, layer.lora_B  # [2r, d], [2d, r]: q pair then v pair (loralib MergedLinear)
    delta = torch.cat([b[:d] @ a[:r], torch.zeros(d, d), b[d:] @ a[r:]]) / r  # lora_alpha 1 -> scale 1/r
    expected = F.linear(x, layer.weight + delta, layer.bias)
    unmerged = layer(x)
    torch.testing.assert_close(unmerged, expected, atol=1e-5, rtol=1e-5)
    assert (unmerged - F.linear(x, layer.weight, layer.bias))[:, d:2 * d].abs().max() == 0  # k untouched
    base = layer.weight.detach().clone()
    layer.merge_()
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.weight, base + delta, atol=1e-6, rtol=0)
    assert layer.lora_B.abs().max() == 0  # merged state still loads as the same function
    # loading fresh weights un-merges
    state = {"weight": base, "bias": layer.bias.detach(), "lora_A": a.detach(), "lora_B": b.detach() + 1}
    layer.load_state_dict(state)
    assert not layer.merged


def test_dape_model_merge_matches_unmerged():
    model = RAMTagger(RAMConfig.tiny(num_classes=6, lora_rank=2)).eval()
    assert len(model.lora_layers()) == 2 * 2 + 2 * 2  # every Swin qkv + head query/key
    with torch.no_grad():
        model.label_embed.normal_()
        for layer in model.lora_layers():
            layer.lora_B.normal_(0, 0.5)
    image = torch.randn(2, 3, 32, 32)
    unmerged = model(image)
    plain = [layer.weight.clone() for layer in model.lora_layers()]
    merged = model.merge_lora_()(image)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)
    assert all((layer.weight - w).abs().max() > 0 for layer, w in zip(model.lora_layers(), plain, strict=True))
