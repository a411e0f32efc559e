"""``python -m experiments.recipes.evaluate``: released checkpoints and trained cells decoded without training.

The released models (google/roberta2roberta_L-24_*, google/bert2bert_L-24_wmt_*) cannot be downloaded here, so
tiny checkpoints in their layout are built and saved by transformers itself: an ``encoder-decoder`` config whose two
sides are ``bert-generation`` stacks tied to each other (``tie_encoder_decoder``), with the released models' two
tokenizer kinds beside them (RoBERTa's byte-level BPE for roberta2roberta, SentencePiece for the WMT bert2bert).
Our evaluation must decode exactly the tokens transformers' ``generate`` decodes from the same directory (hf length
penalty) and its scores must be the task metrics of those predictions.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
import torch
import transformers

from experiments import cli
from experiments.recipes import evaluate as ev
from experiments.config import evaluation as evaluation_module
from experiments.data.metrics import compute_metrics
from experiments.config.tasks import get_task
from integration_helpers import data_spec, quick_assets, tiny_cell

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCES = [
    "The bridge was closed for repairs. Traffic was diverted through the town centre.",
    "She studied physics in Vienna. She later taught at a school in Graz.",
    "The album sold well. Critics were less kind.",
    "He was born in 1921 in Leeds, England, and moved to Canada as a child.",
    "The river floods every spring. Farmers plant late.",
    "The company was founded in 1998. It employs about 300 people.",
    "Rain fell all night. The match went ahead.",
    "The church dates from the 12th century and was restored in 1880.",
    "It is the largest lake in the region. It is fed by three rivers.",
    "The film premiered in Cannes. It won no awards.",
]
TARGETS = [s.replace(". ", ", and ", 1) for s in SOURCES]


def tokenizer_of(kind: str, files: Path):
    """transformers' tokenizer of one kind, from the team's shared tokenizer files."""
    if kind == "roberta_bpe":
        return transformers.RobertaTokenizer(str(files / "roberta" / "roberta-base-vocab.json"),
                                             str(files / "gpt2" / "gpt2-merges.txt"))
    return transformers.BertGenerationTokenizer(str(files / "sentencepiece" / "test_model.model"))


def save_tiny_encoder_decoder(directory: Path, vocab_size: int, ids: dict[str, int], tied: bool, seed: int) -> None:
    """A tiny BertGeneration encoder-decoder saved by transformers: weights larger than the 0.02 init (outputs that
    depend on the input and vary in length), EOS made likely, the special ids in its configs."""
    size = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, **ids)
    torch.manual_seed(seed)
    encoder = transformers.BertGenerationEncoder(transformers.BertGenerationConfig(**size))
    decoder = transformers.BertGenerationDecoder(transformers.BertGenerationConfig(
        **size, is_decoder=True, add_cross_attention=True))
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(encoder.config, decoder.config,
                                                                           tie_encoder_decoder=tied)
    model = transformers.EncoderDecoderModel(config=config, encoder=encoder, decoder=decoder)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
        model.decoder.lm_head.bias[ids["eos_token_id"]] += 3.0
        if tied:  # the decoder's stack holds the encoder's values (transformers 5 no longer ties them itself; a
            # released file's two copies are equal)
            decoder_stack = model.decoder.bert.state_dict()
            for name, value in model.encoder.state_dict().items():
                decoder_stack[name].copy_(value)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = ids["bos_token_id"]
        cfg.pad_token_id, cfg.eos_token_id = ids["pad_token_id"], ids["eos_token_id"]
    model.save_pretrained(directory)


def rewrite_config_as_released(directory: Path, bos_token_id: int, **extra) -> None:
    """config.json as the released repos have it: the sub-configs' bos/eos/start ids null, only ``bos_token_id`` at
    the top level."""
    raw = json.loads((directory / "config.json").read_text())
    for side in ("encoder", "decoder"):
        raw[side].update(bos_token_id=None, eos_token_id=None, decoder_start_token_id=None)
    for key in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
        raw.pop(key, None)
    raw.update(bos_token_id=bos_token_id, **extra)
    (directory / "config.json").write_text(json.dumps(raw, indent=2))


def released_layout(kind: str, files: Path, directory: Path):
    """A tiny checkpoint saved by transformers in a released model's layout; returns (model, tokenizer) as
    transformers reads them back from ``directory``.

    ``sentencepiece`` is the layout of google/roberta2roberta_L-24_* (read from the hub repos: config.json with
    ``model_type: encoder-decoder``, two ``bert-generation`` sub-configs whose bos/eos ids are null, ``bos_token_id``
    at the top level, a ``generation_config.json``, and ``spiece.model`` as the only tokenizer file).
    ``roberta_bpe`` is the same model with RoBERTa's byte-level BPE files, as a roberta2roberta fine-tuned with
    transformers is saved."""
    tokenizer = tokenizer_of(kind, files)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    save_tiny_encoder_decoder(directory, len(tokenizer), ids, tied=True, seed=0)
    if kind == "sentencepiece":
        rewrite_config_as_released(directory, ids["bos_token_id"])
        shutil.copy(files / "sentencepiece" / "test_model.model", directory / "spiece.model")
    else:
        shutil.copy(files / "roberta" / "roberta-base-vocab.json", directory / "vocab.json")
        shutil.copy(files / "gpt2" / "gpt2-merges.txt", directory / "merges.txt")
    return transformers.EncoderDecoderModel.from_pretrained(directory).eval(), tokenizer


@pytest.fixture(scope="module")
def test_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("evaluate-data") / "test.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "source": s, "target": t}) + "\n"
                            for i, (s, t) in enumerate(zip(SOURCES, TARGETS))))
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = ev.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def runs_of(uri: str, experiment: str = ev.DEFAULT_EXPERIMENT) -> list:
    """Cell and evaluation runs (not the launcher's own)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return [r for r in runs if r.data.tags.get("role") != "launch"]


@pytest.mark.parametrize("kind", ["roberta_bpe", "sentencepiece"])
def test_released_layout_decodes_what_transformers_decodes(kind, shared_dir, tmp_path, test_file, capsys):
    files = shared_dir / "data" / "tokenizers"
    reference, hf_tokenizer = released_layout(kind, files, tmp_path / "released")
    max_new = 12
    expected_ids, expected_text = [], []
    for source in SOURCES:
        ids = hf_tokenizer(source, return_tensors="pt").input_ids
        with torch.no_grad():
            out = reference.generate(ids, num_beams=4, length_penalty=0.6, max_new_tokens=max_new, do_sample=False)
        expected_ids.append(out[0].tolist())
        expected_text.append(hf_tokenizer.decode(out[0], skip_special_tokens=True))
    assert len(set(expected_text)) > 3, "the tiny model should write different things for different inputs"

    # token level: our loader, tokenizer and beam search on the same directory
    loaded = ev.load_released(str(tmp_path / "released"))
    for source, want in zip(SOURCES, expected_ids):
        ids = loaded.input_tokenizer([source])["input_ids"]
        assert ids[0].tolist() == hf_tokenizer(source).input_ids
        got = loaded.model.generate(ids, torch.ones_like(ids), num_beams=4, length_penalty=0.6,
                                    length_penalty_style="hf", max_new_tokens=max_new)
        assert got[0].tolist()[:len(want)] == want and set(got[0].tolist()[len(want):]) <= {loaded.pad_token_id}

    # the command: predictions, scores, the MLflow run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [str(tmp_path / "released"), "--task", "discofuse", "--set", f"data.test={json.dumps(data_spec(str(test_file)))}",
            "--set", "decode.length_penalty_style=hf", "--set", f"decode.max_new_tokens={max_new}",
            "--tracking-uri", uri, "--output-dir", str(tmp_path / "eval"), "--device", "cpu"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    predictions = [r["prediction"] for r in rows]
    assert predictions == loaded.output_tokenizer.batch_decode([ids[1:] for ids in expected_ids],
                                                               skip_special_tokens=True)
    # the texts too, wherever the random model wrote whole characters (the two byte-level decoders render a
    # truncated UTF-8 byte sequence with different numbers of U+FFFD)
    whole = [i for i, text in enumerate(expected_text) if "\ufffd" not in text]
    assert len(whole) >= 3 and all(predictions[i] == expected_text[i] for i in whole)
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    task = get_task("discofuse")
    want = compute_metrics(task.metrics, SOURCES, predictions, [[t] for t in TARGETS])
    assert summary["test"] == pytest.approx({k: float(v) for k, v in want.items()}, abs=1e-9)
    copy = compute_metrics(task.metrics, SOURCES, SOURCES, [[t] for t in TARGETS])
    assert summary["baseline_copy_source"] == pytest.approx({k: float(v) for k, v in copy.items()}, abs=1e-9)
    (run_,) = runs_of(uri)
    assert run_.info.status == "FINISHED"
    assert run_.data.tags["role"] == "evaluation" and run_.data.tags["scheme"] == "released"
    assert run_.data.tags["evaluated_checkpoint"] == str(tmp_path / "released")
    assert run_.data.params["decode.num_beams"] == "4" and run_.data.params["decode.length_penalty"] == "0.6"
    assert run_.data.metrics["test_sari"] == pytest.approx(summary["test"]["sari"])
    assert "discofuse" in out and "sari" in out


def test_the_same_evaluation_is_not_repeated_and_a_new_decoding_is_a_new_run(shared_dir, tmp_path, test_file,
                                                                             capsys):
    released_layout("sentencepiece", shared_dir / "data" / "tokenizers", tmp_path / "released")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = [str(tmp_path / "released"), "--task", "discofuse", "--set",
            f"data.test={json.dumps(data_spec(str(test_file)))}", "--set", "decode.max_new_tokens=8",
            "--tracking-uri", uri, "--output-root", str(tmp_path / "out"), "--device", "cpu"]
    assert run(base, capsys)[0] == 0
    code, out, _ = run(base, capsys)
    assert code == 0 and "SKIPPED" in out
    assert len(runs_of(uri)) == 1
    assert run(base + ["--set", "decode.num_beams=1"], capsys)[0] == 0
    runs = runs_of(uri)
    assert sorted(r.data.params["decode.num_beams"] for r in runs) == ["1", "4"]
    assert len({r.data.tags["evaluation_id"] for r in runs}) == 2
    assert len(list((tmp_path / "out" / "evaluations" / "discofuse" / "released").glob("*/evaluation.json"))) == 2


def test_a_trained_cell_is_re_decoded_without_training(tmp_path_factory, tmp_path, capsys, caplog):
    from experiments.tracking.runs import NullLogger
    from experiments.recipes.train import train_cell

    assets = quick_assets(tmp_path_factory)
    cell = tiny_cell(assets, tmp_path / "root", steps=8, eval_every=4, checkpoint_every=4)
    out_dir = tmp_path / "root" / "cells" / "discofuse" / "bert2bert" / cell["cell_id"]
    with caplog.at_level("INFO", logger="experiments.recipes.train"):
        trained = train_cell(cell, out_dir, NullLogger())
    # a job's log (no terminal) says where training is: step, loss, lr, tokens/s, ETA, dev loss
    assert any(re.fullmatch(r"cell tiny-bert2bert step 8/8 loss \S+ lr \S+ tokens/s \d+ elapsed \S+ ETA 0s",
                            r.getMessage()) for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert any(r.getMessage().startswith("cell tiny-bert2bert step 4 dev_loss ") for r in caplog.records)
    (out_dir / "cell.json").write_text(json.dumps(cell))
    weights = {p: p.stat().st_mtime_ns for p in (out_dir / "checkpoints").rglob("*") if p.is_file()}
    cell_metrics = (out_dir / "metrics.json").read_text()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # the cell's own decoding on the checkpoint it tested (the last step's: train.select) reproduces its scores
    assert json.loads(cell_metrics)["tested_step"] == 8 and not (out_dir / "checkpoints" / "best").exists()
    code, out, err = run([str(out_dir), "--tracking-uri", uri, "--device", "cpu"], capsys)
    assert code == 0, err
    (first,) = runs_of(uri)
    assert first.data.tags["cell_id"] == cell["cell_id"] and first.data.tags["select"] == "last"
    evaluated = json.loads(next((out_dir / "evaluations").glob("*/metrics.json")).read_text())
    assert evaluated["test"] == pytest.approx(trained)

    # other beam settings: a new evaluation run, nothing trained, the cell's files untouched
    code, _, err = run([str(out_dir), "--set", "decode.num_beams=1", "--tracking-uri", uri, "--device", "cpu"], capsys)
    assert code == 0, err
    assert len(runs_of(uri)) == 2 and len(list((out_dir / "evaluations").glob("*/evaluation.json"))) == 2
    assert {p: p.stat().st_mtime_ns for p in (out_dir / "checkpoints").rglob("*") if p.is_file()} == weights
    assert (out_dir / "metrics.json").read_text() == cell_metrics


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only where there is no CUDA device")
def test_a_cuda_device_on_a_machine_without_one_is_refused_before_anything_is_written(shared_dir, tmp_path,
                                                                                      test_file, capsys):
    """``--device`` is read as every entry point reads it (experiments.cli.device): it used to start a run and die
    in it with torch's traceback."""
    released_layout("sentencepiece", shared_dir / "data" / "tokenizers", tmp_path / "released")
    capsys.readouterr()  # transformers' progress bars
    code, out, err = run([str(tmp_path / "released"), "--task", "discofuse", "--set",
                          f"data.test={json.dumps(data_spec(str(test_file)))}", "--tracking-uri",
                          f"sqlite:///{tmp_path / 'db.sqlite'}", "--output-root", str(tmp_path / "out"),
                          "--device", "cuda"], capsys)
    assert code == cli.EXIT_REFUSED
    assert err == "error: --device cuda: no CUDA device on this machine\n"
    assert not (tmp_path / "db.sqlite").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    ([], "pass a CHECKPOINT or --grid FILE"),
    (["{missing}"], "--task: required"),
    (["{missing}", "--task", "nope"], "nope"),
    (["{missing}", "--task", "discofuse", "--set", "train.lr=1"], "--set train.lr: expected a key under decode"),
    (["{missing}", "--task", "discofuse", "--set", "decode.num_beams=0"], "decode.num_beams"),
    (["{missing}", "--task", "discofuse", "--set", "decode.beams=4"], "decode.beams"),
    (["{missing}", "--task", "discofuse", "--select", "best"], "only a trained cell's directory"),
    (["{missing}", "--task", "discofuse", "--max-examples", "0"], "--max-examples"),
])
def test_bad_evaluation_requests_are_refused_in_one_line(argv, message, tmp_path, capsys):
    argv = [a.replace("{missing}", str(tmp_path / "missing")) for a in argv]
    code, _, err = run(argv + ["--tracking-uri", f"sqlite:///{tmp_path / 'db.sqlite'}"], capsys)
    assert code == cli.EXIT_REFUSED
    assert message in err and err.count("\n") == 1


