"""Rehearse a grid at real size on this machine: what each distinct shape costs, measured, beside the plan's estimate.

    python -m experiments.launch.rehearse GRID [--only PATTERN] [--set key=value ...] [--device cpu|cuda]
                                        [--steps N] [--micro-batch B] [--decode-examples K] [--no-record]

What a researcher does by hand before a sweep, for every distinct shape of the grid at once. A shape is what time
and memory depend on: the model's architecture (the cells' checkpoint configs: layers, widths, vocabulary,
positions; schemes that differ only in which side is warm, like rnd2rnd and bert2bert, are one shape), the task's
source/target lengths (cut to the model's positions, as training cuts them) and the dtype (bf16 where the cell asks
for it and the device computes bf16 natively). For each shape, in a fresh process per architecture:

1. the real-size model is built from its checkpoints' ``config.json`` with random weights (the values do not change
   time or memory; ``experiments.config.model_size.KNOWN_CONFIGS`` holds the paper's public configs, so nothing is
   downloaded), with the cell's optimizer;
2. one warm-up and ``--steps`` timed training steps run at micro-batch ``B`` with every example padded to the
   maximum lengths (the worst case), the same forward/backward/clip/update as ``experiments.recipes.train``;
3. ``--decode-examples`` sources are beam-decoded (the cell's beams) to the task's maximum target length (EOS is
   held back until then: the worst case again), once per target length of an architecture, at its longest source.

The worker is :mod:`experiments.launch.rehearse_worker`.

It prints, per shape, the measured step time, tokens/s, MFU (the plan's FLOPs over the step time, against this
machine's measured GEMM peak, or a GPU's datasheet peak as the plan uses) and peak memory (CUDA: max allocated; CPU:
the peak RSS of the training steps less the RSS before the model was built), each beside
``experiments.launch.compute_plan``'s estimate for the same shape and micro-batch, with the ratio. Measured tokens/s are
recorded in the measured-rates file (``experiments.launch.measured_rates``) under this device's key, so the next
``launch --dry-run --gpu <that GPU>`` plans from measurement and says so.

A shape that fails (out of memory, a length past the model's positions, any error of the step or the decode) is one
line naming its cells, the shape and what to change; the exit status is then 2. Nothing is submitted or written
besides the measured-rates file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cli import EXIT_OK, EXIT_REFUSED, add_device, device, entry_point
from ..config.cell import CellConfig
from ..config.validate import Refusal, short_text
from ..grid.identity import cell_label
from ..grid.load import load_selection
from ..system import machine
from . import compute_plan
from .measured_rates import record_rates
from .text_table import format_table

DEFAULT_STEPS = 2
SCORE_LIMIT = 5.0  # ratios beyond 1/x..x get a mark in the table


# -- shapes ---------------------------------------------------------------------------------------------------------
@dataclass
class Lengths:
    """One (source, target) length pair of an architecture and the cells that train at it."""

    source: int
    target: int
    micro_batch: int = 1  # examples per step: --micro-batch, else the plan's largest of these cells (GPU) or 1 (CPU)
    shape_labels: set[str] = field(default_factory=set)  # compute_plan Shape labels (scheme + parameters)
    cells: list[str] = field(default_factory=list)  # cell labels
    shape: compute_plan.Shape | None = None


@dataclass
class Architecture:
    """The cells that build one model (same configs up to which side is warm), optimizer and dtype."""

    scheme: str
    configs: dict[str, dict[str, Any]]
    model: dict[str, Any]
    optimizer: str
    dtype: str
    num_beams: int
    lengths: dict[tuple[int, int], Lengths] = field(default_factory=dict)


def plan_micro_batch(cell: CellConfig, ranks: int) -> int:
    """The micro-batch a cell's step runs on one GPU: batch_size / (grad_accum x ranks), as the plan counts it."""
    return max(1, math.ceil(cell.train.batch_size / (cell.train.grad_accum * ranks)))


def group_shapes(cells: list[CellConfig], device: str, micro_batch: int | None = None,
                 ranks: int = 1) -> tuple[list[Architecture], list[str]]:
    """The grid's cells grouped by architecture and then lengths; cells without a known shape as lines.
    ``micro_batch``: examples per step for every shape (None: 1 on a CPU, the plan's on a GPU)."""
    native = machine.native_bf16(torch.device(device))
    groups: dict[tuple, Architecture] = {}
    unknown = []
    for cell in cells:
        configs = compute_plan.cell_configs(cell)
        shape = configs if isinstance(configs, str) else compute_plan.shape_from_configs(cell, configs)
        if isinstance(shape, str):
            unknown.append(f"{cell_label(cell)}: {shape}")
            continue
        dtype = "bf16" if compute_plan.dtype_of(cell) == "bf16" and native else "fp32"
        optimizer = cell.train.optimizer
        architecture = dataclasses.replace(shape, label="", max_source=0, max_target=0)
        beams = cell.decode.num_beams
        group = groups.setdefault((architecture, optimizer, dtype, beams), Architecture(
            cell.scheme, configs, dict(cell.model), optimizer, dtype, beams))
        at = group.lengths.setdefault((shape.max_source, shape.max_target), Lengths(shape.max_source,
                                                                                    shape.max_target, shape=shape))
        wanted = micro_batch or (plan_micro_batch(cell, ranks) if device == "cuda" else 1)
        at.micro_batch = max(at.micro_batch, wanted) if at.cells else wanted
        at.shape_labels.add(shape.label)
        at.cells.append(cell_label(cell))
    return list(groups.values()), unknown


