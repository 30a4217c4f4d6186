"""An experiment grid: rows of (model, transplant, alpha, control) evaluated with lm-eval.

Every kind of experiment in this project is a list of `GridRow`s run by one `Grid`: `contrans
compare`, and the scripts in bench/experiments. The grid

- scores every row the same way (FastScoringHFLM and its subclasses, the same batch size);
- loads the target once for all of its consecutive steered rows (`ConTransLM.use_transplants`), and scores
  those that steer one block (or nothing: the base target) together (`ConTransLM.use_lanes`): the blocks
  before that block run once for all of them, only the later blocks and the output layer once per row;
- writes each row's results as soon as it finishes, under `rows/<name>/`, with the key of every
  setting that determines them (the row's model, what it steers with (`Direction.steering_key`: block,
  vector, alpha unit; not how the vector was made), alpha, prefix and tasks;
  the grid's limits, batch size, model args, task metadata, include paths and lm-eval evaluation
  options such as few-shot count and chat template; the lm-eval and package versions). A rerun
  reuses a row only when its key matches, and runs it again otherwise: an interrupted grid resumes,
  and a grid with other settings never mixes old results in.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import numbers
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from lm_eval_contrans import __version__
from lm_eval_contrans.artifact import load_steering, save_steering
from lm_eval_contrans.cache import content_key
from lm_eval_contrans.direction import Direction
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.experiments.report import Row, main_metrics_of, read_json
from lm_eval_contrans.paths import safe_name
from lm_eval_contrans.provenance import Steering, Transplant, directions_of
from lm_eval_contrans.transplant_args import alphas_for

logger = logging.getLogger(__name__)
STEERED_KINDS = ("base", "contrans", "random", "own", "shuffled")  # rows on the (steered) target


def check_limit(limit: int | float | dict | None, argument: str = "limit") -> None:
    """lm-eval's `limit` (a count of documents, or a fraction of each task below 1) must be above 0; lm-eval itself
    finds out only after the models are loaded and the transplant built.

    Args:
        limit: one limit, or {task: limit}.
        argument: the argument an error names.

    Raises:
        ConTransError: a limit is 0 or below.
    """
    for value in (limit.values() if isinstance(limit, dict) else [limit]):
        if value is not None and not float(value) > 0:
            raise ConTransError(argument, f"{float(value):g} evaluates no documents: give a count of documents (1 or "
                                          "more) or a fraction of each task between 0 and 1, or leave it out")


def per_document_scores(samples: list[dict], metrics: Iterable[str]) -> dict:
    """{metric: score of each document} from lm-eval's logged samples (in doc_id order), for the metrics that are a
    number per document; a metric lm-eval scores on the whole task (a per-document tuple for BLEU, say) is left out.

    Args:
        samples: lm-eval's samples of one task, by doc_id.
        metrics: the metrics wanted.

    Returns:
        The scores.
    """
    def number(value) -> bool:  # a Python or NumPy scalar (a 0-d array too), not a tuple or a string
        return isinstance(value, numbers.Real) or getattr(value, "ndim", None) == 0

    return {metric: [float(sample[metric]) for sample in samples] for metric in metrics
            if samples and all(metric in sample and number(sample[metric]) for sample in samples)}


def slug(name: str) -> str:
    return safe_name(name, "row")


@dataclass(frozen=True)
class GridRow:
    """One evaluated configuration. `transplant`: a Transplant or a Direction (a control), several (steered
    at once, `alpha` one value each) or an artifact path (None: unsteered); `prefix`: text put before every context (the
    prompt baseline); `tasks`: this row's tasks (None: the grid's); `evaluate`: lm-eval evaluation
    options of this row, over the grid's (the prompt baseline's system instruction under a chat template)."""

    name: str
    kind: str  # base | contrans | random | own | shuffled | prompt | source | instruct | other
    model: str
    transplant: Steering | list[Steering] | str | Path | None = field(default=None, compare=False)
    alpha: float | tuple[float, ...] | None = None
    prefix: str | None = None
    tasks: tuple[str, ...] | None = None
    diagnostics: dict = field(default_factory=dict, compare=False)
    evaluate: dict = field(default_factory=dict)

    @property
    def steered(self) -> bool:
        return self.kind in STEERED_KINDS


@dataclass
class EvalSettings:
    """What every row is evaluated with. `limit`: one for every task, or {task: limit}."""

    tasks: list[str]
    limit: int | float | dict | None = None
    batch_size: int | str = 8
    device: str | None = None
    model_args: dict = field(default_factory=dict)  # to HFLM: dtype, max_length, ...
    task_metadata: dict = field(default_factory=dict)  # --metadata for the tasks (local data paths)
    include_path: list[str] = field(default_factory=list)
    bootstrap_iters: int = 1000
    per_document: tuple[str, ...] = ()  # metrics to keep per document (by doc_id), for paired comparisons
    # when set, each task's main metric and these metrics are kept per document too (`contrans compare`'s paired
    # tests); left out of a row's key: it keeps more of a run and changes none of its results
    paired_metrics: tuple[str, ...] | None = None
    # lm-eval's evaluation options (simple_evaluate's num_fewshot, apply_chat_template, fewshot_as_multiturn,
    # gen_kwargs, system_instruction), as `lm_eval` takes them on its command line
    evaluate: dict = field(default_factory=dict)
    # what evaluates the steered rows: "hf" (ConTransLM), or "vllm" (one vLLM engine holding every steered row's
    # directions, each row's requests tagged with its steering; `model_args` are then lm-eval's VLLM's)
    engine: str = "hf"
    engine_args: dict = field(default_factory=dict)  # the vLLM engine's (lm-eval's --model vllm args)
    # HF: consecutive steered rows at one block scored together (ConTransLM.use_lanes); left out of a row's key:
    # it moves a row's numbers by rounding only (float32: ~1e-6)
    share_passes: bool = True

    def limit_of(self, task: str):
        return self.limit.get(task) if isinstance(self.limit, dict) else self.limit


_ENVIRONMENT: list[str] = []


@contextmanager
def environment_described_once() -> Iterator[None]:
    """lm-eval describes the machine after every evaluation with torch's collect_env, which runs
    `pip list` and more (about 1 s a call on 2 cores after the first's 3-5 s, bench/README.md); within the
    block it is described once per process."""
    import torch.utils.collect_env as collect_env

    original = collect_env.get_pretty_env_info

    def described() -> str:
        if not _ENVIRONMENT:
            _ENVIRONMENT.append(original())
        return _ENVIRONMENT[0]

    collect_env.get_pretty_env_info = described
    try:
        yield
    finally:
        collect_env.get_pretty_env_info = original


class Grid:
    """Runs rows and keeps their results in `folder` (see the module docstring)."""

    def __init__(self, folder: str | Path, settings: EvalSettings) -> None:
        import lm_eval

        self.folder = Path(folder)
        self.settings = settings
        self.lm_eval_version = lm_eval.__version__
        self._task_manager = None
        self._target_lm = None  # (model name, ConTransLM) kept across consecutive steered rows
        self._lanes: dict[str, list] = {}  # row name -> the steerings scored with its own (`_lane_groups`)
        # what the last `run` did, so a script's reported time says which rows it paid for
        self.seconds: dict[str, float] = {}  # row name -> seconds to evaluate it (load included)
        self.reused: list[str] = []  # rows read back from the folder

    @property
    def task_manager(self):
        if self._task_manager is None:
            from lm_eval.tasks import TaskManager

            self._task_manager = TaskManager(include_path=list(self.settings.include_path) or None,
                                             metadata=self.settings.task_metadata or None)
        return self._task_manager

    def check_tasks(self, tasks: Iterable[str]) -> None:
        """Every task name is one lm-eval knows (with the grid's include paths), checked before any model loads.

        Raises:
            ConTransError: a task is unknown (the nearest known names are suggested).
        """
        import difflib

        for task in tasks:
            if task.endswith(".yaml") or self.task_manager.match_tasks([task]):
                continue
            near = difflib.get_close_matches(task, self.task_manager.all_tasks, n=3)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise ConTransError("tasks", f"{task}: no such lm-eval task; {hint}`lm_eval ls tasks` lists them, and "
                                         "--include_path adds a folder of your own")

    # ---- keys: everything that determines a row's results
    def artifact_path(self, transplant: Steering | list[Steering] | str | Path) -> tuple[Path, str]:
        """(file, steering key) of a row's transplants or directions: saved into the grid folder if in memory.
        The key is what they steer with (`Direction.steering_key`), so a control's row is the same row whatever
        record of its making the file holds."""
        if isinstance(transplant, (Transplant, Direction, list, tuple)):
            folder = self.folder / "artifacts"
            folder.mkdir(parents=True, exist_ok=True)
            several = [transplant] if isinstance(transplant, (Transplant, Direction)) else list(transplant)
            staging = save_steering(several, folder / ".staging.safetensors")
            digest = hashlib.sha256(staging.read_bytes()).hexdigest()
            path = folder / f"{digest[:16]}.safetensors"
            staging.replace(path)
        else:
            path = Path(transplant)
            several = load_steering(path, "transplant")
        return path, content_key([direction.steering_key() for direction in directions_of(several)])

    def evaluate_options(self, row: GridRow) -> dict:
        return {**self.settings.evaluate, **row.evaluate}

    def row_key(self, row: GridRow, steering_key: str | None) -> str:
        settings = asdict(self.settings)
        settings["tasks"] = sorted(row.tasks or self.settings.tasks)
        if isinstance(self.settings.limit, dict):
            settings["limit"] = {task: self.settings.limit_of(task) for task in settings["tasks"]}
        alpha = list(row.alpha) if isinstance(row.alpha, (list, tuple)) else row.alpha
        described = {"kind": row.kind, "model": row.model, "steering": steering_key, "alpha": alpha, "prefix": row.prefix}
        del settings["evaluate"], settings["paired_metrics"], settings["share_passes"]
        if settings["engine"] == "hf":  # named only for another engine, so rows saved before it existed keep their keys
            del settings["engine"], settings["engine_args"]
        options = self.evaluate_options(row)
        if options:  # named only when given, so rows saved before the option existed keep their keys
            described["evaluate"] = options
        return content_key({"row": described, "settings": settings, "lm_eval": self.lm_eval_version, "package": __version__})

    # ---- running
    def run(self, rows: Iterable[GridRow]) -> list[Row]:
        """Each row's results, from the folder where its key matches, else evaluated now."""
        rows = list(rows)
        names = [slug(row.name) for row in rows]
        if len(set(names)) != len(names):
            raise ConTransError("rows", f"row names must differ: {sorted(n for n in names if names.count(n) > 1)}")
        if self.settings.engine == "vllm":
            self._bank = VLLMBank([row for row in rows if row.steered and row.transplant is not None], self)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "rows").mkdir(exist_ok=True)
        (self.folder / "rows" / "index.json").write_text(json.dumps(names, indent=1))
        done = []
        self.seconds, self.reused = {}, []
        plans = [self._plan(row, self.folder / "rows" / name) for row, name in zip(rows, names)]
        self._lanes = self._lane_groups(rows, plans) if self.settings.engine == "hf" and self.settings.share_passes else {}
        try:
            for row, name, plan in tqdm(list(zip(rows, names, plans)), desc="grid rows", unit="row"):
                done.append(self._row(row, self.folder / "rows" / name, plan))
        finally:
            self._release_target()
        return done

    def _plan(self, row: GridRow, folder: Path) -> tuple[Path | None, str, Row | None]:
        """(artifact, key, saved row where its key matches) of a row."""
        path, steering = self.artifact_path(row.transplant) if row.transplant is not None else (None, None)
        key = self.row_key(row, steering)
        stored = folder / "row.json"
        if stored.is_file():
            try:
                saved = read_json(stored, "out")
            except ConTransError as damaged:  # a run killed while writing it: the row is run again
                logger.warning("%s; running row %r again", damaged, row.name)
                saved = {}
            if saved.pop("key", None) == key and not self._lacks_documents(saved):
                return path, key, Row(**saved)
            logger.info("row %r was run with other settings or without per-document scores; running it again",
                        row.name)
        return path, key, None

    def _lane_groups(self, rows: list[GridRow], plans: list[tuple]) -> dict[str, list]:
        """{row name: the steerings (transplants, alphas) scored together with its own}: runs of consecutive steered
        rows still to evaluate (rows read back load nothing) on one target, with the same tasks and evaluation
        options, whose directions all steer one block (the base target's row steers none)."""
        runs, current = [], None
        for row, (path, _, saved) in zip(rows, plans, strict=True):
            if saved is not None:
                continue
            if not row.steered:
                current = None  # another model loads in between
                continue
            transplants = [] if path is None else load_steering(path, "transplant")
            alphas = alphas_for(list(row.alpha) if isinstance(row.alpha, (list, tuple)) else (row.alpha or 0.0),
                                len(transplants))
            blocks = {direction.block for direction, alpha in zip(directions_of(transplants), alphas) if alpha != 0.0}
            same = (row.model, sorted(row.tasks or self.settings.tasks),
                    json.dumps(self.evaluate_options(row), sort_keys=True, default=str))
            if current is None or current["same"] != same or len(current["blocks"] | blocks) > 1:
                current = {"same": same, "blocks": set(), "rows": []}
                runs.append(current)
            current["blocks"] |= blocks
            current["rows"].append((row.name, (transplants, alphas)))
        return {name: [steering for _, steering in run["rows"]] for run in runs if len(run["rows"]) > 1
                for name, _ in run["rows"]}

    def _row(self, row: GridRow, folder: Path, plan: tuple[Path | None, str, Row | None]) -> Row:
        path, key, saved = plan
        if saved is not None:
            self.reused.append(row.name)
            return saved
        started = time.perf_counter()
        results, configs, documents, hashes = self._evaluate(row, path)
        self.seconds[row.name] = time.perf_counter() - started
        artifact = None if path is None else (path.relative_to(self.folder).as_posix()
                                              if path.is_relative_to(self.folder) else str(path))
        result = Row(row.name, results, row.kind, row.alpha, dict(row.diagnostics), main_metrics_of(configs), documents,
                     artifact, hashes)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps({"results": results, "configs": configs}, indent=1,
                                                        default=str))
        (folder / "row.json").write_text(json.dumps({**result.to_json(), "key": key}, indent=1))
        return result

    def _lacks_documents(self, saved: dict) -> bool:
        """A saved row without the per-document scores these settings keep (saved before paired tests): run again."""
        return self.settings.paired_metrics is not None and bool(saved.get("results")) and not saved.get("per_document")

    def _evaluate(self, row: GridRow, artifact: Path | None) -> tuple[dict, dict, dict, dict]:
        import lm_eval

        lm = self._model(row, artifact)
        tasks = list(row.tasks or self.settings.tasks)
        by_limit: dict = {}
        for task in tasks:
            by_limit.setdefault(self.settings.limit_of(task), []).append(task)
        results, configs, documents, hashes = {}, {}, {}, {}
        logged = bool(self.settings.per_document) or self.settings.paired_metrics is not None
        for limit, group in by_limit.items():
            with environment_described_once():
                output = lm_eval.simple_evaluate(model=lm, tasks=sorted(group), task_manager=self.task_manager,
                                                 limit=limit, bootstrap_iters=self.settings.bootstrap_iters,
                                                 log_samples=logged, verbosity="ERROR", **self.evaluate_options(row))
            results.update(output["results"])
            configs.update({task: {"metric_list": config.get("metric_list", [])}
                            for task, config in output.get("configs", {}).items()})
            main = main_metrics_of(configs)
            for task, samples in (output.get("samples") or {}).items():
                ordered = sorted(samples, key=lambda sample: sample["doc_id"])
                documents[task] = per_document_scores(ordered, self._kept_metrics(main.get(task)))
                if self.settings.paired_metrics is not None:
                    hashes[task] = content_key([[sample["doc_id"], sample.get("doc_hash")] for sample in ordered])
        return results, configs, documents, hashes

    def _kept_metrics(self, main: str | None) -> list[str]:
        kept = list(self.settings.per_document)
        if self.settings.paired_metrics is not None:
            kept += [metric for metric in (main, *self.settings.paired_metrics) if metric and metric not in kept]
        return kept

    def _hf_args(self) -> dict:
        return {"device": self.settings.device, "batch_size": self.settings.batch_size, **self.settings.model_args}

    def _model(self, row: GridRow, artifact: Path | None):
        from lm_eval_contrans.experiments.prompt_baseline import PromptBaselineLM
        from lm_eval_contrans.hf.lm_eval_model import ConTransLM
        from lm_eval_contrans.loading import parse_model_spec, pretrained_path
        from lm_eval_contrans.hf.scoring import FastScoringHFLM

        if row.steered and self.settings.engine == "vllm":
            return self._vllm_model(row, artifact)
        if row.steered:
            transplants = [] if artifact is None else load_steering(artifact, "transplant")
            alphas = list(row.alpha) if isinstance(row.alpha, (list, tuple)) else (row.alpha or 0.0)
            if self._target_lm is None or self._target_lm[0] != row.model:
                self._release_target()
                self._target_lm = (row.model, ConTransLM.from_transplants(row.model, transplants, alphas,
                                                                         **self._hf_args()))
            self._target_lm[1].use_transplants(transplants, alphas)
            self._target_lm[1].use_lanes(self._lanes.get(row.name, []))
            return self._target_lm[1]
        self._release_target()  # another model is loaded next: free the target first
        spec = parse_model_spec(row.model, "model")
        model_args = {"pretrained": pretrained_path(spec), **spec.load_kwargs, **self._hf_args()}
        if row.prefix is not None:
            return PromptBaselineLM(prefix=row.prefix, **model_args)
        return FastScoringHFLM(**model_args)

    def _vllm_model(self, row: GridRow, artifact: Path | None):
        """The grid's one vLLM engine (started for the first steered row), every request tagged with this row's
        steering."""
        from lm_eval_contrans.vllm.lm_eval_model import ConTransVLLM

        if self._target_lm is None or self._target_lm[0] != row.model:
            self._release_target()
            args = {"batch_size": self.settings.batch_size, **self.settings.model_args, **self.settings.engine_args}
            self._target_lm = (row.model, ConTransVLLM(target=row.model, vector=self._bank.directions,
                                                       alpha=[0.0] * len(self._bank.directions), per_request=True,
                                                       **args))
        self._target_lm[1].use_steering(self._bank.steering_of(row, artifact))
        return self._target_lm[1]

    def _release_target(self) -> None:
        if self._target_lm is not None:
            engine = getattr(self._target_lm[1], "model", None)
            if hasattr(getattr(engine, "llm_engine", None), "engine_core"):  # a vLLM engine's processes and memory
                engine.llm_engine.engine_core.shutdown()
            self._target_lm = None
            gc.collect()


