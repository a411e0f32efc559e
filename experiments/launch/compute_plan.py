"""The compute plan of a grid: tokens, GPU-hours and peak GPU memory per cell, and whether its batch fits a GPU.

    python -m experiments.launch grids/paper.yaml --dry-run [--gpu h100-80gb]   # per cell and a total line
    python -m experiments.launch.compute_plan --table [--gpu a100-80gb]                 # the throughput table

**Everything here is an estimate derived from FLOPs unless a rate was measured**: ``python -m experiments.launch.rehearse
GRID --device cuda`` (``benchmarks/device_check.sh`` runs it) trains each distinct shape of a grid for a few steps
at real size and records the tokens/s it measured, keyed by (shape, lengths, dtype, GPU), in the measured-rates
file (``experiments.launch.measured_rates``: ``$BERTGEN_MEASURED_RATES``, else ``~/.cache/bertgen/measured_rates.json``);
``MEASURED`` holds rates kept in code. A measured rate replaces the estimate for its key, and the plan says so.

The model of a cell is built on the meta device from its checkpoints' ``config.json`` (hub ids of the paper's
checkpoints: their configs are known, ``experiments.config.model_size.KNOWN_CONFIGS``; local directories: read) by the
builder the job uses (``experiments.recipes.build.build_model``), so parameter counts are the exact ones of
``bertgen.schemes`` (Table 1). Lengths S (source) and T (target) are the task's maximum lengths cut to the model's
positions (``experiments.recipes.build.length_limits``): every example is counted padded to the
maximum, an upper bound (batches are padded to their longest example).

Training FLOPs of one example (fwd + bwd = 3 × forward, forward = 2 FLOPs per multiply-add):

    6 · (P_enc · S + P_dec · T + P_xkv · S)        parameters: P_enc encoder, P_dec decoder (both without
                                                    embeddings; a shared stack counts on both sides), P_xkv the
                                                    cross-attention key/value projections, which read the source
  + 6 · d_dec · V · T                               the output projection over the vocabulary V
  + 12 · (L_enc · S² · d_enc + L_dec · (T² + T·S) · d_dec)   attention scores and weighted sums
                                                    (decoder-only ``gpt``: one causal stack over S+T)

Time: FLOPs / (peak dense FLOP/s of the GPU in the cell's dtype × ASSUMED_MFU). bf16 cells use the bf16 tensor
peak; fp32 cells the plain fp32 peak (TF32 is not assumed). GPU-hours do not depend on how many GPUs share a cell
(perfect data-parallel scaling is assumed); decoding the dev/test sets is not included.

Peak memory of one GPU (one DDP rank, micro-batch m = batch / (grad_accum × ranks)):

    16 B/parameter (fp32 weights + grads + Adam's two moments; Adafactor: 8 B + its factored moments ≈ 0)
  + 2 B/parameter under bf16 autocast: the bf16 copy of every weight autocast makes in the forward pass and the
    backward pass reads (measured by experiments.launch.rehearse: without it the plan was 10-36% under the measured peak
    of every shape of grids/paper.yaml, the gap ~2 B/parameter)
  + activations: m · h · (34 · s per layer + cross-attention 7 · T + 4 · S per decoder layer) bytes in bf16
    (Korthikanti et al. 2022, without the a·s² score terms: SDPA's flash / memory-efficient kernels do not keep
    them), twice that in fp32; the logits are never held (bertgen's fused, chunked output projection + loss)
  + 2 GiB CUDA context and allocator slack.

A batch "fits" when that peak is at most 90% of the GPU's memory; otherwise the plan names the gradient
accumulation (a divisor of the batch) or the number of GPUs that makes the micro-batch fit.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from bertgen.families import FAMILIES
from bertgen.schemes import PAPER_CHECKPOINT_CONFIGS, SCHEMES

from ..config.cell import ADAM, CellConfig, paper_cell
from ..config.model_size import checkpoint_config
from ..config.tasks import TASKS, get_task
from ..config.validate import short_text
from ..grid.identity import cell_label
from .measured_rates import RateKey, recorded_rates
from .text_table import format_table


ASSUMED_MFU = 0.35  # model-FLOPs utilisation assumed for every GPU and dtype (an assumption, not a measurement)
MEMORY_HEADROOM = 0.90  # usable fraction of a GPU's memory
CONTEXT_BYTES = 2 * 2**30  # CUDA context, cuBLAS workspaces, allocator fragmentation
GIB = 2**30


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    peak_tflops: dict[str, float]  # dense, per dtype: vendor datasheet numbers


GPUS: dict[str, GPU] = {
    "a100-40gb": GPU("NVIDIA A100 40GB (SXM)", 40, {"bf16": 312.0, "fp32": 19.5}),
    "a100-80gb": GPU("NVIDIA A100 80GB (SXM)", 80, {"bf16": 312.0, "fp32": 19.5}),
    "h100-80gb": GPU("NVIDIA H100 80GB (SXM)", 80, {"bf16": 989.0, "fp32": 67.0}),
    "h200-141gb": GPU("NVIDIA H200 141GB (SXM)", 141, {"bf16": 989.0, "fp32": 67.0}),
    "l40s-48gb": GPU("NVIDIA L40S 48GB", 48, {"bf16": 362.0, "fp32": 91.6}),
}
DEFAULT_GPU = "a100-80gb"

# Measured training throughput (tokens/s per GPU) by (model shape, S, T, dtype, gpu) with the machine it was measured
# on, kept in code; experiments.launch.rehearse records more in the measured-rates file. A measured entry replaces the FLOPs
# estimate for its key.
MEASURED: dict[RateKey, dict[str, Any]] = {}

# -- the model of a cell ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """What the FLOPs and memory of a cell's model depend on."""

    label: str  # e.g. "bert2bert 221.6M"
    params: int  # distinct parameters (Table 1)
    enc: int  # encoder parameters without embeddings (0 for decoder-only)
    dec: int  # decoder parameters without embeddings, cross-attention key/value excluded
    xkv: int  # cross-attention key/value projections (they read the source)
    enc_layers: int
    enc_hidden: int
    dec_layers: int
    dec_hidden: int
    vocab: int  # output vocabulary
    decoder_only: bool
    max_source: int
    max_target: int


