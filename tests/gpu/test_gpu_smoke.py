"""GPU smoke tests (marker `gpu`; skipped without CUDA): the CUDA paths agree with the CPU ones."""

import copy

import pytest
import torch

from bidsml.data.examples import tokenize_all
from bidsml.evaluation.scoring import continuation_logprobs
from bidsml.gradients.features import compute_features, lora_linears
from bidsml.model import load_base_model
from bidsml.gradients.projection import make_projector
from tests.conftest import TINY, make_examples, make_lora_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cuda_features_match_cpu(tokenizer, precision):
    items, _ = tokenize_all(tokenizer, make_examples(8), 64)
    cpu = make_lora_model()
    gpu = copy.deepcopy(cpu).cuda()
    shapes = {n: tuple(m.weight.shape) for n, m in lora_linears(cpu)}
    proj = make_projector("sjlt", 256, 0, shapes)
    f_cpu, _ = compute_features(cpu, items, proj, tokenizer.pad_token_id, None, 4096)
    f_gpu, _ = compute_features(gpu, items, proj, tokenizer.pad_token_id, None, 4096, precision)
    cos = torch.nn.functional.cosine_similarity(f_cpu, f_gpu.cpu(), dim=1)
    assert cos.min() > (0.9999 if precision == "float32" else 0.99), cos


def test_cuda_scoring_matches_cpu(tokenizer):
    model = load_base_model(TINY)
    pairs = [("Question: 2+2?\nAnswer:", " 4"), ("The sky is", " blue")]
    cpu = continuation_logprobs(model, tokenizer, pairs, 2, 128, None, desc="cpu")
    gpu = continuation_logprobs(copy.deepcopy(model).cuda(), tokenizer, pairs, 2, 128, None, desc="gpu")
    for (a, n, _), (b, m, _) in zip(cpu, gpu):
        assert n == m and abs(a - b) < 1e-3
