"""How a transplant is made, apart from the models, the concept and the blocks: a `Recipe`.

`DEFAULT` is this package's recipe (dense token anchors, centred least squares, source block chosen
by held-out R^2, alpha in units of the target's residual norm); `REFERENCE` is the paper's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from lm_eval_contrans.map_methods import check_ridge, settled_method
from lm_eval_contrans.anchors import check_anchor_tokens
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import ModelSpec, read_only_tokenizer
from lm_eval_contrans.transplant import check_alpha_unit

logger = logging.getLogger(__name__)


def as_bool(value, argument: str) -> bool:
    """A model arg that means true or false (lm-eval passes "True", users write "yes" or 1)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConTransError(argument, f"expected true or false, got {value!r}")


@dataclass(frozen=True)
class Recipe:
    """How the transplant is made (everything but the models, concept and layers)."""

    anchor_tokens: str = "dense"  # "dense": every token pair ending at the same character; "last": last tokens
    map_method: str = "lstsq"  # a name in map_methods.MAP_METHODS
    ridge: float | str = 0.0
    center: bool = True
    alpha_unit: str = "residual"  # alpha 1 = ALPHA_UNIT_FRACTION of the target block's median residual norm
    source_layer: int | float | str | None = "auto"
    target_layer: int | float | str | None = 0.75

    def checked(self) -> Recipe:
        check_anchor_tokens(self.anchor_tokens)
        settled_method(self.map_method, self.ridge)  # a ridge the method refuses, before any model loads
        check_alpha_unit(self.alpha_unit)
        return replace(self, ridge=check_ridge(self.ridge), center=as_bool(self.center, "center"))


DEFAULT = Recipe()
# The paper's recipe (Dong et al. 2024; willowdong/ConTrans): last-token anchors, least squares
# without bias, both blocks at 75 % depth, alpha multiplies the transplanted vector as it is.
REFERENCE = Recipe(anchor_tokens="last", map_method="lstsq", ridge=0.0, center=False, alpha_unit="raw",
                   source_layer=0.75, target_layer=0.75)
RECIPES = {"default": DEFAULT, "reference": REFERENCE}


def make_recipe(recipe: str | Recipe | None = None, **overrides) -> Recipe:
    """A named recipe ("default", "reference") with the given fields replaced (None: keep)."""
    if isinstance(recipe, Recipe):
        base = recipe
    else:
        name = recipe or "default"
        if name not in RECIPES:
            raise ConTransError("recipe", f"expected one of {', '.join(RECIPES)}, got {name!r}")
        base = RECIPES[name]
    return replace(base, **{key: value for key, value in overrides.items() if value is not None}).checked()


def settle_anchor_tokens(recipe: Recipe, *specs: ModelSpec) -> tuple[Recipe, dict]:
    """(recipe, note for the artifact's extra). Dense anchors pair tokens by character offsets, which
    only fast (Rust) tokenizers give: with any other tokenizer the build falls back to last-token
    anchors, says so once, and the artifact records why."""
    if recipe.anchor_tokens != "dense":
        return recipe, {}
    for spec in specs:
        tokenizer = read_only_tokenizer(spec)
        if not getattr(tokenizer, "is_fast", False):
            reason = f"{spec.name}: {type(tokenizer).__name__} gives no character offsets"
            logger.warning("anchor_tokens=dense pairs tokens by character offsets (%s); using anchor_tokens=last",
                           reason)
            return replace(recipe, anchor_tokens="last"), {"anchor_tokens_fallback": reason}
    return recipe, {}
