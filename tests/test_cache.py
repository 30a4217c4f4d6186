"""The build cache: identical rebuilds load no model, a new concept skips the anchor passes."""

from __future__ import annotations

import json
import re

import pytest
import torch

import lm_eval_contrans.pipeline.build as build
import lm_eval_contrans.pipeline.states as states
from lm_eval_contrans.artifact import save_transplant


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTRANS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_identical_rebuild_loads_no_model_and_gives_the_same_bytes(tiny_llama_dir, tiny_gpt2_dir, tmp_path,
                                                                     fresh_cache, monkeypatch):
    first = build.build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", device="cpu")
    save_transplant(first, tmp_path / "first.safetensors")

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded on a cached rebuild")

    monkeypatch.setattr(states, "load_model", no_loading)
    monkeypatch.setattr(build, "load_model", no_loading)
    second = build.build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", device="cpu")
    save_transplant(second, tmp_path / "second.safetensors")
    assert (tmp_path / "first.safetensors").read_bytes() == (tmp_path / "second.safetensors").read_bytes()


def test_new_concept_for_the_same_pair_skips_the_anchor_passes(tiny_llama_dir, tiny_gpt2_dir, tmp_path,
                                                               fresh_cache, monkeypatch):
    build.build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", device="cpu")
    flipped = tmp_path / "flipped.jsonl"
    flipped.write_text('{"positive": "The day was awful.", "negative": "The day was lovely."}\n'
                       '{"positive": "The food was bland.", "negative": "The food was tasty."}\n')
    passes = []
    real = states.last_token_states

    def spy(*args, progress=None, **kwargs):
        passes.append(progress)
        return real(*args, progress=progress, **kwargs)

    monkeypatch.setattr(states, "last_token_states", spy)
    import lm_eval_contrans.refine as refine
    monkeypatch.setattr(refine, "last_token_states", spy)
    transplant = build.build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), str(flipped), device="cpu")
    assert passes == ["concept 'flipped' in source"]
    assert transplant.concept == "flipped"


def test_a_changed_layer_or_anchor_set_is_not_served_from_the_cache(tiny_llama_dir, tiny_gpt2_dir, fresh_cache,
                                                                     small_inputs):
    base = build.build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", device="cpu")
    other_layer = build.build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment",
                                         source_layer=1, device="cpu")
    assert other_layer.source_layer == 1 and not torch.equal(other_layer.source_vector, base.source_vector)
    _, anchors = small_inputs  # the first 80 texts of the shipped corpus: other anchor states, another map
    other_anchors = build.build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", anchors=anchors,
                                           device="cpu")
    assert other_anchors.anchor_count == 80 and other_anchors.anchors_hash != base.anchors_hash
    assert other_anchors.source_layer == base.source_layer
    assert torch.equal(other_anchors.source_vector, base.source_vector)  # the concept pass is the same ...
    assert not torch.equal(other_anchors.map_weight, base.map_weight)  # ... the map is fitted on the new anchors


def test_source_anchor_states_are_read_from_the_cache_not_held(tiny_llama_dir, fresh_cache):
    # Candidate source blocks' dense states run to a gigabyte on real models: the source side must
    # not hold them while the target is loaded, so each access reads its block from the cache.
    from lm_eval_contrans.anchors import load_anchor_texts
    from lm_eval_contrans.concepts import load_concept_set
    from lm_eval_contrans.errors import ConTransError

    texts, _ = load_anchor_texts(None)
    side, = states.record_concept_states(str(tiny_llama_dir), [states.StateRequest(load_concept_set("sentiment"), [0, 1])],
                                         anchor_texts=texts[:40], device="cpu", anchor_tokens="dense")
    first, again = side.anchor_states[1], side.anchor_states[1]
    assert first.shape[0] > 40 and torch.equal(first, again) and first.data_ptr() != again.data_ptr()
    assert list(side.only([1]).anchor_states) == [1]
    for entry in (fresh_cache / "anchor_states").glob("*.safetensors"):
        entry.unlink()
    with pytest.raises(ConTransError, match="left the cache"):
        side.anchor_states[0]


def test_a_damaged_cache_entry_is_recomputed(tiny_llama_dir, tiny_gpt2_dir, fresh_cache):
    first = build.build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", device="cpu")
    for kind in ("concept_vectors", "anchor_states"):
        for entry in (fresh_cache / kind).glob("*.safetensors"):
            entry.write_bytes(entry.read_bytes()[:50])
    second = build.build_transplant(str(tiny_llama_dir), str(tiny_gpt2_dir), "sentiment", device="cpu")
    assert torch.equal(first.vector, second.vector)