def _dims(config: Any) -> tuple[int, int, int]:
    """(layers, hidden, vocabulary) of a BERT-like or GPT-2 config object."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    return int(layers), int(hidden), int(config.vocab_size)


def _is_embedding(name: str) -> bool:
    return "embeddings." in name or ".wte." in name or ".wpe." in name or name.startswith(("wte.", "wpe."))


def _is_cross_kv(name: str) -> bool:
    return ("crossattention.self.key." in name or "crossattention.self.value." in name
            or "crossattention.c_attn." in name)


def _count(module: Any) -> tuple[int, int]:
    """(parameters without embeddings and cross-attention K/V, cross-attention K/V parameters)."""
    plain = xkv = 0
    for name, p in module.named_parameters():
        if _is_embedding(name) or "lm_head" in name:
            continue
        if _is_cross_kv(name):
            xkv += p.numel()
        else:
            plain += p.numel()
    return plain, xkv


_SHAPES: dict[str, Shape | str] = {}


def cell_configs(cell: CellConfig) -> dict[str, dict[str, Any]] | str:
    """The config.json values of the cell's checkpoints by family, or why they cannot be known here (a string)."""
    refs = {f: getattr(cell.checkpoints, f) for f in FAMILIES if getattr(cell.checkpoints, f)}
    configs = {f: checkpoint_config(str(r)) for f, r in refs.items()}
    missing = [str(refs[f]) for f, c in configs.items() if c is None]
    if missing:
        return f"config of {', '.join(missing)} unknown (not a known hub id, local directory or cached)"
    return configs


def cell_shape(cell: CellConfig) -> Shape | str:
    """The cell's model shape, or why it cannot be known without its checkpoints (a string)."""
    configs = cell_configs(cell)
    return configs if isinstance(configs, str) else shape_from_configs(cell, configs)