def test_a_directory_that_is_not_an_encoder_decoder_is_refused_with_the_reason(tmp_path, capsys):
    """Refused before anything is written (issue 24: it used to start a run that failed, exit 1)."""
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, _, err = run([str(tmp_path / "bert"), "--task", "discofuse", "--tracking-uri",
                        f"sqlite:///{tmp_path / 'db.sqlite'}"], capsys)
    assert code == cli.EXIT_REFUSED
    assert "model_type 'bert': expected an encoder-decoder checkpoint" in err and err.count("\n") == 1
    assert not (tmp_path / "db.sqlite").exists()


def test_a_grid_that_changes_only_decoding_re_decodes_its_finished_cell(tmp_path_factory, tmp_path, capsys,
                                                                         monkeypatch):
    """The decoding settings are not part of a cell's training identity: the launcher decodes the trained cell
    again (an evaluation run in the grid's experiment) instead of training it again, once per decoding."""
    from experiments.launch import launcher as launch

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assets = quick_assets(tmp_path_factory)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [f"checkpoints.{family}={path}" for family, path in assets["checkpoints"].items()]
    sets += [f"data.{split}={json.dumps(data_spec(path))}" for split, path in assets["tasks"]["fusion"].items()]
    sets += ["smoke_assets=false", "train.steps=6", "train.eval_every=3", "train.checkpoint_every=3",
             f"output_root={tmp_path / 'out'}", f"mlflow.tracking_uri={uri}", "mlflow.experiment=redecode"]
    argv = [str(Path(__file__).resolve().parents[1] / "grids" / "smoke.yaml"), "--executor", "debug",
            "--only", "synthetic_fusion/bert2bert"]
    for item in sets:
        argv += ["--set", item]

    def launched(*extra: str) -> str:
        assert launch.main(argv + list(extra)) == 0
        return capsys.readouterr().out

    launched()
    (trained,) = runs_of(uri, "redecode")
    weights = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "out" / "cells").rglob("model.safetensors"))
    out = launched("--set", "decode.num_beams=1")
    assert "1 redecode" in out
    runs = runs_of(uri, "redecode")
    (evaluation,) = [r for r in runs if r.data.tags["role"] == "evaluation"]
    assert len(runs) == 2 and evaluation.data.tags["cell_id"] == trained.data.tags["cell_id"]
    assert evaluation.data.params["decode.num_beams"] == "1" and trained.data.params["decode.num_beams"] == "2"
    assert "test_sari" in evaluation.data.metrics
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "out" / "cells").rglob("model.safetensors")) \
        == weights  # not trained again
    assert "FINISHED (re-decoded before)" in launched("--set", "decode.num_beams=1")
    assert "FINISHED (done before)" in launched()
    assert len(runs_of(uri, "redecode")) == 2


