"""How the plugin meets lm-eval and the models: the entry point lm-eval's later releases discover,
the switch that leaves lm-eval's TaskManager alone, the scoring shortcuts stepping aside on an
untested lm-eval, decoder blocks found without a list of paths, and tokenizers without offsets."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from lm_eval_contrans.blocks import block_path, decoder_blocks, use_block_path
from lm_eval_contrans.errors import ConTransError


def test_contrans_is_declared_in_lm_evals_entry_point_group():
    from importlib.metadata import entry_points

    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    (entry,) = [entry for entry in entry_points(group="lm_eval.models") if entry.name == "contrans"]
    assert entry.load() is ConTransLM


@pytest.mark.cli  # a fresh interpreter indexing lm-eval's tasks: slow
@pytest.mark.parametrize("switch", ["0", None])
def test_task_manager_patch_can_be_switched_off(switch, task_dir):
    probe = ("from lm_eval.tasks import TaskManager\n"  # one TaskManager: indexing lm-eval's tasks takes seconds
             f"tasks = TaskManager(include_path={str(task_dir)!r}).all_tasks\n"
             "print('contrans_facts' in tasks, 'contrans_tiny_choice' in tasks)")
    env = {key: value for key, value in os.environ.items() if key != "CONTRANS_ADD_TASKS"}
    if switch is not None:
        env["CONTRANS_ADD_TASKS"] = switch
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # the shipped tasks only while the patch is on; the user's --include_path either way
    assert result.stdout.split() == (["False", "True"] if switch == "0" else ["True", "True"])


def test_untested_lm_eval_scores_exactly_as_hflm(monkeypatch, tiny_gpt2_dir, caplog):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from conftest import OPENINGS
    from lm_eval_contrans.hf import scoring

    requests = [Instance("loglikelihood", {}, (opening, ending), index)
                for index, (opening, ending) in enumerate((o, e) for o in OPENINGS for e in (" was warm.", " was not."))]

    def scores(lm):
        return torch.tensor([score for score, _ in lm.loglikelihood(requests, disable_tqdm=True)])

    plain = scores(HFLM(pretrained=str(tiny_gpt2_dir), device="cpu", batch_size=4))
    shortcut = scores(scoring.FastScoringHFLM(pretrained=str(tiny_gpt2_dir), device="cpu", batch_size=4))
    assert not torch.equal(shortcut, plain)  # shared contexts: equal only up to rounding
    monkeypatch.setattr(scoring, "LM_EVAL_VERSION", "9.9.9")
    with caplog.at_level(logging.WARNING, logger="lm_eval_contrans"):
        untested = scoring.FastScoringHFLM(pretrained=str(tiny_gpt2_dir), device="cpu", batch_size=4)
        again = scoring.FastScoringHFLM(pretrained=str(tiny_gpt2_dir), device="cpu", batch_size=4)
    assert not untested.share_context and not again.shortcuts
    assert torch.equal(scores(untested), plain)  # HFLM's own passes, bit for bit
    assert sum("9.9.9" in record.getMessage() for record in caplog.records) == 1


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, hidden):
        return self.linear(hidden)


class _OddModel(nn.Module):
    """Blocks under a name no list of paths would guess, next to a decoy list of another length and
    a vision tower's list of the same length far from the embeddings."""

    def __init__(self, layers: int = 3) -> None:
        super().__init__()
        self.config = type("Config", (), {"num_hidden_layers": layers})()
        self.vision = nn.Module()
        self.vision.stack = nn.ModuleList(_Block() for _ in range(layers))
        self.trunk = nn.Module()
        self.trunk.embed = nn.Embedding(10, 4)
        self.trunk.heads = nn.ModuleList(nn.Linear(4, 4) for _ in range(layers + 1))
        self.trunk.stages = nn.ModuleList(_Block() for _ in range(layers))

    def get_input_embeddings(self):
        return self.trunk.embed


