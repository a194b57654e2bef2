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
