"""The task table, data loading (hub call construction, local formats, errors, subsets), tokenisation with its cache
and truncation report, the length-bucketing sampler and the collator."""

from __future__ import annotations

import zipfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from experiments.data import batches as data_module
from experiments.data.batches import (LABEL_PAD_ID, LengthBucketBatchSampler, Seq2SeqCollator, build_dataloader,
                                      tokenize_split)
from experiments.data.sources import hub_request, load_split, read_gigaword_zip
from experiments.data.metrics import METRICS
from experiments.config.tasks import TASKS, get_task

# ---------------------------------------------------------------------------------------------------------------------
# tokenizers with bertgen.tokenization's interface


class WordPieceTokenizer:
    """BERT uncased WordPiece built with the `tokenizers` library: [CLS] text [SEP], as bertgen's BERT tokenizer."""

    def __init__(self, vocab_file: Path):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

        tok = Tokenizer(models.WordPiece.from_file(str(vocab_file), unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self.cls_id, self.sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)]
        )
        self._tok = tok
        self.pad_token_id = tok.token_to_id("[PAD]")
        self.eos_token_id = self.sep_id
        self.decoder_start_token_id = self.cls_id
        self.calls = 0

    def __call__(self, texts, max_length=None, padding=False, truncation=False, return_tensors=None):
        self.calls += 1
        if truncation and max_length:
            self._tok.enable_truncation(max_length)
        else:
            self._tok.no_truncation()
        encodings = self._tok.encode_batch(list(texts))
        return {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings]}

    def __getstate__(self):  # the call counter must not change the cache key
        return {"tokenizer": self._tok.to_str()}


class WordTokenizer:
    """Whitespace words → ids, no special tokens added (like GPT-2's): pad 0, eos = decoder start = 1."""

    pad_token_id, eos_token_id, decoder_start_token_id = 0, 1, 1
    fingerprint = "word-tokenizer-v1"

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, texts, max_length=None, padding=False, truncation=False, return_tensors=None):
        ids = [[self.vocab.setdefault(w, len(self.vocab) + 2) for w in t.split()] for t in texts]
        if truncation and max_length:
            ids = [x[:max_length] for x in ids]
        return {"input_ids": ids}