def test_an_evaluation_grid_runs_each_evaluation_and_only_selects(shared_dir, tmp_path, test_file, capsys):
    files = shared_dir / "data" / "tokenizers"
    for kind in ("sentencepiece", "roberta_bpe"):
        released_layout(kind, files, tmp_path / kind)
    grid = tmp_path / "released.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "mine", "output_root": str(tmp_path / "out"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "released"},
        "defaults": {"decode": {"max_new_tokens": 6}, "data": {"test": data_spec(str(test_file))}},
        "evaluations": [{"checkpoint": str(tmp_path / "sentencepiece"), "task": "discofuse"},
                        {"checkpoint": str(tmp_path / "roberta_bpe"), "task": "discofuse",
                         "decode": {"num_beams": 2}}]}))
    code, out, err = run(["--grid", str(grid), "--only", "roberta", "--device", "cpu"], capsys)
    assert code == 0, err
    (only,) = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "released")
    assert only.data.tags["evaluated_checkpoint"] == str(tmp_path / "roberta_bpe")
    assert only.data.params["decode.num_beams"] == "2" and only.data.params["decode.max_new_tokens"] == "6"
    code, out, err = run(["--grid", str(grid), "--device", "cpu"], capsys)
    assert code == 0, err
    assert out.count("SKIPPED") == 1 and out.count("FINISHED") == 1
    assert len(runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "released")) == 2
    grid.write_text(yaml.safe_dump({"evaluations": [{"checkpoint": "x", "task": "discofuse", "beams": 4}]}))
    code, _, err = run(["--grid", str(grid)], capsys)
    assert code == cli.EXIT_REFUSED and "evaluations[0]: unknown keys ['beams']" in err and err.count("\n") == 1


