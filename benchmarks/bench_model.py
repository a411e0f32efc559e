"""bertgen vs transformers on identical weights: training throughput, peak memory, beam search.

MiniLM-size encoder-decoder (6 layers, 384 hidden, 12 heads, 1536 FFN, vocab 30,522), batch 16 × (64 source + 64
target tokens), dropout 0.1 in training. Prints a markdown table of absolute numbers and ratios (ours / transformers).

    .venv/bin/python benchmarks/bench_model.py [--rounds 3] [--steps 3] [--beam-batches 2] [--threads N]
                                               [--skip-bf16] [--skip-generate] [--device cpu|cuda]

One transformers model is built from a seed and saved; each library loads that checkpoint with its own
``from_pretrained``. Training runs in fresh child processes that import only their library, alternating between
the libraries (transformers, ours, ours, transformers, ...) so that load changes on a shared machine hit both
alike; each child trains one warm-up step and ``--steps`` timed steps (Adam, fused, on both sides) and reports its
step times and its peak RSS (``VmHWM``, Linux). The table gives the median step time as tokens/s and the median peak.
Beam search runs in this process on both models, batches alternating, and checks that the outputs are identical.

It first prints the machine (CPU model, bf16 instructions, threads; the GPU with ``--device cuda``) and the GEMM
peak measured here for fp32 and bf16 (a 2048³ matmul; fp32 on a CPU through both libraries PyTorch ships, its BLAS
and oneDNN, since bertgen.linear may use either), and gives each training row's share of the higher peak (MFU: the
FLOPs of one training step, counted by ``torch.utils.flop_counter`` on our model, over the step time). bf16 rows
run only where the hardware computes bf16 natively (a CPU with AMX or AVX512-BF16, a CUDA GPU with bf16); elsewhere
it says so, since emulated bf16 is many times slower than fp32 and would measure nothing of interest. On CUDA the
peak memory is ``torch.cuda.max_memory_allocated``, on a CPU the process' peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from experiments.system.machine import describe, gemm_peak, native_bf16, peak_rss_bytes, synchronize

CONFIG = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
BATCH, SRC_LEN, TGT_LEN = 16, 64, 64
START, PAD, EOS = 101, 0, 102
LIBRARIES = ("transformers", "ours")


def save_reference_checkpoint(directory: str) -> None:
    """A seeded transformers EncoderDecoderModel (BertGeneration encoder and decoder) saved in HF layout."""
    import transformers as T

    torch.manual_seed(0)
    enc = T.BertGenerationEncoder(T.BertGenerationConfig(**CONFIG))
    dec = T.BertGenerationDecoder(T.BertGenerationConfig(**CONFIG, is_decoder=True, add_cross_attention=True))
    hf = T.EncoderDecoderModel(encoder=enc, decoder=dec)
    hf.config.decoder_start_token_id, hf.config.pad_token_id, hf.config.eos_token_id = START, PAD, EOS
    hf.generation_config.decoder_start_token_id = START
    hf.generation_config.pad_token_id, hf.generation_config.eos_token_id = PAD, EOS
    hf.save_pretrained(directory)


def load(which: str, directory: str):
    """The checkpoint through ``which`` library's own loader (ours never imports transformers)."""
    if which == "ours":
        import bertgen

        return bertgen.EncoderDecoderModel.from_pretrained(directory)
    import transformers as T

    return T.EncoderDecoderModel.from_pretrained(directory)


def make_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, CONFIG["vocab_size"], (BATCH, SRC_LEN), generator=g)
    labels = torch.randint(1000, CONFIG["vocab_size"], (BATCH, TGT_LEN), generator=g)
    return ids, torch.ones_like(ids), labels


