"""What a user asks to steer with: a `SteeringRequest`, read from any of its four forms at one boundary.

The same ask arrives as lm-eval model args (`--model contrans`, `--model contrans-vllm`), as `contrans` flags,
as Python keyword arguments (`build_transplants`, `ConTransLM(...)`) or as a JSON object (a server request, a
saved experiment). Each option is declared once, on a field of `SteeringRequest` (its name is the model arg's,
the JSON key's and the flag's; `python=` where the Python API names it otherwise), and each string form
(`a+b`, `1.5+2`, `0.75`, `auto`, `true`) is parsed once, here: past this module only typed values travel, and
the request refuses a string where a number or a tuple belongs.

No torch at import: `contrans --help` builds its flags from these fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from lm_eval_contrans.errors import ConTransError

# a layer as asked: a block index, a depth fraction, "auto", candidate blocks (from Python), or None (the recipe's)
Layer = Union[int, float, str, tuple, None]

RECIPE_NAMES = ("default", "reference")  # pipeline.recipe.RECIPES' keys (a test holds them equal)
ANCHOR_TOKENS = ("dense", "last")  # anchors.ANCHOR_TOKENS
ALPHA_UNITS = ("residual", "raw")  # transplant.ALPHA_UNITS
POSITIONS = ("all", "prompt", "generated")  # steering.POSITIONS


@dataclass(frozen=True)
class Option:
    """One user option: how it is named on each surface, and its flag's help. `group`: "recipe" (the flags
    `contrans build`, `port`, `compare` and `serve` share), "build" (how the build passes run) or None (each
    command states its own flag, or none). `choices`/`help` may be callables, read when a parser is built."""

    name: str  # the model arg, the JSON key and (with '-' for '_') the flag
    help: str | Callable[[], str] = ""
    group: str | None = None
    python: str | None = None  # the Python keyword, where it differs (`map_method`)
    choices: tuple | Callable[[], tuple] | None = None
    engine_arg: bool = True  # a model arg (False: the engine names it itself: `target`)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def help_text(self) -> str:
        return self.help() if callable(self.help) else self.help

    def choice_list(self) -> list | None:
        return None if self.choices is None else list(self.choices() if callable(self.choices) else self.choices)


def _map_choices() -> tuple:
    from lm_eval_contrans.map_methods import MAP_METHODS

    return tuple(MAP_METHODS)


def _map_help() -> str:
    from lm_eval_contrans.map_methods import map_help

    return map_help()


# The recipe's own options, folded into `SteeringRequest.recipe` (a `Recipe`): the name, then the fields that
# override it. Each is the Recipe field of the same name but `map`, which is `Recipe.map_method`.
RECIPE_OPTIONS = (
    Option("recipe", "default: dense anchors, centred fit, source block by R^2, alpha in residual units; "
                     "reference: the paper's recipe", "recipe", choices=RECIPE_NAMES),
    Option("anchor_tokens", "dense: every token pair ending at the same character; last: the last tokens",
           "recipe", choices=ANCHOR_TOKENS),
    Option("map", _map_help, "recipe", python="map_method", choices=_map_choices),
    Option("ridge", "relative L2 penalty, or auto (best held-out R^2)", "recipe"),
    Option("center", "subtract each side's mean before the fit", "recipe", choices=("true", "false")),
    Option("alpha_unit", "residual: alpha 1 is a tenth of the block's median residual norm; raw: the vector as "
                         "transplanted", "recipe", choices=ALPHA_UNITS),
)
RECIPE_FIELD = {"map": "map_method"}  # the recipe options whose Recipe field is named otherwise


def _option(name: str, help: str = "", group: str | None = None, **more) -> dict:
    return {"option": Option(name, help, group, **more)}


def _default_recipe():
    from lm_eval_contrans.pipeline.recipe import DEFAULT

    return DEFAULT


@dataclass(frozen=True)
class SteeringRequest:
    """What steers the target, every string already read: the models, the concepts (or a vector file), the
    recipe, per-concept layers and alphas, where the vector goes and where it is saved.

    A per-concept field (`concept` aside) holds one value for every concept or one per concept; `per_concept`
    spreads it. Build one with `from_model_args`, `from_namespace`, `from_kwargs` or `from_json`."""

    source: Any = field(default=None, metadata=_option("source", "the aligned model the concept is refined in (or a "
                                                                 "source_vector was made for)", python=None))
    concept: tuple = field(default=("sentiment",), metadata=_option(
        "concept", "shipped concept name or concept-set file; several as a+b", python="concepts"))
    alpha: tuple[float, ...] = field(default=(1.0,), metadata=_option(
        "alpha", "strength in the alpha unit; one per concept as a+b"))
    source_layer: tuple[Layer, ...] = field(default=(None,), metadata=_option(
        "source_layer", "block index, depth fraction, or auto (the recipe's default); one per concept as x+y",
        "recipe"))
    target_layer: tuple[Layer, ...] = field(default=(None,), metadata=_option(
        "target_layer", "block index, depth fraction, or auto (default 0.75); one per concept as x+y", "recipe"))
    anchors: str | None = field(default=None, metadata=_option(
        "anchors", "anchor corpus: .jsonl/.json/.csv/.tsv, or one text per line (default: shipped corpus)", "recipe"))
    recipe: Any = field(default_factory=_default_recipe, metadata={"options": RECIPE_OPTIONS})
    alpha_unit: str | None = field(default=None, metadata={})  # the unit asked for (the recipe holds it too); a
    # vector file keeps its own unless one is asked for
    vector: Any = field(default=None, metadata=_option(
        "vector", "an artifact (.safetensors), or another tool's vector made for the target"))
    source_vector: Any = field(default=None, metadata=_option(
        "source_vector", "another tool's vector made for the source, ported into the target"))
    save_vector: str | None = field(default=None, metadata=_option("save_vector", "where to save the transplant"))
    build_batch_size: int | str = field(default="auto", metadata=_option(
        "build_batch_size", "texts per batch of the build passes, or auto (token budget)", "build",
        python="batch_size"))
    source_dtype: str | None = field(default=None, metadata=_option("source_dtype", "the source's dtype in the build"))
    check_target_name: bool = field(default=True, metadata=_option(
        "check_target_name", "refuse an artifact made for a model of another name"))
    positions: str = field(default="all", metadata=_option(
        "positions", "where the vector is added: all, prompt or generated", choices=POSITIONS))
    block_path: str | None = field(default=None, metadata=_option("block_path", "the target's decoder blocks' module path"))
    source_block_path: str | None = field(default=None, metadata=_option(
        "source_block_path", "the source's decoder blocks' module path"))
    target: Any = field(default=None, metadata=_option("target", "the model to steer", engine_arg=False))

    def __post_init__(self) -> None:
        """Typed values only: a string where a number or a tuple belongs was not parsed (`from_kwargs` parses)."""
        from lm_eval_contrans.pipeline.recipe import Recipe

        def refuse(name: str, expected: str) -> None:
            raise ConTransError(name, f"expected {expected}, got {getattr(self, name)!r} (SteeringRequest holds parsed "
                                      "values: build it with from_kwargs, from_model_args, from_json or from_namespace)")

        if not isinstance(self.concept, tuple) or not self.concept:
            refuse("concept", "a non-empty tuple of concepts")
        if not (isinstance(self.alpha, tuple) and self.alpha
                and all(type(value) is float for value in self.alpha)):
            refuse("alpha", "a non-empty tuple of floats")
        for name in ("source_layer", "target_layer"):
            if not (isinstance(getattr(self, name), tuple) and getattr(self, name)
                    and all(_is_layer(value) for value in getattr(self, name))):
                refuse(name, "a non-empty tuple of block indices, depth fractions, 'auto' or None")
        if not isinstance(self.recipe, Recipe):
            refuse("recipe", "a Recipe")
        if self.alpha_unit not in (None, *ALPHA_UNITS) or (self.alpha_unit and self.alpha_unit != self.recipe.alpha_unit):
            refuse("alpha_unit", f"None or the recipe's unit ({self.recipe.alpha_unit})")
        if self.positions not in POSITIONS:
            refuse("positions", f"one of {', '.join(POSITIONS)}")
        if not isinstance(self.check_target_name, bool):
            refuse("check_target_name", "True or False")
        if not (self.build_batch_size == "auto" or (type(self.build_batch_size) is int and self.build_batch_size >= 1)):
            refuse("build_batch_size", "a whole number >= 1 or 'auto'")

    # ---- the four forms -------------------------------------------------------------------------------

    @classmethod
    def from_kwargs(cls, **given) -> SteeringRequest:
        """From Python keyword arguments: the model args' names, or the Python API's where they differ
        (`concepts`, `map_method`, `batch_size`); values typed or as text (`alpha="1.5+2"`, `center="true"`).
        An unknown name is refused."""
        names = {**{option.name: option.name for option in options()},
                 **{option.python: option.name for option in options() if option.python}}
        unknown = [name for name in given if name not in names]
        if unknown:
            raise _unknown(unknown[0], list(names), "not an option of the steering")
        return cls._parse({names[name]: value for name, value in given.items()})

    @classmethod
    def from_model_args(cls, model_args: dict, engine_names: tuple[str, ...] = (), **given) -> SteeringRequest:
        """The steering's args, removed from lm-eval's `model_args` (what is left belongs to the engine). A left-over
        arg that is a near miss of one of ours (`alpah`) is refused before anything loads: the engine would take it,
        and fail only after the build or not at all. `engine_names`: the engine's own args; `given`: what the
        engine read itself (`target`)."""
        names = [option.name for option in options() if option.engine_arg]
        for name in model_args:
            refuse_spaced_name(name)
            if name in names or name in engine_names:
                continue
            near = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
            if near:
                raise ConTransError(name, f"unknown model arg; did you mean {near[0]}? The transplant's args: "
                                          f"{', '.join(names)} (every other arg is the engine's)")
        return cls._parse({**{name: model_args.pop(name) for name in names if name in model_args}, **given})

    @classmethod
    def from_json(cls, obj: dict) -> SteeringRequest:
        """From a JSON object (`to_json`'s, or a user's with the model args' names; lists for per-concept values,
        `recipe` a name or a Recipe's fields). An unknown key is refused."""
        if not isinstance(obj, dict):
            raise ConTransError("request", f"expected a JSON object, got {type(obj).__name__}")
        names = [option.name for option in options()]
        unknown = [key for key in obj if key not in names]
        if unknown:
            raise _unknown(unknown[0], names, "not a key of a steering request")
        return cls._parse(dict(obj))

    @classmethod
    def from_namespace(cls, args: argparse.Namespace, **given) -> SteeringRequest:
        """From `contrans` flags (`add_arguments`' and a command's own, matched by name); `given`: values the
        command settled itself (the model specs)."""
        values = {option.name: getattr(args, option.name) for option in options()
                  if getattr(args, option.name, None) is not None}
        return cls._parse({**values, **given})

    def to_json(self) -> dict:
        """The request as a JSON object, which `from_json` reads back to an equal request. Refused where a value
        exists in memory only (a ConceptSet, a Transplant, a loaded vector)."""
        def plain(name: str, value):
            if value is None or isinstance(value, (str, int, float, bool)):
                return value
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return [plain(name, item) for item in value]
            spec_name = getattr(value, "name", None)  # a ModelSpec: its name, which parses back to it
            if name in ("source", "target") and isinstance(spec_name, str):
                return spec_name
            raise ConTransError(name, f"{type(value).__name__} is in memory only and has no JSON form; give a file")

        out = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "recipe":
                out["recipe"] = dataclasses.asdict(value)
            elif item.name != "alpha_unit":  # in the recipe, and kept apart where asked for
                out[item.name] = plain(item.name, value)
        out["alpha_unit"] = self.alpha_unit
        return out

    @classmethod
    def _parse(cls, given: dict) -> SteeringRequest:
        """The one reading of every value: `given` by option name (model arg names)."""
        from lm_eval_contrans.pipeline.inputs import check_batch_size
        from lm_eval_contrans.pipeline.recipe import Recipe, as_bool, make_recipe
        from lm_eval_contrans.transplant import check_positions

        values = {}
        recipe = given.get("recipe")
        if isinstance(recipe, dict):  # a Recipe's fields (to_json's form)
            fields = [item.name for item in dataclasses.fields(Recipe)]
            unknown = [name for name in recipe if name not in fields]
            if unknown:
                raise _unknown(unknown[0], fields, "not a field of a recipe")
            recipe = Recipe(**recipe)
        overrides = {RECIPE_FIELD.get(option.name, option.name): given.get(option.name)
                     for option in RECIPE_OPTIONS[1:]}
        values["recipe"] = make_recipe(recipe, **overrides)
        if given.get("alpha_unit") is not None:
            values["alpha_unit"] = values["recipe"].alpha_unit
        if given.get("concept") is not None:
            values["concept"] = parse_concepts(given["concept"])
        if "alpha" in given:
            values["alpha"] = parse_alphas(given["alpha"])
        for name in ("source_layer", "target_layer"):
            if name in given:
                values[name] = parse_layers(given[name], name)
        if given.get("build_batch_size") is not None:
            values["build_batch_size"] = check_batch_size(given["build_batch_size"])
        if given.get("check_target_name") is not None:
            values["check_target_name"] = as_bool(given["check_target_name"], "check_target_name")
        if given.get("positions") is not None:
            values["positions"] = check_positions(given["positions"])
        for name in ("source", "target", "anchors", "vector", "source_vector", "save_vector", "source_dtype",
                     "block_path", "source_block_path"):
            if given.get(name) is not None:
                values[name] = given[name]
        return cls(**values)

    # ---- what the build and the engines read ---------------------------------------------------------

    def per_concept(self, name: str, count: int) -> list:
        """A per-concept field as one value per concept: a single value spread, else exactly `count`."""
        return spread(getattr(self, name), count, name)

    def with_target(self, target) -> SteeringRequest:
        return dataclasses.replace(self, target=target)


def spread(values: tuple, count: int, argument: str) -> list:
    """One value for each of `count` concepts: a single value spread, else exactly `count` of them."""
    if len(values) == 1:
        return list(values) * count
    if len(values) != count:
        shown = "+".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)
        raise ConTransError(argument, f"{len(values)} values ({shown!r}) for {count} concepts; give one, or one per "
                                      "concept")
    return list(values)


