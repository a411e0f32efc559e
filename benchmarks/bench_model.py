"""bertgen vs transformers on identical weights, in the same process: training throughput, peak memory, beam search.

MiniLM-size encoder-decoder (6 layers, 384 hidden, 12 heads, 1536 FFN, vocab 30,522), batch 16 × (64 source + 64
target tokens). Prints a markdown table of absolute numbers and ratios (ours / transformers).

    .venv/bin/python benchmarks/bench_model.py [--steps 8] [--beam-batches 2] [--threads N] [--skip-generate]

Peak memory is measured per configuration in a fresh subprocess (``ru_maxrss`` of the child), so one model's
allocations do not hide the other's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

CONFIG = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
BATCH, SRC_LEN, TGT_LEN = 16, 64, 64
START, PAD, EOS = 101, 0, 102


def build_pair(directory: str):
    """Build the transformers model, save it, load the same weights into ours."""
    import transformers as T

    import bertgen

    torch.manual_seed(0)
    enc = T.BertGenerationEncoder(T.BertGenerationConfig(**CONFIG))
    dec = T.BertGenerationDecoder(T.BertGenerationConfig(**CONFIG, is_decoder=True, add_cross_attention=True))
    hf = T.EncoderDecoderModel(encoder=enc, decoder=dec)
    hf.config.decoder_start_token_id, hf.config.pad_token_id, hf.config.eos_token_id = START, PAD, EOS
    hf.generation_config.decoder_start_token_id = START
    hf.generation_config.pad_token_id, hf.generation_config.eos_token_id = PAD, EOS
    hf.save_pretrained(directory)
    ours = bertgen.EncoderDecoderModel.from_pretrained(directory)
    return hf, ours


def make_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, CONFIG["vocab_size"], (BATCH, SRC_LEN), generator=g)
    labels = torch.randint(1000, CONFIG["vocab_size"], (BATCH, TGT_LEN), generator=g)
    return ids, torch.ones_like(ids), labels


def train_step_fn(model, which: str, bf16: bool):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step(ids, mask, labels):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if which == "ours":
                loss = model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=False).loss
            else:
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def measure_train(which: str, bf16: bool, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        hf, ours = build_pair(d)
    model = ours if which == "ours" else hf
    del hf, ours
    step = train_step_fn(model, which, bf16)
    batches = [make_batch(i) for i in range(steps + 2)]
    for b in batches[:2]:  # warm-up
        step(*b)
    start = time.perf_counter()
    for b in batches[2:]:
        step(*b)
    elapsed = time.perf_counter() - start
    tokens = steps * BATCH * (SRC_LEN + TGT_LEN)
    return {"tok_s": tokens / elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_generate(batches: int, max_new_tokens: int) -> dict:
    """Beam-4 generation of exactly ``max_new_tokens`` tokens (min = max) on both models; checks identical outputs."""
    import bertgen.generation as G

    with tempfile.TemporaryDirectory() as d:
        hf, ours = build_pair(d)
    hf.eval(), ours.eval()
    inputs = [make_batch(100 + i)[:2] for i in range(batches)]
    kwargs = dict(num_beams=4, length_penalty=1.0, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                  early_stopping=True)
    out = {}
    results = {}
    for which, model in (("transformers", hf), ("ours", ours)):
        with torch.inference_mode():
            gen = (lambda i, m: model.generate(input_ids=i, attention_mask=m, **kwargs)) if which == "transformers" \
                else (lambda i, m: G.generate(model, i, m, length_penalty_style="hf", **kwargs))
            gen(*inputs[0])  # warm-up
            start = time.perf_counter()
            results[which] = [gen(i, m) for i, m in inputs]
            out[which] = batches * BATCH / (time.perf_counter() - start)
    identical = all(torch.equal(a, b) for a, b in zip(results["transformers"], results["ours"]))
    return {"seq_s": out, "identical": identical}


def run_child(which: str, bf16: bool, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--steps", str(steps)] + (["--bf16"] if bf16 else [])
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="timed training steps per configuration")
    p.add_argument("--beam-batches", type=int, default=2, help="timed batches of 16 sources for beam search")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--skip-generate", action="store_true")
    p.add_argument("--child", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure_train(args.child, args.bf16, args.steps)))
        return

    rows = []
    for bf16 in (False, True):
        r = {w: run_child(w, bf16, args.steps) for w in ("transformers", "ours")}
        name = "bf16 autocast" if bf16 else "fp32"
        rows.append((f"train tokens/s, {name}", r["transformers"]["tok_s"], r["ours"]["tok_s"]))
        rows.append((f"peak RSS MB, train {name}", r["transformers"]["peak_rss_mb"], r["ours"]["peak_rss_mb"]))
    identical = None
    if not args.skip_generate:
        g = measure_generate(args.beam_batches, args.max_new_tokens)
        rows.append((f"beam-4 generation seq/s, fp32, {args.max_new_tokens} tokens",
                     g["seq_s"]["transformers"], g["seq_s"]["ours"]))
        identical = g["identical"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH} x ({SRC_LEN}+{TGT_LEN})")
    print("| measure | transformers | bertgen | ratio |")
    print("|---|---:|---:|---:|")
    for name, theirs, ours in rows:
        print(f"| {name} | {theirs:,.1f} | {ours:,.1f} | {ours / theirs:.2f}x |")
    if identical is not None:
        print(f"beam-search outputs identical to transformers: {identical}")


if __name__ == "__main__":
    main()