# -- the parent: run the workers, compare, record --------------------------------------------------------------------
@dataclass
class Measured:
    architecture: Architecture
    at: Lengths
    result: dict[str, Any]


def run_architecture(architecture: Architecture, args: argparse.Namespace) -> list[Measured]:
    """One worker process for ``architecture``; a killed worker fails its lengths that have no result."""
    ordered = sorted(architecture.lengths.values(), key=lambda at: (at.source + at.target, at.source))
    # one decode per target length, at its longest source: the worst case of the shapes that share it
    decoded = {at.target: at for at in sorted(ordered, key=lambda at: at.source)}
    with tempfile.TemporaryDirectory(prefix="bertgen-rehearse-") as tmp:
        out = str(Path(tmp) / "results.json")
        spec = {"scheme": architecture.scheme, "configs": architecture.configs, "model": architecture.model,
                "optimizer": architecture.optimizer, "dtype": architecture.dtype, "num_beams": architecture.num_beams,
                "device": args.device, "steps": args.steps, "decode_examples": args.decode_examples,
                "lengths": [[at.source, at.target, at.micro_batch, decoded[at.target] is at] for at in ordered],
                "out": out}
        try:
            proc = subprocess.run([sys.executable, "-m", "experiments.launch.rehearse_worker"], input=json.dumps(spec),
                                  text=True, capture_output=True, timeout=args.timeout_s)
            ended = (f"killed by {signal.Signals(-proc.returncode).name} (the kernel's out-of-memory killer when "
                     "SIGKILL)" if proc.returncode < 0 else
                     f"exited {proc.returncode}: {short_text(proc.stderr.strip().splitlines()[-1:] or '', 200)}")
        except subprocess.TimeoutExpired:
            proc, ended = None, f"no result within --timeout-s {args.timeout_s}"
        results = json.loads(Path(out).read_text(encoding="utf-8")) if Path(out).is_file() else []
    if results and results[0]["source"] == 0:  # the model itself could not be built
        return [Measured(architecture, at, dict(results[0], source=at.source, target=at.target)) for at in ordered]
    by_length = {(r["source"], r["target"]): r for r in results}
    return [Measured(architecture, at, by_length.get((at.source, at.target))
                     or {"error": "the worker died", "message": ended}) for at in ordered]


def advice(kind: str, measured: Measured) -> str:
    micro_batch = measured.at.micro_batch
    if kind == "out of memory":
        return ("lower the micro-batch: --set train.grad_accum=K makes it batch_size/K (or more GPUs: "
                f"executor.slurm.tasks_per_node); it did not fit at micro-batch {micro_batch}")
    if kind.startswith("a length"):
        return "shorten the task's lengths (data.max_source_length / max_target_length) or use a model with more positions"
    return f"reproduce with: python -m experiments.launch.rehearse GRID --only '{measured.at.cells[0]}' --steps 1"


def failure_line(measured: Measured) -> str:
    at, r = measured.at, measured.result
    more = f" (+{len(at.cells) - 1} cells)" if len(at.cells) > 1 else ""
    return (f"error: rehearse: {at.cells[0]}{more} [{', '.join(sorted(at.shape_labels))}, S+T {at.source}+{at.target}, "
            f"{measured.architecture.dtype}, micro-batch {at.micro_batch}]: {r['error']}: {r.get('message', '')}; "
            f"{advice(r['error'], measured)}")


def _ratio(measured: float, estimated: float) -> str:
    if not estimated or not math.isfinite(measured):
        return "?"
    x = measured / estimated
    return f"{x:.2f}x" + (" !" if x > SCORE_LIMIT or x < 1 / SCORE_LIMIT else "")


def compare(done: list[Measured], device: str, peaks: dict[str, float]) -> tuple[list[list[str]], list[dict]]:
    """The measured-versus-planned rows and the rate records of the shapes that ran."""
    rows, records = [], []
    key, described = machine.device_key(device), machine.describe(device)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for m in done:
        r, at, dtype = m.result, m.at, m.architecture.dtype
        micro_batch = at.micro_batch
        flops = compute_plan.train_flops_per_example(at.shape, at.source, at.target) * micro_batch
        step_est = flops / (peaks[dtype] * compute_plan.ASSUMED_MFU)
        memory_est = compute_plan.peak_bytes(at.shape, micro_batch, at.source, at.target, dtype,
                                             m.architecture.optimizer) - compute_plan.CONTEXT_BYTES
        tokens_per_s = micro_batch * (at.source + at.target) / r["step_s"]
        rows.append([", ".join(sorted(at.shape_labels)), str(len(at.cells)), f"{at.source}+{at.target}", dtype,
                     str(micro_batch),
                     f"{r['step_s']:.2f}", f"{step_est:.2f}", _ratio(r["step_s"], step_est), f"{tokens_per_s:,.0f}",
                     f"{100 * flops / r['step_s'] / peaks[dtype]:.1f}", f"{r['peak_bytes'] / 2**30:.2f}",
                     f"{memory_est / 2**30:.2f}", _ratio(r["peak_bytes"], memory_est),
                     f"{r['decode_s']:.1f} ({r['decoded_tokens']} tok)" if "decode_s" in r
                     else f"as {max(a.source for a in m.architecture.lengths.values() if a.target == at.target)}"
                     f"+{at.target}"])
        records += [{"shape": label, "source": at.source, "target": at.target, "dtype": dtype, "device": key,
                     "tokens_per_s": tokens_per_s, "micro_batch": micro_batch, "machine": described,
                     "measured_at": stamp} for label in sorted(at.shape_labels)]
    return rows, records


