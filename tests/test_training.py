"""Training: the VSD gradient and regulariser loss against their formulas, and real CPU training steps
on tiny random models (which parameters move, checkpoint, exact resume, export into the pipeline)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REALSR_SHIPPED
from osediff.losses import diffusion_loss, vsd_loss
from osediff.training.config import ConfigError, TrainConfig
from osediff.training.loop import Trainer
from osediff.training.model import Regulariser

pytestmark = pytest.mark.usefixtures("single_thread")



def _randomise_lora(model: torch.nn.Module, seed: int) -> None:
    """Fresh peft LoRA has B = 0 (no effect); give every LoRA tensor a value so it matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def _alpha_bars(scheduler, t: torch.Tensor) -> torch.Tensor:
    return scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)


@pytest.fixture
def vsd_setup(fresh_components):
    frozen = copy.deepcopy(fresh_components.unet)  # an untouched copy: the independent eps_phi
    reg = Regulariser(fresh_components.unet, rank=4)
    _randomise_lora(reg, seed=3)
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(2, 4, 8, 8, generator=gen)
    pos = torch.randn(2, 77, 32, generator=gen)
    neg = torch.randn(1, 77, 32, generator=gen).expand(2, -1, -1)
    return frozen, reg, fresh_components.scheduler, z, pos, neg


def test_vsd_gradient_matches_its_formula(vsd_setup):
    frozen, reg, scheduler, z, pos, neg = vsd_setup
    cfg, seed = 7.5, 5
    z_var = z.clone().requires_grad_(True)
    result = vsd_loss(z_var, reg, reg.frozen_eps, pos, neg, scheduler, cfg, (20, 980),
                      torch.Generator().manual_seed(seed))
    result.loss.backward()

    # direct computation: same draws, z_t and x0 by hand, separate cond/uncond passes, no autograd
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        t = torch.randint(20, 980, (2,), generator=gen)
        noise = torch.randn(z.shape, generator=gen)
        ab = _alpha_bars(scheduler, t)
        z_t = ab.sqrt() * z + (1 - ab).sqrt() * noise
        eps_lora = reg.unet(z_t, t, encoder_hidden_states=pos).sample
        eps_c = frozen(z_t, t, encoder_hidden_states=pos).sample
        eps_u = frozen(z_t, t, encoder_hidden_states=neg).sample
        eps_cfg = eps_u + cfg * (eps_c - eps_u)
        x0_lora = (z_t - (1 - ab).sqrt() * eps_lora) / ab.sqrt()
        x0_frozen = (z_t - (1 - ab).sqrt() * eps_cfg) / ab.sqrt()
        weight = (z - x0_frozen).abs().mean(dim=(1, 2, 3), keepdim=True)
        grad = (x0_lora - x0_frozen) / weight

    assert torch.equal(result.t, t)
    assert grad.abs().max() > 1e-3  # the LoRA really makes the two predictions differ
    torch.testing.assert_close(result.grad, grad, rtol=1e-4, atol=1e-5)
    # surrogate mean((z - sg(z - grad))^2): value mean(grad^2), d/dz = 2 grad / numel
    torch.testing.assert_close(z_var.grad, 2 * grad / z.numel(), rtol=1e-4, atol=2e-5 / z.numel())
    assert math.isclose(result.loss.item(), grad.pow(2).mean().item(), rel_tol=1e-4)


def test_regulariser_loss_is_the_epsilon_mse(vsd_setup):
    _, reg, scheduler, z, pos, _ = vsd_setup
    loss = diffusion_loss(reg, z, pos, scheduler, torch.Generator().manual_seed(9))
    loss.backward()
    assert all(p.grad is not None for n, p in reg.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(9)
        t = torch.randint(0, 1000, (2,), generator=gen)
        noise = torch.randn(z.shape, generator=gen)
        ab = _alpha_bars(scheduler, t)
        eps = reg.unet(ab.sqrt() * z + (1 - ab).sqrt() * noise, t, encoder_hidden_states=pos).sample
        expected = ((eps - noise) ** 2).mean()
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)


# -- real training steps --------------------------------------------------------------------------

HR = REALSR_SHIPPED / "hr"  # two RealSR ground truths, 512x512 (tests/data/README.md)


def _config(out, **run) -> TrainConfig:
    return TrainConfig.from_dict({
        "data": {"sources": [str(HR)], "crop_size": 96, "num_workers": 0},
        "prompts": {"source": "none"},
        "model": {"gradient_checkpointing": False},
        "loss": {"lpips_pretrained": False},
        "run": {"output_dir": str(out), "batch_size": 1, "gradient_accumulation": 2, "max_steps": 3,
                "mixed_precision": "no", "checkpoint_every": 2, "validate_every": 2, "log_every": 1,
                "device": "cpu", **run},
    })


