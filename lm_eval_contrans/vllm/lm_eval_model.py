"""`lm_eval --model contrans-vllm`: lm-eval's own VLLM class, its engine steered by the transplant.

The transplant comes from the same args, build, cache and artifacts as `--model contrans`
(transplant_args.py); lm-eval's `VLLM` does loading, batching, scoring and generation. The directions
cross into vLLM's processes as a bank named in the engine's `additional_config` (crossing.py), with the
run's alphas and positions as every request's default steering; our `vllm.general_plugins` entry point adds
the bank as the model loads and writes each token's share of it before each step (plugin.py): in every
process vLLM runs the model in, compiled or eager.
"""

from __future__ import annotations

import logging

from lm_eval.api.registry import register_model

from lm_eval_contrans.errors import ConTransError

try:
    from lm_eval.models.vllm_causallms import VLLM
except ModuleNotFoundError as missing:
    if (missing.name or "").split(".")[0] != "vllm":
        raise
    from lm_eval_contrans.vllm.checks import NOT_INSTALLED

    raise ConTransError("model", f"--model contrans-vllm {NOT_INSTALLED}") from None

from lm_eval_contrans.loading import evaluation_device, pretrained_path
from lm_eval_contrans.pipeline.recipe import as_bool
from lm_eval_contrans.request import SteeringRequest
from lm_eval_contrans.transplant_args import describe_steering, engine_target_spec, prepare, target_name
from lm_eval_contrans.vllm.checks import refuse_what_vllm_cannot_do, require_vllm
from lm_eval_contrans.vllm.crossing import CONFIG_KEY, allow_plugin, bank_entry, read_entry
from lm_eval_contrans.vllm.plugin import NON_FINITE_METHOD, REPORT_METHOD

logger = logging.getLogger("lm_eval.contrans")

