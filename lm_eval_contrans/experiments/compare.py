"""`contrans compare`: one grid of lm-eval runs, the table a user pastes into a paper.

Rows: the base target; target + transplanted concept at each alpha; the vector controls at each
alpha (a band of K seeded random vectors of the same norm, the target's own concept vector); the prompt
baseline (the concept's instruction as a prefix, or as the system instruction under a chat template);
the source; optionally an instruction-tuned target. Every row is evaluated with the same lm-eval
options (few-shot count, chat template, generation arguments, system instruction). The rows run on
the experiment grid (grid.py): each is stored with the key of every setting that determines it, so
an interrupted comparison resumes, and one rerun with other settings runs again instead of reusing
rows it does not match. The transplant is keyed the same way: a rerun with another recipe, layer or
concept builds again. Each task's main metric (and the extra metrics) is kept per document, so that the
report pairs every row with the base target and with the random band's mean (paired.py) and writes a
verdict per column.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from lm_eval_contrans.artifact import load_transplant, save_transplant
from lm_eval_contrans.provenance import Transplant
from lm_eval_contrans.cache import content_key
from lm_eval_contrans.direction import Direction
from lm_eval_contrans.concepts import load_concept_set
from lm_eval_contrans.experiments.controls import cosine, own_control, random_control, target_own_vector
from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow, check_limit
from lm_eval_contrans.experiments.report import Row, write_report
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import ModelSpec, default_device, parse_model_pair, parse_model_spec, read_only_tokenizer
from lm_eval_contrans.pipeline.recipe import as_bool
from lm_eval_contrans.paths import safe_name

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
    include_path: list[str] = field(default_factory=list)  # the user's own task folders
    controls: bool = True
    extra_metrics: tuple[str, ...] = ("margin",)  # shown next to each task's main metric when reported
    build_options: dict = field(default_factory=dict)  # plan_build's recipe and its overrides
    evaluate: dict = field(default_factory=dict)  # lm-eval's evaluation options (grid.EvalSettings.evaluate)
    engine: str = "hf"  # what evaluates the steered rows: hf, or one vLLM engine (grid.EvalSettings.engine)
    engine_args: dict = field(default_factory=dict)  # the vLLM engine's args (lm-eval's --model vllm args)
    random_directions: int = 8  # the random band: seeds seed, seed + 1, ... at each alpha (1: one random row)
    allow_large_band: bool = False  # run a band above MAX_RANDOM_DIRECTIONS


MAX_RANDOM_DIRECTIONS = 64  # above this a band is refused unless asked for: it costs that many rows per alpha


def _alpha_name(alpha: float) -> str:
    return f"{alpha:g}"


def check_random_directions(count: int, alphas: list[float], allow_large: bool = False) -> None:
    """The random band's size, checked before any model loads: at least 1, and not so many that the grid runs
    hundreds of rows unasked.

    Args:
        count: random directions per alpha.
        alphas: the plan's alphas.
        allow_large: run a band above `MAX_RANDOM_DIRECTIONS` all the same.

    Raises:
        ConTransError: the count is below 1, or large and not allowed.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConTransError("random_directions", f"{count!r}: give --random-directions 1 or more (1 is a single "
                                                 "random row, 8 a band); --no-controls leaves the controls out")
    if count > MAX_RANDOM_DIRECTIONS and not allow_large:
        rows = count * len(alphas)
        raise ConTransError("random_directions", f"{count} directions at {len(alphas)} alpha(s) run {rows} random rows, "
                                                 f"up to {count}x the transplant rows' time (a generation task, or vLLM, runs each "
                                                 "row whole; on HF loglikelihood rows share the passes before the steered block); "
                                                 "give --allow-large-band to run them, or fewer directions")


def random_band(transplant: Transplant, plan: ComparePlan, own: Direction, alpha: float) -> list[GridRow]:
    """The random directions at one alpha: seeds plan.seed, plan.seed + 1, ...; the first is named as the single random
    row was, so a band reuses the row a one-direction compare saved (rows are stored by name, keyed by the vector)."""
    rows = []
    for seed in range(plan.seed, plan.seed + plan.random_directions):
        random = random_control(transplant, seed)
        name = f"random vector α={_alpha_name(alpha)}" + ("" if seed == plan.seed else f" (seed {seed})")
        rows.append(GridRow(name, "random", plan.target, random, alpha,
                            diagnostics={"cos_to_own": cosine(random.vector, own.vector)}))
    return rows


def _models(plan: ComparePlan) -> tuple[ModelSpec, ModelSpec]:
    """(source, target) as the build loads them: `trust_remote_code` in the model args covers both."""
    return parse_model_pair(plan.source, plan.target,
                            trust_remote_code=as_bool(plan.model_args.get("trust_remote_code", False), "trust_remote_code"))


