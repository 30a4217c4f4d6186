"""The lm-eval adapter, in process: building, steering through HFLM's paths, artifacts, errors."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from conftest import OPENINGS
from lm_eval_contrans.artifact import load_transplant, save_transplant
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.hf.lm_eval_model import ConTransLM

PAIRS = [("The hotel room", " was spotless and lovely."), ("The hotel room", " was filthy and awful."),
         ("The concert last night", " was wonderful."), ("The concert last night", " was terrible."),
         ("The coffee here", " is rich and smooth."), ("Rice", " and barley."),
         ("The museum exhibit was", " fascinating."), ("The train journey", " was exhausting.")]


def loglikelihoods(lm, pairs=PAIRS):
    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)]
    return torch.tensor([logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)])


def rolling(lm, texts=("The park near our house is peaceful and green.",)):
    requests = [Instance("loglikelihood_rolling", {}, (text,), index) for index, text in enumerate(texts)]
    return torch.tensor(lm.loglikelihood_rolling(requests, disable_tqdm=True))


def generate(lm, contexts=("The hotel room", "The concert")):
    requests = [Instance("generate_until", {}, (c, {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}), i)
                for i, c in enumerate(contexts)]
    return lm.generate_until(requests, disable_tqdm=True)


@pytest.fixture(scope="module")
def built(tiny_llama_dir, tiny_gpt2_dir, tmp_path_factory):
    """A transplant Llama(32) -> GPT-2(48), built once through the adapter and saved."""
    path = tmp_path_factory.mktemp("artifact") / "sentiment.safetensors"
    lm = ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept="sentiment", alpha=4.0,
                    save_vector=str(path), device="cpu", batch_size=8)
    return lm, path


def plain_hf(folder, batch_size=8):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(folder), device="cpu", batch_size=batch_size)


def test_build_records_a_complete_artifact(built, tiny_llama_dir, tiny_gpt2_dir):
    lm, path = built
    transplant = load_transplant(path)
    assert (transplant.source_hidden_size, transplant.target_hidden_size) == (32, 48)
    assert transplant.target_layer == 2  # round(0.75 * depth)
    sweep = transplant.extra["source_layer_sweep"]  # the default recipe chooses the source block
    assert str(transplant.source_layer) == max(sweep, key=sweep.get) and len(sweep) > 1
    assert transplant.concept == "sentiment" and transplant.concept_pairs >= 100
    assert transplant.anchor_count >= 2 * 48 and transplant.map_method == "lstsq"
    assert transplant.heldout_r2 == pytest.approx(max(sweep.values()), abs=1e-4)  # the best block's fit
    torch.testing.assert_close(transplant.vector, transplant.source_vector @ transplant.map_weight, atol=1e-4, rtol=1e-4)
    assert lm.get_model_info()["contrans"]["heldout_r2"] == transplant.heldout_r2


def test_steering_reaches_every_request_type_and_leaves_no_hook(built, tiny_gpt2_dir):
    lm, _ = built
    plain = plain_hf(tiny_gpt2_dir)
    assert not torch.allclose(loglikelihoods(lm), loglikelihoods(plain), atol=1e-4)
    assert not torch.allclose(rolling(lm), rolling(plain), atol=1e-4)
    ids = plain.tokenizer("The hotel room was", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, plain.model(ids).logits)  # nothing left attached
    steered_at_call = []
    block = lm.model.transformer.h[lm.transplant.target_layer]
    handle = block.register_forward_hook(lambda m, i, o: steered_at_call.append(len(m._forward_hooks) == 2))
    try:
        generate(lm)
    finally:
        handle.remove()
    # the prompt and every generated token pass the block while our hook is attached
    assert len(steered_at_call) > 2 and all(steered_at_call)
    assert not block._forward_hooks


def test_generation_is_steered(built, tiny_gpt2_dir):
    lm, path = built
    strong = ConTransLM(target=str(tiny_gpt2_dir), vector=str(path), alpha=200.0, device="cpu")
    plain = plain_hf(tiny_gpt2_dir)
    assert generate(strong) != generate(plain)


def test_batch_sizes_one_and_eight_agree(built, tiny_gpt2_dir):
    lm, path = built
    one = ConTransLM(target=str(tiny_gpt2_dir), vector=str(path), alpha=4.0, device="cpu", batch_size=1)
    torch.testing.assert_close(loglikelihoods(one), loglikelihoods(lm), atol=1e-4, rtol=1e-5)


def test_alpha_zero_equals_the_plain_model(built, tiny_gpt2_dir):
    _, path = built
    zero = ConTransLM(target=str(tiny_gpt2_dir), vector=str(path), alpha=0.0, device="cpu", batch_size=8)
    assert torch.equal(loglikelihoods(zero), loglikelihoods(plain_hf(tiny_gpt2_dir)))


def test_projecting_only_the_scored_positions_gives_the_full_projections_scores(built):
    lm, _ = built
    # multiple-choice shaped: long shared openings, answers of different lengths
    answers = [" it rained.", " we saw herons.", " the light was soft and the water was very still and grey.", " ok"]
    pairs = [(opening, answer) for opening in OPENINGS for answer in answers]
    # token id 0 is what HFLM pads with: a real trailing 0 must not hide a scored position
    opening_ids = [5, 9, 3, 7, 11, 4, 12, 13, 14, 6, 8, 10]
    crafted = [((None, None), opening_ids, [0]), ((None, None), opening_ids, [8, 0, 0]),
               ((None, None), opening_ids[:-1], [3, 1]), ((None, None), opening_ids, [0, 9])]
    keep_requests = []
    handle = lm.model.register_forward_hook(  # positions projected, positions in the batch
        lambda module, args, output: keep_requests.append((output.logits.shape[1], args[0].shape[1])))
    try:
        lm.share_context = False  # these share openings: keep them on HFLM's batched path, which the window serves
        lm.score_continuations_only = False
        full = loglikelihoods(lm, pairs), lm._loglikelihood_tokens(crafted, disable_tqdm=True), rolling(lm)
        assert all(projected == length for projected, length in keep_requests)
        lm.score_continuations_only = True
        window = loglikelihoods(lm, pairs), lm._loglikelihood_tokens(crafted, disable_tqdm=True), rolling(lm)
    finally:
        handle.remove()
        lm.score_continuations_only = lm.share_context = True
    torch.testing.assert_close(window[0], full[0], atol=1e-5, rtol=1e-5)
    assert [greedy for _, greedy in window[1]] == [greedy for _, greedy in full[1]]
    torch.testing.assert_close(torch.tensor([ll for ll, _ in window[1]]), torch.tensor([ll for ll, _ in full[1]]),
                               atol=1e-5, rtol=1e-5)
    assert any(projected < length for projected, length in keep_requests)  # the shortcut was taken
    torch.testing.assert_close(window[2], full[2], atol=1e-5, rtol=1e-5)  # loglikelihood_rolling too


def test_sharing_each_context_gives_the_scores_of_full_passes(built):
    lm, _ = built  # steered at alpha 4: the hooks must act on the context pass and on the choices' pass
    assert lm.share_context is True  # share_context=auto, on a CPU
    answers = [" it rained.", " we saw herons.", " the light was soft and the water was very still and grey.", " ok",
               " a dog barked twice.", " nothing happened at all.", " we met an old friend.", " the bell rang.",
               " the shop was closed.", " I lost my hat."]  # ten choices: more than one batch of 8
    pairs = [(opening, answer) for opening in OPENINGS for answer in answers] + PAIRS
    tokens_run = []
    handle = lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: tokens_run.append((args[0] if args else kwargs["input_ids"]).numel()), with_kwargs=True)
    try:
        lm.share_context = False
        full, full_tokens = loglikelihoods(lm, pairs), sum(tokens_run)
        tokens_run.clear()
        lm.share_context = True
        shared, shared_tokens = loglikelihoods(lm, pairs), sum(tokens_run)
        greedy = [lm.loglikelihood([Instance("loglikelihood", {}, pair, 0)], disable_tqdm=True)[0][1] for pair in pairs[:3]]
        lm.share_context = False
        greedy_full = [lm.loglikelihood([Instance("loglikelihood", {}, pair, 0)], disable_tqdm=True)[0][1] for pair in pairs[:3]]
    finally:
        handle.remove()
        lm.share_context = True
    torch.testing.assert_close(shared, full, atol=1e-4, rtol=1e-5)
    assert greedy == greedy_full
    assert shared_tokens < full_tokens / 2  # each opening ran once, not ten times
    steered_away = ConTransLM.__new__(ConTransLM)  # the groups depend on the setting alone: no model needed
    steered_away.share_context, steered_away.backend, steered_away.positions = True, "causal", "prompt"
    assert steered_away._shared_context_groups([((None, None), [1] * 50, [2, 3])] * 3) == []


def test_saved_and_loaded_artifact_gives_identical_results(built, tiny_gpt2_dir):
    lm, path = built
    loaded = ConTransLM(target=str(tiny_gpt2_dir), vector=str(path), alpha=4.0, device="cpu", batch_size=8)
    assert torch.equal(loglikelihoods(loaded), loglikelihoods(lm))
    assert torch.equal(loaded.transplant.vector, lm.transplant.vector)


def test_same_inputs_give_a_byte_identical_artifact(built, tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    _, path = built
    again = tmp_path / "again.safetensors"
    ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept="sentiment", alpha=1.0,
               save_vector=str(again), device="cpu", batch_size=8)
    assert again.read_bytes() == path.read_bytes()


def test_artifact_for_another_target_is_refused(built, tiny_llama_dir):
    _, path = built
    with pytest.raises(ConTransError, match="^vector: this artifact was built for another target: hidden size 48 != 32"):
        ConTransLM(target=str(tiny_llama_dir), vector=str(path), device="cpu")


def test_corrupted_truncated_and_foreign_files_are_refused(built, tmp_path):
    _, path = built
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(3)}, str(foreign))
    for bad, message in [(truncated, "truncated or corrupted"), (garbage, "truncated or corrupted"),
                         (foreign, "not a lm_eval_contrans transplant"), (tmp_path / "missing.safetensors", "not found")]:
        with pytest.raises(ConTransError, match=f"^vector: .*{message}"):
            load_transplant(bad)


def test_killed_write_leaves_no_artifact(built, tmp_path, monkeypatch):
    lm, _ = built
    import lm_eval_contrans.artifact as artifact

    def dies(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(artifact, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        save_transplant(lm.transplant, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (dict(target="T"), "^source: give source=<model>"),
    (dict(source="S"), "^target: name the model"),
    (dict(source="S", target="T", alpha="nan"), "^alpha: must be finite"),
    (dict(source="S", target="T", alpha="inf"), "^alpha: must be finite"),
    (dict(source="S", target="missing.gguf"), "^target: GGUF file not found: missing.gguf"),
    (dict(source="nowhere/x.gguf", target="T"), "^source: GGUF file not found"),
    (dict(source="S", target="T", concept="kindness"), "^concept: unknown concept 'kindness'.*Shipped concepts: .*sentiment"),
    (dict(source="S", target="T", ridge=-2), "^ridge: must be a finite number >= 0"),
    (dict(source="S", target="T", share_context="sometimes"), "^share_context: expected auto, True or False"),
])
def test_bad_arguments_fail_fast_with_the_argument_named(args, message):
    with pytest.raises(ConTransError, match=message):
        ConTransLM(device="cpu", **args)


@pytest.mark.parametrize("args, message", [
    (dict(source_layer=7), "^source_layer: layer 7 is out of range for a model with 4 decoder blocks"),
    (dict(target_layer="deep"), "^target_layer: expected a block index or a depth fraction"),
])
def test_bad_layers_are_refused(tiny_llama_dir, tiny_gpt2_dir, args, message):
    with pytest.raises(ConTransError, match=message):
        ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), device="cpu", **args)


def test_too_few_anchors_is_refused_before_the_target_pass(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    anchors = tmp_path / "few.txt"
    anchors.write_text("\n".join(f"Sentence number {i}." for i in range(20)))
    with pytest.raises(ConTransError, match="^anchors: 20 anchor rows are too few .*hidden size 32.*dense.*ridge"):
        ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), anchors=str(anchors), recipe="reference",
                   device="cpu")
    lm = ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), anchors=str(anchors), recipe="reference",
                    ridge=0.1, device="cpu")
    assert lm.transplant.map_method == "ridge" and lm.transplant.anchor_count == 20


def test_dense_anchors_fit_where_last_tokens_are_too_few(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    # 20 texts give 20 last-token rows (< hidden size 32) but every token that ends at the same
    # character in both tokenizers is a row: enough for least squares without a penalty
    anchors = tmp_path / "few.txt"
    anchors.write_text("\n".join(f"Sentence number {i} of the small anchor corpus." for i in range(20)))
    lm = ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), anchors=str(anchors), device="cpu")
    assert lm.transplant.anchor_tokens == "dense" and lm.transplant.map_method == "lstsq"
    assert lm.transplant.center and lm.transplant.alpha_unit == "residual"


def test_source_is_freed_before_the_target_is_loaded(tiny_llama_dir, tiny_gpt2_dir, monkeypatch, tmp_path):
    import gc
    import weakref

    import lm_eval_contrans.hf.lm_eval_model as adapter
    import lm_eval_contrans.pipeline.states as states

    sources, alive_at_target_load = [], []
    real_load_model, real_pretrained_path = states.load_model, adapter.pretrained_path

    def recording_load_model(*args, **kwargs):
        model, tokenizer = real_load_model(*args, **kwargs)
        sources.append(weakref.ref(model))
        return model, tokenizer

    def checking_pretrained_path(spec):
        gc.collect()
        alive_at_target_load.append([ref() is not None for ref in sources])
        return real_pretrained_path(spec)

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path / "cache"))  # a cold cache: the source must be loaded
    monkeypatch.setattr(states, "load_model", recording_load_model)
    monkeypatch.setattr(adapter, "pretrained_path", checking_pretrained_path)
    ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), device="cpu")
    # the last lookup of the target's folder is the load itself (an earlier one reads its config)
    assert len(sources) == 1 and alive_at_target_load[-1] == [False]


def test_several_concepts_at_once(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    from lm_eval_contrans.artifact import load_transplants
    from lm_eval_contrans.transplant import steer

    path = tmp_path / "two.safetensors"
    both = ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept="sentiment+honesty",
                      alpha="2+-3", target_layer="1+2", save_vector=str(path), device="cpu", batch_size=8)
    first, second = load_transplants(path)
    assert (first.concept, second.concept) == ("sentiment", "honesty")
    assert (first.target_layer, second.target_layer) == (1, 2) and both.alphas == [2.0, -3.0]
    # the same as adding both vectors by hand
    plain = plain_hf(tiny_gpt2_dir)
    with steer(plain.model, 1, first.steering_vector(), 2.0), steer(plain.model, 2, second.steering_vector(), -3.0):
        by_hand = loglikelihoods(plain)
    torch.testing.assert_close(loglikelihoods(both), by_hand, atol=1e-5, rtol=1e-6)
    loaded = ConTransLM(target=str(tiny_gpt2_dir), vector=str(path), alpha="2+-3", device="cpu", batch_size=8)
    assert torch.equal(loglikelihoods(loaded), loglikelihoods(both))
    assert loaded.get_model_info()["contrans"]["alpha"] == [2.0, -3.0]
    with pytest.raises(ConTransError, match="^alpha: 3 values"):
        ConTransLM(target=str(tiny_gpt2_dir), vector=str(path), alpha="1+2+3", device="cpu")
    with pytest.raises(ConTransError, match="holds 2 concepts"):
        load_transplant(path)


def test_target_layer_auto_through_the_adapter_matches_the_plain_python_build(tiny_llama_dir, tiny_gpt2_dir):
    from lm_eval_contrans.pipeline import build_transplant

    lm = ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept="sentiment", target_layer="auto",
                    device="cpu", batch_size=8)
    built = build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", target_layer="auto", device="cpu")
    sweep = lm.transplant.extra["target_layer_sweep"]
    assert sweep == built.extra["target_layer_sweep"] and len(sweep) > 1
    assert lm.transplant.target_layer == built.target_layer == int(max(sweep, key=lambda b: sweep[b]["score"]))
    torch.testing.assert_close(lm.transplant.vector, built.vector, atol=1e-5, rtol=1e-4)


def test_several_concepts_load_the_source_once(tiny_llama_dir, tiny_gpt2_dir, monkeypatch, tmp_path):
    """One concept's target block chosen by the sweep, the other's given: both come from one source load."""
    import lm_eval_contrans.pipeline.states as states

    loads = []
    real_load_model = states.load_model

    def counting_load_model(spec, *, argument, **kwargs):
        loads.append(argument)
        return real_load_model(spec, argument=argument, **kwargs)

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path / "cache"))  # cold: every state is recorded
    monkeypatch.setattr(states, "load_model", counting_load_model)
    lm = ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept="sentiment+honesty",
                    target_layer="auto+2", device="cpu", batch_size=8)
    assert loads.count("source") == 1
    assert "target_layer_sweep" in lm.transplants[0].extra and lm.transplants[1].target_layer == 2


def test_swapping_transplants_is_checked_against_the_target(built, tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    import dataclasses

    lm, path = built
    other = dataclasses.replace(lm.transplant.with_steering(vector=torch.zeros(32)), target_hidden_size=32)
    with pytest.raises(ConTransError, match="^vector: this artifact was built for another target: hidden size 32 != 48"):
        lm.use_transplants(other, 1.0)
    with pytest.raises(AttributeError):
        lm.transplant = other  # no unchecked assignment
    before = loglikelihoods(lm)
    lm.use_transplants(lm.transplant, 0.0)
    torch.testing.assert_close(loglikelihoods(lm), loglikelihoods(plain_hf(tiny_gpt2_dir)), atol=1e-5, rtol=1e-6)
    lm.use_transplants(lm.transplant, 4.0)
    assert torch.equal(loglikelihoods(lm), before)
    unsteered = ConTransLM.from_transplants(str(tiny_gpt2_dir), [], device="cpu", batch_size=8)
    torch.testing.assert_close(loglikelihoods(unsteered), loglikelihoods(plain_hf(tiny_gpt2_dir)), atol=1e-5, rtol=1e-6)


def test_check_target_name_refuses_another_name_unless_told(built, tiny_gpt2_dir, tmp_path):
    import shutil

    lm, path = built
    renamed = tmp_path / "same-weights-other-name"
    shutil.copytree(tiny_gpt2_dir, renamed)
    with pytest.raises(ConTransError, match="built for .* \\(pass check_target_name=False"):
        ConTransLM(target=str(renamed), vector=str(path), alpha=4.0, device="cpu", batch_size=8)
    accepted = ConTransLM(target=str(renamed), vector=str(path), alpha=4.0, check_target_name="False", device="cpu",
                          batch_size=8)
    assert torch.equal(loglikelihoods(accepted), loglikelihoods(lm))


def test_source_dtype_records_the_source_in_that_precision(tiny_llama_dir, tiny_gpt2_dir):
    full = ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), device="cpu", batch_size=8).transplant
    half = ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), source_dtype="bfloat16", device="cpu",
                      batch_size=8).transplant
    assert not torch.equal(half.source_vector, full.source_vector)  # recorded in bfloat16, not float32
    cosine = torch.nn.functional.cosine_similarity(half.source_vector, full.source_vector, dim=0)
    assert cosine > 0.95 and half.source_layer == full.source_layer


def test_apply_steers_in_the_transplants_alpha_unit(built, tiny_gpt2_dir):
    from lm_eval_contrans.transplant import steer

    lm, _ = built
    transplant = lm.transplant
    model = plain_hf(tiny_gpt2_dir).model
    ids = torch.tensor([[5, 17, 33, 60]])
    with torch.no_grad():
        with transplant.apply(model, alpha=3.0):
            applied = model(ids).logits
        with steer(model, transplant.target_layer, transplant.steering_vector(), 3.0):
            by_hand = model(ids).logits
        with steer(model, transplant.target_layer, transplant.vector, 3.0):  # raw: a different push
            raw = model(ids).logits
    assert transplant.alpha_unit == "residual" and torch.equal(applied, by_hand)
    assert not torch.allclose(applied, raw)
    transplant = transplant.with_steering(alpha_share=0.5)  # not the vector the first apply placed on the device
    with torch.no_grad():
        with transplant.apply(model, alpha=3.0):
            shared = model(ids).logits
        with steer(model, transplant.target_layer, transplant.steering_vector(), 3.0):
            shared_by_hand = model(ids).logits
    assert torch.equal(shared, shared_by_hand) and not torch.allclose(shared, applied)


def test_no_read_only_tokenizer_is_held_while_the_target_loads(tiny_llama_dir, tiny_gpt2_dir, monkeypatch, tmp_path):
    """The build reads both tokenizers (dense anchors need fast ones); the target then loads with its
    own. Gemma 3's takes 330 MiB, so a kept copy set a bfloat16 build's peak memory."""
    from lm_eval.models.huggingface import HFLM

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))  # nothing cached: finish_build loads the target itself

    from lm_eval_contrans import loading
    from lm_eval_contrans.pipeline import build

    held = []
    create_model = HFLM._create_model

    def spying_create_model(self, *args, **kwargs):
        held.append(loading.tokenizer_cache._tokenizer.cache_info().currsize)
        return create_model(self, *args, **kwargs)

    monkeypatch.setattr(HFLM, "_create_model", spying_create_model)
    loading.read_only_tokenizer(loading.parse_model_spec(str(tiny_gpt2_dir), "target"))
    ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept="sentiment", device="cpu", batch_size=8)
    load_model = build.load_model

    def spying_load_model(*args, **kwargs):
        held.append(loading.tokenizer_cache._tokenizer.cache_info().currsize)
        return load_model(*args, **kwargs)

    monkeypatch.setattr(build, "load_model", spying_load_model)
    loading.read_only_tokenizer(loading.parse_model_spec(str(tiny_gpt2_dir), "target"))
    plan = build.plan_build(str(tiny_llama_dir), str(tiny_gpt2_dir), "toxicity", target_layer=1)  # states not cached
    build.finish_build(plan, build.record_sources(plan))
    assert held == [0, 0]