def shape_from_configs(cell: CellConfig, configs: dict[str, dict[str, Any]]) -> Shape | str:
    """The shape of the cell's model built from these checkpoint configs (family -> config.json values) on the meta
    device, by the builder the job uses (``experiments.recipes.build.build_model``)."""
    # lazy: loads datasets (~2 s), which this module does not otherwise
    from ..recipes.build import build_model, length_limits

    if cell.vocab:  # a vocabulary the harness trains (experiments.data.vocabulary): its size, not the checkpoints'
        size = cell.vocab["size"]
        configs = {family: {**config, "vocab_size": size,
                            **{name: min(config[name], size - 1) for name in ("bos_token_id", "eos_token_id",
                                                                            "pad_token_id")
                               if isinstance(config.get(name), int)}}
                   for family, config in configs.items()}
    key = json.dumps([cell.scheme, cell.task, configs, cell.model, cell.init_layers, cell.cross_attention_init],
                     sort_keys=True, default=str)
    if key not in _SHAPES:
        try:
            model = build_model(cell, "meta", sources=configs)[0]
        except (ValueError, TypeError, OSError) as err:
            _SHAPES[key] = f"cannot build {cell.scheme} from its configs ({short_text(err, 120)})"
            return _SHAPES[key]
        max_source, max_target = length_limits(model, get_task(cell.task))
        total = model.num_parameters()
        label = f"{cell.scheme} {total / 1e6:.1f}M"
        if hasattr(model, "encoder"):
            enc, _ = _count(model.encoder)
            dec, xkv = _count(model.decoder)
            e_layers, e_hidden, _ = _dims(model.config.encoder)
            d_layers, d_hidden, vocab = _dims(model.config.decoder)
            _SHAPES[key] = Shape(label, total, enc, dec, xkv, e_layers, e_hidden, d_layers, d_hidden, vocab, False,
                                 max_source, max_target)
        else:  # gpt: one decoder-only stack reads source and target
            dec, _ = _count(model)
            layers, hidden, vocab = _dims(model.config)
            _SHAPES[key] = Shape(label, total, 0, dec, 0, 0, 0, layers, hidden, vocab, True, max_source, max_target)
    return _SHAPES[key]


# -- FLOPs, time, memory ----------------------------------------------------------------------------------------------
def train_flops_per_example(shape: Shape, source: int, target: int) -> float:
    """Training FLOPs (forward + backward) of one example of ``source`` + ``target`` tokens (module docstring)."""
    head = 6.0 * shape.dec_hidden * shape.vocab * target
    if shape.decoder_only:
        n = source + target
        return 6.0 * shape.dec * n + head + 12.0 * shape.dec_layers * n * n * shape.dec_hidden
    dense = 6.0 * (shape.enc * source + shape.dec * target + shape.xkv * source)
    attention = 12.0 * (shape.enc_layers * source ** 2 * shape.enc_hidden
                        + shape.dec_layers * (target ** 2 + target * source) * shape.dec_hidden)
    return dense + head + attention


def dtype_of(cell: CellConfig) -> str:
    """bf16 when the cell trains under bf16 autocast on a GPU (``train.bf16: true | auto``), else fp32."""
    return "bf16" if cell.train.bf16 in (True, "auto") else "fp32"


def tokens_per_second(shape: Shape, source: int, target: int, dtype: str, gpu: str) -> tuple[float, str]:
    """(training tokens/s of one GPU, "measured on ..." | "estimate"): MEASURED or the measured-rates file when
    they have the key."""
    key = (shape.label, source, target, dtype, gpu)
    measured = MEASURED.get(key) or recorded_rates().get(key)
    if measured is not None:
        return float(measured["tokens_per_s"]), f"measured on {measured['machine']}"
    flops = GPUS[gpu].peak_tflops[dtype] * 1e12 * ASSUMED_MFU
    return flops / train_flops_per_example(shape, source, target) * (source + target), "estimate"


def activation_bytes(shape: Shape, micro_batch: int, source: int, target: int, dtype: str) -> float:
    scale = 1.0 if dtype == "bf16" else 2.0
    if shape.decoder_only:
        n = source + target
        per = 34.0 * n * shape.dec_hidden * shape.dec_layers
    else:
        per = (34.0 * source * shape.enc_hidden * shape.enc_layers
               + (34.0 * target + 7.0 * target + 4.0 * source) * shape.dec_hidden * shape.dec_layers)
    return scale * micro_batch * per


