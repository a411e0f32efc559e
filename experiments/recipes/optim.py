"""Optimiser and learning-rate schedules.

The paper's experimental setup trains with Adam, "learning rate 0.05, linear warmup over 40k steps, normalised by the
square root of the hidden size, and square-root decay" — Tensor2Tensor's ``constant * linear_warmup * rsqrt_decay *
rsqrt_hidden_size``; Adam's betas and epsilon are not stated there: ours are Tensor2Tensor's defaults
(``ADAM_BETAS``, ``ADAM_EPS``; docs/paper-settings.md):

    lr(t) = lr * hidden_size^-0.5 * min(1, t / warmup) * max(t, warmup)^-0.5      ("noam")

so the peak, reached at t = warmup, is lr / sqrt(hidden_size * warmup) (≈ 9e-6 for BERT-base and 40k steps).
Runs of a few hundred steps cannot use that: "constant" (warmup then flat at ``lr``) and "linear" (warmup then
linear decay to 0 at ``total_steps``) take ``lr`` as the peak itself. The schedule's only state is the update count,
so it is checkpointed as one integer and resumes exactly.

The optimiser is Adam unless a cell asks for ``train.optimizer: adafactor`` (Section 5's GPT-2 tuning study compares
the two; grids/gpt2_tuning.yaml). Adafactor is ``torch.optim.Adafactor`` with the settings of Shazeer & Stern (2018)
as Tensor2Tensor's ``adafactor_optimizer_from_hparams`` and mesh-tensorflow (T5) default them — the Google setup the
paper trained in:

* second-moment decay ``beta2_t = 1 - t^-0.8`` (t2t ``optimizer_adafactor_decay_rate`` pow 0.8);
* no first moment (t2t ``optimizer_adafactor_beta1 = 0``: torch's Adafactor keeps none);
* update clipping at RMS 1.0 (``clipping_threshold``), factored second moments for matrices;
* steps relative to each weight's scale (``multiply_by_parameter_scale``), floored at RMS 1e-3 (``epsilon2``);
  ``epsilon1`` is torch's default (the dtype's eps; t2t adds 1e-30 to the squared gradient instead);
* no weight decay (as with Adam here).

The schedule sets ``lr`` every update for both. For Adafactor it is the *relative* step size cap: torch applies
``min(lr, 1/sqrt(t)) * max(1e-3, RMS(weight))``, so its lr lives on another scale than Adam's (a relative step of
1e-2 at most, the Adafactor paper's and t2t's default schedule ``min(1e-2, 1/sqrt(t))``); a grid sweeps it
separately. Its state (factored moments and a step count per tensor) is a plain ``state_dict`` of tensors, checkpointed
and resumed exactly like Adam's.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from ..config.cell import ADAFACTOR, OPTIMIZERS, SCHEDULES, TrainConfig


# Tensor2Tensor's Adam defaults (the framework the paper's models were trained in): our choice, the paper states none.
ADAM_BETAS = (0.9, 0.997)
ADAM_EPS = 1e-9
# Adafactor as t2t / mesh-tensorflow (T5) default it (see the module docstring); torch.optim.Adafactor's names.
ADAFACTOR_BETA2_DECAY = -0.8  # beta2_t = 1 - t^-0.8
ADAFACTOR_EPS = (None, 1e-3)  # (epsilon1: torch's dtype eps, epsilon2: floor of the parameter scale)
ADAFACTOR_CLIP = 1.0  # d: the update's RMS is clipped to 1.0


class LRSchedule:
    """Sets every param group's ``lr`` for the next update; call :meth:`step` once per optimiser update."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: str = TrainConfig.schedule,
                 lr: float = TrainConfig.lr, warmup_steps: int = TrainConfig.warmup_steps, hidden_size: int | None = None, total_steps: int | None = None,
                 scale_by_hidden: bool | None = None):
        if schedule not in SCHEDULES:
            raise ValueError(f"train.schedule: expected one of {SCHEDULES}, got {schedule!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"train.lr: expected a positive number, got {lr!r}")
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ValueError(f"train.warmup_steps: expected a non-negative integer, got {warmup_steps!r}")
        if schedule == "linear" and not (isinstance(total_steps, int) and total_steps > 0):
            raise ValueError(f"train.steps: the linear schedule needs a positive total, got {total_steps!r}")
        # Only the paper's schedule divides by sqrt(hidden_size) unless asked; the short-run schedules take lr as is.
        self.scale_by_hidden = (schedule == "noam") if scale_by_hidden is None else scale_by_hidden
        if self.scale_by_hidden and not (isinstance(hidden_size, int) and hidden_size > 0):
            raise ValueError(f"hidden_size: the {schedule!r} schedule scales by hidden_size^-0.5, got {hidden_size!r}")
        self.optimizer = optimizer
        self.schedule = schedule
        self.lr = float(lr)
        self.warmup_steps = warmup_steps
        self.hidden_size = hidden_size
        self.total_steps = total_steps
        self.updates_done = 0
        self._apply()

    @classmethod
    def from_config(cls, optimizer: torch.optim.Optimizer, train: TrainConfig, hidden_size: int) -> LRSchedule:
        """The schedule a cell's train settings ask for."""
        return cls(optimizer, schedule=train.schedule, lr=train.lr, warmup_steps=train.warmup_steps,
                   hidden_size=hidden_size, total_steps=train.steps, scale_by_hidden=train.scale_lr_by_hidden)

    def lr_at(self, update: int) -> float:
        """Learning rate of the ``update``-th optimiser update (1-based, so the first update is not at lr 0)."""
        t = max(update, 1)
        base = self.lr * (self.hidden_size ** -0.5 if self.scale_by_hidden else 1.0)
        warm = min(1.0, t / self.warmup_steps) if self.warmup_steps else 1.0
        if self.schedule == "noam":
            return base * warm * max(t, self.warmup_steps, 1) ** -0.5
        if self.schedule == "constant":
            return base * warm
        # linear: warm up, then fall to zero at total_steps.
        if self.warmup_steps and t <= self.warmup_steps:
            return base * warm
        span = max(self.total_steps - self.warmup_steps, 1)
        return base * max(0.0, (self.total_steps - t) / span)

    def _apply(self) -> None:
        lr = self.lr_at(self.updates_done + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.updates_done += 1
        self._apply()

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"updates_done": self.updates_done, "schedule": self.schedule}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("schedule") != self.schedule:
            raise ValueError(f"scheduler state: checkpoint was written with schedule {state.get('schedule')!r}, "
                             f"this run uses {self.schedule!r}")
        self.updates_done = int(state["updates_done"])
        self._apply()


def build_optimizer(parameters: Iterable[torch.nn.Parameter], betas: tuple[float, float] = ADAM_BETAS,
                    eps: float = ADAM_EPS, weight_decay: float = 0.0,
                    optimizer: str = TrainConfig.optimizer) -> torch.optim.Optimizer:
    """Adam (or ``optimizer="adafactor"``) over the unique trainable parameters (tied weights appear once). The lr
    is set by :class:`LRSchedule`; ``betas``/``eps`` are Adam's.

    Adam is the fused implementation (one multi-threaded pass per parameter; ~4x faster than the default per-tensor
    loop on the CPU for a MiniLM-size model) wherever torch has one, as transformers' Trainer defaults to since torch
    2.8. Adafactor is torch's single-tensor loop with the t2t/T5 settings of the module docstring.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"train.optimizer: expected one of {OPTIMIZERS}, got {optimizer!r}")
    seen: set[int] = set()
    unique = []
    for p in parameters:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    if not unique:
        raise ValueError("model: no trainable parameters")
    if optimizer == ADAFACTOR:
        return torch.optim.Adafactor(unique, lr=0.0, beta2_decay=ADAFACTOR_BETA2_DECAY, eps=ADAFACTOR_EPS,
                                     d=ADAFACTOR_CLIP, weight_decay=weight_decay)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in unique)
    return torch.optim.Adam(unique, lr=0.0, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


def paper_peak_lr(hidden_size: int, lr: float = TrainConfig.lr, warmup_steps: int = TrainConfig.warmup_steps) -> float:
    """The highest lr the paper's schedule reaches (at t = warmup), for logs and sanity checks."""
    return lr / math.sqrt(hidden_size * warmup_steps)