def step_flops(directory: str, device: str) -> float:
    """FLOPs of one training step (forward and backward) of our model on one batch, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from bertgen.linear import use_cpu_backend

    model = load("ours", directory).to(device).train()
    ids, mask, labels = (t.to(device) for t in make_batch(0))
    # The counter knows PyTorch's own products only, not the oneDNN op bertgen.linear may call: count on BLAS.
    with use_cpu_backend("blas"), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=False).loss.backward()
    return float(counter.get_total_flops())


def train_step_fn(model, which: str, bf16: bool, device: str = "cpu"):
    # The same optimizer on both sides: fused Adam, transformers' Trainer default (adamw_torch_fused) and bertgen's.
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    model.train()

    def step(ids, mask, labels):
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            if which == "ours":
                loss = model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=False).loss
            else:
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def train_child(which: str, directory: str, bf16: bool, steps: int, device: str = "cpu") -> dict:
    """In a fresh process: load the checkpoint, one warm-up step, ``steps`` timed steps; step times and peak memory
    (RSS on a CPU, allocated GPU memory on CUDA)."""
    model = load(which, directory).to(device)
    step = train_step_fn(model, which, bf16, device)
    step(*make_batch(0))
    seconds = []
    for i in range(steps):
        batch = make_batch(1 + i)
        synchronize(device)
        start = time.perf_counter()
        step(*batch)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    if device == "cuda":
        return {"seconds": seconds, "peak_rss_mb": torch.cuda.max_memory_allocated() / 2**20}
    # VmHWM, not ru_maxrss: Linux carries the parent's peak across fork + exec into ru_maxrss.
    return {"seconds": seconds, "peak_rss_mb": peak_rss_bytes() / 2**20}


def measure_train(directory: str, bf16: bool, rounds: int, steps: int, threads: int,
                  device: str = "cpu") -> dict[str, dict[str, float]]:
    """Alternating fresh child processes (transformers, ours, ours, transformers, ...), ``rounds`` per library.

    Returns per library tokens/s (median step time over all timed steps, and the fastest step: on a shared VM the
    least disturbed one) and peak RSS (median over children).
    """
    runs: dict[str, list[dict]] = {which: [] for which in LIBRARIES}
    for r in range(rounds):
        for which in (LIBRARIES if r % 2 == 0 else LIBRARIES[::-1]):
            cmd = [sys.executable, __file__, "--train-child", which, "--checkpoint", directory,
                   "--steps", str(steps), "--threads", str(threads), "--device", device] + (["--bf16"] if bf16 else [])
            res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
            runs[which].append(json.loads(res.stdout.strip().splitlines()[-1]))
    tokens = BATCH * (SRC_LEN + TGT_LEN)
    return {
        which: {"tok_s": tokens / statistics.median(t for run in r for t in run["seconds"]),
                "step_s": statistics.median(t for run in r for t in run["seconds"]),
                "best_tok_s": tokens / min(t for run in r for t in run["seconds"]),
                "peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in r)}
        for which, r in runs.items()
    }


def beam_generate_fn(model, which: str, max_new_tokens: int):
    """(input_ids, attention_mask) -> beam-4 output of exactly ``max_new_tokens`` tokens (min = max), in the
    library's own API; the same search settings on both sides."""
    import bertgen.generation as G

    kwargs = dict(num_beams=4, length_penalty=1.0, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                  early_stopping=True)
    if which == "transformers":
        return lambda ids, mask: model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    return lambda ids, mask: G.generate(model, ids, mask, length_penalty_style="hf", **kwargs)