def test_released_models_know_their_task_and_input_convention(tmp_path):
    wikisplit = ev.build_config("google/roberta2roberta_L-24_wikisplit", None, [])
    assert (wikisplit.task, wikisplit.input_format, wikisplit.decode.num_beams) == ("wikisplit", "bos_eos", 4)
    assert wikisplit.decode.length_penalty == 0.6 and wikisplit.decode.length_penalty_style == "gnmt"
    local_copy = ev.build_config(str(tmp_path / "bert2bert_L-24_wmt_de_en"), None, [])
    assert (local_copy.task, local_copy.input_format) == ("wmt14_de_en", "bare")
    assert ev.build_config("google/roberta2roberta_L-24_bbc", None, ["input_format=tokenizer"]).input_format \
        == "tokenizer"


def test_bos_eos_input_wraps_the_bare_ids_and_keeps_eos_under_truncation(shared_dir):
    from bertgen.tokenization import load_tokenizer
    from experiments.data.batches import tokenizer_fingerprint

    tokenizer = load_tokenizer(shared_dir / "data" / "tokenizers" / "sentencepiece" / "test_model.model")
    wrapped = ev.FormattedInput(tokenizer, "bos_eos")
    bare = tokenizer(["a b c d e f"], return_tensors=None, padding=False, add_special_tokens=False)["input_ids"][0]
    ids = wrapped(["a b c d e f"], return_tensors=None, padding=False)["input_ids"][0]
    assert ids == [tokenizer.bos_token_id, *bare, tokenizer.eos_token_id]
    cut = wrapped(["a b c d e f"], max_length=4, return_tensors=None, padding=False)["input_ids"][0]
    assert cut == [tokenizer.bos_token_id, *bare[:2], tokenizer.eos_token_id]
    assert tokenizer_fingerprint(wrapped) != tokenizer_fingerprint(tokenizer)
    assert tokenizer_fingerprint(ev.FormattedInput(tokenizer, "bare")) != tokenizer_fingerprint(wrapped)


