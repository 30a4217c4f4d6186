"""The random band's cost against its floor (issue 41, item 5): `contrans compare`'s steered rows with K random
directions against one, on HF, with and without shared passes, beside the floor that FLOPs set.

Every steered row of a compare (the base target, the transplant, K random directions, the target's own vector, at
one alpha) steers one block, so the blocks before it compute the same states for each; only the blocks after it and
the output layer depend on the row. With shared passes (the grid's default, `EvalSettings.share_passes`) the rows
are lanes of one pass (lanes.py); without, each row runs whole. Four grids of the packaged pair's steered rows
(sentiment, `contrans_sentiment`, one alpha), K = 1 and K = 8, shared and not, interleaved and repeated (medians), on
one transplant and one task index; the target's load is timed apart and left out. The floor: matmul FLOPs counted
in one steered row's evaluation (attention and MLP projections, the causal attention products, the output layer at
the positions it projects), split at the steered block; K = 8 costs F_before + n8 F_after against F_before + n1
F_after for K = 1 (n: steered rows), where every row repeats only the tail.

Run:  python bench/perf/band_cost.py [--limit 50] [--repeats 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from _timing import SOURCE, TARGET, add_json_argument, machine, write_json

TASK = "contrans_sentiment"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=50, help=f"documents of {TASK} (50: all)")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--band", type=int, default=8, help="K of the larger band")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--anchor-texts", type=int, default=600, help="a seeded subset of the shipped anchors")
    add_json_argument(parser)
    args = parser.parse_args()

    from lm_eval.tasks import TaskManager

    from lm_eval_contrans.experiments.compare import ComparePlan, _built, compare_rows

    folder = Path(tempfile.mkdtemp())
    plan = ComparePlan(source=SOURCE, target=TARGET, concept="sentiment", tasks=[TASK], alphas=[args.alpha],
                       limit=args.limit, batch_size=8, device="cpu", model_args={"dtype": "float32"},
                       build_options={"anchors": str(anchor_subset(folder, args.anchor_texts))}, out=folder / "compare",
                       random_directions=args.band)
    transplant = _built(plan, "cpu")
    steered = [row for row in compare_rows(plan, transplant, "cpu") if row.steered]
    first_random = next(row.name for row in steered if row.kind == "random")
    bands = {1: [row for row in steered if row.kind != "random" or row.name == first_random], args.band: steered}
    task_manager = TaskManager()  # one task index for every grid: each would parse every task YAML again
    flops = counted_flops(bands[1], args.limit, task_manager)
    runs = {(share, k): [] for share in (True, False) for k in bands}
    for repeat in range(args.repeats):
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for share, k in order:
            runs[share, k].append(timed_grid(folder / f"{share}-{k}-{repeat}", plan, bands[k], share, task_manager))
            print(f"K={k}, {'shared' if share else 'alone'}: {runs[share, k][-1]}", flush=True)
    document = {"limit": args.limit, "alpha": args.alpha, "block": transplant.target_layer,
                "num_blocks": transplant.target_num_layers, "rows": {str(k): len(rows) for k, rows in bands.items()},
                "flops": flops, "repeats": args.repeats, "machine": machine(),
                "seconds": {f"{'shared' if share else 'alone'}, K={k}": medians(times)
                            for (share, k), times in runs.items()}}
    print(render(document), flush=True)
    write_json(args.json, document)


def anchor_subset(folder: Path, count: int) -> Path:
    from lm_eval_contrans.anchors import load_anchor_texts

    texts, _ = load_anchor_texts(None)
    path = folder / "anchors.txt"
    path.write_text("\n".join(random.Random(0).sample(texts, count)))
    return path


def timed_grid(folder: Path, plan, rows: list, share: bool, task_manager) -> dict:
    """Seconds of a grid of `rows` in a fresh folder: its evaluations less the target's load, the first row (where
    shared passes score every lane) and the mean of the others."""
    import lm_eval_contrans.hf.lm_eval_model as adapter
    from lm_eval_contrans.experiments.grid import EvalSettings, Grid

    settings = EvalSettings(tasks=list(plan.tasks), limit=plan.limit, batch_size=plan.batch_size, device="cpu",
                            model_args=dict(plan.model_args), paired_metrics=tuple(plan.extra_metrics), share_passes=share)
    grid = Grid(folder, settings)
    grid._task_manager = task_manager
    loads, real = [], adapter.ConTransLM.from_transplants.__func__

    def timed_load(cls, *args, **kwargs):
        started = time.perf_counter()
        try:
            return real(cls, *args, **kwargs)
        finally:
            loads.append(time.perf_counter() - started)

    adapter.ConTransLM.from_transplants = classmethod(timed_load)
    try:
        grid.run(rows)
    finally:
        adapter.ConTransLM.from_transplants = classmethod(real)
    seconds = [grid.seconds[row.name] for row in rows]
    seconds[0] -= sum(loads)
    return {"evaluations": sum(seconds), "first row": seconds[0], "other rows": statistics.mean(seconds[1:]),
            "load": sum(loads)}


def medians(times: list[dict]) -> dict:
    return {name: statistics.median(run[name] for run in times) for name in times[0]}


def counted_flops(rows: list, limit: int, task_manager) -> dict:
    """Matmul FLOPs of one row's evaluation, up to the steered block and after it: every linear layer's and the causal
    attention products, counted in the shared passes of `rows` (one evaluation scores them all) and the part after
    the block divided among them; the output layer's at the positions it projects."""
    import lm_eval
    import torch

    from lm_eval_contrans.blocks import block_path, decoder_blocks
    from lm_eval_contrans.hf.lanes import lanes_work
    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    steerings = [([] if row.transplant is None else [row.transplant], row.alpha or 0.0) for row in rows]
    lm = ConTransLM.from_transplants(TARGET, *steerings[0], device="cpu", batch_size=8, dtype="float32")
    lm.use_lanes(steerings)
    model, block = lm.model, next(row.transplant.block for row in rows if row.kind == "random")
    lanes_work(model, block)  # its check's passes are not the evaluation's
    prefix = block_path(model) + "."
    config = getattr(model.config, "text_config", model.config)
    heads, head_width = config.num_attention_heads, getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    counts = {"before": 0, "after": 0, "output layer": 0}
    head = model.get_output_embeddings()

    def part(name: str, module) -> str:
        if module is head:
            return "output layer"
        if not name.startswith(prefix):
            return "before"
        return "before" if int(name[len(prefix):].split(".")[0]) <= block else "after"

    def linear(where: str):
        def hook(module, args, output):
            counts[where] += 2 * args[0].numel() // module.in_features * module.in_features * module.out_features
        return hook

    def attention(where: str):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            batch, length = hidden.shape[0], hidden.shape[1]
            counts[where] += 2 * 2 * batch * heads * head_width * length * (length + 1) // 2  # QK^T and AV, causal
        return hook

    hooks = [module.register_forward_hook(linear(part(name, module))) for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear)]
    hooks += [b.register_forward_pre_hook(attention("before" if index <= block else "after"), with_kwargs=True)
              for index, b in enumerate(decoder_blocks(model))]
    try:
        lm_eval.simple_evaluate(model=lm, tasks=[TASK], limit=limit, task_manager=task_manager, verbosity="ERROR")
    finally:
        for hook in hooks:
            hook.remove()
    return {"before": counts["before"], "after": counts["after"] / len(rows),
            "output layer": counts["output layer"] / len(rows)}