def measure_generate(directory: str, batches: int, max_new_tokens: int, device: str = "cpu") -> dict:
    """Beam-4 generation of exactly ``max_new_tokens`` tokens (min = max) on both models; checks identical outputs."""
    inputs = [tuple(t.to(device) for t in make_batch(100 + i)[:2]) for i in range(batches)]
    generate = {}
    for which in LIBRARIES:
        model = load(which, directory).to(device)
        model.eval()
        generate[which] = beam_generate_fn(model, which, max_new_tokens)
    seconds = {which: 0.0 for which in LIBRARIES}
    results: dict[str, list[torch.Tensor]] = {which: [] for which in LIBRARIES}
    with torch.inference_mode():
        for which in LIBRARIES:  # warm-up
            generate[which](*inputs[0])
        for i, (ids, mask) in enumerate(inputs):
            for which in (LIBRARIES if i % 2 == 0 else LIBRARIES[::-1]):
                synchronize(device)
                start = time.perf_counter()
                results[which].append(generate[which](ids, mask))
                synchronize(device)
                seconds[which] += time.perf_counter() - start
    identical = all(torch.equal(a, b) for a, b in zip(results["transformers"], results["ours"]))
    return {"seq_s": {which: batches * BATCH / seconds[which] for which in LIBRARIES}, "identical": identical}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="training child processes per library and configuration")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per child (after one warm-up step)")
    p.add_argument("--beam-batches", type=int, default=2, help="timed batches of 16 sources for beam search")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--skip-bf16", action="store_true", help="fp32 training only")
    p.add_argument("--skip-generate", action="store_true")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--train-child", choices=LIBRARIES, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_child:
        print(json.dumps(train_child(args.train_child, args.checkpoint, args.bf16, args.steps, args.device)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device on this machine")

    from bertgen.linear import backend_reason, has_onednn

    device = args.device
    bf16_native = native_bf16(torch.device(device))
    fp32_peaks = {"BLAS": gemm_peak(device, torch.float32, "blas")}
    if device == "cpu" and has_onednn():
        fp32_peaks["oneDNN"] = gemm_peak(device, torch.float32, "onednn")
    peaks = {"fp32": max(fp32_peaks.values())}
    if bf16_native:
        peaks["bf16"] = gemm_peak(device, torch.bfloat16)
    print(describe(device))
    if device == "cpu":
        print(f"bertgen's CPU fp32 products: {backend_reason()}; transformers': BLAS (torch.mm/addmm, always)")
    print("GEMM peak measured here: fp32 " + " / ".join(f"{k} {v / 1e9:,.0f}" for k, v in fp32_peaks.items())
          + " GFLOP/s (MFU is read against the higher)"
          + (f", bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s" if bf16_native
             else " (bf16 not measured: no native bf16 on this hardware)"))
    rows = []
    identical = None
    with tempfile.TemporaryDirectory() as directory:
        save_reference_checkpoint(directory)
        flops = step_flops(directory, device)
        print(f"one training step: {flops / 1e9:,.1f} GFLOP (torch.utils.flop_counter)")
        for bf16 in (False,) if args.skip_bf16 or not bf16_native else (False, True):
            name = "bf16 autocast" if bf16 else "fp32"
            peak = peaks["bf16" if bf16 else "fp32"]
            r = measure_train(directory, bf16, args.rounds, args.steps, args.threads, device)
            timed = args.rounds * args.steps
            rows.append((f"train tokens/s, {name} (median of {timed} steps)",
                         r["transformers"]["tok_s"], r["ours"]["tok_s"]))
            rows.append((f"train tokens/s, {name} (fastest step)",
                         r["transformers"]["best_tok_s"], r["ours"]["best_tok_s"]))
            rows.append((f"MFU %, {name} (of the {name.split()[0]} GEMM peak)",
                         100 * flops / r["transformers"]["step_s"] / peak, 100 * flops / r["ours"]["step_s"] / peak))
            memory = "peak GPU MB allocated" if device == "cuda" else "peak RSS MB"
            rows.append((f"{memory}, load + {args.steps + 1} train steps, {name}",
                         r["transformers"]["peak_rss_mb"], r["ours"]["peak_rss_mb"]))
        if not args.skip_generate:
            g = measure_generate(directory, args.beam_batches, args.max_new_tokens, device)
            rows.append((f"beam-4 generation seq/s, fp32, {args.max_new_tokens} tokens",
                         g["seq_s"]["transformers"], g["seq_s"]["ours"]))
            identical = g["identical"]
    print(f"{device}, batch {BATCH} x ({SRC_LEN}+{TGT_LEN})")
    print("| measure | transformers | bertgen | ratio |")
    print("|---|---:|---:|---:|")
    for name, theirs, ours in rows:
        print(f"| {name} | {theirs:,.1f} | {ours:,.1f} | {ours / theirs:.2f}x |")
    if identical is not None:
        print(f"beam-search outputs identical to transformers: {identical}")


if __name__ == "__main__":
    main()
