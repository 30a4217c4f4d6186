"""A fitted transplant: the direction ConTrans adds to the target, and how it was made.

`Transplant.direction` is what steers (`direction.Direction`: block, vector, alpha unit, residual norm, share;
its name is the concept). Everything else is provenance: the source vector and the map that carried it, the two
models, their sizes and blocks, the concept's and anchors' hashes, the map's method and held-out R², the
recipe, and `extra` (the sweeps a build ran, the file a ported vector came from). Bare directions (another tool's
vector made for the target, the controls) have none of it. Files: `artifact.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

import torch

from lm_eval_contrans import __version__
from lm_eval_contrans.direction import Direction, check_direction
from lm_eval_contrans.errors import ConTransError

# the direction's fields by the flat names an artifact's metadata has always used for them
STEERING_FIELDS = {"vector": "vector", "target_layer": "block", "concept": "name", "alpha_unit": "alpha_unit",
                   "residual_norm": "residual_norm", "alpha_share": "alpha_share"}


class _SteeringField:
    """A field of a transplant's direction, read flat (`transplant.target_layer` is `transplant.direction.block`)."""

    def __set_name__(self, owner, name: str) -> None:
        self.field = STEERING_FIELDS[name]

    def __get__(self, transplant, owner=None):
        return self if transplant is None else getattr(transplant.direction, self.field)

    def __set__(self, transplant, value) -> None:  # a set copy would steer as the direction it shadows does not
        raise AttributeError(f"a transplant's {self.field} is its direction's: transplant.with_steering(...) makes a "
                             "copy that steers otherwise")


@dataclass
class Transplant:
    """A direction fitted by ConTrans and its provenance. Build one with `Transplant.from_fields` (flat, as an
    artifact stores it) or from a Direction; read its steering fields flat too (`transplant.target_layer`)."""

    direction: Direction
    source_vector: torch.Tensor
    map_weight: torch.Tensor
    source: str
    target: str
    source_hidden_size: int
    target_hidden_size: int
    source_num_layers: int
    target_num_layers: int
    source_layer: int
    target_model_type: str
    concept_hash: str
    concept_pairs: int
    anchors: str
    anchors_hash: str
    anchor_count: int
    map_method: str
    ridge: float
    heldout_r2: float
    anchor_tokens: str = "last"
    center: bool = False
    version: str = __version__
    extra: dict = field(default_factory=dict)

    _TENSORS = ("vector", "source_vector", "map_weight")

    @classmethod
    def from_fields(cls, **values) -> Transplant:
        """A transplant from flat fields, as an artifact's metadata and tensors hold them: `vector`, `target_layer`,
        `concept`, `alpha_unit`, `residual_norm` and `alpha_share` make its direction, the rest its provenance."""
        steering = {STEERING_FIELDS[name]: values.pop(name) for name in list(values) if name in STEERING_FIELDS}
        return cls(direction=Direction(**steering), **values)

    def with_steering(self, **changes) -> Transplant:
        """A copy that steers otherwise, with the same provenance: changes by the flat names (`vector`,
        `target_layer`, `alpha_unit`, `residual_norm`, `alpha_share`)."""
        return dataclasses.replace(self, direction=dataclasses.replace(
            self.direction, **{STEERING_FIELDS[name]: value for name, value in changes.items()}))

    # the direction's fields, read flat as everywhere before the split: transplant.target_layer is direction.block
    vector = _SteeringField()  # what alpha multiplies before its unit's scaling
    target_layer = _SteeringField()  # the target block it is added to
    concept = _SteeringField()
    alpha_unit = _SteeringField()
    residual_norm = _SteeringField()  # the median norm of the target block's anchor states: the alpha unit's scale
    # in residual units, the share of alpha it adds: 1/N for each of the N blocks of one ported vector, so that
    # alpha 1 pushes the target, over all of them, as much as one concept transplant does
    alpha_share = _SteeringField()

    def metadata(self) -> dict:
        """Its fields, flat and without tensors, as an artifact stores them."""
        described = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("direction", *self._TENSORS)}
        described.update({name: getattr(self, name) for name in STEERING_FIELDS if name not in self._TENSORS})
        if self.alpha_share == 1.0:  # written only where it matters, so artifacts without a share keep their bytes
            del described["alpha_share"]
        return described

    def describe(self) -> dict:
        """What results record about it (lm-eval's `config.model_info`, `contrans inspect --json`): every field
        but the tensors."""
        return {**self.metadata(), "alpha_share": self.alpha_share}

    def steering_vector(self) -> torch.Tensor:
        """What alpha multiplies when steering (`Direction.steering_vector`)."""
        return self.direction.steering_vector()

    def apply(self, model, alpha: float = 1.0, positions: str = "all"):
        """A context manager: within it, `model` (the target) is steered by alpha times this transplant,
        in the transplant's alpha unit, at its target block (`Direction.apply`)::

            with transplant.apply(model, alpha=2.0):
                model.generate(...)
        """
        return self.direction.apply(model, alpha, positions)

    def summary(self) -> str:
        lines = [
            f"concept        {self.concept} ({self.concept_pairs} pairs, sha256 {self.concept_hash[:12]})",
            f"source         {self.source}  layer {self.source_layer} of {self.source_num_layers}, hidden {self.source_hidden_size}",
            f"target         {self.target}  layer {self.target_layer} of {self.target_num_layers}, hidden {self.target_hidden_size} ({self.target_model_type})",
            f"anchors        {self.anchors} ({self.anchor_count} texts, {self.anchor_tokens} tokens, sha256 {self.anchors_hash[:12]})",
            f"map            {self.map_method}" + (f" (ridge {self.ridge:g})" if self.ridge else "")
            + (", centred" if self.center else ", no centring"),
            f"held-out R^2   {self.heldout_r2:.3f}",
            f"|source v|     {self.source_vector.norm():.4g}",
            f"|transplanted| {self.vector.norm():.4g}",
            f"alpha unit     {self.alpha_unit}" + (f" (alpha 1 = norm {self.steering_vector().norm():.4g}; "
                                                   f"median residual norm {self.residual_norm:.4g}"
                                                   + (f"; this block's share of alpha {self.alpha_share:.4g}"
                                                      if self.alpha_share != 1.0 else "") + ")"
                                                   if self.alpha_unit == "residual" else ""),
            f"version        {self.version}",
        ]
        lines += [f"{key:<14} {value}" for key, value in sorted(self.extra.items())]
        return "\n".join(lines)


