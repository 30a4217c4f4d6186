"""The map methods' table (`map_methods.MAP_METHODS`): a new method is one entry plus its fit, and every place that
names a method (the CLI, the recipe, the model args, the fit's key, the build) takes it from there."""

from __future__ import annotations

import pytest
import torch

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.map_methods import MAP_METHODS, MapMethod
from lm_eval_contrans.pipeline import make_recipe
from lm_eval_contrans.pipeline.fit import fit_key
from lm_eval_contrans.pipeline.recipe import Recipe


def fit_scaled_identity(rows, part, ridge, center):
    """W = s × (the identity, cut or padded to source × target width), s by least squares: one number fitted."""
    x, y = rows.source[rows.rows(part)].double(), rows.target[rows.rows(part)].double()
    source_mean = x.mean(0) if center else torch.zeros(x.shape[1], dtype=torch.float64)
    target_mean = y.mean(0) if center else torch.zeros(y.shape[1], dtype=torch.float64)
    eye = torch.eye(x.shape[1], y.shape[1], dtype=torch.float64)
    shifted, wanted = (x - source_mean) @ eye, y - target_mean
    return float((shifted * wanted).sum() / (shifted * shifted).sum()) * eye, source_mean, target_mean


@pytest.fixture
def scaled_identity(monkeypatch):
    """The new method, registered for one test (monkeypatch takes it out again): one entry plus its fit. Its fit
    reads no ridge, so only `center` keys it."""
    entry = MapMethod("scaled_identity", fit_scaled_identity, "a scaled identity (a test's)", key_fields=("center",))
    monkeypatch.setitem(MAP_METHODS, entry.name, entry)
    return entry.name


def scaled_identity_weight(weight: torch.Tensor) -> bool:
    """Whether a map's weight is what the new fit makes: the cut identity times a nonzero number."""
    eye = torch.eye(*weight.shape)
    return float(weight[0, 0]) != 0 and torch.allclose(weight, weight[0, 0] * eye)


def test_a_registered_map_method_is_a_cli_choice_and_a_recipe_with_a_fit_key_of_its_own(scaled_identity, capsys):
    from lm_eval_contrans.cli import _parser

    args = _parser().parse_args(["build", "--source", "s", "--target", "t", "--out", "o", "--map", scaled_identity])
    assert args.map == scaled_identity
    with pytest.raises(SystemExit):
        _parser().parse_args(["port", "--help"])
    assert "scaled_identity: a scaled identity (a test's)" in " ".join(capsys.readouterr().out.split())
    recipe = make_recipe(map_method=scaled_identity)
    assert recipe.map_method == scaled_identity
    with pytest.raises(ConTransError, match=f"^ridge: applies to map=lstsq or map=ridge, not to map={scaled_identity}"):
        make_recipe(map_method=scaled_identity, ridge=0.1)  # refused before any model loads
    # keyed on its name and the one field its fit reads
    assert fit_key(recipe, "source states", "target states") == (scaled_identity, True, "source states", "target states")
    assert fit_key(recipe, "source states", "target states") != fit_key(make_recipe(), "source states", "target states")


def test_a_registered_map_method_builds_from_the_cli_and_from_the_model_args(scaled_identity, tiny_llama_dir,
                                                                           tiny_gpt2_dir, small_inputs, tmp_path):
    from lm_eval_contrans.artifact import load_transplant
    from lm_eval_contrans.cli import main
    from lm_eval_contrans.loading import parse_model_spec
    from lm_eval_contrans.request import SteeringRequest
    from lm_eval_contrans.transplant_args import prepare

    concept, anchors = small_inputs
    out = tmp_path / "scaled.safetensors"
    assert main(["build", "--source", str(tiny_llama_dir), "--target", str(tiny_gpt2_dir), "--concept", concept,
                 "--anchors", anchors, "--map", scaled_identity, "--out", str(out), "--device", "cpu"]) == 0
    built = load_transplant(out)
    assert built.map_method == scaled_identity and scaled_identity_weight(built.map_weight)
    torch.testing.assert_close(built.vector, built.source_vector @ built.map_weight)

    target = parse_model_spec(str(tiny_gpt2_dir), "target")
    request = SteeringRequest.from_model_args({"source": str(tiny_llama_dir), "concept": concept, "anchors": anchors,
                                               "map": scaled_identity, "center": "false"})
    steering = prepare(request, target, device="cpu").finish()[0]
    assert steering.map_method == scaled_identity and not steering.center and scaled_identity_weight(steering.map_weight)


@pytest.mark.parametrize("method, ridge, center", [("lstsq", 0.0, True), ("lstsq", 0.5, False), ("ridge", "auto", True),
                                                   ("procrustes", 0.0, False)])
def test_the_built_in_methods_keep_the_fit_keys_they_had_before_the_table(method, ridge, center):
    """The key was (method, ridge, center, source key, target key) before the table: the same fits are shared."""
    recipe = make_recipe(map_method=method, ridge=ridge, center=center)
    assert fit_key(recipe, "source", "target") == (method, ridge, center, "source", "target")
    assert fit_key(recipe, None, "target") is None  # states held only in memory are not remembered


def test_procrustes_with_a_ridge_is_refused_by_the_recipe_before_any_model_loads():
    with pytest.raises(ConTransError, match="^ridge: applies to map=lstsq or map=ridge, not to map=procrustes"):
        make_recipe(map_method="procrustes", ridge=0.1)
    with pytest.raises(ConTransError, match="^map: expected one of lstsq, ridge, procrustes, got 'cca'"):
        Recipe(map_method="cca").checked()