def _is_layer(value) -> bool:
    if isinstance(value, tuple):
        return all(type(item) is int for item in value)
    return value is None or value == "auto" or (type(value) in (int, float))


def options() -> list[Option]:
    """Every user option, in the request's field order (the recipe's where its field is)."""
    found = []
    for item in dataclasses.fields(SteeringRequest):
        found.extend(item.metadata.get("options", ()))
        if "option" in item.metadata:
            found.append(item.metadata["option"])
    return found


def _unknown(name: str, names: list[str], what: str) -> ConTransError:
    near = difflib.get_close_matches(str(name), names, n=1, cutoff=0.8)
    return ConTransError(str(name), f"{what}" + (f"; did you mean {near[0]}?" if near else "")
                                    + f" (the options: {', '.join(names)})")


def refuse_spaced_name(given: str) -> None:
    """Refuse a model arg name with spaces around it (`--model_args a=1, vector=x`): lm-eval's parsers split at
    commas and keep each name as written, so no engine would take ' vector', and a near-miss guess would only
    confuse. The value's spaces are lm-eval's to strip (it reads ' 2' as 2)."""
    if isinstance(given, str) and given != given.strip():
        raise ConTransError(given.strip() or repr(given), f"{given!r} has spaces around its name (a space after a "
                                                          "comma in --model_args?), which lm-eval keeps, so no model "
                                                          f"arg takes it; write {given.strip()}=... with no space")