def _built(plan: ComparePlan, device: str) -> Transplant:
    """The transplant for this plan, from the output folder when it was built with the same settings."""
    from lm_eval_contrans.pipeline import build_transplant

    concept = load_concept_set(plan.concept)
    key = content_key({"source": plan.source, "target": plan.target, "concept": concept.pairs_hash,
                       "build": {name: value for name, value in sorted(plan.build_options.items()) if value is not None},
                       "dtype": plan.model_args.get("dtype")})
    path = Path(plan.out) / "artifacts" / f"{safe_name(concept.name, 'concept')}-{key[:12]}.safetensors"
    if path.exists() or path.is_symlink():
        try:
            stored = load_transplant(path) if not path.is_symlink() else None
        except ConTransError as damaged:
            logger.warning("%s; building the transplant again", damaged)
            stored = None
        if stored is not None and stored.extra.get("compare_key") == key:
            return stored
        logger.warning("%s does not hold the transplant of this comparison's settings (another file copied over it, "
                       "a link, or one written before it recorded them); building it again", path)
        path.unlink()
    built = build_transplant(*_models(plan), concept, device=device, **plan.build_options)
    built = dataclasses.replace(built, extra={**built.extra, "compare_key": key})  # what a rerun checks it against
    save_transplant(built, path)
    return load_transplant(path)


def compare_rows(plan: ComparePlan, transplant: Transplant, device: str) -> list[GridRow]:
    """The comparison's rows, controls included."""
    concept = load_concept_set(plan.concept)
    diagnostics = {"heldout_r2": transplant.heldout_r2}
    rows = [GridRow("base target", "base", plan.target, alpha=0.0)]
    own = None
    if plan.controls:
        from lm_eval_contrans.anchors import load_anchor_texts

        anchor_texts, _ = load_anchor_texts(transplant.anchors if transplant.anchors != "default" else None)
        own = own_control(transplant, target_own_vector(transplant, concept, anchor_texts, device=device,
                                                        target=_models(plan)[1]))
        diagnostics["cos_to_own"] = cosine(transplant.vector, own.vector)
    rows += [GridRow(f"+ ConTrans α={_alpha_name(alpha)}", "contrans", plan.target, transplant, alpha,
                     diagnostics=dict(diagnostics)) for alpha in plan.alphas]
    if plan.controls:
        for alpha in plan.alphas:
            rows += random_band(transplant, plan, own, alpha)
            rows.append(GridRow(f"target's own vector α={_alpha_name(alpha)}", "own", plan.target, own, alpha))
        if concept.instruction and plan.evaluate.get("apply_chat_template"):
            # a prefix would stand before the chat template's own opening; the instruction goes where a chat model
            # reads instructions, after the user's own system instruction if any
            system = "\n\n".join(filter(None, [plan.evaluate.get("system_instruction"), concept.instruction.strip()]))
            rows.append(GridRow("prompt baseline", "prompt", plan.target, evaluate={"system_instruction": system}))
        elif concept.instruction:
            rows.append(GridRow("prompt baseline", "prompt", plan.target, prefix=concept.instruction.strip() + "\n\n"))
        else:
            logger.warning("concept %s has no instruction: no prompt-baseline row", concept.name)
    rows.append(GridRow("source", "source", plan.source))
    if plan.instruct:
        rows.append(GridRow(f"instruct ({plan.instruct})", "instruct", plan.instruct))
    return rows


def check_chat_templates(plan: ComparePlan) -> None:
    """Under `apply_chat_template`, every model of the grid needs a chat template; without this check a base
    model fails inside lm-eval with transformers' traceback, after the rows before it have run."""
    if plan.evaluate.get("apply_chat_template") is not True:  # a template named by the user is lm-eval's to find
        return
    source, target = _models(plan)
    models = {"target": target, "source": source}
    if plan.instruct:
        models["instruct"] = parse_model_spec(plan.instruct, "instruct", trust_remote_code=target.trust_remote_code)
    for role, spec in models.items():
        if not getattr(read_only_tokenizer(spec), "chat_template", None):
            raise ConTransError("apply_chat_template", f"the {role} {spec.name} has no chat template (a base model?); "
                                                       "leave --apply_chat_template out, or compare models that have one")


def run_compare(plan: ComparePlan) -> list[Row]:
    """`contrans compare`: build the transplant, evaluate every row of the plan (rows already in `plan.out`
    with the same settings are read, not run again), and write the tables and plots there.

    Args:
        plan: models, concept, tasks, alphas, controls and the output folder.

    Returns:
        The rows, each with its lm-eval results.

    Raises:
        ConTransError: an argument is wrong (named) or the output folder cannot be written.
    """
    check_random_directions(plan.random_directions, plan.alphas, plan.allow_large_band)
    check_limit(plan.limit)
    if plan.engine == "vllm":
        from lm_eval_contrans.vllm.checks import require_vllm

        require_vllm("contrans compare --engine vllm")
    device = plan.device or default_device()
    settings = EvalSettings(tasks=list(plan.tasks), limit=plan.limit, batch_size=plan.batch_size, device=device,
                            model_args=dict(plan.model_args), task_metadata=dict(plan.task_metadata),
                            include_path=[str(Path(path).resolve()) for path in plan.include_path],
                            evaluate=dict(plan.evaluate), engine=plan.engine, engine_args=dict(plan.engine_args),
                            paired_metrics=tuple(plan.extra_metrics))  # main metrics and these, per document
    grid = Grid(plan.out, settings)
    grid.check_tasks(plan.tasks)  # before the build, as lm_eval checks them before it loads a model
    check_chat_templates(plan)
    transplant = _built(plan, device)
    rows = grid.run(compare_rows(plan, transplant, device))
    write_report(rows, Path(plan.out), extra_metrics=tuple(plan.extra_metrics), concept=transplant.concept)
    return rows