AUTOCAST_COPY_BYTES = 2.0  # per parameter: autocast's bf16 copy of each weight, kept from the forward to the backward


def peak_bytes(shape: Shape, micro_batch: int, source: int, target: int, dtype: str, optimizer: str = ADAM) -> float:
    state = (16.0 if optimizer == ADAM else 8.0) + (AUTOCAST_COPY_BYTES if dtype == "bf16" else 0.0)
    return state * shape.params + activation_bytes(shape, micro_batch, source, target, dtype) + CONTEXT_BYTES


@dataclass
class CellCost:
    cell_id: str
    shape: Shape | None
    why: str = ""  # when shape is None
    tokens: float = 0.0
    gpu_hours: float = 0.0
    peak_gib: float = 0.0
    fit: str = ""
    ranks: int = 1
    source: str = "estimate"


def _micro(batch: int, accum: int, ranks: int) -> int:
    return max(1, math.ceil(batch / (accum * ranks)))


def cell_cost(cell: CellConfig, gpu: str, ranks: int) -> CellCost:
    shape = cell_shape(cell)
    if isinstance(shape, str):
        return CellCost(cell.cell_id, None, shape)
    steps, batch, accum = cell.train.steps, cell.train.batch_size, cell.train.grad_accum
    s, t = shape.max_source, shape.max_target
    dtype, optimizer = dtype_of(cell), cell.train.optimizer
    rate, source = tokens_per_second(shape, s, t, dtype, gpu)
    tokens = float(steps) * batch * (s + t)
    usable = GPUS[gpu].memory_gib * GIB * MEMORY_HEADROOM
    peak = peak_bytes(shape, _micro(batch, accum, ranks), s, t, dtype, optimizer)
    if peak <= usable:
        fit = "fits 1 GPU" + (f" (grad_accum {accum})" if accum > 1 else "") + (f" x {ranks} ranks" if ranks > 1
                                                                                 else "")
    elif peak_bytes(shape, 1, s, t, dtype, optimizer) > usable:
        fit = "does not fit one GPU even at micro-batch 1"
    else:
        need = next(k for k in range(accum, batch + 1) if batch % k == 0
                    and peak_bytes(shape, _micro(batch, k, ranks), s, t, dtype, optimizer) <= usable)
        fit = (f"needs train.grad_accum>={need} (micro-batch {_micro(batch, need, ranks)}) or "
               f"{math.ceil(need / accum) * ranks} GPUs")
    return CellCost(cell.cell_id, shape, tokens=tokens, gpu_hours=tokens / rate / 3600.0, peak_gib=peak / GIB,
                    fit=fit, ranks=ranks, source=source)


def _si(x: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.1f}{unit}"
    return f"{x:.0f}"


@dataclass
class GridCosts:
    """The plan of a launch's cells: columns for the dry-run table and a total line."""

    gpu: str
    costs: dict[str, CellCost]
    labels: dict[str, str]  # cell id -> task/scheme/seedN[/variant]

    headers = ["compute plan", "model", "S+T", "tokens", "GPU-h", "rate", "peak GiB", "batch"]

    def columns(self, cell_id: str) -> list[str]:
        cost = self.costs[cell_id]
        if cost.shape is None:
            return [self.labels[cell_id], "?", "?", "?", "?", "?", "?", cost.why]
        return [self.labels[cell_id], cost.shape.label, f"{cost.shape.max_source}+{cost.shape.max_target}",
                _si(cost.tokens), f"{cost.gpu_hours:,.1f}", "estimate" if cost.source == "estimate" else "measured",
                f"{cost.peak_gib:.1f}", cost.fit]

    def report(self) -> str:
        """The per-cell table (rows by label) and the total line."""
        return format_table(self.headers, [self.columns(c) for c in self.costs]) + "\n" + self.total_line()

    def total_line(self) -> str:
        known = [c for c in self.costs.values() if c.shape is not None]
        unknown = len(self.costs) - len(known)
        measured = sorted({c.source for c in known if c.source != "estimate"})
        gpu = GPUS[self.gpu]
        estimate = (f"ESTIMATE from FLOPs at an assumed {ASSUMED_MFU:.0%} MFU of the {gpu.name}'s dense peak, not a "
                    "measurement")
        count = sum(1 for c in known if c.source != "estimate")
        what = (estimate if not measured else
                f"{count} cells from rates {'; '.join(measured)} (experiments.launch.rehearse), the other "
                f"{len(known) - count} an {estimate}")
        line = (f"compute plan total: {len(known)} cells, {_si(sum(c.tokens for c in known))} tokens, "
                f"{sum(c.gpu_hours for c in known):,.0f} GPU-hours on {gpu.name}, peak "
                f"{max((c.peak_gib for c in known), default=0.0):.1f} GiB of {gpu.memory_gib:g} GiB "
                f"({what}; experiments/launch/compute_plan.py)")
        if unknown:
            line += f"; {unknown} cells without a plan (their checkpoint configs are not known here)"
        over = sum(1 for c in known if not c.fit.startswith("fits"))
        if over:
            line += f"; {over} cells do not fit one GPU as set"
        return line


