"""Weights are checked against the parameters they fill (issue 13, class 1: silent corruption of weights).

The corrupted files are made the way an edit or a bad copy makes them: the safetensors JSON header's bytes are
changed in place (F32 → I32 keeps the byte count, so the format's own checks pass), a tensor is stored transposed,
or a legacy ``pytorch_model.bin`` holds integers. Each is refused in one line naming the file or checkpoint, the
tensor and what was expected; an fp16 checkpoint into an fp32 model is a stated conversion, not an error.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertgen import (
    BertGenerationConfig,
    BertGenerationEncoder,
    CheckpointError,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    schemes,
)
from bertgen.checkpoint import TensorHeader, read_safetensors_header, read_weight_headers

WORDS = "embeddings.word_embeddings.weight"


def save_encoder(directory: Path, tiny: dict) -> Path:
    BertGenerationEncoder(BertGenerationConfig(**tiny)).save_pretrained(directory)
    return directory / "model.safetensors"


def edit_header(file: Path, tensor: str, **changes) -> None:
    """Change one tensor's header entry in place; the header is re-padded with spaces to its old length (as the
    format allows), so only the edited fields differ and the data bytes stay where they were."""
    data = file.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    header[tensor].update(changes)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= length, "the edit must not grow the header"
    file.write_bytes(data[:8] + text.ljust(length, b" ") + data[8 + length:])


def refused(call, message: str) -> None:
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$") as err:
        call()
    assert "\n" not in str(err.value) and len(str(err.value)) <= 300


# -- dtypes -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["I32", "U8", "BOOL", "I64"])
def test_integer_header_for_a_float_weight_is_refused(tiny, tmp_path, dtype):
    file = save_encoder(tmp_path, tiny)
    shape = [99, 32] if dtype != "I64" else [99, 16]  # the same byte count as the F32 original
    if dtype in ("U8", "BOOL"):
        shape = [99, 128]
    edit_header(file, WORDS, dtype=dtype, shape=shape)
    torch_dtype = {"I32": "torch.int32", "U8": "torch.uint8", "BOOL": "torch.bool", "I64": "torch.int64"}[dtype]
    refused(lambda: BertGenerationEncoder.from_pretrained(tmp_path),
            f"{file}: tensor {WORDS} has dtype {torch_dtype}; expected a floating-point dtype (integer data must "
            "not be cast into float weights)")


def test_integer_token_types_are_refused_before_they_are_folded(tiny, tmp_path):
    """BERT's token-type row is added to the position table while loading; an integer one must not slip
    through that sum as a float."""
    file = tmp_path / "model.safetensors"
    state = {k: v for k, v in BertGenerationEncoder(BertGenerationConfig(**tiny)).state_dict().items()}
    state["embeddings.token_type_embeddings.weight"] = torch.zeros(2, 32)
    save_file(state, str(file))
    (tmp_path / "config.json").write_text(json.dumps({**tiny, "model_type": "bert", "type_vocab_size": 2}))
    edit_header(file, "embeddings.token_type_embeddings.weight", dtype="I32")
    refused(lambda: BertGenerationEncoder.from_pretrained(tmp_path),
            f"{file}: tensor embeddings.token_type_embeddings.weight has dtype torch.int32; expected a "
            "floating-point dtype (integer data must not be cast into float weights)")


def test_integer_weight_in_an_encoder_decoder_save_is_refused(tiny, tmp_path):
    config = EncoderDecoderConfig(encoder=BertGenerationConfig(**tiny),
                                  decoder=BertGenerationConfig(**tiny, is_decoder=True, add_cross_attention=True),
                                  decoder_start_token_id=2, pad_token_id=0)
    EncoderDecoderModel(config).save_pretrained(tmp_path)
    name = "decoder.bert.encoder.layer.1.crossattention.self.query.weight"
    edit_header(tmp_path / "model.safetensors", name, dtype="I32")
    refused(lambda: EncoderDecoderModel.from_pretrained(tmp_path),
            f"{tmp_path / 'model.safetensors'}: tensor {name} has dtype torch.int32; expected a floating-point dtype "
            "(integer data must not be cast into float weights)")


def test_integer_weight_is_refused_when_a_scheme_builds(tiny, tmp_path):
    file = save_encoder(tmp_path, tiny)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    (tmp_path / "vocab.txt").write_text("".join(w + "\n" for w in words), encoding="utf-8")
    edit_header(file, "encoder.layer.0.attention.self.key.weight", dtype="I32")
    refused(lambda: schemes.build("bert2rnd", bert=str(tmp_path)),
            f"{file}: tensor encoder.layer.0.attention.self.key.weight has dtype torch.int32; expected a "
            "floating-point dtype (integer data must not be cast into float weights)")


def test_integer_weight_in_pytorch_model_bin_is_refused(tiny, tmp_path):
    state = BertGenerationEncoder(BertGenerationConfig(**tiny)).state_dict()
    state[WORDS] = state[WORDS].view(torch.int32)
    BertGenerationConfig(**tiny).save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    refused(lambda: BertGenerationEncoder.from_pretrained(tmp_path),
            f"{tmp_path / 'pytorch_model.bin'}: tensor {WORDS} has dtype torch.int32; expected a floating-point "
            "dtype (integer data must not be cast into float weights)")


def test_persisted_integer_index_buffers_still_load(tiny, tmp_path):
    """Old BERT checkpoints persist ``embeddings.position_ids`` (int64); it is not a weight and stays allowed."""
    file = save_encoder(tmp_path, tiny)
    state = load_file(file)
    state["embeddings.position_ids"] = torch.arange(64)[None]
    save_file(state, str(file))
    model = BertGenerationEncoder.from_pretrained(tmp_path)
    assert torch.equal(model.get_input_embeddings().weight, state[WORDS])


def test_fp16_checkpoint_is_a_stated_conversion(tiny, tmp_path):
    file = save_encoder(tmp_path, tiny)
    state = {k: v.half() for k, v in load_file(file).items()}
    save_file(state, str(file))
    model = BertGenerationEncoder.from_pretrained(tmp_path)
    report = model.loading_report
    assert model.dtype == torch.float32
    assert f"{WORDS}: torch.float16 -> torch.float32" in report.converted
    assert len(report.converted) == len(report.loaded) == len(state)
    assert f"{len(state)} converted" in report.summary()
    assert torch.equal(model.get_input_embeddings().weight, state[WORDS].float())


def test_matching_dtypes_are_not_reported_as_conversions(tiny, tmp_path):
    save_encoder(tmp_path, tiny)
    assert BertGenerationEncoder.from_pretrained(tmp_path).loading_report.converted == []


# -- shapes -----------------------------------------------------------------------------------------------------
def test_transposed_weight_is_refused_naming_both_shapes(tiny, tmp_path):
    file = save_encoder(tmp_path, tiny)
    name = "encoder.layer.0.intermediate.dense.weight"  # [37, 32]: a transposed copy has the same byte count
    state = load_file(file)
    state[name] = state[name].t().contiguous()
    save_file(state, str(file))
    refused(lambda: BertGenerationEncoder.from_pretrained(tmp_path),
            f"{tmp_path}: tensor {name} has shape (32, 37) in the checkpoint but (37, 32) in the model")


def test_header_shape_edit_is_refused(tiny, tmp_path):
    """The header says [32, 37] over the same bytes: loads as a valid file, refused against the model."""
    file = save_encoder(tmp_path, tiny)
    name = "encoder.layer.1.output.dense.weight"  # [32, 37]
    edit_header(file, name, shape=[37, 32])
    refused(lambda: BertGenerationEncoder.from_pretrained(tmp_path),
            f"{tmp_path}: tensor {name} has shape (37, 32) in the checkpoint but (32, 37) in the model")


# -- reading headers without the data ------------------------------------------------------------------------------
def test_header_gives_every_dtype_and_shape_without_reading_data(tiny, tmp_path):
    file = save_encoder(tmp_path, tiny)
    state = load_file(file)
    state[WORDS] = state[WORDS].half()
    save_file(state, str(file))
    headers = read_safetensors_header(file)
    assert headers == {k: TensorHeader(v.dtype, tuple(v.shape)) for k, v in state.items()}
    assert read_weight_headers(tmp_path) == headers


def test_header_check_refuses_an_integer_weight(tiny, tmp_path):
    file = save_encoder(tmp_path, tiny)
    edit_header(file, WORDS, dtype="I32")
    refused(lambda: read_weight_headers(tmp_path),
            f"{file}: tensor {WORDS} has dtype torch.int32; expected a floating-point dtype (integer data must not "
            "be cast into float weights)")


@pytest.mark.parametrize("changes, message", [
    (dict(dtype="X32"), "dtype 'X32'; expected a safetensors dtype such as F32, F16 or BF16"),
    (dict(shape=[99, -32]), "shape [99, -32]; expected a list of non-negative integers"),
    (dict(shape=[99, 33]), "data_offsets [DATA]; expected 13068 bytes (F32 (99, 33)) inside the file's SIZE data "
                           "bytes"),
    (dict(data_offsets=[0, 10 ** 9]), "data_offsets [0, 1000000000]; expected 12672 bytes (F32 (99, 32)) inside "
                                      "the file's SIZE data bytes"),
])
def test_header_that_does_not_describe_the_file_is_refused(tiny, tmp_path, changes, message):
    file = save_encoder(tmp_path, tiny)
    before = json.loads(file.read_bytes()[8:8 + struct.unpack("<Q", file.read_bytes()[:8])[0]])[WORDS]
    edit_header(file, WORDS, **changes)
    length = struct.unpack("<Q", file.read_bytes()[:8])[0]
    data_size = file.stat().st_size - 8 - length
    message = message.replace("[DATA]", str(before["data_offsets"])).replace("SIZE", str(data_size))
    refused(lambda: read_safetensors_header(file), f"{file}: corrupt safetensors header: tensor {WORDS}: {message}")


@pytest.mark.parametrize("prefix", [b"", b"\x05\x00", struct.pack("<Q", 2 ** 62), struct.pack("<Q", 1)])
def test_header_length_that_cannot_be_is_refused(tmp_path, prefix):
    file = tmp_path / "model.safetensors"
    file.write_bytes(prefix + b"{}")
    length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
    refused(lambda: read_safetensors_header(file),
            f"{file}: corrupt safetensors header (length {length} for a file of {file.stat().st_size} bytes)")


# -- the launch pre-flight: a meta-device build checks the headers ---------------------------------------------------
def bert_checkpoint(tiny: dict, directory: Path) -> Path:
    file = save_encoder(directory, tiny)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    (directory / "vocab.txt").write_text("".join(w + "\n" for w in words), encoding="utf-8")
    return file


def test_meta_build_checks_the_warm_weights_from_their_headers(tiny, tmp_path):
    bert_checkpoint(tiny, tmp_path)
    built = schemes.build("bert2bert", bert=str(tmp_path), device="meta")
    assert built.model.device.type == "meta"
    real = schemes.build("bert2bert", bert=str(tmp_path))
    assert sorted(built.spec.report.loaded) == sorted(real.spec.report.loaded)
    assert built.spec.report.newly_initialized == real.spec.report.newly_initialized


def test_meta_build_refuses_a_transposed_tensor_without_reading_data(tiny, tmp_path):
    file = bert_checkpoint(tiny, tmp_path)
    name = "encoder.layer.1.intermediate.dense.weight"
    state = load_file(file)
    state[name] = state[name].t().contiguous()
    save_file(state, str(file))
    refused(lambda: schemes.build("bert2rnd", bert=str(tmp_path), device="meta"),
            f"bert={tmp_path}: tensor encoder.{name} has shape (32, 37) in the checkpoint but (37, 32) in the model")


def test_meta_build_refuses_an_integer_header(tiny, tmp_path):
    file = bert_checkpoint(tiny, tmp_path)
    edit_header(file, WORDS, dtype="I32")
    refused(lambda: schemes.build("rnd2bert", bert=str(tmp_path), device="meta"),
            f"{file}: tensor {WORDS} has dtype torch.int32; expected a floating-point dtype (integer data must not "
            "be cast into float weights)")


# -- fuzz: mutated headers and configs --------------------------------------------------------------------------------
def test_mutated_headers_and_configs_load_intact_or_are_refused_in_one_line(tiny, tmp_path):
    """Seeded random byte edits of a tiny checkpoint's safetensors header and config.json: each either loads the
    original weights (a tensor whose name was edited is reported unused, and its parameter newly initialised) or is
    refused with a one-line CheckpointError / ConfigError; never another exception, never silently changed
    weights."""
    original = BertGenerationEncoder(BertGenerationConfig(**tiny))
    original.save_pretrained(tmp_path / "base")
    weights = (tmp_path / "base" / "model.safetensors").read_bytes()
    config = (tmp_path / "base" / "config.json").read_bytes()
    header_end = 8 + struct.unpack("<Q", weights[:8])[0]
    expected = original.state_dict()
    rng = __import__("random").Random(0)
    outcomes = {"loaded": 0, "refused": 0}
    for attempt in range(150):
        directory = tmp_path / str(attempt)
        directory.mkdir()
        edit_weights = attempt % 3 != 2
        data = bytearray(weights if edit_weights else config)
        end = header_end if edit_weights else len(data)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(end)] = rng.choice(b'0123456789"{}[],:-. FIUBe' + bytes([rng.randrange(256)]))
        (directory / "model.safetensors").write_bytes(bytes(data) if edit_weights else weights)
        (directory / "config.json").write_bytes(config if edit_weights else bytes(data))
        try:
            loaded = BertGenerationEncoder.from_pretrained(directory)
        except ValueError as err:  # CheckpointError and ConfigError
            assert type(err).__name__ in ("CheckpointError", "ConfigError"), (attempt, repr(err))
            assert "\n" not in str(err) and len(str(err)) <= 300, (attempt, str(err))
            outcomes["refused"] += 1
            continue
        if edit_weights:  # a renamed tensor is not loaded: the report says so (as transformers' warning does)
            report = loaded.loading_report
            changed = [k for k, v in expected.items() if not torch.equal(loaded.state_dict()[k], v)]
            assert set(changed) <= set(report.newly_initialized), (attempt, changed)
            assert len(report.unused) == len(report.newly_initialized), (attempt, report.summary())
        outcomes["loaded"] += 1
    assert outcomes["loaded"] and outcomes["refused"], outcomes


def test_a_tensor_listed_twice_in_the_header_is_refused(tiny, tmp_path):
    """Two entries under one name: the file has one tensor's bytes twice and no reader agrees which to keep."""
    file = save_encoder(tmp_path, tiny)
    data = file.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = data[8:8 + length]
    other = b'"embeddings.LayerNorm.weight"'
    assert header.count(other) == 1
    header = header.replace(other, b'"embeddings.LayerNorm.bias"').ljust(length, b" ")
    file.write_bytes(data[:8] + header + data[8 + length:])
    refused(lambda: BertGenerationEncoder.from_pretrained(tmp_path),
            f"{file}: corrupt safetensors header: 'embeddings.LayerNorm.bias' appears twice; expected each tensor once")