# -- the released models' cards (google/roberta2roberta_L-24_*, google/bert2bert_L-24_wmt_*) ---------------------------
CARD_SOURCES = [
    'The album "Blue" sold well. Critics were less kind.',
    "Die Katze sitzt auf der Matte. Sie schläft.",
    'He said "no" and left the house early.',
    "The river floods every spring. Farmers plant late.",
    "Rain fell all night. The match went ahead.",
    "The film premiered in Cannes. It won no awards.",
]
CARD_TARGETS = [s.replace(". ", ", and ", 1) for s in CARD_SOURCES]


def wmt_vocab(path: Path) -> list[str]:
    """A tiny cased WordPiece vocabulary in the WMT repos' layout: BERT's specials, the cards' <pad> <s> </s>, and
    every word of CARD_SOURCES lower-cased and capitalised."""
    words = sorted({w for s in CARD_SOURCES for w in re.findall(r"\w+|[^\w\s]", s)})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<pad>", "<s>", "</s>"]
    for word in words:
        for form in (word.lower(), word.capitalize()):
            if form not in vocab:
                vocab.append(form)
    vocab += ["##s", "##e", "##n"]
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return vocab


def card_layout(name: str, files: Path, root: Path):
    """A tiny checkpoint in the layout of the released model ``name`` (its repo's files: config.json naming the
    tokenizer class its card's AutoTokenizer reads, generation_config.json, the weights and one tokenizer file), saved
    by transformers; returns (directory, model, tokenizer) as transformers reads them, the tokenizer with the card's
    arguments. The WMT layout has two untied stacks and a bare cased vocab.txt; the roberta2roberta ones a tied pair
    and spiece.model."""
    directory = root / name
    directory.mkdir(parents=True)
    wmt = name.startswith("bert2bert")
    if wmt:
        vocab = wmt_vocab(directory / "vocab.txt")
        ids = {"bos_token_id": vocab.index("<s>"), "eos_token_id": vocab.index("</s>"),
               "pad_token_id": vocab.index("<pad>")}
        vocab_size = len(vocab)
    else:
        shutil.copy(files / "sentencepiece" / "test_model.model", directory / "spiece.model")
        sp = transformers.BertGenerationTokenizer(str(directory / "spiece.model"))
        ids = {"bos_token_id": sp.bos_token_id, "eos_token_id": sp.eos_token_id, "pad_token_id": sp.pad_token_id}
        vocab_size = len(sp)
    save_tiny_encoder_decoder(directory, vocab_size, ids, tied=not wmt, seed=1)
    # without tokenizer_class AutoTokenizer cannot read these repos (an encoder-decoder config maps to no tokenizer)
    rewrite_config_as_released(directory, ids["bos_token_id"],
                               tokenizer_class="BertTokenizer" if wmt else "BertGenerationTokenizer")
    card_args = evaluation_module.RELEASED[f"google/{name}"].tokenizer_args
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), **card_args)
    return directory, transformers.EncoderDecoderModel.from_pretrained(directory).eval(), tokenizer