def floor_ratio(document: dict, band: str) -> float:
    """(K's cost) / (K=1's) if each row repeated only what follows the steered block (the output layer included)."""
    flops, rows = document["flops"], document["rows"]
    before, after = flops["before"], flops["after"] + flops["output layer"]
    return (before + rows[band] * after) / (before + rows["1"] * after)


def render(document: dict) -> str:
    """The run's line: the floor, and the measured ratios with and without shared passes."""
    band = next(k for k in document["rows"] if k != "1")
    flops, seconds, rows = document["flops"], document["seconds"], document["rows"]
    shared_large, shared_one = seconds[f"shared, K={band}"], seconds["shared, K=1"]
    alone_large, alone_one = seconds[f"alone, K={band}"], seconds["alone, K=1"]
    per_row = (flops["before"] + flops["after"] + flops["output layer"]) / 1e9
    return (f"contrans compare's steered rows, packaged pair, sentiment, α {document['alpha']:g}, {document['limit']} "
            f"documents, block {document['block']} of {document['num_blocks']}: K=1 {rows['1']} rows, K={band} "
            f"{rows[band]}. FLOPs of one row's evaluation {per_row:.0f} G: {flops['before'] / 1e9:.0f} G up to the "
            f"steered block, {flops['after'] / 1e9:.1f} G after it, {flops['output layer'] / 1e9:.1f} G the output "
            f"layer → floor K={band} / K=1 **{floor_ratio(document, band):.2f}×** (every row whole: "
            f"{int(rows[band]) / int(rows['1']):.2f}×). Measured, the target's load left out: shared passes "
            f"{shared_large['evaluations']:.1f} s / {shared_one['evaluations']:.1f} s = "
            f"**{shared_large['evaluations'] / shared_one['evaluations']:.2f}×** (the pass for every lane "
            f"{shared_large['first row']:.1f} s / {shared_one['first row']:.1f} s = "
            f"{shared_large['first row'] / shared_one['first row']:.2f}×; each other row, lm-eval's evaluation of answers "
            f"already scored, {shared_large['other rows']:.2f} s); each row whole {alone_large['evaluations']:.1f} s / "
            f"{alone_one['evaluations']:.1f} s = **{alone_large['evaluations'] / alone_one['evaluations']:.2f}×**; "
            f"shared / whole at K={band} **{shared_large['evaluations'] / alone_large['evaluations']:.2f}×**")


if __name__ == "__main__":
    main()
