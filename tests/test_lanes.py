"""Several steerings scored in one pass (lanes.py, `ConTransLM.use_lanes`, the grid's runs of steered rows): each
lane's answers are its steering's alone, the blocks before the steered one run once, and what cannot share a pass
is scored as before."""

from __future__ import annotations

import json

import pytest
import torch

import lm_eval_contrans.hf.lm_eval_model as adapter
from conftest import OPENINGS, _byte_bpe_tokenizer
from lm_eval_contrans.blocks import decoder_blocks
from lm_eval_contrans.direction import Direction
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.experiments.grid import EvalSettings, Grid, GridRow, slug
from lm_eval_contrans.hf.lanes import lanes_work
from lm_eval_contrans.hf.lm_eval_model import ConTransLM
from model_families import save_tiny_model

# one-token continuations of one context (one input row in HFLM), several-token ones, contexts of other lengths
PAIRS = [(OPENINGS[0], " positive"), (OPENINGS[0], " negative"), (OPENINGS[1], " the river was cold"),
         ("The hotel room", " was clean"), ("We walked", " along the river on a cold morning"), (OPENINGS[1], " which"),
         ("The", " museum")]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tiny_llama_dir) -> dict:
    tokenizer, folder = _byte_bpe_tokenizer(), tmp_path_factory.mktemp("families")
    made = {family: save_tiny_model(family, tokenizer, folder / family) for family in ("gemma3_text", "openai-gpt")}
    return {"llama": tiny_llama_dir, **made}


def directions(block: int, width: int, count: int = 3) -> list[Direction]:
    generator = torch.Generator().manual_seed(0)
    return [Direction(f"d{index}", block, torch.randn(width, generator=generator) * 3) for index in range(count)]


def requests():
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(PAIRS)]


def scored_alone_and_in_lanes(lm: ConTransLM, steerings: list) -> tuple[list, list, list[int], list[int]]:
    """Each steering's answers alone, then in lanes, and the rows block 0 ran in each evaluation, alone and in lanes
    (once the model was checked for lanes at their block)."""
    lanes_work(lm.model, next(d.block for transplants, _ in steerings for d in transplants))
    rows = []
    counting = decoder_blocks(lm.model)[0].register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    answers, counts = {False: [], True: []}, {False: [], True: []}
    try:
        for together in (False, True):
            for transplants, alphas in steerings:
                lm.use_transplants(transplants, alphas)
                lm.use_lanes(steerings if together else [])
                before = len(rows)
                answers[together].append(lm.loglikelihood(requests(), disable_tqdm=True))
                counts[together].append(sum(rows[before:]))
    finally:
        counting.remove()
    return answers[False], answers[True], counts[False], counts[True]


@pytest.mark.parametrize("family, block", [("llama", 1), ("llama", 3), ("gemma3_text", 0)])
def test_each_lane_scores_as_its_steering_alone_and_the_blocks_before_it_run_once(family_dirs, family, block):
    lm = ConTransLM.from_transplants(str(family_dirs[family]), [], 0.0, device="cpu", batch_size=3, share_context=False)
    d = directions(block, lm.model.config.hidden_size)
    # the base target, one direction at two alphas, two at once (added in turn, as their hooks add them)
    steerings = [([], 0.0), ([d[0]], 2.0), ([d[0]], -2.0), ([d[1], d[2]], [1.0, 3.0])]
    alone, shared, rows_alone, rows = scored_alone_and_in_lanes(lm, steerings)
    for own, lanes in zip(alone, shared, strict=True):
        assert [greedy for _, greedy in lanes] == [greedy for _, greedy in own]
        assert [score for score, _ in lanes] == pytest.approx([score for score, _ in own], abs=1e-4)
    assert len({tuple(score for score, _ in answers) for answers in alone}) == len(steerings)  # the lanes differ
    # the first steering's evaluation ran block 0 over the rows one steering alone runs; the others were answered
    assert rows == [rows_alone[0], 0, 0, 0] and rows_alone == [rows_alone[0]] * 4 and rows_alone[0] >= len(PAIRS) - 1


