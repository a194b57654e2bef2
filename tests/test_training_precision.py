"""Mixed precision in training: loss-scaled gradient accumulation with two optimisers, and fp16 on CPU."""

from __future__ import annotations

import pytest
import torch

from osediff.training.loop import optimiser_step


@pytest.fixture
def fp16_accelerator(monkeypatch):
    """An Accelerator with 2 accumulation steps and a real (CPU) GradScaler, as fp16 on a GPU has."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
    # CPU fp16 gets no scaler from accelerate; give it torch's CPU GradScaler and the fp16 switches
    monkeypatch.setattr(Accelerator, "mixed_precision", property(lambda self: "fp16"))
    acc.native_amp = True
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    return acc


def test_each_optimiser_unscales_its_own_accumulated_gradients_once(fp16_accelerator):
    acc = fp16_accelerator
    gen, critic = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    for model in (gen, critic):
        torch.nn.init.ones_(model.weight)
    opt_g = torch.optim.SGD(gen.parameters(), lr=1.0)
    opt_c = torch.optim.SGD(critic.parameters(), lr=1.0)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lambda _: 1.0)
    sched_c = torch.optim.lr_scheduler.LambdaLR(opt_c, lambda _: 1.0)
    gen, opt_g, critic, opt_c = acc.prepare(gen, opt_g, critic, opt_c)
    x = torch.ones(1, 1)
    for _ in range(2):  # one accumulation window: generator step then critic step per micro-batch
        with acc.accumulate(gen, critic):
            optimiser_step(acc, gen(x).sum(), gen, opt_g, sched_g, max_grad_norm=100.0)
            optimiser_step(acc, critic(x).sum(), critic, opt_c, sched_c, max_grad_norm=100.0)
    # each micro-batch's loss is divided by 2 (accumulation): the summed gradient is 0.5 + 0.5 = 1, and
    # SGD with lr 1 moves both weights from 1 to 0; before the fix the critic moved by 0.5 + 0.5 / 1024
    assert gen.weight.item() == pytest.approx(0.0, abs=1e-6)
    assert critic.weight.item() == pytest.approx(0.0, abs=1e-6)


def _image_folder(folder):
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.usefixtures("single_thread")
def test_fp16_on_cpu_trains_in_fp32_after_one_warning_line(fresh_components, tmp_path, capsys):
    from osediff.training.config import TrainConfig
    from osediff.training.loop import Trainer

    config = TrainConfig.from_dict({
        "data": {"sources": [str(_image_folder(tmp_path / "hq"))], "crop_size": 32, "num_workers": 0},
        "prompts": {"source": "none"}, "model": {"gradient_checkpointing": False},
        "loss": {"lpips_pretrained": False},
        "run": {"output_dir": str(tmp_path / "run"), "batch_size": 1, "gradient_accumulation": 2,
                "max_steps": 1, "mixed_precision": "fp16", "checkpoint_every": 0, "validate_every": 0,
                "device": "cpu"},
    })
    trainer = Trainer(config, fresh_components)
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "fp16" in line] == [
        "warning: run.mixed_precision fp16 needs a GPU; training on the CPU in fp32 "
        "(set run.mixed_precision: no to silence this)"]
    assert trainer.accelerator.mixed_precision == "no" and trainer.weight_dtype == torch.float32
    result = trainer.fit(progress=False)
    assert result.step == 1 and all(torch.isfinite(torch.tensor(v)) for v in result.history[0].values())


def test_precision_choice_before_any_model(monkeypatch, capsys):
    from osediff.training import loop
    from osediff.training.config import RunConfig

    monkeypatch.setattr(loop, "_accelerator_available", lambda: False)
    assert loop.training_precision(RunConfig(mixed_precision="fp16", device=None)) == "no"
    assert loop.training_precision(RunConfig(mixed_precision="bf16", device="cpu")) == "bf16"
    assert loop.training_precision(RunConfig(mixed_precision="no", device="cpu")) == "no"
    assert capsys.readouterr().err.count("\n") == 1  # one line, for the fp16 case only
    monkeypatch.setattr(loop, "_accelerator_available", lambda: True)
    assert loop.training_precision(RunConfig(mixed_precision="fp16", device=None)) == "fp16"
    assert loop.training_precision(RunConfig(mixed_precision="fp16", device="cpu")) == "no"