HEADERS = ["shape", "cells", "S+T", "dtype", "batch", "step s", "plan s", "x plan", "tok/s", "MFU %", "peak GiB", "plan GiB",
           "x plan", "decode s"]


def device_peaks(device: str, dtypes: set[str]) -> dict[str, float]:
    """The FLOP/s MFU is read against: a listed GPU's datasheet peak (as the plan), else the measured GEMM peak."""
    key = machine.device_key(device)
    if key in compute_plan.GPUS:
        return {d: compute_plan.GPUS[key].peak_tflops[d] * 1e12 for d in dtypes}
    return {d: machine.peak_gemm_flops(device, d) for d in dtypes}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.launch.rehearse", description=__doc__.split("\n\n")[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", help="a grid YAML file (grids/paper.yaml ...)")
    p.add_argument("--only", help="cells to rehearse, as for experiments.launch (globs over task/scheme/seedN)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a grid setting, as for experiments.launch")
    add_device(p)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="timed training steps per shape (after a warm-up)")
    p.add_argument("--micro-batch", type=int, help="examples per step (default: 1 on a CPU; on a GPU the plan's "
                   "micro-batch, batch_size / (grad_accum x ranks), the largest of a shape's cells)")
    p.add_argument("--decode-examples", type=int, default=1, help="sources beam-decoded per shape")
    p.add_argument("--timeout-s", type=float, default=1800, help="limit for one architecture's worker process")
    p.add_argument("--no-record", action="store_true", help="do not write measured rates for the compute plan")
    return p


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.device = device(args.device)
    if args.steps < 1 or (args.micro_batch is not None and args.micro_batch < 1) or args.decode_examples < 1:
        raise Refusal("--steps, --micro-batch and --decode-examples must be at least 1")
    # the rehearsal reads configs only: data files need not be there yet
    grid, cells = load_selection(args.grid, args.sets, args.only, check_paths=False)
    s = grid.executor["slurm"]
    ranks = int(s.get("nodes") or 1) * int(s.get("tasks_per_node") or 1)
    architectures, unknown = group_shapes(cells, args.device, args.micro_batch, ranks)
    for line in unknown:
        print(f"note: not rehearsed: {line}")
    shapes = sum(len(a.lengths) for a in architectures)
    print(machine.describe(args.device))
    batches = sorted({at.micro_batch for a in architectures for at in a.lengths.values()})
    print(f"{len(cells)} cells, {shapes} distinct shapes in {len(architectures)} architectures; micro-batch "
          f"{'/'.join(map(str, batches)) or '-'}, {args.steps} timed steps + 1 warm-up, beam decode of {args.decode_examples} "
          "source(s) to the maximum target length", flush=True)
    started = time.perf_counter()
    measured: list[Measured] = []
    for i, architecture in enumerate(architectures, 1):
        first = next(iter(architecture.lengths.values()))
        print(f"[{i}/{len(architectures)}] {', '.join(sorted(first.shape_labels))} {architecture.dtype}: "
              f"{len(architecture.lengths)} length(s)", flush=True)
        measured += run_architecture(architecture, args)
    failed = [m for m in measured if "error" in m.result]
    done = [m for m in measured if "error" not in m.result]
    if done:
        peaks = device_peaks(args.device, {m.architecture.dtype for m in done})
        rows, records = compare(done, args.device, peaks)
        print(format_table(HEADERS, rows))
        print(f"plan: experiments.launch.compute_plan at its assumed {compute_plan.ASSUMED_MFU:.0%} MFU of "
              + ", ".join(f"{d} {p / 1e12:,.2f} TFLOP/s" for d, p in sorted(peaks.items()))
              + " (this machine's GEMM peak, or the GPU's datasheet peak); plan GiB: weights + gradients + optimizer "
              "+ activations, without the CUDA context")
        if not args.no_record:
            path = record_rates(records)
            print(f"measured rates of {len(records)} shape labels recorded for device "
                  f"{machine.device_key(args.device)!r} in {path}")
    print(f"rehearsed {len(measured)} shapes in {time.perf_counter() - started:,.0f} s; {len(failed)} failed")
    for m in failed:
        print(failure_line(m), file=sys.stderr)
    return EXIT_REFUSED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
