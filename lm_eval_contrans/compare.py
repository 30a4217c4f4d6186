"""`contrans compare`: one grid of lm-eval runs, the table a user pastes into a paper.

Rows: the base target; target + transplanted concept at each alpha; the two vector controls at
each alpha (a seeded random vector of the same norm, the target's own concept vector); the prompt
baseline (the concept's instruction as a prefix); the source; optionally an instruction-tuned
target. Every row's lm-eval results are written as soon as it finishes, and a row whose results
exist is not run again, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from lm_eval_contrans.anchors import load_anchor_texts
from lm_eval_contrans.artifact import load_transplant, save_transplant
from lm_eval_contrans.build import build_transplant
from lm_eval_contrans.concepts import load_concept_set
from lm_eval_contrans.controls import cosine, own_control, random_control, target_own_vector
from lm_eval_contrans.loading import default_device, parse_model_spec, pretrained_path
from lm_eval_contrans.report import Row, write_report

logger = logging.getLogger(__name__)


@dataclass
class ComparePlan:
    source: str
    target: str
    concept: str
    tasks: list[str]
    alphas: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0])
    instruct: str | None = None
    out: Path = Path("contrans_compare")
    limit: int | float | None = None
    batch_size: int | str = 8
    device: str | None = None
    seed: int = 0
    model_args: dict = field(default_factory=dict)  # passed to HFLM: dtype, max_length, ...
    task_metadata: dict = field(default_factory=dict)  # --metadata for the tasks (local data paths)
    controls: bool = True
    extra_metrics: tuple[str, ...] = ("margin",)  # shown next to each task's main metric when reported
    build_options: dict = field(default_factory=dict)  # build_transplant's recipe and its overrides


def _slug(name: str) -> str:
    return "".join(char if char.isalnum() or char in "-_." else "_" for char in name)


def _alpha_name(alpha: float) -> str:
    return f"{alpha:g}"


def run_compare(plan: ComparePlan) -> list[Row]:
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    from lm_eval_contrans.lm_eval_model import ConTransLM
    from lm_eval_contrans.prompt_baseline import PromptBaselineLM
    from lm_eval_contrans.scoring import FastScoringHFLM

    out = Path(plan.out)
    (out / "artifacts").mkdir(parents=True, exist_ok=True)
    device = plan.device or default_device()
    concept = load_concept_set(plan.concept)
    artifact = out / "artifacts" / f"{_slug(concept.name)}.safetensors"
    if not artifact.exists():
        save_transplant(build_transplant(plan.source, plan.target, plan.concept, device=device,
                                         **plan.build_options), artifact)
    transplant = load_transplant(artifact)
    own_path, random_path = out / "artifacts" / "own.safetensors", out / "artifacts" / "random.safetensors"
    if plan.controls:
        if not own_path.exists():
            anchor_texts, _ = load_anchor_texts(transplant.anchors if transplant.anchors != "default" else None)
            save_transplant(own_control(transplant, target_own_vector(transplant, concept, anchor_texts, device=device)), own_path)
        if not random_path.exists():
            save_transplant(random_control(transplant, plan.seed), random_path)
    own = load_transplant(own_path) if plan.controls else None
    random = load_transplant(random_path) if plan.controls else None
    diagnostics = {"heldout_r2": transplant.heldout_r2}
    if own is not None:
        diagnostics["cos_to_own"] = cosine(transplant.vector, own.vector)

    task_manager = TaskManager(metadata=plan.task_metadata or None)
    hf_args = {"device": device, "batch_size": plan.batch_size, **plan.model_args}
    steered: dict = {}

    def steered_target(vector_transplant, alpha: float):
        # one target load serves the base row and every steered row: only the vector and alpha change
        if "lm" not in steered:
            steered["lm"] = ConTransLM(target=plan.target, vector=str(artifact), **hf_args)
        steered["lm"].transplant, steered["lm"].alpha = vector_transplant, alpha
        return steered["lm"]

    def plain(model: str) -> Callable:
        return lambda: FastScoringHFLM(pretrained=pretrained_path(parse_model_spec(model, "model")), **hf_args)

    specs: list[tuple[Row, Callable]] = [(Row("base target", {}, "base", 0.0), lambda: steered_target(transplant, 0.0))]
    for alpha in plan.alphas:
        specs.append((Row(f"+ ConTrans α={_alpha_name(alpha)}", {}, "contrans", alpha, dict(diagnostics)),
                      lambda alpha=alpha: steered_target(transplant, alpha)))
    if plan.controls:
        for alpha in plan.alphas:
            specs.append((Row(f"random vector α={_alpha_name(alpha)}", {}, "random", alpha,
                              {"cos_to_own": cosine(random.vector, own.vector)}),
                          lambda alpha=alpha: steered_target(random, alpha)))
            specs.append((Row(f"target's own vector α={_alpha_name(alpha)}", {}, "own", alpha),
                          lambda alpha=alpha: steered_target(own, alpha)))
        if concept.instruction:
            prefix = concept.instruction.strip() + "\n\n"
            specs.append((Row("prompt baseline", {}, "prompt"),
                          lambda: PromptBaselineLM(prefix=prefix, pretrained=pretrained_path(parse_model_spec(plan.target, "target")), **hf_args)))
        else:
            logger.warning("concept %s has no instruction: no prompt-baseline row", concept.name)
    specs.append((Row("source", {}, "source"), plain(plan.source)))
    if plan.instruct:
        specs.append((Row(f"instruct ({plan.instruct})", {}, "instruct"), plain(plan.instruct)))

    (out / "rows").mkdir(parents=True, exist_ok=True)
    (out / "rows" / "index.json").write_text(json.dumps([_slug(row.name) for row, _ in specs], indent=1))
    rows = []
    for row, make_model in tqdm(specs, desc="compare rows", unit="row"):
        folder = out / "rows" / _slug(row.name)
        if (folder / "row.json").exists():
            rows.append(Row(**json.loads((folder / "row.json").read_text())))
            continue
        if row.kind not in ("base", "contrans", "random", "own"):
            steered.clear()  # free the steered target before another model is loaded
            gc.collect()
        lm = make_model()
        output = lm_eval.simple_evaluate(model=lm, tasks=list(plan.tasks), task_manager=task_manager,
                                         limit=plan.limit, bootstrap_iters=1000, log_samples=False)
        del lm
        row.results = output["results"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(output, default=handle_non_serializable, indent=1))
        (folder / "row.json").write_text(json.dumps(row.to_json(), indent=1))
        rows.append(row)
    steered.clear()
    write_report(rows, out, extra_metrics=tuple(plan.extra_metrics))
    return rows