class VLLMBank:
    """The directions of every steered row of a grid, once each (by what steers: `Direction.steering_key`), each
    under a name of its own in the engine's bank; a row asks for its own by name, at its alphas."""

    def __init__(self, rows: list[GridRow], grid: Grid) -> None:
        self.directions: list[Direction] = []
        self._names: dict[str, str] = {}  # steering key -> bank name
        self._read: dict[Path, list[Direction]] = {}  # artifact -> its directions, each file read once
        for row in rows:
            for direction in self._row_directions(grid.artifact_path(row.transplant)[0]):
                self._name_of(direction)

    def _row_directions(self, artifact: Path) -> list[Direction]:
        if artifact not in self._read:
            self._read[artifact] = directions_of(load_steering(artifact, "transplant"))
        return self._read[artifact]

    def _name_of(self, direction: Direction) -> str:
        import dataclasses

        key = content_key(direction.steering_key())
        if key not in self._names:
            taken = set(self._names.values())
            name = direction.name if direction.name not in taken else f"{direction.name}#{len(self.directions)}"
            self._names[key] = name
            self.directions.append(dataclasses.replace(direction, name=name))
        return self._names[key]

    def steering_of(self, row: GridRow, artifact: Path | None) -> dict:
        """The row's request steering: its directions by bank name, each at the row's alpha for it (0 for all: base)."""
        if artifact is None:
            return {"alpha": 0}
        directions = self._row_directions(artifact)
        alphas = list(row.alpha) if isinstance(row.alpha, (list, tuple)) else [row.alpha or 0.0] * len(directions)
        return {"concept": [self._name_of(direction) for direction in directions], "alpha": [float(a) for a in alphas]}
