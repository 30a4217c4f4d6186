"""A model as users name it: a local folder or `.gguf` file; a hub id, optionally at a revision
(`EleutherAI/pythia-160m@step3000`: a branch, tag or commit); a GGUF file in a hub repository
(`owner/repo/file.gguf`, also with `@revision`); or `packaged:<name>`. Parsed into a `ModelSpec`, what
`from_pretrained` is given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading.packaged import packaged_gguf

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