@pytest.fixture(scope="module")
def wordpiece(shared_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer(shared_dir / "data" / "tokenizers" / "bert-base-uncased" / "vocab.txt")


# ---------------------------------------------------------------------------------------------------------------------
# the task table


def test_task_table_has_the_papers_six_tasks_and_settings():
    expected = {  # task: (max in, max out, steps or None, epochs or None, batch)
        "discofuse": (128, 128, 300_000, None, 256),
        "wikisplit": (128, 128, 300_000, None, 256),
        "wmt14_en_de": (128, 128, None, 30, 256),
        "wmt14_de_en": (128, 128, None, 30, 256),
        "gigaword": (128, 32, 500_000, None, 256),
        "cnn_dailymail": (512, 128, 300_000, None, 128),
        "xsum": (512, 64, 200_000, None, 128),
    }
    assert {name for name, task in TASKS.items() if not task.synthetic} == set(expected)
    assert {name for name, task in TASKS.items() if task.synthetic} == {"synthetic_fusion", "synthetic_split"}
    assert [TASKS[n].baseline for n in expected] == ["copy_source"] * 2 + [None] * 2 + ["lead_1", "lead_3", "lead_1"]
    for name, (max_in, max_out, steps, epochs, batch) in expected.items():
        task = TASKS[name]
        assert (task.max_source_length, task.max_target_length) == (max_in, max_out)
        assert (task.train_steps, task.train_epochs, task.batch_size) == (steps, epochs, batch)
        assert (task.beam_size, task.length_penalty_alpha) == (4, 0.6)
        assert set(task.metrics) <= set(METRICS) and task.primary_metric in task.metrics
        assert {"train", "validation", "test"} <= set(task.splits)
        assert task.extra_test_splits == (("newstest2016",) if name.startswith("wmt14_") else ())
    assert TASKS["discofuse"].metrics == ("exact", "sari")
    assert TASKS["wikisplit"].metrics == ("exact", "sari", "bleu_nltk", "sacrebleu")
    assert TASKS["cnn_dailymail"].metrics == ("rouge1", "rouge2", "rougeLsum")
    # WMT trains for 30 epochs over 4,508,785 pairs at batch 256: 30 * ceil(4508785 / 256) steps
    assert TASKS["wmt14_en_de"].total_train_steps(4_508_785) == 30 * 17_613
    assert TASKS["xsum"].total_train_steps() == 200_000
    with pytest.raises(ValueError, match="pass num_train_examples"):
        TASKS["wmt14_de_en"].total_train_steps()


def test_task_validation_and_lookup():
    with pytest.raises(ValueError, match="unknown task 'cnn'"):
        get_task("cnn")
    assert get_task(TASKS["xsum"]) is TASKS["xsum"]
    with pytest.raises(ValueError, match="exactly one of train_steps and train_epochs"):
        TASKS["xsum"].with_overrides(train_epochs=3)
    with pytest.raises(ValueError, match="primary_metric"):
        TASKS["xsum"].with_overrides(primary_metric="sari")
    assert TASKS["xsum"].with_overrides(max_source_length=64).max_source_length == 64


# ---------------------------------------------------------------------------------------------------------------------
# the hub: argument construction and conversion (no download)


def test_hub_requests_follow_the_hub_notes():
    assert hub_request("discofuse", "train").kwargs == {
        "path": "google-research-datasets/discofuse", "name": "discofuse-wikipedia", "split": "train"}
    assert hub_request("wikisplit", "test").kwargs == {
        "path": "google-research-datasets/wiki_split", "revision": "refs/convert/parquet", "split": "test"}
    assert hub_request("xsum", "validation").kwargs == {
        "path": "EdinburghNLP/xsum", "revision": "refs/convert/parquet", "split": "validation"}
    assert hub_request("cnn_dailymail", "test").kwargs == {
        "path": "abisee/cnn_dailymail", "name": "3.0.0", "split": "test"}
    assert hub_request("wmt14_de_en", "test").kwargs == {"path": "wmt/wmt14", "name": "de-en", "split": "test"}
    assert hub_request("wmt14_en_de", "newstest2016").kwargs == {"path": "wmt/wmt16", "name": "de-en", "split": "test"}
    giga = hub_request("gigaword", "validation")
    assert giga.loader == "huggingface_hub.hf_hub_download"
    assert giga.kwargs == {"repo_id": "Harvard/gigaword", "filename": "data/ggw_data.zip", "repo_type": "dataset"}
    assert giga.members == ("org_data/dev.src.txt", "org_data/dev.tgt.txt")
    with pytest.raises(ValueError, match="no split 'dev' on the hub"):
        hub_request("xsum", "dev")


def _fake_hub(monkeypatch, rows: dict[str, list]):
    calls = []

    def fake_load_dataset(**kwargs):
        calls.append(kwargs)
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_discofuse_and_wmt_conversion(monkeypatch):
    calls = _fake_hub(monkeypatch, {
        "incoherent_first_sentence": ["He came .", "She ran ."],
        "incoherent_second_sentence": ["He saw .", ""],
        "coherent_first_sentence": ["He came and saw .", "She ran ."],
        "coherent_second_sentence": ["", ""],
        "connective_string": ["and", ""],
    })
    ds = load_split("discofuse", "validation")
    assert calls == [hub_request("discofuse", "validation").kwargs]
    assert ds.column_names == ["id", "source", "target"]
    assert ds["source"][:] == ["He came . He saw .", "She ran ."]
    assert ds["target"][:] == ["He came and saw .", "She ran ."]
    assert ds["id"][:] == ["validation-0", "validation-1"]

    _fake_hub(monkeypatch, {"translation": [{"de": "Hallo Welt .", "en": "Hello world ."}]})
    assert load_split("wmt14_de_en", "test")[0] == {"id": "test-0", "source": "Hallo Welt .", "target": "Hello world ."}
    assert load_split("wmt14_en_de", "test")[0]["source"] == "Hello world ."

    _fake_hub(monkeypatch, {"document": ["a"], "summary": ["b"]})  # XSum without its id column
    with pytest.raises(ValueError, match="has no column 'id'"):
        load_split("xsum", "test")


def _write_gigaword_zip(path: Path, stem: str, sources: str, targets: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"org_data/{stem}.src.txt", sources)
        archive.writestr(f"org_data/{stem}.tgt.txt", targets)
    return path


def test_hub_gigaword_zip(monkeypatch, tmp_path):
    zip_path = _write_gigaword_zip(tmp_path / "ggw_data.zip", "test", "Australian Shares CLOSE higher\nsecond doc\n",
                                   "Aussie Shares Up\nsecond summary\n")
    requested = []

    def fake_download(**kwargs):
        requested.append(kwargs)
        return str(zip_path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ds = load_split("gigaword", "test")
    assert requested == [hub_request("gigaword", "test").kwargs]
    assert ds["source"][:] == ["australian shares close higher", "second doc"]
    assert ds["target"][:] == ["aussie shares up", "second summary"]

    bad = _write_gigaword_zip(tmp_path / "bad.zip", "test", "one\ntwo\n", "one\n")
    with pytest.raises(ValueError, match="has 1 lines but .* has 2"):
        read_gigaword_zip(bad, ("org_data/test.src.txt", "org_data/test.tgt.txt"))
    with pytest.raises(ValueError, match="has no member 'org_data/dev.src.txt'"):
        read_gigaword_zip(bad, ("org_data/dev.src.txt", "org_data/dev.tgt.txt"))


# ---------------------------------------------------------------------------------------------------------------------
# local files: the shared data


def test_wikisplit_tsv(shared_dir):
    path = shared_dir / "data" / "wikisplit" / "validation.tsv"
    ds = load_split("wikisplit", "validation", {"path": str(path)})
    first_line = path.read_text(encoding="utf-8").split("\n")[0]
    complex_sentence, split = first_line.split("\t")
    assert len(ds) == 5000
    assert ds[0]["source"] == complex_sentence
    assert ds[0]["target"] == " ".join(p.strip() for p in split.split("<::::>"))
    assert not any("<::::>" in t for t in ds["target"][:])
    # a dict keyed by split, and max_examples
    assert len(load_split("wikisplit", "tune", {"tune": {"path": str(shared_dir / "data/wikisplit/tune.tsv")}},
                          max_examples=7)) == 7


def test_summarization_jsonl(shared_dir):
    cnn = load_split("cnn_dailymail", "test", {
        "path": str(shared_dir / "data/summarization/frank_cnndm_test_articles.jsonl"),
        "columns": {"input": "article", "target": "reference", "id": "id"},
    })
    assert len(cnn) == 250 and cnn[0]["id"].startswith("cnn-test-")
    assert cnn[0]["source"].startswith("(CNN)") and cnn[0]["target"].startswith("NASA chief scientist")
    # the XSum file already uses the hub's column names (document, summary, id): no mapping needed
    xsum = load_split("xsum", "test", shared_dir / "data/summarization/xsum_human_eval_50.jsonl")
    assert len(xsum) == 50 and xsum[0]["id"] == "4867"


def test_parallel_text_with_xml_unescape(shared_dir):
    mt = shared_dir / "data" / "mt"
    spec = {"source_path": str(mt / "src-val.txt"), "target_path": str(mt / "tgt-val.txt")}
    raw = load_split("wmt14_en_de", "validation", spec)
    assert len(raw) == 3000
    assert any("&apos;" in s for s in raw["source"][:])
    clean = load_split("wmt14_en_de", "validation", {**spec, "xml_unescape": True})
    assert not any("&apos;" in s or "&quot;" in s for s in clean["source"][:])
    assert clean[0]["target"] == "Keine befreiende Novelle für Tymoshenko durch das Parlament"
    assert clean._fingerprint != raw._fingerprint


# ---------------------------------------------------------------------------------------------------------------------
# local files: formats and errors


def test_csv_and_discofuse_tsv(tmp_path):
    csv_path = tmp_path / "news.csv"
    csv_path.write_text('story,headline\n"A long, quoted story.",Short one\n"Second ""story""",Two\n', encoding="utf-8")
    ds = load_split("xsum", "train", {"path": str(csv_path), "columns": {"input": "story", "target": "headline"}})
    assert ds["source"][:] == ["A long, quoted story.", 'Second "story"']
    assert ds["id"][:] == ["train-0", "train-1"]

    tsv_path = tmp_path / "dev_balanced.tsv"  # Google's DiscoFuse archive layout: header row, unquoted fields
    header = "coherent_first_sentence\tcoherent_second_sentence\tincoherent_first_sentence\tincoherent_second_sentence"
    tsv_path.write_text(f'{header}\nHe said " hi " .\t\tHe said " hi .\t" .\n', encoding="utf-8")
    fused = load_split("discofuse", "validation", {"path": str(tsv_path)})
    assert fused[0] == {"id": "validation-0", "source": 'He said " hi . " .', "target": 'He said " hi " .'}


@pytest.mark.parametrize(
    "name, content, spec_extra, message",
    [
        ("missing.jsonl", None, {}, r"missing\.jsonl: file not found; expected JSON lines"),
        ("empty.jsonl", b"\n  \n", {}, r"empty\.jsonl: file is empty"),
        ("latin1.jsonl", '{"document": "café", "summary": "x"}\n'.encode("latin-1"), {},
         r"latin1\.jsonl: not valid UTF-8 \(byte 17\)"),
        ("cols.jsonl", b'{"text": "a", "summary": "b"}\n', {},
         r"cols\.jsonl \(first example\): has no field 'document' \(available: \['summary', 'text'\]\)"),
        ("bad.jsonl", b'{"document": "a", "summary": "b"}\n{"document": \n', {},
         r"bad\.jsonl: line 2 is not valid JSON"),
        ("ragged.csv", b"document,summary\na,b,c\n", {}, r"ragged\.csv: line 2 has 3 fields; expected 2"),
        ("header.csv", b"document,summary\n", {}, r"header\.csv: has a header but no rows"),
        ("data.parquet", b"x", {}, r"data\.parquet: cannot tell the format from the suffix '\.parquet'"),
        ("cols2.jsonl", b'{"a": "x"}\n', {"columns": {"input": "a"}},
         r"columns must be a mapping with keys 'input', 'target'"),
        ("notext.jsonl", b'{"document": 3, "summary": "b"}\n', {}, r"field \['document'\] holds a int; expected text"),
    ],
)
def test_local_file_errors(tmp_path, name, content, spec_extra, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_split("xsum", "test", {"path": str(path), **spec_extra})


def test_wikisplit_and_parallel_errors(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("complex sentence without a split\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tsv: line 1 has 1 tab-separated fields; expected 2"):
        load_split("wikisplit", "test", {"path": str(bad)})
    src, tgt = tmp_path / "src.txt", tmp_path / "tgt.txt"
    src.write_text("a\nb\nc\n", encoding="utf-8")
    tgt.write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tgt\.txt: has 2 lines but .*src\.txt has 3"):
        load_split("wmt14_en_de", "train", {"source_path": str(src), "target_path": str(tgt)})
    with pytest.raises(ValueError, match="unknown key"):
        load_split("wmt14_en_de", "train", {"source_path": str(src), "target": str(tgt)})
    with pytest.raises(ValueError, match="no entry for split 'test'"):
        load_split("wmt14_en_de", "test", {"train": {"source_path": str(src), "target_path": str(tgt)}})


def test_data_fraction_is_seeded_nested_and_fingerprinted(tmp_path):
    src, tgt = tmp_path / "src.txt", tmp_path / "tgt.txt"
    src.write_text("".join(f"source {i}\n" for i in range(1000)), encoding="utf-8")
    tgt.write_text("".join(f"target {i}\n" for i in range(1000)), encoding="utf-8")
    spec = {"source_path": str(src), "target_path": str(tgt)}

    def ids(**kwargs):
        return load_split("discofuse", "train", spec, **kwargs)["id"][:]

    one, ten = ids(data_fraction=0.01, seed=3), ids(data_fraction=0.1, seed=3)
    assert len(one) == 10 and len(ten) == 100
    assert one == ids(data_fraction=0.01, seed=3)  # deterministic
    assert set(one) < set(ten)  # the 1% subset lies inside the 10% one
    assert one != ids(data_fraction=0.01, seed=4)
    assert one == sorted(one, key=lambda i: int(i.split("-")[1]))  # file order kept
    assert ids(data_fraction=0.1, seed=3, max_examples=5) == ten[:5]
    with pytest.raises(ValueError, match=r"data_fraction must be in \(0, 1\]"):
        ids(data_fraction=0.0)

    first = load_split("discofuse", "train", spec)._fingerprint
    assert load_split("discofuse", "train", spec)._fingerprint == first
    assert load_split("discofuse", "train", spec, max_examples=3)._fingerprint != first
    tgt.write_text("".join(f"target {i}!\n" for i in range(1000)), encoding="utf-8")
    assert load_split("discofuse", "train", spec)._fingerprint != first


# ---------------------------------------------------------------------------------------------------------------------
# tokenisation


def test_tokenize_wordpiece_labels_truncation_and_cache(shared_dir, wordpiece, tmp_path):
    mt = shared_dir / "data" / "mt"
    ds = load_split("wmt14_en_de", "validation",
                    {"source_path": str(mt / "src-val.txt"), "target_path": str(mt / "tgt-val.txt")},
                    max_examples=200)
    tokenized, report = tokenize_split(ds, wordpiece, 24, 20, cache_dir=tmp_path)
    assert tokenized.column_names == ["id", "input_ids", "labels", "source_length", "target_length",
                                      "source_truncated", "target_truncated"]
    untruncated = wordpiece([r["source"] for r in ds], truncation=False)["input_ids"]
    assert report.source_truncated == sum(len(x) > 24 for x in untruncated) > 0
    assert report.num_examples == 200 and 0 < report.target_truncated < 200
    for row, full in zip(tokenized, untruncated):
        assert row["source_truncated"] == (len(full) > 24)
        assert row["input_ids"][0] == wordpiece.cls_id and row["input_ids"][-1] == wordpiece.sep_id
        assert len(row["input_ids"]) <= 24 and row["source_length"] == len(row["input_ids"])
        assert row["labels"][0] != wordpiece.cls_id and row["labels"][-1] == wordpiece.sep_id  # start added by shift
        assert len(row["labels"]) <= 20
    assert str(report).startswith("200 examples: ")

    # cached: a second run reads the file and never calls the tokenizer
    calls = wordpiece.calls
    again, again_report = tokenize_split(ds, wordpiece, 24, 20, cache_dir=tmp_path)
    assert wordpiece.calls == calls and again_report == report
    assert again[:]["input_ids"] == tokenized[:]["input_ids"]
    tokenize_split(ds, wordpiece, 32, 20, cache_dir=tmp_path)  # another max length is another cache entry
    assert wordpiece.calls > calls
    assert len(list(tmp_path.glob("tokenized-*.arrow"))) == 2


def test_tokenize_appends_eos_for_tokenizers_without_special_tokens():
    ds = datasets.Dataset.from_dict({"id": ["0", "1"], "source": ["a b c d e f", "a"], "target": ["x y", "x y z w v"]})
    tokenizer = WordTokenizer()
    tokenized, report = tokenize_split(ds, tokenizer, 4, 4)
    ids = tokenizer.vocab
    assert tokenized[0]["input_ids"] == [ids["a"], ids["b"], ids["c"], ids["d"]]
    assert tokenized[0]["labels"] == [ids["x"], ids["y"], 1]
    assert tokenized[1]["labels"] == [ids["x"], ids["y"], ids["z"], 1]  # truncated, EOS kept inside the limit
    assert (report.source_truncated, report.target_truncated) == (1, 1)
    with pytest.raises(ValueError, match="has no column 'source'"):
        tokenize_split(ds.remove_columns("source"), tokenizer, 4, 4)


# ---------------------------------------------------------------------------------------------------------------------
# batching


def _padding(batches, lengths) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_length_bucketing_sampler_is_deterministic_complete_and_saves_padding():
    lengths = np.random.default_rng(0).integers(1, 200, size=1003)
    sampler = LengthBucketBatchSampler(lengths, batch_size=16, seed=7, chunk_batches=10)
    epoch0 = sampler.batches(0)
    assert sorted(i for b in epoch0 for i in b) == list(range(1003))
    assert len(epoch0) == len(sampler) == len(list(sampler)) == 63  # 6 chunks of 160 (10 batches each) + 43 (16+16+11)
    assert epoch0 == LengthBucketBatchSampler(lengths, 16, seed=7, chunk_batches=10).batches(0)
    assert epoch0 != sampler.batches(1) and epoch0 != LengthBucketBatchSampler(lengths, 16, seed=8).batches(0)
    random_batches = [list(range(i, min(i + 16, 1003))) for i in range(0, 1003, 16)]
    assert _padding(epoch0, lengths) < 0.2 * _padding(random_batches, lengths)

    dropping = LengthBucketBatchSampler(lengths, batch_size=16, seed=7, chunk_batches=10, drop_last=True)
    assert all(len(b) == 16 for b in dropping) and len(dropping) == len(dropping.batches(0)) == 62


def test_sampler_resumes_from_a_position():
    lengths = np.arange(100) % 13
    sampler = LengthBucketBatchSampler(np.stack([lengths, lengths[::-1]], axis=1), batch_size=8, seed=1,
                                       chunk_batches=3)
    sampler.set_position(epoch=2, batches_done=5)
    assert len(sampler) == 13 - 5
    assert list(sampler) == sampler.batches(2)[5:]
    assert list(sampler) == sampler.batches(2)  # the next pass starts at batch 0
    restored = LengthBucketBatchSampler(lengths, batch_size=8, seed=1, chunk_batches=3)
    sampler.set_position(3, 4)
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == sampler.batches(3)[4:]
    with pytest.raises(ValueError, match="saved with seed 1"):
        LengthBucketBatchSampler(lengths, batch_size=8, seed=2).load_state_dict(sampler.state_dict())


def test_eval_sampler_sorts_longest_first():
    lengths = [3, 9, 1, 7, 5]
    batches = list(LengthBucketBatchSampler(lengths, batch_size=2, shuffle=False))
    assert batches == [[1, 3], [4, 0], [2]]


def test_collator_pads_to_batch_max():
    collate = Seq2SeqCollator(pad_token_id=0)
    batch = collate([{"id": "a", "input_ids": [5, 6, 7], "labels": [8, 2]},
                     {"id": "b", "input_ids": [5], "labels": [9, 9, 9, 2]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 2, LABEL_PAD_ID, LABEL_PAD_ID], [9, 9, 9, 2]]
    assert batch["ids"] == ["a", "b"] and batch["input_ids"].dtype == torch.long
    wide = Seq2SeqCollator(pad_token_id=0, pad_to_multiple_of=8)([{"input_ids": [1, 2, 3], "labels": [4]}])
    assert wide["input_ids"].shape == (1, 8) and wide["labels"].shape == (1, 8) and "ids" not in wide
    with pytest.raises(ValueError, match="pad_token_id is None"):
        Seq2SeqCollator(pad_token_id=None)


def test_dataloader_end_to_end(shared_dir, wordpiece):
    ds = load_split("wikisplit", "validation", {"path": str(shared_dir / "data/wikisplit/validation.tsv")},
                    max_examples=96)
    tokenized, _ = tokenize_split(ds, wordpiece, 128, 128)
    first = [b for b in build_dataloader(tokenized, 16, wordpiece.pad_token_id, seed=5, chunk_batches=3)]
    second = [b for b in build_dataloader(tokenized, 16, wordpiece.pad_token_id, seed=5, chunk_batches=3)]
    assert len(first) == 6 and [b["ids"] for b in first] == [b["ids"] for b in second]
    assert sorted(i for b in first for i in b["ids"]) == sorted(ds["id"][:])
    for batch in first:
        assert torch.equal(batch["attention_mask"].bool(), batch["input_ids"] != wordpiece.pad_token_id)
        assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max()
        assert (batch["labels"] != LABEL_PAD_ID).sum(1).max() == batch["labels"].shape[1]
    resumed = build_dataloader(tokenized, 16, wordpiece.pad_token_id, seed=5, chunk_batches=3, batches_done=4)
    assert [b["ids"] for b in resumed] == [b["ids"] for b in first[4:]]
    assert data_module.column_array(tokenized, "source_length").shape == (96,)
