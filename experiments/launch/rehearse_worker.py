"""The rehearsal's worker (:mod:`experiments.launch.rehearse`): one architecture built at real size in a fresh process,
each of its shapes trained for a few steps and beam-decoded, measured.

    python -m experiments.launch.rehearse_worker < SPEC.json

A process of its own so that its peak memory is the architecture's alone, and it imports only what a training step
needs (torch, bertgen, the optimizer), so the memory before the model is built is small and the start is quick.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bertgen import schemes

from ..config.validate import short_text
from ..recipes.optim import build_optimizer
from ..system import machine

TOKEN_ID_FLOOR = 5  # random token ids start above the special tokens of every family's vocabulary
OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def failure_kind(err: BaseException) -> str:
    text = str(err).lower()
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or any(m in text for m in OOM_MARKERS):
        return "out of memory"
    if isinstance(err, IndexError) or "index out of range" in text or "position" in text:
        return "a length past the model's positions"
    return type(err).__name__


def run_worker(spec: dict[str, Any]) -> None:
    """Build the architecture once and measure each of its lengths (ascending, so that memory a finished length
    leaves with the allocator is below the next one's peak); results are written to ``spec["out"]`` after each.
    ``spec["lengths"]``: [source, target, micro-batch, decode?] per shape."""
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    results: list[dict[str, Any]] = []

    def write() -> None:
        tmp = spec["out"] + ".tmp"
        Path(tmp).write_text(json.dumps(results), encoding="utf-8")
        os.replace(tmp, spec["out"])

    base_rss = machine.rss_bytes()
    try:
        model = schemes.build(spec["scheme"], **spec["configs"], **spec["model"], device=device).model.train()
        optimizer = build_optimizer(model.parameters(), optimizer=spec["optimizer"])
    except Exception as err:  # noqa: BLE001 - reported as the shape's failure line
        results.append({"source": 0, "target": 0, "error": failure_kind(err), "message": short_text(err, 240)})
        write()
        return
    for group in optimizer.param_groups:
        group["lr"] = 1e-4
    params = [p for p in model.parameters() if p.requires_grad]
    bf16 = spec["dtype"] == "bf16"
    vocab = min(int(c.get("vocab_size") or 0) for c in spec["configs"].values()) if spec["configs"] else 1000
    generator = torch.Generator().manual_seed(0)

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    def step(ids, mask, labels) -> None:  # experiments.recipes.train's update: forward, backward, clip, step
        with autocast():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=False).loss
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for source, target, batch, decode in spec["lengths"]:
        result: dict[str, Any] = {"source": source, "target": target, "micro_batch": batch}
        try:
            ids = torch.randint(TOKEN_ID_FLOOR, vocab, (batch, source), generator=generator).to(device)
            mask = torch.ones_like(ids)
            labels = torch.randint(TOKEN_ID_FLOOR, vocab, (batch, target), generator=generator).to(device)
            machine.reset_peak_rss()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step(ids, mask, labels)  # warm-up: allocates the optimizer state, picks kernels
            seconds = []
            for _ in range(spec["steps"]):
                machine.synchronize(device.type)
                start = time.perf_counter()
                step(ids, mask, labels)
                machine.synchronize(device.type)
                seconds.append(time.perf_counter() - start)
            result["step_s"] = sorted(seconds)[len(seconds) // 2]
            result["peak_bytes"] = (torch.cuda.max_memory_allocated() if device.type == "cuda"
                                    else machine.peak_rss_bytes() - base_rss)
            if decode:
                model.eval()
                k = max(1, min(spec["decode_examples"], batch))
                start = time.perf_counter()
                with torch.no_grad(), autocast():
                    out = model.generate(ids[:k], mask[:k], num_beams=spec["num_beams"], max_new_tokens=target,
                                         min_new_tokens=target)
                machine.synchronize(device.type)
                result["decode_s"] = time.perf_counter() - start
                result["decoded_tokens"] = int(out.size(1)) - 1
                model.train()
        except Exception as err:  # noqa: BLE001 - reported as the shape's failure line
            result.update(error=failure_kind(err), message=short_text(err, 240))
            optimizer.zero_grad(set_to_none=True)
            model.train()
        results.append(result)
        write()


if __name__ == "__main__":
    run_worker(json.loads(sys.stdin.read()))
