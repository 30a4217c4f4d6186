"""Regenerates the evidence section of docs/RESULTS.md (issue 4) on the packaged pair.

Source SmolLM2-135M-Instruct -> target Gemma-3-270M base, data from ../shared/data (dev splits).
1. The paper's recipe (`recipe=reference`: last-token states of 1,600 WikiSplit sentences with their
   last 2-4 words cut, as the reference code prepares them; least squares without bias; blocks at
   75 % depth; raw alpha) against this package's default recipe as a user gets it (dense token
   anchors on the shipped corpus, centred least squares, source block by held-out R^2, alpha in
   residual units).
2. For both: emotion steering success per emotion (base, alpha 1/2/5, a random vector of equal norm,
   the target's own vector), honesty (TruthfulQA MC1/MC2), toxicity and sentiment preference, the
   factual-completion control, the source model, held-out R^2 and cosines to the target's own vectors.
3. Ablations: each change of the recipe alone on the same WikiSplit anchors, the shipped corpus in
   place of WikiSplit, and target_layer=auto.

Run:  python bench/experiments/make_results.py --data ../shared/data          (the section's header gives the
      saved run's time and its parts; rows already in the grid folder are read back, not run again)
      python bench/experiments/make_results.py --data ../shared/data --full   (every dev document; many hours)
      python bench/experiments/make_results.py --render     (the section, from bench/results/make_results.json)
Every number goes to bench/results/make_results.json (--json), and the evidence section of docs/RESULTS.md is
rendered from it (here, and by bench/render_docs.py). Document limits per task are printed in the output, so a reader knows what each number rests on.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from pathlib import Path

from experiment_data import (
    SOURCE, TARGET, add_data_argument, add_json_argument, data_folder, machine, printed_from_saved, replace_rendered,
    task_metadata, write_json,
)

EMOTIONS = ["happiness", "sadness", "anger", "fear", "disgust", "surprise"]
ALPHAS = [1.0, 2.0, 5.0]
QUICK_LIMITS = {"emotion": 40, "honesty": 12, "toxicity": 20, "sentiment": None, "facts": None}
SMOKE_LIMITS = {"emotion": 2, "honesty": 1, "toxicity": 1, "sentiment": 2, "facts": 2}
ABLATION_ALPHA = 2.0
DEFAULT_ON_WIKI = "+ dense + centring + source block by R^2 (= the default recipe on WikiSplit)"
REPO = Path(__file__).resolve().parents[2]


def wikisplit_anchors(shared: Path, folder: Path, count: int = 1600, seed: int = 42) -> Path:
    """The reference code's anchor preparation: drop sentences of <= 2 words, cut the last 2-4 words."""
    rng = random.Random(seed)
    lines = [line.strip() for line in (shared / "anchors" / "wiki_split.txt").read_text(encoding="utf-8").splitlines()]
    truncated = []
    for line in lines:
        words = line.split(" ")
        if len(words) <= 2:
            continue
        truncated.append(" ".join(words[: -rng.randint(2, 4)]))
    path = folder / "wikisplit_truncated.txt"
    path.write_text("\n".join(truncated[:count]) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(parser)
    parser.add_argument("--out", default=str(REPO / "docs" / "RESULTS.md"))
    parser.add_argument("--full", action="store_true", help="every dev document of every task, MC1 too")
    parser.add_argument("--smoke", action="store_true", help="2 documents, 3 concepts: checks the script runs")
    parser.add_argument("--batch-size", type=int, default=8)  # faster than 16 on the long TruthfulQA prompts (batch_size.py)
    add_json_argument(parser, default=str(REPO / "bench" / "results" / "make_results.json"), render=True)
    parser.add_argument("--work", default=None, help="the grid folder, for resuming (default: a folder in the cache)")
    args = parser.parse_args()
    if printed_from_saved(args, render):
        return
    document = measure(args)
    write_json(args.json, document)
    # the section of --out rendered from this file (bench/render_docs.py rewrites it from the saved run too)
    saved = Path(args.json).resolve()
    name = saved.relative_to(REPO).as_posix() if saved.is_relative_to(REPO) else str(saved)
    out = Path(args.out)
    text = out.read_text(encoding="utf-8") if out.exists() else "# Results on the packaged pair\n"
    out.write_text(replace_rendered(text, name, render(document)), encoding="utf-8")
    print(f"wrote {args.json} and its section of {args.out}", flush=True)


def flat(row) -> dict:
    """{"task/metric": value} of a grid row, stderr included (as "task/metric_stderr")."""
    return {f"{task}/{key.removesuffix(',none')}": value for task, values in row.results.items()
            for key, value in values.items() if key.endswith(",none")}


def measure(args) -> dict:
    import dataclasses

    import torch

    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.cache import cache_root
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.experiments.controls import cosine, own_control, random_control, target_own_vector
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow
    from lm_eval_contrans.pipeline import build_transplant
    from lm_eval_contrans.transplant import ALPHA_UNIT_FRACTION

    started = time.time()
    torch.manual_seed(0)
    shared = data_folder(args.data)
    work = Path(args.work) if args.work else cache_root() / "experiments" / ("make_results-smoke" if args.smoke else "make_results")
    work.mkdir(parents=True, exist_ok=True)
    limits = {key: None for key in QUICK_LIMITS} if args.full else dict(SMOKE_LIMITS if args.smoke else QUICK_LIMITS)
    wiki = wikisplit_anchors(shared, work)
    log = lambda message: print(f"[{time.time() - started:7.0f} s] {message}", flush=True)  # noqa: E731
    log(f"machine: {machine()}; limits {limits}; data {shared}; grid folder {work}")

    task_groups = {  # concept -> [(task, metric, limit key)]
        # MC1 costs as much again as MC2 (6-shot prompts, Gemma's 262k-word head): only with --full
        "honesty": ([("contrans_honesty_mc1", "acc", "honesty")] if args.full else []) + [("contrans_honesty_mc2", "acc", "honesty")],
        "toxicity": [("contrans_toxicity", "acc_norm", "toxicity"), ("contrans_toxicity", "margin", "toxicity")],
        "sentiment": [("contrans_sentiment", "acc_norm", "sentiment"), ("contrans_sentiment", "margin", "sentiment")],
        **{emotion: [(f"contrans_emotion_{emotion}", "acc", "emotion")] for emotion in EMOTIONS},
    }
    facts = [("contrans_facts", "acc", "facts")]
    if args.smoke:
        task_groups = {key: task_groups[key] for key in ("sentiment", "happiness", "fear")}
    emotions = [concept for concept in task_groups if concept in EMOTIONS]
    concepts = list(task_groups)
    every_task = {task: limits[key] for concept in concepts for task, _, key in task_groups[concept] + facts}
    tasks_of = lambda columns: tuple(sorted({task for task, _, _ in columns}))  # noqa: E731

    phases = {}  # seconds of each part of the run, for the section's header
    # ---- builds: both recipes, every concept, with the two controls
    # the paper's recipe on the paper's anchors against the default as a user gets it (shipped corpus);
    # the ablations separate the recipe from the corpus
    recipes = {"reference": dict(recipe="reference", anchors=str(wiki)), "default": dict(recipe="default", anchors=None)}
    transplants, controls, diagnostics = {}, {}, {}
    for recipe, options in recipes.items():
        for concept in concepts:
            transplant = build_transplant(SOURCE, TARGET, concept, device="cpu", **options)
            anchor_texts, _ = load_anchor_texts(options.get("anchors"))
            own_vector = target_own_vector(transplant, load_concept_set(concept), anchor_texts, device="cpu")
            transplants[recipe, concept] = transplant
            controls[recipe, concept] = {"random": random_control(transplant, seed=0), "own": own_control(transplant, own_vector)}
            diagnostics[f"{recipe}|{concept}"] = {
                "source_layer": transplant.source_layer, "target_layer": transplant.target_layer,
                "heldout_r2": transplant.heldout_r2, "cos_to_own": cosine(transplant.vector, own_vector),
                "norm": float(transplant.steering_vector().norm()), "own_norm": float(own_vector.norm()),
            }
            log(f"built {recipe:9s} {concept:9s} blocks {transplant.source_layer}->{transplant.target_layer} "
                f"R^2 {transplant.heldout_r2:.3f} cos {diagnostics[f'{recipe}|{concept}']['cos_to_own']:.3f}")

    phases["builds"] = time.time() - started
    # ---- ablations: one change at a time on the WikiSplit anchors (fit quality, cosines, emotion success)
    ablations = {
        "reference (last tokens, lstsq, no centring, blocks 22->14)": dict(recipe="reference"),
        "+ centring": dict(recipe="reference", center=True),
        "+ ridge (auto, centred)": dict(recipe="reference", center=True, ridge="auto"),
        "+ Procrustes (whitened, centred)": dict(recipe="reference", center=True, map_method="procrustes"),
        "+ dense anchors": dict(recipe="reference", anchor_tokens="dense"),
        "+ dense anchors + centring": dict(recipe="reference", anchor_tokens="dense", center=True),
        DEFAULT_ON_WIKI: dict(recipe="default"),
        "default recipe, target_layer=auto (target block by held-out concept separation)": dict(recipe="default", target_layer="auto"),
        "default recipe on the shipped corpus instead of WikiSplit (what a user gets)": dict(recipe="default", anchors=None),
        "default recipe on the shipped corpus, target_layer=auto": dict(recipe="default", anchors=None, target_layer="auto"),
    }
    ablation_vectors, ablation_fits = {}, {}
    for name, options in ablations.items():
        options = {"anchors": str(wiki), **options}
        anchor_texts, _ = load_anchor_texts(options["anchors"])
        for concept in emotions:
            transplant = build_transplant(SOURCE, TARGET, concept, device="cpu", **options)
            # the target's own vector at the block this map chose, from the anchors it was fitted on
            own = target_own_vector(transplant, load_concept_set(concept), anchor_texts, device="cpu")
            ablation_vectors[name, concept] = transplant
            ablation_fits[f"{name}|{concept}"] = {"heldout_r2": transplant.heldout_r2, "target_layer": transplant.target_layer,
                                                  "cos_to_own": cosine(transplant.vector, own)}
        log(f"ablation built: {name}")
    phases["ablation builds"] = time.time() - started - phases["builds"]

    # ---- evaluation: one grid; consecutive rows on the target share one load of it
    rows = [GridRow("base target", "base", TARGET, alpha=0.0, tasks=tasks_of([c for g in task_groups.values() for c in g] + facts))]
    steered_keys = []
    for recipe in recipes:
        for concept in concepts:
            columns = task_groups[concept] + facts
            for alpha in ALPHAS:
                # facts under the default alpha; controls at every alpha for the emotions (the paper's
                # table), at alpha 1 for the slower tasks
                kinds = [("transplanted", columns if alpha == 1.0 else task_groups[concept])]
                if concept in EMOTIONS or alpha == 1.0:
                    kinds += [("random", task_groups[concept] + (facts if alpha == 1.0 else [])), ("own", task_groups[concept])]
                for kind, wanted in kinds:
                    vector = transplants[recipe, concept] if kind == "transplanted" else controls[recipe, concept][kind]
                    rows.append(GridRow(f"{recipe} {concept} {kind} α={alpha:g}", "contrans" if kind == "transplanted" else kind,
                                        TARGET, vector, alpha, tasks=tasks_of(wanted)))
                    steered_keys.append((rows[-1].name, f"{recipe}|{concept}|{kind}|{alpha}"))
    for (name, concept), transplant in ablation_vectors.items():
        # every direction at alpha 2 in residual units of its block, so the rows compare maps, not norms;
        # a last-token fit's own median is over sentence ends only, so it borrows the dense one at its block
        dense = ablation_vectors[DEFAULT_ON_WIKI, concept]
        norm = transplant.residual_norm if transplant.anchor_tokens == "dense" else dense.residual_norm
        assert transplant.anchor_tokens == "dense" or transplant.target_layer == dense.target_layer
        rows.append(GridRow(f"ablation {name} {concept}", "contrans", TARGET,
                            transplant.with_steering(alpha_unit="residual", residual_norm=norm), ABLATION_ALPHA,
                            tasks=tasks_of(task_groups[concept])))
    rows.append(GridRow("source (SmolLM2-135M-Instruct)", "source", SOURCE,
                        tasks=tasks_of([c for g in task_groups.values() for c in g] + facts)))
    settings = EvalSettings(tasks=sorted(every_task), limit=every_task, batch_size=args.batch_size, device="cpu",
                            task_metadata=task_metadata(shared), bootstrap_iters=200)
    grid = Grid(work, settings)
    measured = {row.name: flat(row) for row in grid.run(rows)}
    log(f"evaluated every row ({len(grid.reused)} read back from {work})")
    kind_of = lambda name: ("base target" if name == "base target" else "source" if name.startswith("source")  # noqa: E731
                            else "ablation rows" if name.startswith("ablation") else "steered rows")
    for name, seconds in grid.seconds.items():
        phases[kind_of(name)] = phases.get(kind_of(name), 0.0) + seconds
    row_counts = Counter(kind_of(row.name) for row in rows)
    return {
        "settings": {"full": args.full, "smoke": args.smoke, "limits": limits, "batch_size": args.batch_size,
                     "alpha_unit_fraction": ALPHA_UNIT_FRACTION, "machine": machine(), "seconds": time.time() - started,
                     "phase_seconds": phases, "row_counts": row_counts, "rows_reused": len(grid.reused)},
        "task_groups": {concept: [list(column) for column in columns] for concept, columns in task_groups.items()},
        "rows": {name: measured[name] for name in ("base target", "source (SmolLM2-135M-Instruct)")},
        "steered": {key: measured[name] for name, key in steered_keys},
        "diagnostics": diagnostics,
        "ablation_fits": ablation_fits,
        "ablations": {f"{name}|{concept}": measured[f"ablation {name} {concept}"] for name, concept in ablation_vectors},
    }


def _cell(scores: dict, task: str, metric: str) -> str:
    value = scores.get(f"{task}/{metric}")
    if value is None:
        return "—"
    stderr = scores.get(f"{task}/{metric}_stderr")
    return f"{value:.3f}" + (f" ± {stderr:.3f}" if isinstance(stderr, float) else "")


def _value(scores: dict, task: str, metric: str) -> float | None:
    return scores.get(f"{task}/{metric}")


def _phases(settings: dict) -> str:
    """Where the run's time went; rows read back from an earlier run's grid folder cost nothing here."""
    phases, counts = settings.get("phase_seconds"), settings.get("row_counts", {})
    if phases is None:
        return ""
    parts = [f"{name} {seconds:,.0f} s" if name not in counts or name in ("base target", "source")
             else f"{counts[name]} {name} {seconds:,.0f} s" for name, seconds in phases.items()]
    reused = settings.get("rows_reused", 0)
    return ": " + ", ".join(parts) + (f"; {reused} rows read back from an earlier run, not timed" if reused else "")


def render(document: dict) -> str:
    """The RESULTS.md section, from what `measure` wrote (no model runs)."""
    settings = document["settings"]
    limits, rows, diagnostics = settings["limits"], document["rows"], document["diagnostics"]
    unit_fraction, seconds, full = settings["alpha_unit_fraction"], settings["seconds"], settings["full"]
    task_groups = {concept: [tuple(column) for column in columns] for concept, columns in document["task_groups"].items()}
    results = {tuple(key.split("|")[:3]) + (float(key.split("|")[3]),): value for key, value in document["steered"].items()}
    ablation_results = {tuple(key.split("|")): value for key, value in document["ablations"].items()}
    ablation_fits = {tuple(key.split("|")): value for key, value in document["ablation_fits"].items()}
    emotions = [c for c in task_groups if c in EMOTIONS]
    others = [c for c in ("honesty", "toxicity", "sentiment") if c in task_groups]
    lines = [
        "## Issue 4: the reference recipe on a real cross-family pair, and a better one",
        "",
        f"Made by `python bench/experiments/make_results.py --data ../shared/data{' --full' if full else ''}` "
        f"in {seconds / 60:.0f} min ({settings['machine']}{_phases(settings)}). Source SmolLM2-135M-Instruct (30 blocks, hidden 576) → "
        "target Gemma-3-270M base (18 blocks, hidden 640), float32 on CPU, dev splits of ../shared/data. "
        "Documents per task: " + ", ".join(f"{key} {'all' if value is None else value}" for key, value in limits.items())
        + " (emotion tasks interleave the five other emotions, so a limit takes a balanced mix). "
        "± is lm-eval's bootstrap standard error.",
        "",
        "- **reference** = the paper's recipe: last-token states of 1,600 WikiSplit sentences cut by 2–4 final "
        "words (the reference code's preparation), least squares without bias, blocks at 75 % depth, α multiplies "
        "the transplanted vector as it is (`recipe=reference anchors=<that file>`).",
        f"- **default** = this package's default recipe as a user gets it, on the shipped anchor corpus (no `anchors=`): "
        f"every pair of tokens that end at the same character in both tokenizers (dense anchors), centred least squares, "
        f"the source block with the best held-out R² among those within ±0.15 relative depth of the target block, and α "
        f"in residual units (α = 1 adds a vector of norm {unit_fraction:g} × the target block's median residual norm). "
        "The ablations below give the default recipe on WikiSplit too.",
        "- **random** = a seeded Gaussian direction with the same norm as the transplanted vector at each α; "
        "**own** = the target's own concept vector from the same pairs at the same block (the no-transfer upper "
        "bound), at the transplanted vector's norm under the default recipe and at its own norm under the reference "
        "recipe (raw α).",
        "",
        "### Emotion steering success",
        "",
        "Share of other-emotion scenarios whose top emotion word becomes the steered emotion (the paper's metric).",
        "",
        "| recipe | row | " + " | ".join(emotions) + " | ≥ 0.8 |",
        "|---|---|" + "---|" * (len(emotions) + 1),
    ]

    def emotion_row(label_recipe, label, getter):
        values = [getter(emotion) for emotion in emotions]
        cells = ["—" if v is None else f"{v:.2f}" for v in values]
        hits = sum(1 for v in values if v is not None and v >= 0.8)
        lines.append(f"| {label_recipe} | {label} | " + " | ".join(cells) + f" | {hits}/{len(emotions)} |")

    emotion_row("—", "base target", lambda e: _value(rows["base target"], f"contrans_emotion_{e}", "acc"))
    for recipe in ("reference", "default"):
        for kind in ("transplanted", "random", "own"):
            for alpha in ALPHAS:
                emotion_row(recipe, f"{kind} α={alpha:g}",
                            lambda e, k=kind, a=alpha: _value(results.get((recipe, e, k, a), {}), f"contrans_emotion_{e}", "acc"))
        emotion_row(recipe, "**transplanted, best α**", lambda e, r=recipe: max(
            (_value(results[(r, e, "transplanted", a)], f"contrans_emotion_{e}", "acc") for a in ALPHAS)))
    emotion_row("—", "source (SmolLM2-135M-Instruct)",
                lambda e: _value(rows["source (SmolLM2-135M-Instruct)"], f"contrans_emotion_{e}", "acc"))

    lines += ["", "### Honesty, toxicity, sentiment, and the factual control", "",
              "Each concept steers its own tasks; `facts` is the factual-completion accuracy under the same "
              "steer at α = 1 (base in the first row). Controls at α = 1 (the default).", ""]
    for concept in others:
        columns = task_groups[concept]
        header = [f"{task.removeprefix('contrans_')} {metric}" for task, metric, _ in columns] + ["facts acc"]
        lines += [f"**{concept}**", "", "| recipe | row | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(header)]
        lines.append("| — | base target | " + " | ".join(_cell(rows["base target"], t, m) for t, m, _ in columns)
                     + f" | {_cell(rows['base target'], 'contrans_facts', 'acc')} |")
        for recipe in ("reference", "default"):
            for kind in ("transplanted", "random", "own"):
                for alpha in ALPHAS:
                    scores = results.get((recipe, concept, kind, alpha))
                    if scores is None:
                        continue
                    lines.append(f"| {recipe} | {kind} α={alpha:g} | " + " | ".join(_cell(scores, t, m) for t, m, _ in columns)
                                 + f" | {_cell(scores, 'contrans_facts', 'acc')} |")
        source = rows["source (SmolLM2-135M-Instruct)"]
        lines.append("| — | source | " + " | ".join(_cell(source, t, m) for t, m, _ in columns)
                     + f" | {_cell(source, 'contrans_facts', 'acc')} |")
        lines.append("")

    lines += ["### Facts under every concept's default steer (α = 1)", "",
              "| recipe | " + " | ".join(task_groups) + " |", "|---|" + "---|" * len(task_groups)]
    base_facts = _value(rows["base target"], "contrans_facts", "acc")
    for recipe in ("reference", "default"):
        cells = []
        for concept in task_groups:
            value = _value(results[(recipe, concept, "transplanted", 1.0)], "contrans_facts", "acc")
            cells.append(f"{value:.3f} ({100 * (value - base_facts):+.1f})")
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    lines.append(f"\nBase target facts accuracy: {base_facts:.3f}; in brackets the change in points.")

    lines += ["", "### The map: held-out R² and cosine to the target's own vector", "",
              "| concept | reference blocks | reference R² | reference cos | default blocks | default R² | default cos |",
              "|---|---|---|---|---|---|---|"]
    for concept in task_groups:
        ref, new = diagnostics[f"reference|{concept}"], diagnostics[f"default|{concept}"]
        lines.append(f"| {concept} | {ref['source_layer']}→{ref['target_layer']} | {ref['heldout_r2']:.3f} | {ref['cos_to_own']:.3f} "
                     f"| {new['source_layer']}→{new['target_layer']} | {new['heldout_r2']:.3f} | {new['cos_to_own']:.3f} |")
    lines.append("\nR² is pooled over dimensions on held-out anchor texts (20 %, seeded): last tokens for the "
                 "reference, every matched token for the default (rows of a held-out text are all held out).")

    lines += ["", "### Ablations", "",
              "Each row changes the reference recipe as named, on the same WikiSplit anchors unless it names the "
              "shipped corpus; the target blocks used (per emotion where they differ), mean held-out R² over the "
              "emotion maps, mean cosine to the target's own vector at the same block, and emotion steering success "
              f"with every direction at α = {ABLATION_ALPHA:g} in residual units of its block, so that the rows "
              "compare maps, not vector norms.", "",
              "| recipe | target blocks | R² | cos to own | " + " | ".join(emotions) + " | ≥ 0.8 |",
              "|---|---|---|---|" + "---|" * (len(emotions) + 1)]
    names = list(dict.fromkeys(name for name, _ in ablation_fits))
    for name in names:
        r2 = sum(ablation_fits[name, e]["heldout_r2"] for e in emotions) / len(emotions)
        blocks = [ablation_fits[name, e]["target_layer"] for e in emotions]
        cosines = [ablation_fits[name, e]["cos_to_own"] for e in emotions]
        success = [_value(ablation_results[name, e], f"contrans_emotion_{e}", "acc") for e in emotions]
        lines.append(f"| {name} | {blocks[0] if len(set(blocks)) == 1 else ' '.join(map(str, blocks))} | {r2:.3f} | "
                     f"{sum(cosines) / len(cosines):.3f} | " + " | ".join(f"{v:.2f}" for v in success)
                     + f" | {sum(v >= 0.8 for v in success)}/{len(emotions)} |")
    return "\n".join(lines)



SUMMARY_METRIC = {"sentiment": ("contrans_sentiment", "margin"), "toxicity": ("contrans_toxicity", "acc_norm")}


def render_summary(document: dict) -> str:
    """README's one results table: each concept's own task under the paper's recipe and the default, beside
    the base target and the default's controls, and the factual control under the default steer."""
    rows, groups = document["rows"], document["task_groups"]
    results = {tuple(key.split("|")[:3]) + (float(key.split("|")[3]),): value for key, value in document["steered"].items()}
    base = rows["base target"]
    lines = ["| concept | task, metric | base target | paper's recipe α=1 / α=5 | default α=1 / α=5 | random α=1 | "
             "target's own vector α=1 | facts (base " + f"{_value(base, 'contrans_facts', 'acc'):.3f}) at default α=1 |",
             "|---|---|---|---|---|---|---|---|"]
    for concept, columns in groups.items():
        task, metric = SUMMARY_METRIC.get(concept, tuple(columns[0][:2]))

        def value(recipe, kind, alpha):
            return _value(results[(recipe, concept, kind, alpha)], task, metric)

        lines.append(f"| {concept} | {task.removeprefix('contrans_')}, {'success' if concept in EMOTIONS else metric} | "
                     f"{_value(base, task, metric):.2f} | {value('reference', 'transplanted', 1.0):.2f} / "
                     f"{value('reference', 'transplanted', 5.0):.2f} | {value('default', 'transplanted', 1.0):.2f} / "
                     f"{value('default', 'transplanted', 5.0):.2f} | {value('default', 'random', 1.0):.2f} | "
                     f"{value('default', 'own', 1.0):.2f} | "
                     f"{_value(results[('default', concept, 'transplanted', 1.0)], 'contrans_facts', 'acc'):.3f} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