@pytest.fixture(scope="module")
def trained(tiny_components, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-run")
    components = copy.deepcopy(tiny_components)
    trainer = Trainer(_config(out), components)
    result = trainer.fit(progress=False)
    return out, trainer, result


def test_three_steps_train_exactly_the_intended_parameters(trained, tiny_components):
    out, trainer, result = trained
    assert len(result.history) == 3
    for logs in result.history:
        assert set(logs) >= {"total", "l2", "lpips", "vsd", "critic"}
        assert all(np.isfinite(v) for v in logs.values()), logs
        assert logs["l2"] > 0 and logs["lpips"] > 0 and logs["vsd"] > 0 and logs["critic"] > 0

    original = {"unet": tiny_components.unet.state_dict(), "vae": tiny_components.vae.state_dict()}
    generator, regulariser = trainer.gen, trainer.regulariser
    checked = {"trained": 0, "frozen": 0}
    for part, model in (("unet", generator.unet), ("vae", generator.vae), ("unet", regulariser.unet)):
        for name, param in model.named_parameters():
            is_generator_conv_in = model is generator.unet and name.startswith("conv_in.base_layer")
            if "lora_" in name or is_generator_conv_in:
                assert param.requires_grad, name
                base = original[part][name.replace(".base_layer", "")] if is_generator_conv_in else None
                moved = not torch.equal(param, base) if base is not None else param.abs().sum() > 0
                assert moved, f"{part}:{name} did not train"
                checked["trained"] += 1
            else:
                assert not param.requires_grad, name
                assert torch.equal(param, original[part][name.replace(".base_layer", "")]), f"{part}:{name} changed"
                checked["frozen"] += 1
    assert checked["trained"] > 100 and checked["frozen"] > 100
    for name, param in trainer.text_encoder.named_parameters():
        assert torch.equal(param, tiny_components.text_encoder.state_dict()[name]), name
    # the LoRA B matrices start at zero: every one of them must have moved (all modules get gradient)
    assert all(p.abs().sum() > 0 for n, p in generator.named_parameters() if "lora_B" in n)

    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["checkpoint-0000002", "checkpoint-0000003"]
    assert {p.name for p in (out / "checkpoints" / names[0]).iterdir()} == {
        "trainable.safetensors", "optim.pt", "rng-0.pt", "state.json", "config.json"}
    assert (out / "validation" / "step-0000002.png").is_file()
    assert list((out / "logs").rglob("events.out.tfevents*")), "no TensorBoard event file"


def test_resume_reproduces_the_uninterrupted_run(trained, tiny_components, tmp_path):
    out, _, result = trained
    config = _config(out)
    trainer = Trainer(config, copy.deepcopy(tiny_components))
    path = trainer.resume(str(out / "checkpoints" / "checkpoint-0000002"))
    assert path is not None and trainer.counters == {"step": 2, "micro_step": 4}
    config.run.output_dir = str(tmp_path)  # don't overwrite the first run's files
    resumed = trainer.fit(progress=False)
    assert len(resumed.history) == 1
    for key, value in result.history[2].items():
        assert math.isclose(resumed.history[0][key], value, rel_tol=1e-6, abs_tol=1e-9), key


def test_exported_weights_load_in_the_pipeline_and_change_its_output(trained, tiny_components, tiny_base_dir):
    from osediff.checkpoint import OSEDiffWeights
    from osediff.pipeline import OSEDiffPipeline

    out, trainer, _ = trained
    pkl, safetensors = out / "export" / "osediff.pkl", out / "export" / "osediff.safetensors"
    weights = OSEDiffWeights.load(pkl)
    assert weights.rank_unet == 4 and weights.rank_vae == 4
    assert "conv_in.base_layer.weight" in weights.unet_state and weights.vae_state

    image = Image.open(HR / "Canon_001_LR4.webp").convert("RGB").crop((0, 0, 16, 16))
    outputs = {}
    for key, spec in (("pkl", pkl), ("safetensors", safetensors), ("none", None)):
        # an fp32 decoder: the default is bf16 on CPUs that have it, and the trainer's decode below is fp32
        pipe = OSEDiffPipeline.from_pretrained(tiny_base_dir, spec, device="cpu", dtype="fp32", decoder_dtype="fp32")
        outputs[key] = pipe.run(image, 4, "", align="none", output_type="pt").image
    assert torch.equal(outputs["pkl"], outputs["safetensors"])
    assert (outputs["pkl"] - outputs["none"]).abs().max() > 1e-3

    # and the pipeline computes what the trained generator computes (latent mean, no colour fix)
    gen = trainer.gen
    x = torch.from_numpy(np.asarray(image.resize((64, 64), Image.BICUBIC), dtype=np.float32) / 255)
    x = x.permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        embeds = trainer.encode_prompts([""])
        z_l = gen.vae.encode(x).latent_dist.mode() * gen.scaling_factor
        eps = gen.unet(z_l, torch.tensor([999]), encoder_hidden_states=embeds).sample
        z_h = (z_l - (1 - gen.abar_T).sqrt() * eps) / gen.abar_T.sqrt()
        expected = (gen.decode(z_h)[0] + 1) / 2
    torch.testing.assert_close(outputs["pkl"], expected.clamp(0, 1), atol=2e-3, rtol=0)


def test_ram_prompts_tag_the_hq_crops(trained, monkeypatch):
    from osediff.prompts import base

    _, trainer, _ = trained
    seen = {}

    def fake_ram(**kwargs):
        seen["kwargs"] = kwargs
        return lambda images, user_prompt="": [f"tags of {im.size[0]}px" for im in images]

    monkeypatch.setitem(base._REGISTRY, "ram", base._Entry(fake_ram, None))
    monkeypatch.setattr(trainer.config.prompts, "source", "ram")
    monkeypatch.setattr(trainer, "prompt_extractor", None)
    prompts = trainer.prompts_for(torch.rand(2, 3, 96, 96), ["ignored", "ignored"])
    assert prompts == ["tags of 96px", "tags of 96px"]
    assert seen["kwargs"]["bare"] is True  # the authors train on the tags alone


def test_cli_export_only_and_bad_resume(trained, tiny_base_dir, tmp_path, capsys):
    from osediff.checkpoint import OSEDiffWeights
    from osediff.cli import main

    out, trainer, _ = trained
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {{sources: ['{HR}'], crop_size: 96}}\nprompts: {{source: none}}\n"
                      f"model: {{base: '{tiny_base_dir}'}}\nloss: {{lpips_pretrained: false}}\n"
                      f"run: {{output_dir: '{out}', mixed_precision: 'no', device: cpu}}\n")
    assert main(["train", "--config", str(config), "--resume", str(tmp_path / "nowhere")]) == 2
    assert f"--resume {tmp_path / 'nowhere'}: not a checkpoint folder" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--export-only"]) == 2
    assert "--export-only needs --resume" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--resume", "latest", "--export-only",
                 "--output-dir", str(tmp_path / "again")]) == 2  # nothing to resume there
    assert "no checkpoint to export" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--resume", "latest", "--export-only"]) == 0
    exported = OSEDiffWeights.load(out / "export" / "osediff.safetensors")
    final = trainer.gen.export()  # the last checkpoint is step 3, the final state
    assert all(torch.equal(exported.unet_state[k], v) for k, v in final.unet_state.items())