WORKER = """
import sys, time, torch
from pathlib import Path
from lm_eval_contrans.cache import cached_tensor
marker_dir, delay = Path(sys.argv[1]), float(sys.argv[2])
def compute():
    (marker_dir / f"computed-{__import__('os').getpid()}").write_text("x")
    time.sleep(delay)
    return torch.arange(5.0)
print(cached_tensor("race", {"entry": 1}, compute).tolist())
"""


def test_two_processes_building_one_entry_compute_it_once(tmp_path, fresh_cache):
    import subprocess
    import sys

    markers = tmp_path / "markers"
    markers.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", WORKER, str(markers), "2"], stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert outputs == ["[0.0, 1.0, 2.0, 3.0, 4.0]"] * 2
    assert len(list(markers.iterdir())) == 1
    assert len(list((fresh_cache / "race").glob("*.safetensors"))) == 1


def test_a_build_killed_half_way_leaves_no_entry(tmp_path, fresh_cache):
    import subprocess
    import sys
    import time

    markers = tmp_path / "markers"
    markers.mkdir()
    process = subprocess.Popen([sys.executable, "-c", WORKER, str(markers), "60"])
    deadline = time.time() + 60
    while not list(markers.iterdir()) and time.time() < deadline:
        time.sleep(0.1)
    process.kill()
    process.wait()
    assert not list((fresh_cache / "race").glob("*.safetensors"))
    finished = subprocess.run([sys.executable, "-c", WORKER, str(markers), "0"], capture_output=True, text=True, timeout=120)
    assert finished.stdout.strip() == "[0.0, 1.0, 2.0, 3.0, 4.0]"


RECORDING_WORKER = """
import os, sys, time
from pathlib import Path
import lm_eval_contrans.pipeline.states as states
from lm_eval_contrans.anchors import load_anchor_texts
from lm_eval_contrans.concepts import load_concept_set
model, barrier = sys.argv[1], Path(sys.argv[2])
real_load_model = states.load_model
def counting_load_model(*args, **kwargs):
    (barrier / f"loaded-{os.getpid()}").write_text("x")
    return real_load_model(*args, **kwargs)
states.load_model = counting_load_model
texts, _ = load_anchor_texts(None)
request = states.StateRequest(load_concept_set("sentiment"), [1, 2])
(barrier / f"ready-{os.getpid()}").write_text("x")
while len(list(barrier.glob("ready-*"))) < 2:  # both processes are released at the same instant
    time.sleep(0.001)
side, = states.record_concept_states(model, [request], anchor_texts=texts[:60], device="cpu", anchor_tokens="dense")
print(float(side.concept_vectors[2].sum()), float(side.anchor_states[1].sum()))
"""


def test_two_processes_released_together_record_the_states_once(tiny_llama_dir, tmp_path, fresh_cache):
    """The ranks of a data-parallel launch ask for the same states at the same instant: each entry's
    lock covers check, recording and write, so one process loads the model and the other reads."""
    import subprocess
    import sys

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", RECORDING_WORKER, str(tiny_llama_dir), str(barrier)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err[-2000:] for _, err in outputs]
    assert len(list(barrier.glob("loaded-*"))) == 1
    assert outputs[0][0] == outputs[1][0] and outputs[0][0].strip()
    assert len(list((fresh_cache / "anchor_states").glob("*.safetensors"))) == 2
    assert len(list((fresh_cache / "concept_vectors").glob("*.safetensors"))) == 2


FLIPPED = ('{"positive": "The day was awful.", "negative": "The day was lovely."}\n'
           '{"positive": "The food was bland.", "negative": "The food was tasty."}\n')


def _entries_by_layer(folder, leaving_out: dict | None = None) -> dict:
    """{block: entry file} of one kind's entries (but those in `leaving_out`), read from the key each entry records."""
    import json

    from safetensors import safe_open

    entries = {}
    for path in sorted(set(folder.glob("*.safetensors")) - set((leaving_out or {}).values())):
        with safe_open(str(path), framework="pt") as handle:
            entries[json.loads(handle.metadata()["fields"])["layer"]] = path
    return entries


def _poison_with_nan(path) -> None:
    """NaN written over the first value of an entry's data; its header (key, shape, hash) stays as it was."""
    import struct

    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
    data[start:start + 4] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(data))