def test_blocks_are_found_by_the_configured_count_nearest_the_embeddings():
    model = _OddModel()
    assert decoder_blocks(model) is model.trunk.stages and block_path(model) == "trunk.stages"


def test_block_path_overrides_discovery_and_is_checked():
    model = _OddModel()
    assert use_block_path(model, "vision.stack") is model.vision.stack
    assert decoder_blocks(model) is model.vision.stack
    with pytest.raises(ConTransError, match="^block_path: _OddModel has no module 'trunk.nothing'"):
        use_block_path(model, "trunk.nothing")
    with pytest.raises(ConTransError, match="^block_path: 'trunk.embed' in _OddModel is a Embedding"):
        use_block_path(model, "trunk.embed")


def test_no_block_list_names_the_class_and_the_way_out():
    with pytest.raises(ConTransError, match="Sequential: it has no ModuleList.*block_path=<module path>"):
        decoder_blocks(nn.Sequential(nn.Linear(2, 2)))
    model = _OddModel()
    model.config.num_hidden_layers = 7
    with pytest.raises(ConTransError, match="_OddModel: it has no ModuleList of length 7 .*block_path="):
        decoder_blocks(model)


def test_block_path_model_arg_reaches_the_build_and_the_steer(tiny_llama_dir, tiny_gpt2_dir, small_inputs):
    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    concept, anchors = small_inputs
    lm = ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept=concept, anchors=anchors,
                    block_path="transformer.h", source_block_path="model.layers", device="cpu", batch_size=2)
    assert block_path(lm.model) == "transformer.h" and lm.transplant.target_num_layers == 3
    with pytest.raises(ConTransError, match="^source_block_path: LlamaForCausalLM has no module 'model.blocks'"):
        ConTransLM(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept=concept, anchors=anchors,
                   source_block_path="model.blocks", device="cpu", batch_size=2)


def test_tokenizer_without_offsets_falls_back_to_last_token_anchors(tiny_llama_dir, tiny_gpt2_dir, small_inputs,
                                                                    monkeypatch, caplog):
    from transformers import AutoTokenizer

    from lm_eval_contrans.loading.tokenizer_cache import _tokenizer
    from lm_eval_contrans.pipeline import build_transplant

    concept, anchors = small_inputs
    real = AutoTokenizer.from_pretrained
    _tokenizer.cache_clear()  # tokenizers read by earlier builds would not pass through the patched loader

    def slow_for_the_source(folder, *args, **kwargs):
        tokenizer = real(folder, *args, **kwargs)
        if str(folder) == str(tiny_llama_dir):
            monkeypatch.setattr(type(tokenizer), "is_fast", property(lambda self: False))
        return tokenizer

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", slow_for_the_source)
    with caplog.at_level(logging.WARNING, logger="lm_eval_contrans"):
        transplant = build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), concept, anchors=anchors, ridge=1.0,
                                      device="cpu")
    assert transplant.anchor_tokens == "last" and transplant.anchor_count == 80
    assert "gives no character offsets" in transplant.extra["anchor_tokens_fallback"]
    assert sum("using anchor_tokens=last" in record.getMessage() for record in caplog.records) == 1


def test_a_task_written_after_its_folder_was_indexed_is_found(tmp_path):
    """The test session indexes each task folder once per state of its YAML files (conftest); a task
    added later is indexed, as a fresh TaskManager in lm-eval would."""
    from lm_eval.tasks import TaskManager

    (tmp_path / "one.yaml").write_text("task: contrans_probe_one\ndataset_path: json\noutput_type: multiple_choice\n")
    assert "contrans_probe_one" in TaskManager(include_path=str(tmp_path)).all_tasks
    (tmp_path / "two.yaml").write_text("task: contrans_probe_two\ndataset_path: json\noutput_type: multiple_choice\n")
    tasks = TaskManager(include_path=str(tmp_path)).all_tasks
    assert {"contrans_probe_one", "contrans_probe_two"} <= set(tasks) and "contrans_facts" in tasks
