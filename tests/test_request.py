"""The steering request: one ask, four forms (model args, flags, keyword arguments, JSON), each string read once."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.request import SteeringRequest, add_arguments, options


def test_the_four_forms_of_one_ask_are_equal_requests():
    from lm_eval_contrans.cli import _parser

    model_args = {"source": "src", "concept": "sentiment+honesty", "alpha": "1.5+2", "target_layer": "3+0.5",
                  "source_layer": "auto", "recipe": "reference", "map": "ridge", "ridge": "0.5", "center": "true",
                  "alpha_unit": "residual", "build_batch_size": 4, "positions": "prompt", "dtype": "float16"}
    from_model_args = SteeringRequest.from_model_args(model_args, ("dtype",), target="tgt")
    assert model_args == {"dtype": "float16"}  # the engine's arg is left to it

    from_kwargs = SteeringRequest.from_kwargs(
        source="src", target="tgt", concepts=["sentiment", "honesty"], alpha=[1.5, 2], target_layer=[3, 0.5],
        source_layer="auto", recipe="reference", map_method="ridge", ridge=0.5, center=True, alpha_unit="residual",
        batch_size=4, positions="prompt")
    from_json = SteeringRequest.from_json(json.loads(json.dumps(
        {"source": "src", "target": "tgt", "concept": ["sentiment", "honesty"], "alpha": [1.5, 2.0],
         "target_layer": [3, 0.5], "source_layer": "auto", "recipe": "reference", "map": "ridge", "ridge": 0.5,
         "center": True, "alpha_unit": "residual", "build_batch_size": 4, "positions": "prompt"})))
    serve = _parser().parse_known_args(
        ["serve", "--target", "tgt", "--source", "src", "--concept", "sentiment+honesty", "--alpha", "1.5+2",
         "--target-layer", "3+0.5", "--source-layer", "auto", "--recipe", "reference", "--map", "ridge", "--ridge",
         "0.5", "--center", "true", "--alpha-unit", "residual", "--build-batch-size", "4", "--positions", "prompt"])[0]
    from_flags = SteeringRequest.from_namespace(serve)

    assert from_model_args == from_kwargs == from_json == from_flags
    request = from_model_args
    assert request.alpha == (1.5, 2.0) and all(type(alpha) is float for alpha in request.alpha)
    assert request.target_layer == (3, 0.5) and request.source_layer == ("auto",)
    assert request.concept == ("sentiment", "honesty") and request.build_batch_size == 4
    assert (request.recipe.map_method, request.recipe.ridge, request.recipe.center, request.recipe.alpha_unit) == \
        ("ridge", 0.5, True, "residual")  # the reference recipe, its fields overridden


def test_json_round_trips():
    request = SteeringRequest.from_kwargs(source="src", target="tgt", concept="sentiment+honesty", alpha="1+-2",
                                          source_layer="2+auto", anchors="a.txt", ridge="auto", map_method="ridge",
                                          save_vector="out.safetensors", check_target_name="false")
    assert SteeringRequest.from_json(json.loads(json.dumps(request.to_json()))) == request
    default = SteeringRequest.from_kwargs(vector="x.safetensors")
    assert SteeringRequest.from_json(default.to_json()) == default


def test_each_string_form_is_read_once_and_the_request_holds_no_strings_where_numbers_belong():
    request = SteeringRequest.from_kwargs(source="src", concept="sentiment+honesty", alpha="1.5+2",
                                          target_layer="-1+0.75", center="false", build_batch_size="3")
    assert request.alpha == (1.5, 2.0) and request.target_layer == (-1, 0.75)
    assert request.recipe.center is False and request.build_batch_size == 3
    assert request.per_concept("alpha", 2) == [1.5, 2.0] and request.per_concept("source_layer", 2) == [None, None]
    # built directly, a request refuses a value nobody read
    for name, value in [("alpha", ("1.5",)), ("alpha", 1.5), ("target_layer", "3+6"), ("concept", "a+b"),
                        ("check_target_name", "true"), ("build_batch_size", "4"), ("positions", "everywhere")]:
        with pytest.raises(ConTransError, match=f"^{name}: expected .*SteeringRequest holds parsed values"):
            SteeringRequest(**{name: value})
    with pytest.raises(ConTransError, match="^alpha: 3 values \\('1\\+2\\+3'\\) for 2 concepts"):
        SteeringRequest.from_kwargs(alpha="1+2+3").per_concept("alpha", 2)


def test_the_engines_and_the_build_receive_typed_values(monkeypatch, tiny_llama_dir, tiny_gpt2_dir):
    """What crosses the boundary: the service gets a request of floats, the build a request of parsed layers."""
    from lm_eval_contrans import transplant_args
    from lm_eval_contrans.hf.lm_eval_model import ConTransLM
    from lm_eval_contrans.pipeline import build

    seen = {}

    def prepare(request, target, **kwargs):
        seen["request"] = request
        raise ConTransError("source", "stopped here")

    monkeypatch.setattr("lm_eval_contrans.hf.lm_eval_model.prepare", prepare)
    with pytest.raises(ConTransError, match="stopped here"):
        ConTransLM(target=str(tiny_gpt2_dir), source=str(tiny_llama_dir), alpha="1.5+2", concept="sentiment+honesty",
                   target_layer="1+-1", device="cpu")
    assert seen["request"].alpha == (1.5, 2.0) and seen["request"].target_layer == (1, -1)

    def plan(request, **kwargs):
        seen["planned"] = request
        raise ConTransError("source", "stopped here")

    monkeypatch.setattr(build, "plan_request", plan)
    with pytest.raises(ConTransError, match="stopped here"):
        build.plan_build(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", source_layer="2", center="false")
    assert seen["planned"].source_layer == (2,) and seen["planned"].recipe.center is False
    assert transplant_args.alphas_for("1.5+2", 2) == [1.5, 2.0]


def test_model_arg_near_misses_are_refused_and_other_names_left_to_the_engine():
    with pytest.raises(ConTransError, match="^alpah: unknown model arg; did you mean alpha\\? The transplant's args: "
                                            "source, concept, alpha"):
        SteeringRequest.from_model_args({"alpah": 2})
    with pytest.raises(ConTransError, match="^ vector|^vector: ' vector' has spaces around its name"):
        SteeringRequest.from_model_args({" vector": "x"})
    left = {"max_length": 64}
    SteeringRequest.from_model_args(left)
    assert left == {"max_length": 64}
    with pytest.raises(ConTransError, match="^concpets: not an option of the steering; did you mean concepts\\?"):
        SteeringRequest.from_kwargs(concpets="sentiment")
    with pytest.raises(ConTransError, match="^alpah: not a key of a steering request; did you mean alpha\\?"):
        SteeringRequest.from_json({"alpah": 1})


def test_the_cli_recipe_flags_are_the_request_options():
    """Every recipe option (and every Recipe field but the layers' defaults) is a flag of each command that
    builds, generated: adding an option adds the flag."""
    from lm_eval_contrans.cli import _parser
    from lm_eval_contrans.pipeline.recipe import RECIPES, Recipe
    from lm_eval_contrans.request import RECIPE_FIELD, RECIPE_OPTIONS

    commands = next(action for action in _parser()._actions if action.dest == "command").choices
    recipe_flags = {option.flag for option in options() if option.group == "recipe"}
    for command in ("build", "port", "compare", "serve"):
        flags = {flag for action in commands[command]._actions for flag in action.option_strings}
        assert recipe_flags <= flags, command
    recipe_fields = {item.name for item in dataclasses.fields(Recipe)} - {"source_layer", "target_layer"}
    assert {RECIPE_FIELD.get(option.name, option.name) for option in RECIPE_OPTIONS[1:]} == recipe_fields
    assert set(RECIPE_OPTIONS[0].choice_list()) == set(RECIPES)

    # a new option of the group is a new flag, read back under its name
    extra = dataclasses.replace(options()[0], name="made_up", group="recipe", help="a test")
    parser = argparse.ArgumentParser()
    from lm_eval_contrans import request as module

    original = module.options
    try:
        module.options = lambda: [*original(), extra]
        add_arguments(parser, "recipe")
    finally:
        module.options = original
    assert parser.parse_args(["--made-up", "x"]).made_up == "x"


def test_the_choices_the_flags_list_are_the_checks():
    from lm_eval_contrans import anchors, transplant
    from lm_eval_contrans.request import ALPHA_UNITS, ANCHOR_TOKENS, POSITIONS

    assert ALPHA_UNITS == transplant.ALPHA_UNITS and POSITIONS == transplant.POSITIONS
    assert ANCHOR_TOKENS == tuple(anchors.ANCHOR_TOKENS)