def split_plus(value) -> list:
    """`a+b` (or [a, b]) -> [a, b]; anything else is one value."""
    if isinstance(value, (list, tuple)):
        return [part.strip() if isinstance(part, str) else part for part in value]
    if isinstance(value, str) and "+" in value:
        return [part.strip() for part in value.split("+")]
    return [value]


def parse_alphas(value) -> tuple[float, ...]:
    """`1.5`, `1.5+2`, 2, [1.5, 2] -> finite floats (text is read as a number; a bool is not one)."""
    from lm_eval_contrans.transplant import check_alpha

    return tuple(check_alpha(part) for part in split_plus(value))


def parse_layers(value, argument: str) -> tuple[Layer, ...]:
    """`3`, `0.75`, `auto`, `3+6`, [3, 0.5] -> block indices, depth fractions, "auto" or None (the recipe's).
    A list inside the list (from Python) is candidate source blocks."""
    from lm_eval_contrans.blocks import parse_layer

    def one(part):
        if part is None:
            return None
        if isinstance(part, str) and part.strip() == "auto":
            return "auto"
        if isinstance(part, (list, tuple)):
            return tuple(int(parse_layer(item, argument)) for item in part)
        parsed = parse_layer(part, argument)
        return float(parsed) if isinstance(parsed, float) else int(parsed)  # numpy's numbers as Python's

    if isinstance(value, (list, tuple)):
        return tuple(one(part) for part in value) or (None,)
    return tuple(one(part) for part in split_plus(value))


