"""The build pipeline: recipe, depth geometry, recorded states, the fit, the target-layer sweep, and
their composition (`build`)."""

from lm_eval_contrans.pipeline.build import (
    BuildPlan, build_request, build_transplant, build_transplants, finish_build, plan_build, plan_port, plan_request,
    port_vector, record_sources,
)
from lm_eval_contrans.pipeline.recipe import DEFAULT, REFERENCE, Recipe, make_recipe

__all__ = ["BuildPlan", "DEFAULT", "REFERENCE", "Recipe", "build_request", "build_transplant", "build_transplants",
           "finish_build", "make_recipe", "plan_build", "plan_port", "plan_request", "port_vector", "record_sources"]