def test_a_lane_that_breaks_raises_in_its_own_evaluation_naming_its_own_steering(family_dirs):
    """At 1e30 the Llama's RMS norm turns the states into zeros (test_hostile_input.py): the pass that finds it runs
    for a sane lane, which scores; the broken lane's own evaluation stops, naming it."""
    lm = ConTransLM.from_transplants(str(family_dirs["llama"]), [], 0.0, device="cpu", batch_size=3)
    ones = Direction("ones", 1, torch.ones(32))
    steerings = [([ones], 1.0), ([ones], 1e30)]
    lm.use_transplants(*steerings[0])
    lm.use_lanes(steerings)
    assert all(torch.isfinite(torch.tensor(score)) for score, _ in lm.loglikelihood(requests(), disable_tqdm=True))
    lm.use_transplants(*steerings[1])
    lm.use_lanes(steerings)
    with pytest.raises(ConTransError, match="^alpha: the steered model's outputs are not finite .*ones at block 1, "
                                            "alpha 1e\\+30"):
        lm.loglikelihood(requests(), disable_tqdm=True)


@pytest.mark.parametrize("family, positions", [("openai-gpt", "all"), ("llama", "prompt")])
def test_what_cannot_share_a_pass_is_scored_lane_by_lane_as_before(family_dirs, family, positions, monkeypatch):
    """OpenAI GPT's later blocks take what a shared pass cannot repeat per lane (`lanes_work` finds it on the model);
    positions=prompt steers only some passes."""
    lm = ConTransLM.from_transplants(str(family_dirs[family]), [], 0.0, device="cpu", batch_size=3,
                                     share_context=False, positions=positions)
    calls = []
    real = adapter.score_lanes
    monkeypatch.setattr(adapter, "score_lanes", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    d = directions(0, lm.model.config.hidden_size if family == "llama" else lm.model.config.n_embd)
    steerings = [([d[0]], 2.0), ([d[1]], 2.0)]
    alone, shared, rows_alone, rows = scored_alone_and_in_lanes(lm, steerings)
    assert calls == [] and shared == alone
    assert rows == rows_alone and rows[0] > 0  # each steering ran its own passes


@pytest.fixture(scope="module")
def band_rows(family_dirs):
    target = str(family_dirs["llama"])
    d = directions(1, 32, 4)
    d[2:] = [Direction(f"d{index}", 2, direction.vector) for index, direction in zip((2, 3), d[2:])]
    return [GridRow("base target", "base", target, alpha=0.0)] + [
        GridRow(f"random {index}", "random", target, direction, 4.0) for index, direction in enumerate(d)]


def test_a_grid_scores_its_runs_of_rows_at_one_block_together_and_keeps_their_keys_and_results(
        band_rows, task_dir, tmp_path, monkeypatch):
    calls = []
    real = adapter.score_lanes
    monkeypatch.setattr(adapter, "score_lanes", lambda *args, **kwargs: calls.append(len(args[3])) or real(*args, **kwargs))

    def run(folder, share: bool) -> list:
        settings = EvalSettings(tasks=["contrans_sentiment", "contrans_tiny_generate"], limit=4, batch_size=4,
                                device="cpu", include_path=[str(task_dir)], paired_metrics=("margin",),
                                share_passes=share)
        return Grid(tmp_path / folder, settings).run(band_rows)

    shared = run("shared", True)
    assert calls == [3, 2]  # base and the two rows at block 1, then the two at block 2; one scoring each
    alone = run("alone", False)
    assert calls == [3, 2]
    for one, other in zip(shared, alone, strict=True):
        key = lambda folder: json.loads((tmp_path / folder / "rows" / slug(one.name) / "row.json").read_text())["key"]  # noqa: E731
        assert key("shared") == key("alone")
        assert one.results["contrans_tiny_generate"] == other.results["contrans_tiny_generate"]
        assert one.results["contrans_sentiment"]["acc_norm,none"] == other.results["contrans_sentiment"]["acc_norm,none"]
        assert one.per_document["contrans_sentiment"]["margin"] == pytest.approx(
            other.per_document["contrans_sentiment"]["margin"], abs=1e-5)
    assert len({tuple(row.per_document["contrans_sentiment"]["margin"]) for row in shared}) == len(band_rows)
    settings = EvalSettings(tasks=["contrans_sentiment", "contrans_tiny_generate"], limit=4, batch_size=4, device="cpu",
                            include_path=[str(task_dir)], paired_metrics=("margin",), share_passes=False)
    resumed = Grid(tmp_path / "shared", settings)
    resumed.run(band_rows)  # the switch is not in a row's key: every row is read back
    assert resumed.reused == [row.name for row in band_rows]