def grid_costs(cells: list[CellConfig], grid: Any, gpu: str | None = None) -> GridCosts:
    """The compute plan of a launch's cells (of ``grid``, whose Slurm settings give the ranks) on ``gpu``."""
    gpu = gpu or DEFAULT_GPU
    if gpu not in GPUS:
        raise ValueError(f"--gpu {gpu!r}: expected one of {', '.join(GPUS)}")
    s = grid.executor["slurm"]
    ranks = int(s.get("nodes") or 1) * int(s.get("tasks_per_node") or 1)

    return GridCosts(gpu, {c.cell_id: cell_cost(c, gpu, ranks) for c in cells},
                     {c.cell_id: cell_label(c) for c in cells})


# -- the table ------------------------------------------------------------------------------------------------------
def _paper_settings(task: str, scheme: str) -> CellConfig:
    """The cell of ``task`` and ``scheme`` with the paper's settings (``experiments.config.cell.paper_cell``); a task that
    counts epochs gets one step, which no shape reads."""
    doc = paper_cell(TASKS[task], scheme, seed=0, grid="compute_plan", output_root=".")
    doc["train"]["steps"] = doc["train"]["steps"] or 1
    return CellConfig.from_dict(doc, f"{task}/{scheme}")


def throughput_table(gpu: str = DEFAULT_GPU) -> list[list[str]]:
    """tokens/s per GPU for the paper's model sizes × the paper's task lengths × dtype (estimates unless measured)."""

    lengths = sorted({(t.max_source_length, t.max_target_length) for t in TASKS.values()
                      if not getattr(t, "synthetic", False)})
    rows = []
    for size in ("base", "large"):
        for scheme in ("bert2bert", "bertShare", "gpt"):
            if scheme not in SCHEMES:
                continue
            for s, t in lengths:
                task = next(k for k, v in TASKS.items() if (v.max_source_length, v.max_target_length) == (s, t))
                shape = shape_from_configs(_paper_settings(task, scheme), {
                    f: PAPER_CHECKPOINT_CONFIGS[size][f] for f in SCHEMES[scheme].checkpoints})
                assert not isinstance(shape, str), shape
                for dtype in ("bf16", "fp32"):
                    rate, source = tokens_per_second(shape, shape.max_source, shape.max_target, dtype, gpu)
                    rows.append([size, shape.label, f"{shape.max_source}+{shape.max_target}", dtype,
                                 f"{rate:,.0f}", source])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.launch.compute_plan",
                                     description="The throughput table behind --dry-run's compute plan (estimates).")
    parser.add_argument("--table", action="store_true", help="print the tokens/s table")
    parser.add_argument("--gpu", default=DEFAULT_GPU, choices=sorted(GPUS))
    args = parser.parse_args(argv)

    print(f"training tokens/s per {GPUS[args.gpu].name}: ESTIMATES from FLOPs at an assumed {ASSUMED_MFU:.0%} MFU "
          "(experiments/launch/compute_plan.py docstring), not measurements")
    print(format_table(["size", "model", "S+T", "dtype", "tokens/s", "source"], throughput_table(args.gpu)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