def test_resume_latest_with_no_checkpoint_names_the_argument(trained, tmp_path, capsys, monkeypatch):
    from osediff.cli.flags import flag_for

    _, trainer, _ = trained
    monkeypatch.setattr(trainer.config.run, "output_dir", str(tmp_path / "fresh"))
    counters = dict(trainer.counters)
    assert trainer.resume("latest") is None and trainer.counters == counters
    assert capsys.readouterr().out == "resume latest: no checkpoint yet, starting from step 0\n"
    assert trainer.resume("latest", name_of=flag_for) is None  # as osediff train words it
    assert capsys.readouterr().out == "--resume latest: no checkpoint yet, starting from step 0\n"


@pytest.mark.slow
def test_two_process_ddp_run_through_torchrun(tiny_base_dir, tmp_path):
    """The multi-GPU code path (DDP, per-process data and RNG, checkpoint from every process) on gloo/CPU."""
    import os
    import subprocess
    import sys

    config = tmp_path / "train.yaml"
    config.write_text(f"data: {{sources: ['{HR}'], crop_size: 64, num_workers: 0}}\n"
                      f"prompts: {{source: none}}\nmodel: {{base: '{tiny_base_dir}', gradient_checkpointing: true}}\n"
                      "loss: {lpips_pretrained: false}\n"
                      f"run: {{output_dir: '{tmp_path / 'run'}', batch_size: 1, gradient_accumulation: 2, "
                      "max_steps: 1, mixed_precision: 'no', checkpoint_every: 1, validate_every: 0, device: cpu}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "osediff",
                           "train", "--config", str(config)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-0000001"
    assert (checkpoint / "rng-0.pt").is_file() and (checkpoint / "rng-1.pt").is_file()
    assert '"processes": 2' in (checkpoint / "state.json").read_text()
    assert '"micro_step": 2' in (checkpoint / "state.json").read_text()
    assert (tmp_path / "run" / "export" / "osediff.safetensors").is_file()


def test_regulariser_adapters_switch_sets_the_trainable_lora(fresh_components):
    """The authors' regulariser trains its "others" LoRA group only; "all" adds the down and up groups."""
    from osediff.lora import unet_lora_targets

    assert TrainConfig().model.regularizer_adapters == "authors"
    groups = unet_lora_targets(fresh_components.unet)
    counts = {}
    for adapters in ("authors", "all"):
        reg = Regulariser(copy.deepcopy(fresh_components.unet), rank=4, adapters=adapters)
        trainable = {n: p for n, p in reg.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)
        counts[adapters] = sum(p.numel() for p in trainable.values())
        adapters_seen = {n.split(".")[-2] for n in trainable}
        modules = {n.split(".lora_")[0].removeprefix("unet.") for n in trainable}
        if adapters == "authors":
            assert adapters_seen == {"default_others"} and modules == set(groups["default_others"])
        else:
            assert adapters_seen == {"default_encoder", "default_decoder", "default_others"}
            assert modules == {m for names in groups.values() for m in names}
    assert counts["all"] > 3 * counts["authors"] > 0
    with pytest.raises(ConfigError, match=r"model\.regularizer_adapters"):
        TrainConfig.from_dict({"model": {"regularizer_adapters": "some"}})
