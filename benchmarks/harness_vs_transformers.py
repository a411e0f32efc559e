"""The harness's own training updates and test decoding beside transformers on the very same batches and weights.

    .venv/bin/python benchmarks/harness_vs_transformers.py GRID --only PATTERN [--set key=value ...]
                                                           [--updates 20] [--decode-examples 48]
                                                           [--weights CELL/checkpoints/last/model.safetensors]

The cell is the one grid cell ``--only`` selects (the launcher's grid loading and selection), e.g. the main job's
real-data cell: ``grids/mini_wikisplit.yaml --only wikisplit/bert2bert/seed1/xattn=self_attention`` (MiniLM on
WikiSplit). The harness's own trainer (``CellTrainer``: its model
build, data pipeline, batches, optimizer, schedule, bf16 setting and gradient clipping) runs ``--updates`` updates
of that cell; transformers' ``EncoderDecoderModel``, loaded from the very same initial weights, runs the same updates
on the same micro-batches with the same optimizer, schedule, autocast and clipping, alternating update by update
with the harness so that load on a shared machine hits both alike. Then both libraries decode the first
``--decode-examples`` test pairs with the harness's trained weights (beam search with the cell's beams and length
penalty in transformers' form, so the tokens can be compared; batches of the cell's decode batch size, longest
first), and the outputs are checked for equality through each row's first EOS. A few updates leave a model whose
best output is often EOS alone, so ``--weights`` decodes a trained cell's weights instead (``--updates 0`` skips the
training comparison): e.g. ``outputs/cells/wikisplit/bert2bert/<id>/checkpoints/last/model.safetensors`` after
``make study``. Prints the machine, one markdown table of updates/s and decoded
pairs/s with their ratios, and what the cell recorded if it has run (its ``metrics.json``: train seconds per
update, including its dev evaluations and checkpoints, and its test decode seconds), which is the harness's whole
cost per cell.

Only encoder-decoder cells (BERT/RoBERTa stacks) have a transformers counterpart; GPT-2 prefix-LM cells are refused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.grid.identity import METRICS_FILE, cell_dir  # noqa: E402
from experiments.grid.load import load_selection  # noqa: E402
from experiments.recipes.decode import autocast  # noqa: E402
from experiments.recipes.distributed import DistributedContext  # noqa: E402
from experiments.recipes.optim import LRSchedule, build_optimizer  # noqa: E402
from experiments.recipes.train import CellTrainer  # noqa: E402
from experiments.system.machine import describe  # noqa: E402


def transformers_twin(model, directory: str):
    """transformers' EncoderDecoderModel with ``model``'s weights (bertgen writes transformers' layout)."""
    import transformers

    model.save_pretrained(directory)
    twin = transformers.EncoderDecoderModel.from_pretrained(directory)
    for config in (twin.config, twin.generation_config):
        config.decoder_start_token_id = model.config.decoder_start_token_id
        config.pad_token_id = model.config.pad_token_id
        config.eos_token_id = model.config.eos_token_id
    return twin


def twin_update(model, optimizer, schedule, micro_batches, bf16: bool, max_grad_norm: float | None) -> None:
    """One update of transformers' model, weighted by target tokens as the harness weights its micro-batches."""
    tokens = [int(b["labels"].ne(-100).sum()) for b in micro_batches]
    for batch, count in zip(micro_batches, tokens):
        with autocast(torch.device("cpu"), bf16):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss
        (loss.float() * count / sum(tokens)).backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def through_eos(sequences: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """``sequences`` [rows, length] (start token first) with every position after a row's first EOS set to ``pad``:
    transformers' beam search fills finished rows with EOS where the pad id is 0 (BERT's), bertgen with the pad id."""
    is_eos = sequences[:, 1:] == eos
    after = torch.cat([torch.zeros_like(is_eos[:, :1]), (is_eos.cumsum(1) > 0)[:, :-1]], dim=1)
    return torch.cat([sequences[:, :1], sequences[:, 1:].masked_fill(after, pad)], dim=1)


def decode_both(ours, theirs, trainer: CellTrainer, examples: int, bf16: bool) -> dict:
    """Beam search over the first ``examples`` test pairs with both models, longest first in the cell's decode batch
    size; seconds for each and whether every output token is the same."""
    from bertgen.generation import generate
    from experiments.data.batches import LengthBucketBatchSampler, Seq2SeqCollator
    from experiments.recipes.build import lengths

    tokenized = trainer.data["test"][1]
    tokenized = tokenized.select(range(min(examples, len(tokenized))))
    batches = LengthBucketBatchSampler(lengths(tokenized), trainer.eval_batch_size(), shuffle=False).batches(0)
    collate = Seq2SeqCollator(trainer.spec.inputs.pad_token_id)
    decode = trainer.decode_settings
    seconds, outputs = {"bertgen": 0.0, "transformers": 0.0}, {"bertgen": [], "transformers": []}
    ours.eval(), theirs.eval()
    with torch.inference_mode():
        for indices in batches:
            batch = collate([{"input_ids": tokenized[i]["input_ids"]} for i in indices])
            ids, mask = batch["input_ids"], batch["attention_mask"]
            new_tokens = min(decode.max_new_tokens, ours.max_new_tokens(ids.size(1), trainer.limits[1]))
            runs = {
                "bertgen": lambda: generate(ours, ids, mask, num_beams=decode.num_beams,
                                            length_penalty=decode.length_penalty, length_penalty_style="hf",
                                            max_new_tokens=new_tokens, early_stopping=True),
                "transformers": lambda: theirs.generate(input_ids=ids, attention_mask=mask,
                                                        num_beams=decode.num_beams,
                                                        length_penalty=decode.length_penalty,
                                                        max_new_tokens=new_tokens, early_stopping=True),
            }
            for name, run in runs.items():
                with autocast(torch.device("cpu"), bf16):
                    start = time.perf_counter()
                    outputs[name].append(run())
                    seconds[name] += time.perf_counter() - start
    eos, pad = trainer.model.config.eos_token_id, trainer.spec.inputs.pad_token_id
    identical = all(a.shape == b.shape and torch.equal(through_eos(a, eos, pad), through_eos(b, eos, pad))
                    for a, b in zip(outputs["bertgen"], outputs["transformers"]))
    # An undertrained model's best hypothesis is often EOS alone while the search runs to the length limit: the
    # output length says how much the identical tokens prove.
    output_tokens = torch.cat([(out[:, 1:] != pad).sum(1) for out in outputs["bertgen"]]).float()
    return {"seconds": seconds, "examples": len(tokenized), "identical": identical,
            "mean_output_tokens": output_tokens.mean().item()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", help="a grid file (grids/*.yaml)")
    p.add_argument("--only", required=True, help="the one cell to measure (the launcher's --only pattern)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a grid or cell field, as the launcher's --set")
    p.add_argument("--updates", type=int, default=20,
                   help="updates timed on each side, after 2 warm-up updates (0: no training, decoding only)")
    p.add_argument("--decode-examples", type=int, default=48, help="test pairs beam-decoded by each side")
    p.add_argument("--weights", type=Path,
                   help="decode with these weights (a cell checkpoint's model.safetensors) instead of the trained ones")
    p.add_argument("--decode-bf16", action="store_true",
                   help="decode under the cell's bf16 setting (default fp32, where the tokens must be identical)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.weights and not args.weights.is_file():
        raise SystemExit(f"--weights {args.weights}: no such file; expected a cell checkpoint's model.safetensors")
    if args.threads:
        torch.set_num_threads(args.threads)
    _, cells = load_selection(args.grid, args.sets, args.only)
    if len(cells) != 1:
        raise SystemExit(f"--only {args.only}: selects {len(cells)} cells of {args.grid}; expected exactly one")
    (cell,) = cells
    if cell.scheme in ("gpt", "rnd2gpt", "bert2gpt", "roberta2gpt"):
        raise SystemExit(f"{cell.cell_id}: scheme {cell.scheme} has a GPT-2 decoder; only encoder-decoder cells "
                         "(BERT/RoBERTa stacks) have a transformers EncoderDecoderModel counterpart")
    with tempfile.TemporaryDirectory() as out_dir, tempfile.TemporaryDirectory() as weights:
        trainer = CellTrainer(cell, Path(out_dir), None, DistributedContext())
        twin = transformers_twin(trainer.model, weights)
        twin.train()
        twin_optimizer = build_optimizer(twin.parameters(), optimizer=cell.train.optimizer)
        twin_schedule = LRSchedule.from_config(twin_optimizer, cell.train, trainer.hidden_size)
        trainer.model.train()
        times: dict[str, list[float]] = {"bertgen": [], "transformers": []}
        batches = iter(trainer.loader)
        for update in range(args.updates + 2 if args.updates else 0):
            micro_batches = next(batches)
            order = ("bertgen", "transformers") if update % 2 == 0 else ("transformers", "bertgen")
            for name in order:
                start = time.perf_counter()
                if name == "bertgen":
                    trainer.train_step(micro_batches)
                    trainer.step += 1
                else:
                    twin_update(twin, twin_optimizer, twin_schedule, micro_batches, trainer.bf16,
                                cell.train.max_grad_norm)
                if update >= 2:
                    times[name].append(time.perf_counter() - start)
        # Decoding compares the libraries on identical weights: the harness's trained ones (or --weights), loaded
        # into transformers.
        if args.weights:
            from safetensors.torch import load_model

            load_model(trainer.model, str(args.weights))
        with tempfile.TemporaryDirectory() as trained:
            decoded = decode_both(trainer.model, transformers_twin(trainer.model, trained), trainer,
                                  args.decode_examples, args.decode_bf16 and trainer.bf16)
    print(describe("cpu"))
    print(f"cell {cell.cell_id} ({cell.task}/{cell.scheme}, batch {cell.train.batch_size}, "
          f"bf16 {'on' if trainer.bf16 else 'off'}, beams {cell.decode.num_beams}); {args.updates} updates and "
          f"{decoded['examples']} test pairs on each side")
    print("| measure | transformers | bertgen (the harness) | ratio |")
    print("|---|---:|---:|---:|")
    if args.updates:
        ups = {name: 1.0 / statistics.median(t) for name, t in times.items()}
        print(f"| updates/s (median update, same batches) | {ups['transformers']:.2f} | {ups['bertgen']:.2f} | "
              f"{ups['bertgen'] / ups['transformers']:.2f}x |")
    pairs = {name: decoded["examples"] / s for name, s in decoded["seconds"].items()}
    print(f"| test pairs decoded/s ({'bf16' if args.decode_bf16 and trainer.bf16 else 'fp32'}) | "
          f"{pairs['transformers']:.2f} | {pairs['bertgen']:.2f} | {pairs['bertgen'] / pairs['transformers']:.2f}x |")
    print(f"identical decoded tokens: {decoded['identical']} (bertgen's outputs: {decoded['mean_output_tokens']:.1f} "
          "tokens on average, EOS included)")
    metrics_path = cell_dir(cell) / METRICS_FILE
    if metrics_path.exists():
        recorded = json.loads(metrics_path.read_text(encoding="utf-8"))
        steps = recorded.get("steps") or cell.train.steps
        if recorded.get("train_seconds"):
            print(f"the cell as it ran: {steps / recorded['train_seconds']:.2f} updates/s over {steps} updates "
                  "including its dev evaluations and checkpoints; test decode "
                  f"{recorded.get('test_decode_seconds', float('nan')):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