def _without_hash(path) -> None:
    """The entry as a version without content hashes wrote it: the same tensor, its key, no hash."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        fields = handle.metadata()["fields"]
    save_file(load_file(str(path)), str(path), metadata={"fields": fields})
    assert json.loads(fields)


DAMAGES = {"swapped": "holds the entry of other inputs", "symlinked": "is a symbolic link",
           "nan": "does not hold what was written", "stale": "was written by an older version, without a content hash"}


def test_an_entry_that_does_not_hold_what_its_key_says_is_recorded_again(tiny_llama_dir, tiny_gpt2_dir, tmp_path,
                                                                         fresh_cache, small_inputs, caplog):
    """Another concept's vector copied over (or linked at) a concept's entry, NaN written into a states entry whose
    header is intact, an entry written without a content hash: each is found on the next read, named in a warning,
    removed and recorded again, so the rebuild's vector is the first build's."""
    import logging

    from safetensors import safe_open

    from lm_eval_contrans.cache import has_tensor

    source, target = str(tiny_llama_dir), str(tiny_gpt2_dir)
    anchors = small_inputs[1]
    first = build.build_transplant(source, target, "sentiment", source_layer=1, target_layer=2, anchors=anchors,
                                device="cpu")
    ours = _entries_by_layer(fresh_cache / "concept_vectors")
    flipped = tmp_path / "flipped.jsonl"
    flipped.write_text(FLIPPED)
    other = build.build_transplant(source, target, str(flipped), source_layer=1, target_layer=2, anchors=anchors,
                                device="cpu")
    theirs = _entries_by_layer(fresh_cache / "concept_vectors", leaving_out=ours)
    assert not torch.equal(first.source_vector, other.source_vector)
    for damage, reason in DAMAGES.items():
        victim = _entries_by_layer(fresh_cache / "anchor_states")[1] if damage == "nan" else ours[1]
        if damage == "swapped":
            victim.write_bytes(theirs[1].read_bytes())
        elif damage == "symlinked":
            victim.unlink()
            victim.symlink_to(theirs[1])
        elif damage == "nan":
            _poison_with_nan(victim)
        else:
            _without_hash(victim)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lm_eval_contrans"):
            again = build.build_transplant(source, target, "sentiment", source_layer=1, target_layer=2, anchors=anchors,
                                device="cpu")
        assert torch.equal(again.source_vector, first.source_vector) and torch.equal(again.vector, first.vector), damage
        assert f"the cache entry {victim} {reason}" in caplog.text and "recorded again" in caplog.text, caplog.text
        assert victim.is_file() and not victim.is_symlink() and theirs[1].is_file()  # a link's target stays
        with safe_open(str(victim), framework="pt") as handle:  # healed: it reads quietly now
            kind = victim.parent.name
            caplog.clear()
            assert has_tensor(kind, json.loads(handle.metadata()["fields"])) and "cache entry" not in caplog.text


def test_the_checks_of_a_read(fresh_cache, caplog):
    """Each check on its own, on bare entries: NaN with a matching hash (written by hand), a wrong rank, and an
    entry that fails again right after it was recorded afresh."""
    import logging

    from safetensors.torch import save_file

    from lm_eval_contrans.cache import ENTRY_FORMAT, _digest, _entry_path, cached_tensor, has_tensor
    from lm_eval_contrans.errors import ConTransError

    fields = {"x": 1}
    path = _entry_path("concept_vectors", fields)
    path.parent.mkdir(parents=True)
    for tensor, reason in ((torch.tensor([1.0, float("nan")]), "holds non-finite values"),
                           (torch.ones(2, 2), "holds a 2-D tensor where a concept vectors entry is 1-D")):
        save_file({"tensor": tensor}, str(path), metadata={"fields": '{"x": 1}', "format": ENTRY_FORMAT,
                                                           "sha256": _digest(tensor)})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lm_eval_contrans"):
            assert not has_tensor("concept_vectors", fields)
        assert f"the cache entry {path} {reason}" in caplog.text and not path.exists()
    with pytest.raises(ConTransError, match="^dtype: the concept vectors just recorded .* holds non-finite"):
        cached_tensor("concept_vectors", fields, lambda: torch.tensor([float("inf"), 1.0]))
    assert not path.exists()  # never cached


def test_an_entry_that_fails_again_after_it_was_recorded_afresh_stops_with_its_name(fresh_cache, monkeypatch):
    import lm_eval_contrans.cache as cache
    from lm_eval_contrans.errors import ConTransError

    real = cache._write_entry

    def write_then_tamper(path, tensor, kind, fields):
        real(path, tensor, kind, fields)
        _poison_with_nan(path)

    monkeypatch.setattr(cache, "_write_entry", write_then_tamper)
    with pytest.raises(ConTransError, match="^CONTRANS_CACHE: the cache entry .*concept_vectors/.* does not hold what "
                                            "was written .* right after it was recorded again"):
        cache.cached_tensor("concept_vectors", {"x": 2}, lambda: torch.ones(3))