@register_model("contrans-vllm")
class ConTransVLLM(VLLM):
    """Model args: `target` (alias `pretrained`), the steering's (`SteeringRequest`, as for `--model
    contrans`), and every arg of lm-eval's `--model vllm` (tensor_parallel_size, data_parallel_size,
    gpu_memory_utilization, max_model_len, dtype, enforce_eager, ...)."""

    def __init__(self, target: str | None = None, pretrained: str | None = None, dtype: str = "auto",
                 per_request: bool | str = False, **model_args) -> None:
        require_vllm("--model contrans-vllm")
        self.request_steering: dict | None = None  # the steering every request is tagged with (`use_steering`)
        request = SteeringRequest.from_model_args(model_args, engine_arg_names(),  # the rest is lm-eval's VLLM's (and vLLM's)
                                                  target=target_name(target, pretrained))
        refuse_what_vllm_cannot_do(model_args)
        target_spec = engine_target_spec(request.target, request.block_path, model_args)
        # the build runs where HFLM would (vLLM ignores `device`; CUDA when present)
        build_device = evaluation_device(model_args.get("device"))
        self.ready = prepare(request, target_spec, dtype=dtype, device=build_device).ready()  # the cache, or a load
        self.transplants, self.alphas, self.directions = self.ready.transplants, self.ready.alphas, self.ready.directions
        self.positions = self.ready.positions
        # alpha 0 everywhere, and no request to steer otherwise: no bank, so the engine is exactly `--model vllm`'s
        banked = any(self.alphas) or as_bool(per_request, "per_request")
        self.steering = bank_entry(self.directions, self.alphas, self.positions, self.ready.facts) if banked else None
        if self.steering:
            model_args["additional_config"] = {**(model_args.get("additional_config") or {}), CONFIG_KEY: self.steering}
            allow_plugin()
        super().__init__(pretrained=pretrained_path(target_spec), dtype=dtype, **target_spec.load_kwargs, **model_args)
        if self.steering and self.data_parallel_size <= 1:  # with data parallel, lm-eval starts each replica's engine per request batch
            check_steered(self.model, self.steering)

    def use_steering(self, request_steering: dict | None) -> None:
        """Tag every request from now on with this steering (the keys of `vllm_xargs`: concept, alpha, positions;
        None: the engine's default), checked against the bank now. One engine then evaluates one steering after
        another (`contrans compare --engine vllm`), each without a restart.

        Raises:
            ConTransError: the engine has no bank (give per_request=True), or the bank cannot honour the steering.
        """
        from lm_eval_contrans.vllm.crossing import bank_of
        from lm_eval_contrans.vllm.request_steering import steering_of

        if request_steering is not None:
            if not self.steering:
                raise ConTransError("per_request", "this engine was started unsteered (every alpha 0): give "
                                                   "per_request=True to steer its requests")
            steering_of(bank_of(self.steering), request_steering)
        self.request_steering = request_steering

    def _model_generate(self, requests, generate: bool = False, sampling_params=None):
        if self.request_steering is None:
            return super()._model_generate(requests, generate=generate, sampling_params=sampling_params)
        from vllm import SamplingParams

        if not generate or sampling_params is None:  # lm-eval's own scoring parameters, tagged
            sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
        tagged = [params.clone() for params in (sampling_params if isinstance(sampling_params, list)
                                               else [sampling_params] * len(requests))]
        for params in tagged:
            params.extra_args = {**(params.extra_args or {}), **self.request_steering}
        return super()._model_generate(requests, generate=True, sampling_params=tagged)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._finite(super().loglikelihood(requests, disable_tqdm=disable_tqdm))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return self._finite(super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm))

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return self._finite(super().generate_until(requests, disable_tqdm=disable_tqdm))

    def _finite(self, results: list) -> list:
        """Results of a steered pass gone non-finite (or constant at a position: an overflow zeroed by a norm) stop
        the evaluation instead of being reported. The numbers lm-eval gets back need not show it (vLLM computes
        log-probabilities and samples from whatever logits it has), so the workers are asked: each flags the
        broken outputs it saw."""
        if self.steering and self.data_parallel_size <= 1 and any(self.model.collective_rpc(NON_FINITE_METHOD)):
            steered = (describe_steering(self.directions, self.alphas) if self.request_steering is None
                       else f"the requests' steering {self.request_steering}")
            raise ConTransError("alpha", "the steered model's outputs are not finite (NaN or inf), or constant at a "
                                         f"position, with {steered}: lower alpha")
        return results

    def get_model_info(self) -> dict:
        return {"contrans": self.ready.info()}


def engine_arg_names() -> tuple[str, ...]:
    """The args lm-eval's VLLM and vLLM's engine take (a vLLM arg may look like a misspelt one of ours)."""
    import dataclasses
    import inspect

    from vllm.engine.arg_utils import EngineArgs

    return tuple(inspect.signature(VLLM.__init__).parameters) + tuple(f.name for f in dataclasses.fields(EngineArgs))


def check_steered(llm, entry: dict) -> None:
    """Ask every worker of the engine what its blocks hold, and refuse an engine that does not steer with the
    bank it was given (a worker class our plugin did not reach, another plugin replacing the blocks, ...)."""
    bank, vectors = read_entry(entry)
    expected: dict[int, list[float]] = {}
    for index, item in enumerate(bank.entries):
        expected.setdefault(item.block, []).append(float(vectors[index].norm()))
    found: dict[int, list[float]] = {}
    reports = llm.collective_rpc(REPORT_METHOD)
    for report in reports:  # pipeline stages each hold some blocks; tensor-parallel ranks all of them
        found.update(report)
    if set(found) != set(expected) or any(
            len(found[block]) != len(norms) or any(abs(got - norm) > 1e-2 * max(norm, 1e-6)
                                                   for got, norm in zip(found[block], norms))
            for block, norms in expected.items()):
        raise ConTransError("model", f"vLLM's workers do not steer as asked: expected block norms {expected}, "
                                     f"found {found or 'none'} (is the lm-eval-contrans vLLM plugin installed in "
                                     "this environment?)")
    logger.info("vLLM steers block(s) %s in %d worker(s)", sorted(found), len(reports))
