"""One pass over a shared context scores each continuation as a full pass over context + continuation."""

from __future__ import annotations

import pytest
import torch

from conftest import OPENINGS, load
from lm_eval_contrans.hf.shared_context import group_by_context, score_continuations

CONTEXT = [5, 9, 3, 7, 11, 4, 12, 13, 14, 6]
# one-token, several tokens, longer than a 4-token sliding window, a repeated token, a trailing 0 (HFLM's pad id)
CONTINUATIONS = [[8], [8, 2, 9], [1, 2, 3, 4, 5, 6], [7, 7], [9, 0]]


def full_pass(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    with torch.no_grad():
        logits = model(torch.tensor([context + continuation[:-1]])).logits[0, len(context) - 1:]
    log_probs = torch.log_softmax(logits, dim=-1)
    tokens = torch.tensor(continuation)
    return float(log_probs.gather(1, tokens[:, None]).sum()), bool((log_probs.argmax(-1) == tokens).all())


def tiny_gemma3():
    """Gemma 3 (the packaged target's family) with a 4-token sliding window, shorter than the context."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=4, max_position_embeddings=128, initializer_range=0.3,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    return Gemma3ForCausalLM(config).eval()


@pytest.mark.parametrize("family", ["gemma3", "llama", "gpt2"])
@pytest.mark.parametrize("batch_size", [2, 8])
def test_scores_equal_full_passes(family, batch_size, tiny_llama_dir, tiny_gpt2_dir):
    model = tiny_gemma3() if family == "gemma3" else load({"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[family])[0]
    shared = score_continuations(model, CONTEXT, CONTINUATIONS, batch_size=batch_size)
    expected = [full_pass(model, CONTEXT, continuation) for continuation in CONTINUATIONS]
    torch.testing.assert_close(torch.tensor([s for s, _ in shared]), torch.tensor([s for s, _ in expected]),
                               atol=1e-4, rtol=1e-5)
    assert [greedy for _, greedy in shared] == [greedy for _, greedy in expected]


def test_greedy_flag_is_true_for_the_models_own_argmax_continuation():
    model = tiny_gemma3()
    with torch.no_grad():
        generated = model.generate(torch.tensor([CONTEXT]), max_new_tokens=3, do_sample=False)[0, len(CONTEXT):].tolist()
    (_, greedy), (_, changed) = score_continuations(model, CONTEXT, [generated, generated[:-1] + [(generated[-1] + 1) % 64]],
                                                    batch_size=8)
    assert greedy and not changed


def test_group_by_context_keeps_first_seen_order():
    requests = [(None, [1, 2], [3]), (None, [4], [5]), (None, [1, 2], [6, 7]), (None, [4], [8])]
    assert group_by_context(requests) == {(1, 2): [0, 2], (4,): [1, 3]}


def test_empty_context_or_continuation_is_refused():
    model = tiny_gemma3()
    with pytest.raises(ValueError, match="at least one token"):
        score_continuations(model, [], [[1]], batch_size=2)
    with pytest.raises(ValueError, match="at least one token"):
        score_continuations(model, [1], [[1], []], batch_size=2)


def test_fast_scoring_hflm_scores_as_hflm_does(tiny_gpt2_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lm_eval_contrans.hf.scoring import FastScoringHFLM

    answers = [" it rained.", " we saw herons.", " the light was soft and the water was very still.", " ok"]
    requests = [Instance("loglikelihood", {}, (opening, answer), index)
                for index, (opening, answer) in enumerate((o, a) for o in OPENINGS for a in answers)]
    fast = FastScoringHFLM(pretrained=str(tiny_gpt2_dir), device="cpu", batch_size=4)  # auto: shares on a CPU
    assert fast.share_context is True
    plain = HFLM(pretrained=str(tiny_gpt2_dir), device="cpu", batch_size=4)
    expected, scored = plain.loglikelihood(requests, disable_tqdm=True), fast.loglikelihood(requests, disable_tqdm=True)
    torch.testing.assert_close(torch.tensor([s for s, _ in scored]), torch.tensor([s for s, _ in expected]), atol=1e-4, rtol=1e-5)
    assert [g for _, g in scored] == [g for _, g in expected]
    assert len(fast._shared_context_groups([(None, fast.tok_encode(o), fast.tok_encode(a)) for o in OPENINGS for a in answers])) == 2


def test_a_shared_score_off_by_more_than_rounding_is_refused_in_bfloat16_too(monkeypatch):
    """The bfloat16 tolerance admits rounding, not a cache that changes the scores by a few percent."""
    from transformers import AutoModelForCausalLM

    from model_families import tiny_config
    from lm_eval_contrans.hf import shared_context

    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=64, special_id=0)).eval().to(torch.bfloat16)
    real = shared_context.score_continuations

    def off_by(fraction: float):
        def scored(*args, **kwargs):
            return [(score * (1 + fraction), greedy) for score, greedy in real(*args, **kwargs)]
        return scored

    monkeypatch.setattr(shared_context, "score_continuations", off_by(0.0))
    assert shared_context.cache_can_be_shared(model) is True
    monkeypatch.setattr(shared_context, "score_continuations", off_by(0.05))
    assert shared_context.cache_can_be_shared(model) is False
    assert shared_context.rounding_tolerance(model) == pytest.approx(4 * torch.finfo(torch.bfloat16).eps)
    assert shared_context.rounding_tolerance(model.float()) == 1e-3


@pytest.mark.parametrize(("family", "shareable"), [("llama", True), ("gpt2", True), ("mamba", False), ("jamba", False),
                                                   ("qwen3_next", False), ("falcon_h1", False)])
def test_whether_a_cache_can_be_shared_is_read_from_the_models_own_cache(family, shareable):
    from transformers import AutoModelForCausalLM

    from model_families import tiny_config
    from lm_eval_contrans.hf.shared_context import cache_can_be_shared

    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size=64, special_id=0)).eval()
    # state-space layers keep recurrent state that a copied cache does not carry (Falcon-H1's copies
    # without complaint and then fails on the choices): full passes instead
    assert cache_can_be_shared(model) is shareable
    # in bfloat16 rounding alone separates the two ways by more than float32's tolerance; it must not
    # turn sharing off, nor turn it on for a cache that cannot be shared
    assert cache_can_be_shared(model.to(torch.bfloat16)) is shareable
