"""The CUDA path: parity with transformers on the GPU, bf16 autocast, beam search, and checkpoints that move between
GPU and CPU. Skipped without a CUDA device (``benchmarks/device_check.sh`` runs this module on a GPU machine).

TF32 is off for the fp32 comparisons (``torch.backends.cuda.matmul.allow_tf32 = False``): the harness leaves
PyTorch's default (TF32 off for matmuls, on for cuDNN convolutions, which these models do not use), and the
tolerance of the parity tests (1e-5) is an fp32 one.
"""

from __future__ import annotations

import pytest
import torch

from bertgen import EncoderDecoderModel
from experiments.recipes import checkpointing
from test_model_parity import hf_encoder_decoder, loss_logits_and_gradients_match, source_batch, target_labels, \
    through_disk

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here (benchmarks/device_check.sh runs these on a GPU machine)")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture
def pair(tiny, tmp_path):
    theirs = hf_encoder_decoder(tiny)
    ours = through_disk(theirs, EncoderDecoderModel, tmp_path)
    return ours.to(CUDA), theirs.to(CUDA)


def test_loss_logits_and_every_gradient_match_transformers_on_cuda(pair, tiny):
    ours, theirs = pair
    ids, mask = (t.to(CUDA) for t in source_batch(tiny["vocab_size"]))
    got, _, compared = loss_logits_and_gradients_match(
        ours, theirs, ids, mask, target_labels(tiny["vocab_size"]).to(CUDA), "on cuda")
    assert got.logits is not None and compared == len(list(ours.parameters()))


def test_bf16_autocast_on_cuda_stays_close_to_fp32(pair, tiny):
    ours, _ = pair
    ids, mask = (t.to(CUDA) for t in source_batch(tiny["vocab_size"]))
    labels = target_labels(tiny["vocab_size"]).to(CUDA)
    with torch.no_grad():
        fp32 = ours(input_ids=ids, attention_mask=mask, labels=labels).loss
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = ours(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.isfinite(bf16) and abs(float(bf16) - float(fp32)) <= 2e-2 * abs(float(fp32))


def test_beam_search_on_cuda_writes_what_transformers_writes(pair, tiny):
    ours, theirs = pair
    ids, mask = (t.to(CUDA) for t in source_batch(tiny["vocab_size"]))
    with torch.no_grad():
        expected = theirs.generate(ids, attention_mask=mask, num_beams=4, length_penalty=0.6, max_new_tokens=8,
                                   do_sample=False)
        got = ours.generate(ids, mask, num_beams=4, length_penalty=0.6, length_penalty_style="hf", max_new_tokens=8)
    assert torch.equal(got.cpu(), expected.cpu())
    cpu = ours.to("cpu").generate(ids.cpu(), mask.cpu(), num_beams=4, length_penalty=0.6, length_penalty_style="hf",
                                  max_new_tokens=8)
    assert torch.equal(cpu, got.cpu())


def test_a_checkpoint_written_on_cuda_resumes_on_cpu_and_back(pair, tiny, tmp_path):
    ours, _ = pair
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-3, fused=True)
    ids, mask = (t.to(CUDA) for t in source_batch(tiny["vocab_size"]))
    ours(input_ids=ids, attention_mask=mask, labels=target_labels(tiny["vocab_size"]).to(CUDA)).loss.backward()
    optimizer.step()
    checkpointing.save_checkpoint(tmp_path / "ckpt", ours, optimizer, {"step": 1})
    for device in ("cpu", "cuda"):
        model = EncoderDecoderModel(ours.config).to(device)
        moved = torch.optim.AdamW(model.parameters(), lr=1e-3)
        state, _ = checkpointing.load_checkpoint(tmp_path / "ckpt", model, moved)
        assert state["step"] == 1
        for (name, a), b in zip(ours.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a.cpu(), b.cpu()), name
        moment = next(iter(moved.state.values()))["exp_avg"]
        assert moment.device.type == device


def test_products_on_cuda_are_pytorchs_own_whatever_the_cpu_backend():
    """bertgen.linear sends CPU fp32 products to oneDNN; CUDA tensors must take F.linear (cuBLAS) unchanged."""
    from bertgen.linear import linear, use_cpu_backend

    x = torch.randn(6, 16, device=CUDA, requires_grad=True)
    weight = torch.randn(8, 16, device=CUDA, requires_grad=True)
    with use_cpu_backend("onednn" if torch.backends.mkldnn.is_available() else "blas"):
        out = linear(x, weight)
    assert out.device.type == "cuda" and "OneDNN" not in type(out.grad_fn).__name__
    assert torch.equal(out, torch.nn.functional.linear(x, weight))
