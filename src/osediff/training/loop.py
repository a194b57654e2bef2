"""The training loop: one script for one GPU, many GPUs and many nodes (HF Accelerate, DDP).

Per micro-batch: degrade the HQ crops on the device (Real-ESRGAN), resize the LQ back, encode the
prompts, take one generator step, then one critic step on the detached output. Every random draw
of a step comes from generators seeded with (seed, micro-step, process), so resuming from a
checkpoint replays the same steps.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import as_python_argument
from .checkpointing import load_checkpoint, resolve_resume, save_checkpoint
from .config import RunConfig, TrainConfig
from .data import HQDataset, build_dataset, load_validation_images, make_loader
from .files import find_run_inputs, resolve_training_base, resolve_training_prompts
from .model import Generator, Regulariser, cast_frozen
from .outputs import export_generator, save_strip
from .step import GeneratorStep, critic_loss, generator_losses, model_inputs

if TYPE_CHECKING:
    from ..components import BaseComponents

VALIDATION_STREAM = 1000  # generator streams 0/1 are a training step's degradation / model draws
_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    step: int
    history: list[dict[str, float]] = field(default_factory=list)  # per optimiser step
    checkpoints: list[Path] = field(default_factory=list)
    exported: list[Path] = field(default_factory=list)


def step_generator(seed: int, micro_step: int, rank: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator for one purpose (``stream``) of one micro-step on one process."""
    state = np.random.SeedSequence([seed, micro_step, rank, stream]).generate_state(2, np.uint64)
    return torch.Generator(device=device).manual_seed(int(state[0] >> np.uint64(1)))


