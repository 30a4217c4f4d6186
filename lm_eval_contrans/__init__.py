"""lm-eval-contrans: concept transplantation (ConTrans) as an lm-evaluation-harness model.

The method works from plain Python without lm-eval::

    from lm_eval_contrans import build_transplant
    transplant = build_transplant(source="src-model", target="tgt-model", concept="sentiment")
    with transplant.apply(target_model, alpha=2.0):  # alpha in the transplant's unit
        target_model.generate(...)

Heavy modules (torch, transformers) are imported lazily so that `import lm_eval_contrans`
stays cheap; the lm-eval plugin hook imports this package at every interpreter start.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "build_transplant": "lm_eval_contrans.pipeline",
    "build_transplants": "lm_eval_contrans.pipeline",
    "Transplant": "lm_eval_contrans.provenance",
    "Direction": "lm_eval_contrans.direction",
    "save_transplant": "lm_eval_contrans.artifact",
    "load_transplant": "lm_eval_contrans.artifact",
    "save_transplants": "lm_eval_contrans.artifact",
    "load_transplants": "lm_eval_contrans.artifact",
    "save_steering": "lm_eval_contrans.artifact",
    "load_steering": "lm_eval_contrans.artifact",
    "run_compare": "lm_eval_contrans.experiments.compare",
    "ComparePlan": "lm_eval_contrans.experiments.compare",
    "Grid": "lm_eval_contrans.experiments.grid",
    "GridRow": "lm_eval_contrans.experiments.grid",
    "EvalSettings": "lm_eval_contrans.experiments.grid",
    "plan_build": "lm_eval_contrans.pipeline",
    "port_vector": "lm_eval_contrans.pipeline",
    "read_vector": "lm_eval_contrans.vectors",
    "Recipe": "lm_eval_contrans.pipeline",
    "SteeringRequest": "lm_eval_contrans.request",
    "steer": "lm_eval_contrans.transplant",
    "concept_vector": "lm_eval_contrans.refine",
    "fit_linear_map": "lm_eval_contrans.reformulate",
    "load_concept_set": "lm_eval_contrans.concepts",
    "load_anchor_texts": "lm_eval_contrans.anchors",
    "last_token_states": "lm_eval_contrans.activations",
    "load_model": "lm_eval_contrans.loading",
    "ConTransError": "lm_eval_contrans.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lm_eval_contrans' has no attribute {name!r}")