Steering = Transplant | Direction  # what an engine is given to steer with: a fitted transplant, or a bare direction


def directions_of(given: list[Steering]) -> list[Direction]:
    """What each given transplant or direction adds, and where."""
    return [item.direction if isinstance(item, Transplant) else item for item in given]


def check_transplant(transplant: Transplant, argument: str, where: str) -> Transplant:
    """Refuse a transplant that cannot steer as its metadata says (read from a file, or about to be written)."""
    for side in ("source", "target"):
        layer, count = getattr(transplant, f"{side}_layer"), getattr(transplant, f"{side}_num_layers")
        # a JSON `true` is a Python int (1): metadata saying `target_layer: true` names no block
        if not (_is_index(layer) and _is_index(count) and 0 <= layer < count):
            raise ConTransError(argument, f"{where}: {side} block {layer!r} is not one of the {count!r} blocks it "
                                          f"names for {transplant.concept!r}")
    check_direction(transplant.direction, argument, where)
    for name in ("source_vector", "map_weight"):
        if not bool(torch.isfinite(getattr(transplant, name)).all()):
            raise ConTransError(argument, f"{where}: the {name} of {transplant.concept!r} holds non-finite values")
    return transplant


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short_name(name: str) -> str:
    base = name.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower()
    return base[: -len(".gguf")] if base.endswith(".gguf") else base


def check_against_target(
    transplant: Transplant, *, target: str, hidden_size: int, num_layers: int, model_type: str,
    strict_name: bool = True, argument: str = "vector",
) -> None:
    """Refuse an artifact built for another target, with the reason."""
    problems = []
    if transplant.target_hidden_size != hidden_size:
        problems.append(f"hidden size {transplant.target_hidden_size} != {hidden_size}")
    if transplant.target_num_layers != num_layers:
        problems.append(f"{transplant.target_num_layers} decoder blocks != {num_layers}")
    if transplant.target_model_type != model_type:
        problems.append(f"architecture {transplant.target_model_type} != {model_type}")
    if strict_name and _short_name(transplant.target) != _short_name(target):
        problems.append(f"built for {transplant.target!r}, evaluating {target!r} (pass check_target_name=False if they are the same weights)")
    if problems:
        raise ConTransError(argument, "this artifact was built for another target: " + "; ".join(problems))