def card_input_ids(name: str, tokenizer, source: str) -> list[int]:
    """The encoder input exactly as the model card writes it."""
    if name.endswith("discofuse"):  # "replace all " with a single ` (single back tick)"
        return tokenizer(source.replace('"', "`")).input_ids
    if name.endswith("wikisplit"):  # '... with two single \' ...', then bos + text + eos
        return tokenizer(tokenizer.bos_token + source.replace('"', "''") + tokenizer.eos_token).input_ids
    return tokenizer(source, add_special_tokens=False).input_ids  # the WMT cards


@pytest.mark.parametrize("name", ["bert2bert_L-24_wmt_de_en", "roberta2roberta_L-24_discofuse",
                                  "roberta2roberta_L-24_wikisplit"])
def test_released_models_decode_exactly_as_their_model_cards_say(name, shared_dir, tmp_path, capsys):
    """transformers used as each card says (its tokenizer arguments, its preprocessing, generate, decode with
    skip_special_tokens=True) and experiments.recipes.evaluate on the same directory, with no option given: the same input
    ids, the same output ids, the same predictions; no special token left in them; references lower-cased only where
    the vocabulary cannot write case."""
    directory, reference, hf_tokenizer = card_layout(name, shared_dir / "data" / "tokenizers", tmp_path)
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "source": s, "target": t}) + "\n"
                            for i, (s, t) in enumerate(zip(CARD_SOURCES, CARD_TARGETS))))
    max_new = 10
    expected_ids, expected_text = [], []
    for source in CARD_SOURCES:
        ids = torch.tensor([card_input_ids(name, hf_tokenizer, source)])
        with torch.no_grad():
            out = reference.generate(ids, num_beams=4, length_penalty=0.6, max_new_tokens=max_new, do_sample=False)
        expected_ids.append(out[0].tolist())
        expected_text.append(hf_tokenizer.decode(out[0], skip_special_tokens=True))
    assert len(set(expected_text)) > 2, "the tiny model should write different things for different inputs"

    config = ev.build_config(str(directory), None, [f"decode.max_new_tokens={max_new}",
                                                   "decode.length_penalty_style=hf"])
    loaded = ev.load_model(config)
    for source, want in zip(CARD_SOURCES, expected_ids):
        ids = loaded.input_tokenizer([source], return_tensors=None, padding=False)["input_ids"]
        assert ids[0] == card_input_ids(name, hf_tokenizer, source)
        ids = torch.tensor(ids)
        got = loaded.model.generate(ids, torch.ones_like(ids), num_beams=4, length_penalty=0.6,
                                    length_penalty_style="hf", max_new_tokens=max_new)[0].tolist()
        assert got[:len(want)] == want and set(got[len(want):]) <= {loaded.pad_token_id}

    argv = [str(directory), "--set", f"data.test={json.dumps(data_spec(str(data)))}", "--set",
            "decode.length_penalty_style=hf", "--set", f"decode.max_new_tokens={max_new}",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--output-dir", str(tmp_path / "eval"),
            "--device", "cpu"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == expected_text
    assert not any(tok in r["prediction"] for r in rows for tok in ("<pad>", "</s>", "<s>", "[SEP]", "[CLS]"))
    assert [r["source"] for r in rows] == CARD_SOURCES and [r["reference"] for r in rows] == CARD_TARGETS
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["lowercased_data"] is False  # both vocabularies write case (the WMT one despite do_lower_case)
    if name.startswith("bert2bert"):
        assert any(c.isupper() for text in expected_text for c in text), "a cased vocabulary writes case"
        (run_,) = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert run_.data.tags["variant"] == evaluation_module.RELEASED[f"google/{name}"].variant != ev.RELEASED_VARIANT
        assert "custom-vocabulary 24-layer block" in run_.data.tags["no_paper_number"]
        assert run_.data.params["tokenizer_args.pad_token"] == "<pad>"


def test_card_settings_are_settings_of_the_evaluation(tmp_path):
    """A released model's card arguments are in its evaluation's settings (and id), can be overridden, and are
    checked in one line; other checkpoints' ids are unchanged by them (left out while empty)."""
    discofuse = ev.build_config("google/roberta2roberta_L-24_discofuse", None, [])
    assert discofuse.replace_in_source == [['"', "`"]] and discofuse.tokenizer_args == {}
    wmt = ev.build_config("google/bert2bert_L-24_wmt_en_de", None, [])
    assert wmt.tokenizer_args == {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>"}
    lowered = ev.build_config("google/bert2bert_L-24_wmt_en_de", None, ["tokenizer_args.do_lower_case=false"])
    assert lowered.tokenizer_args["do_lower_case"] is False and ev.evaluation_id(lowered) != ev.evaluation_id(wmt)
    plain = ev.build_config(str(tmp_path / "model"), "discofuse", [])
    assert "tokenizer_args" not in ev.to_dict(plain) and "replace_in_source" not in ev.to_dict(plain)
    for bad in (['replace_in_source=[["", "x"]]'], ["replace_in_source=3"], ["tokenizer_args.pad_token=[1]"]):
        with pytest.raises(ev.EvaluationError, match="replace_in_source|tokenizer_args") as caught:
            ev.build_config(str(tmp_path / "model"), "discofuse", bad)
        assert "\n" not in str(caught.value)


def test_a_grid_item_may_set_the_top_level_settings(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"defaults": {"bf16": "auto"}, "evaluations": [
        {"checkpoint": "google/roberta2roberta_L-24_bbc", "input_format": "bare",
         "replace_in_source": [["\u201c", '"']]}]}))
    _, (config,) = ev.load_evaluation_grid(grid, [])
    assert (config.input_format, config.bf16, config.replace_in_source) == ("bare", "auto", [["\u201c", '"']])