def parse_concepts(value) -> tuple:
    """`a+b` (a file whose name holds '+' is one: `concepts.split_concepts`), a list, a path, a ConceptSet or an
    imported direction -> the concepts, none read yet. Each name of an `a+b` is checked to exist now, with
    what the '+' did."""
    from lm_eval_contrans.concepts import concept_path, split_concepts, unknown_concept

    if isinstance(value, str) and "+" in value:
        names = split_concepts(value)
        for name in names:
            if concept_path(name) is None:
                raise unknown_concept(name, value)
        return tuple(names)
    if isinstance(value, (list, tuple)):
        return tuple(item.strip() if isinstance(item, str) else item for item in value)
    return (value.strip() if isinstance(value, str) else value,)


def add_arguments(parser: argparse.ArgumentParser, group: str, *, also: dict[str, tuple[str, ...]] | None = None,
                  help: dict[str, str] | None = None) -> None:
    """The flags of one group of options (`Option.group`), generated from the request's fields: each is
    `--name-with-dashes`, read back by `from_namespace` under the option's name. `also`: more flags for an
    option (`build_batch_size`: `--batch-size` for `contrans build`); `help`: a command's own help for one."""
    for option in options():
        if option.group != group:
            continue
        default = option.name == "recipe" and "default" or (option.name == "build_batch_size" and "auto") or None
        parser.add_argument(option.flag, *((also or {}).get(option.name, ())), dest=option.name, default=default,
                            choices=option.choice_list(), help=(help or {}).get(option.name, option.help_text()))