def optimiser_step(accelerator, loss: torch.Tensor, model: torch.nn.Module, optimizer, scheduler,
                   max_grad_norm: float) -> None:
    """Backward ``loss`` and, at the end of an accumulation window, clip and step this one optimiser.

    Only ``optimizer``'s gradients are unscaled: ``accelerator.clip_grad_norm_`` unscales every prepared
    optimiser, so under fp16 the critic's gradients accumulated so far were divided by the loss scale a
    second time by its own clip, and it learnt from the last micro-batch of each window only. (The shared
    GradScaler may still change its scale at the generator's step, between the critic's last two
    micro-batches; that happens on overflow or once per growth interval and only reweights one window.)
    """
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.unscale_gradients(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    if accelerator.sync_gradients and not optimizer.step_was_skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def training_precision(run: RunConfig) -> str:
    """``run.mixed_precision``, except fp16 on the CPU: fp32 there, with one warning line.

    fp16 autocast and loss scaling are GPU features (accelerate gives the CPU neither, and half weights
    then meet fp32 inputs); the example config asks for fp16, and a CPU smoke run of it should run, in
    the same maths, rather than stop. bf16 is left alone: CPUs run it, if slowly.
    """
    on_cpu = run.device == "cpu" or (run.device is None and not _accelerator_available())
    if run.mixed_precision != "fp16" or not on_cpu:
        return run.mixed_precision
    if os.environ.get("RANK", "0") == "0":
        print("warning: run.mixed_precision fp16 needs a GPU; training on the CPU in fp32 "
              "(set run.mixed_precision: no to silence this)", file=sys.stderr)
    return "no"


def _accelerator_available() -> bool:
    if hasattr(torch, "accelerator"):  # torch >= 2.6 knows every backend
        return torch.accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


class Trainer:
    """Holds the models, optimisers and data of one run; ``fit`` trains, ``export`` writes weights.

    ``prompt_options`` are the ``ram`` extractor's arguments from :func:`resolve_training_prompts`;
    without them the RAM files are found here, before any model loads.
    """

    def __init__(self, config: TrainConfig, components: BaseComponents | None = None,
                 prompt_options: dict[str, Any] | None = None) -> None:
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.utils import ProjectConfiguration, set_seed

        self.config = cfg = config
        self.prompt_options = resolve_training_prompts(cfg.prompts) if prompt_options is None else prompt_options
        out = Path(cfg.run.output_dir)
        self.accelerator = acc = Accelerator(
            gradient_accumulation_steps=cfg.run.gradient_accumulation, mixed_precision=training_precision(cfg.run),
            log_with="tensorboard", cpu=cfg.run.device == "cpu",
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
            # the decoder-LoRA-less VAE path and disabled adapters leave parameters unused in some steps
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        set_seed(cfg.run.seed)  # LoRA initialisation and the random-VGG LPIPS variant draw from it
        if components is None:
            from ..components import load_base_components

            components = load_base_components(resolve_training_base(cfg.model.base))
        self.tokenizer, self.scheduler = components.tokenizer, components.scheduler
        self.weight_dtype = _DTYPES[acc.mixed_precision]
        reg_unet = copy.deepcopy(components.unet) if cfg.loss.regularization.startswith("vsd") else None
        gen = Generator(components.vae, components.unet, self.scheduler.alphas_cumprod, cfg.model.rank_unet,
                        cfg.model.rank_vae, cfg.model.train_vae, cfg.model.train_conv_in)
        critic = None
        if reg_unet is not None:
            critic = Regulariser(reg_unet, cfg.model.rank_regularizer, cfg.model.regularizer_adapters)
        elif cfg.loss.regularization == "adversarial":
            from ..losses import PatchDiscriminator

            critic = PatchDiscriminator()
        if cfg.model.gradient_checkpointing:
            gen.unet.enable_gradient_checkpointing()
            gen.vae.enable_gradient_checkpointing()
            if isinstance(critic, Regulariser):
                critic.unet.enable_gradient_checkpointing()
        for model in filter(None, (gen, critic)):
            cast_frozen(model, self.weight_dtype)
            model.train()
        self.text_encoder = components.text_encoder.to(acc.device, self.weight_dtype).eval()
        from ..losses import build_lpips

        self.lpips = build_lpips(cfg.loss.lpips_pretrained).to(acc.device)

        from diffusers.optimization import get_scheduler

        def optimiser(model, lr):
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
                                    eps=cfg.optim.eps)
            # stepped by hand once per optimiser step, so no num_processes scaling of the horizon
            return opt, get_scheduler(cfg.optim.scheduler, opt, num_warmup_steps=cfg.optim.warmup_steps,
                                      num_training_steps=cfg.run.max_steps)

        self.opt_g, self.sched_g = optimiser(gen, cfg.optim.lr)
        self.gen, self.opt_g = acc.prepare(gen, self.opt_g)
        self.critic = self.opt_c = self.sched_c = None
        if critic is not None:
            self.opt_c, self.sched_c = optimiser(critic, cfg.optim.lr_regularizer)
            self.critic, self.opt_c = acc.prepare(critic, self.opt_c)
        # the VSD regulariser is also called outside DDP, without gradient, for its x0 predictions
        self.regulariser = critic if isinstance(critic, Regulariser) else None
        self.counters = {"step": 0, "micro_step": 0}
        self.degradation = None
        self._negative: torch.Tensor | None = None
        self.prompt_extractor = None

    # -- state -------------------------------------------------------------------------------
    def _parts(self):
        models = {"generator": self.accelerator.unwrap_model(self.gen)}
        optimizers, schedulers = {"generator": self.opt_g}, {"generator": self.sched_g}
        if self.critic is not None:
            models["critic"] = self.accelerator.unwrap_model(self.critic)
            optimizers["critic"], schedulers["critic"] = self.opt_c, self.sched_c
        return models, optimizers, schedulers

    def resume(self, spec: str | None, weights_only: bool = False,
               name_of: Callable[[str], str] = as_python_argument) -> Path | None:
        """Load ``latest`` or a checkpoint path; ``weights_only`` skips optimiser and RNG state (export).

        ``name_of`` names the argument in the note printed when ``latest`` finds nothing (the CLI: a flag)."""
        path = resolve_resume(spec, self.config.run.output_dir)
        if path is not None:
            self.counters = load_checkpoint(path, self.accelerator, *self._parts(), weights_only=weights_only)
        elif spec == "latest":
            self.accelerator.print(f"{name_of('resume')} latest: no checkpoint yet, starting from step 0")
        return path

    def save(self) -> Path:
        return save_checkpoint(self.accelerator, self.config.run.output_dir, self.counters, *self._parts(),
                               config=self.config.to_dict(), keep=self.config.run.keep_checkpoints)

    def export(self, stem: str = "osediff") -> list[Path]:
        paths: list[Path] = []
        if self.accelerator.is_main_process:
            gen = self.accelerator.unwrap_model(self.gen)
            paths = export_generator(gen, Path(self.config.run.output_dir) / "export", stem)
        self.accelerator.wait_for_everyone()
        return paths

    # -- inputs ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, max_length=self.tokenizer.model_max_length, padding="max_length",
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.accelerator.device))[0].float()

    def prompts_for(self, hq: torch.Tensor, captions: list[str]) -> list[str]:
        source = self.config.prompts.source
        if source == "captions":
            return captions
        if source == "none":
            return [""] * hq.shape[0]
        if self.prompt_extractor is None:
            from ..prompts import create_prompt_extractor

            # bare: the tags alone, the authors' training prompt (no user-prompt tail)
            options = {"device": str(self.accelerator.device), "bare": True, **self.prompt_options}
            self.prompt_extractor = create_prompt_extractor("ram", **options)
        from PIL import Image

        images = [Image.fromarray((x.permute(1, 2, 0).float().cpu().numpy() * 255 + 0.5).astype(np.uint8))
                  for x in hq.clamp(0, 1)]
        return list(self.prompt_extractor(images, ""))

    def degrade(self, hq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1] -> LQ in [0, 1]: S / scale, or S with the authors' random resize back
        (Real-ESRGAN); S (CodeFormer, the face model)."""
        from ..degradation import CodeFormerConfig, CodeFormerDegradation, RealESRGANDegradation

        if self.degradation is None:
            config = self.config.degradation_config()
            self.degradation = (CodeFormerDegradation(config) if isinstance(config, CodeFormerConfig)
                                else RealESRGANDegradation(config))
        if isinstance(self.degradation, CodeFormerDegradation):
            return self.degradation(hq, generator=generator)
        return self.degradation(hq, generator=generator, resize_back=self.config.data.lq_resize == "degradation")

    # -- training ----------------------------------------------------------------------------
    def train_micro_step(self, batch: dict) -> GeneratorStep:
        acc, cfg, device = self.accelerator, self.config, self.accelerator.device
        seed, micro, rank = cfg.run.seed, self.counters["micro_step"], acc.process_index
        hq = batch["hq"].to(device)
        x_lq, x_hq = model_inputs(hq, self.degrade(hq, step_generator(seed, micro, rank, 0, device)))
        prompt_embeds = self.encode_prompts(self.prompts_for(hq, batch["caption"]))
        if self._negative is None:
            self._negative = self.encode_prompts([cfg.prompts.negative])
        negative_embeds = self._negative.expand_as(prompt_embeds)
        rng = step_generator(seed, micro, rank, 1, device)
        models = [m for m in (self.gen, self.critic) if m is not None]
        with acc.accumulate(*models):
            with acc.autocast():
                out = generator_losses(self.gen, self.regulariser, self.lpips, x_lq, x_hq, prompt_embeds,
                                       negative_embeds, self.scheduler, cfg.loss, rng, critic=self.critic)
            optimiser_step(acc, out.total, self.gen, self.opt_g, self.sched_g, cfg.optim.max_grad_norm)
            if self.critic is not None:
                with acc.autocast():
                    loss_c = critic_loss(out, x_hq, prompt_embeds, self.scheduler, cfg.loss, rng, self.critic)
                optimiser_step(acc, loss_c, self.critic, self.opt_c, self.sched_c, cfg.optim.max_grad_norm)
                out.terms["critic"] = loss_c.detach()
        self.counters["micro_step"] += 1
        return out

    def fit(self, max_steps: int | None = None, progress: bool = True,
            dataset: HQDataset | None = None) -> TrainResult:
        """Train to ``max_steps``; ``dataset`` is the config's stream, built here unless given."""
        from tqdm.auto import tqdm

        acc, cfg = self.accelerator, self.config
        max_steps = max_steps or cfg.run.max_steps
        if dataset is None:
            dataset = build_dataset(cfg.data, cfg.prompts, cfg.run.seed)
        loader = make_loader(dataset, cfg.run.batch_size, cfg.data.num_workers, self.counters["micro_step"],
                             acc.process_index, acc.num_processes)
        acc.init_trackers("osediff", config=_flat(cfg.to_dict()))
        result = TrainResult(self.counters["step"])
        bar = tqdm(total=max_steps, initial=self.counters["step"], desc="train",
                   disable=not (progress and acc.is_local_main_process))
        sums: dict[str, float] = {}
        batches = iter(loader)
        while self.counters["step"] < max_steps:
            out = self.train_micro_step(next(batches))
            for key, value in {"total": out.total, **out.terms}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / cfg.run.gradient_accumulation
            if not acc.sync_gradients:
                continue
            self.counters["step"] += 1
            # every process saw its own micro-batches: log the mean over processes
            means = acc.reduce(torch.tensor(list(sums.values()), device=acc.device), reduction="mean")
            step, logs, sums = self.counters["step"], dict(zip(sums, means.tolist(), strict=True)), {}
            logs.update({"lr/generator": self.sched_g.get_last_lr()[0]})
            if self.sched_c is not None:
                logs["lr/critic"] = self.sched_c.get_last_lr()[0]
            if torch.cuda.is_available():
                logs["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result.history.append(logs)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if "/" not in k})
            if step % cfg.run.log_every == 0 or step == max_steps:
                acc.log({k if "/" in k else f"loss/{k}": v for k, v in logs.items()}, step=step)
            if cfg.run.checkpoint_every and (step % cfg.run.checkpoint_every == 0 or step == max_steps):
                result.checkpoints.append(self.save())
            if cfg.run.validate_every and step % cfg.run.validate_every == 0:
                self.validate(dataset)
            if cfg.run.export_every and step % cfg.run.export_every == 0:
                result.exported += self.export(f"osediff-step{step:07d}")
        bar.close()
        result.exported += self.export()
        result.step = self.counters["step"]
        acc.end_training()
        return result

    @torch.no_grad()
    def validate(self, dataset: HQDataset) -> Path | None:
        """LQ | output | HQ strip of fixed validation crops, degraded with a fixed seed."""
        acc, cfg = self.accelerator, self.config
        path = None
        if acc.is_main_process:
            paths = cfg.data.validation or [files[0] for files in dataset.files]
            hq = load_validation_images(paths[:4], cfg.data.crop_size)
            if hq is not None:
                hq = hq.to(acc.device)
                rng = step_generator(cfg.run.seed, 0, 0, VALIDATION_STREAM, acc.device)
                x_lq, _ = model_inputs(hq, self.degrade(hq, rng))
                gen = acc.unwrap_model(self.gen)
                gen.eval()
                # captions belong to training files; validation crops get RAM tags or no prompt
                blank = [""] * hq.shape[0]
                embeds = self.encode_prompts(self.prompts_for(hq, blank) if cfg.prompts.source == "ram" else blank)
                with acc.autocast():
                    x_h, _ = gen(x_lq, embeds, step_generator(cfg.run.seed, 0, 0, VALIDATION_STREAM + 1, acc.device))
                gen.train()
                rows = [((a + 1) / 2, (b + 1) / 2, c) for a, b, c in zip(x_lq, x_h, hq, strict=True)]
                name = f"step-{self.counters['step']:07d}.png"
                path = save_strip(rows, Path(cfg.run.output_dir) / "validation" / name)
        acc.wait_for_everyone()
        return path


def _flat(tree: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """TensorBoard's hparams take scalars only: flatten nested sections, stringify the rest."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def train(config: TrainConfig, resume: str | None = None, max_steps: int | None = None,
          components: BaseComponents | None = None, progress: bool = True) -> TrainResult:
    """Build a :class:`Trainer`, resume if asked, train to ``max_steps`` and export the generator.

    Every file the run reads is found first (:func:`~osediff.training.files.find_run_inputs`)."""
    # model.base is found by the Trainer itself, before it loads anything (unless given components)
    inputs = find_run_inputs(config, resume, need_base=False)
    trainer = Trainer(config, components, inputs.prompt_options)
    trainer.resume(resume)
    return trainer.fit(max_steps, progress, inputs.dataset)
