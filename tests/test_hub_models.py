"""Models named by hub id, at a revision, and GGUF files in hub repositories: read offline from a
Hugging Face hub cache made in the test session (the hub itself is not reachable from CI)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from conftest import publish_to_hub_cache as publish
from lm_eval_contrans import loading
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import ModelSpec, model_identity, parse_model_spec

SOURCE, TARGET = "contrans-test/tiny-llama", "contrans-test/tiny-gpt2"
MAIN, OLDER = "b" * 40, "c" * 40  # the target's two commits: main, and tag v1 with other weights


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_llama_dir, tiny_gpt2_dir) -> Path:
    from transformers import AutoModelForCausalLM

    cache = tmp_path_factory.mktemp("hub-cache")
    publish(cache, SOURCE, tiny_llama_dir, "a" * 40, ["main"])
    publish(cache, TARGET, tiny_gpt2_dir, MAIN, ["main"])
    older = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    with torch.no_grad():
        for parameter in older.parameters():
            parameter.mul_(0.5)
    folder = tmp_path_factory.mktemp("older-gpt2")
    older.save_pretrained(folder)
    for tokenizer_file in tiny_gpt2_dir.glob("*token*"):
        shutil.copy(tokenizer_file, folder)
    publish(cache, TARGET, folder, OLDER, ["v1"])
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch) -> Path:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loading.hub._hub_commit.cache_clear()
    loading.release_read_only_tokenizers()
    yield hub_cache
    loading.hub._hub_commit.cache_clear()
    loading.release_read_only_tokenizers()


@pytest.mark.parametrize("written, expected", [
    ("org/model", ModelSpec("org/model", "org/model")),
    ("org/model@step3000", ModelSpec("org/model@step3000", "org/model", revision="step3000")),
    ("org/model@refs/pr/1", ModelSpec("org/model@refs/pr/1", "org/model", revision="refs/pr/1")),
    ("org/repo-GGUF/model.Q8_0.gguf", ModelSpec("org/repo-GGUF/model.Q8_0.gguf", "org/repo-GGUF", "model.Q8_0.gguf")),
    ("org/repo/sub/m.gguf@v2", ModelSpec("org/repo/sub/m.gguf@v2", "org/repo", "sub/m.gguf", revision="v2")),
])
def test_hub_names_are_read_as_users_write_them(written, expected):
    assert parse_model_spec(written, "target") == expected


def test_local_paths_stay_local_and_a_missing_local_gguf_is_named(tmp_path):
    folder = tmp_path / "model@v2"  # an @ in a folder that exists is part of its name
    folder.mkdir()
    assert parse_model_spec(str(folder), "target") == ModelSpec(str(folder), str(folder))
    for missing in ("missing.gguf", "nowhere/x.gguf", str(tmp_path / "a" / "b" / "c.gguf"), "./a/b/c.gguf"):
        with pytest.raises(ConTransError, match="^source: GGUF file not found"):
            parse_model_spec(missing, "source")


def test_revision_model_arg_joins_the_spec_and_refuses_a_contradiction(tmp_path):
    spec = parse_model_spec("org/model", "target")
    assert spec.at_revision("v1", "target") == ModelSpec("org/model@v1", "org/model", revision="v1")
    assert parse_model_spec("org/model@v1", "target").at_revision("v1", "target").name == "org/model@v1"
    with pytest.raises(ConTransError, match="two revisions"):
        parse_model_spec("org/model@v1", "target").at_revision("v2", "target")
    local = parse_model_spec(str(tmp_path), "target")
    assert local.at_revision("main", "target") == local  # as from_pretrained ignores it for a folder


def test_a_hub_models_cache_identity_names_the_commit_its_revision_resolves_to(offline_hub):
    main, older = model_identity(parse_model_spec(TARGET, "target")), model_identity(parse_model_spec(f"{TARGET}@v1", "t"))
    assert (main["commit"], older["commit"]) == (MAIN, OLDER)
    assert model_identity(parse_model_spec(f"{TARGET}@{OLDER}", "target"))["commit"] == OLDER  # a commit as revision
    assert model_identity(parse_model_spec(f"{TARGET}@main", "target"))["commit"] == MAIN


def test_a_peft_adapter_on_the_hub_is_named_by_its_commit_too(offline_hub, tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text("{}")  # an adapter repository has no config.json
    publish(offline_hub, "contrans-test/lora", tmp_path / "lora", "e" * 40, ["main"])
    from lm_eval_contrans.transplant_args import engine_target_spec as _target_spec

    identity = model_identity(_target_spec(TARGET, None, {"peft": "contrans-test/lora"}))
    assert identity["commit"] == MAIN and identity["peft"]["commit"] == "e" * 40


def test_each_revision_is_built_from_its_own_weights(offline_hub, small_inputs):
    """Before revisions were part of a model's identity, the second build reused the first one's
    cached target states: the same map for other weights."""
    from lm_eval_contrans.pipeline import build_transplant

    concept, anchors = small_inputs
    options = dict(anchors=anchors, device="cpu", source_layer=2)
    main = build_transplant(SOURCE, TARGET, concept, **options)
    older = build_transplant(SOURCE, f"{TARGET}@v1", concept, **options)
    by_folder = build_transplant(SOURCE, str(offline_hub / "models--contrans-test--tiny-gpt2" / "snapshots" / OLDER),
                                 concept, **options)
    assert older.target == f"{TARGET}@v1" and main.target == TARGET
    assert not torch.allclose(main.map_weight, older.map_weight)
    torch.testing.assert_close(older.map_weight, by_folder.map_weight)  # v1's weights, read through the hub's cache
    torch.testing.assert_close(older.vector, by_folder.vector)


def test_lm_eval_revision_arg_steers_that_revision(offline_hub, small_inputs):
    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    concept, anchors = small_inputs
    lm = ConTransLM(source=SOURCE, target=TARGET, revision="v1", concept=concept, anchors=anchors, source_layer=2,
                    device="cpu", batch_size=2)
    assert lm.transplant.target == f"{TARGET}@v1"
    older = loading.load_model(str(offline_hub / "models--contrans-test--tiny-gpt2" / "snapshots" / OLDER), device="cpu")[0]
    torch.testing.assert_close(lm.model.get_input_embeddings().weight, older.get_input_embeddings().weight)  # HFLM loaded v1
    with pytest.raises(ConTransError, match="two revisions"):
        ConTransLM(source=SOURCE, target=f"{TARGET}@main", revision="v1", concept=concept, anchors=anchors, device="cpu")


def test_a_gguf_in_a_hub_repository_is_read_from_the_hubs_cache(offline_hub, tmp_path):
    (tmp_path / "empty").mkdir()
    snapshot = publish(offline_hub, "contrans-test/some-GGUF", tmp_path / "empty", "d" * 40, ["main"])
    (snapshot / "model.Q8_0.gguf").write_bytes(b"GGUF" + bytes(60))
    spec = parse_model_spec("contrans-test/some-GGUF/model.Q8_0.gguf", "target")
    assert loading.gguf_path(spec) == snapshot / "model.Q8_0.gguf"
    identity = model_identity(spec)["gguf"]  # named by its content: another revision with other bytes is another model
    assert identity == {"file": "model.Q8_0.gguf", "size": 64, "sha256": hashlib.sha256(b"GGUF" + bytes(60)).hexdigest()}
    with pytest.raises(ConTransError, match="GGUF file not found: contrans-test/some-GGUF/other.gguf is not a local file"):
        loading.gguf_path(parse_model_spec("contrans-test/some-GGUF/other.gguf", "target"))


def test_lm_evals_gguf_file_and_revision_args_name_the_targets_weights(tmp_path):
    """`--model hf` users write pretrained=<repo>,gguf_file=<file>,revision=<rev>: the same args name the target here
    (taken out of what goes to HFLM, which loads the de-quantized folder instead)."""
    from lm_eval_contrans.transplant_args import engine_target_spec as _target_spec

    hf_args = {"gguf_file": "m.Q8_0.gguf", "revision": "v1", "dtype": "bfloat16"}
    assert _target_spec("org/repo-GGUF", None, hf_args) == ModelSpec(
        "org/repo-GGUF/m.Q8_0.gguf@v1", "org/repo-GGUF", "m.Q8_0.gguf", revision="v1")
    assert hf_args == {"dtype": "bfloat16"}
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert _target_spec(str(tmp_path), None, {"gguf_file": "m.gguf"}) == parse_model_spec(str(tmp_path / "m.gguf"), "t")
    with pytest.raises(ConTransError, match="^gguf_file: .* already names a GGUF file"):
        _target_spec(str(tmp_path / "m.gguf"), None, {"gguf_file": "m.gguf"})


@pytest.mark.cli
def test_lm_eval_cli_with_hub_ids_and_lm_evals_revision_arg(hub_cache, small_inputs, task_dir, tmp_path):
    import json
    import os
    import subprocess
    import sys

    concept, anchors = small_inputs
    output = tmp_path / "out"
    model_args = f"source={SOURCE},target={TARGET},revision=v1,concept={concept},anchors={anchors},source_layer=2,alpha=20"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lm_eval"), "--model", "contrans", "--model_args", model_args,
         "--tasks", "contrans_tiny_choice", "--include_path", str(task_dir), "--limit", "2", "--device", "cpu",
         "--output_path", str(output)],
        cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    config = json.loads(sorted(output.rglob("results_*.json"))[-1].read_text())["config"]
    assert config["contrans"]["target"] == f"{TARGET}@v1" and config["model_revision"] == "v1"


def test_a_revision_or_model_that_is_not_there_is_named_in_one_line(offline_hub, small_inputs, monkeypatch):
    """Before, transformers' traceback ("couldn't connect to the hub ..." offline), from deep in a load."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from lm_eval_contrans.hf.lm_eval_model import ConTransLM

    concept, anchors = small_inputs
    with pytest.raises(ConTransError, match=rf"^target: {TARGET}@v9: the hub cannot be reached, and the local hub cache holds "
                                            rf"{TARGET} at main, v1, not at 'v9'$"):
        ConTransLM(source=SOURCE, target=TARGET, revision="v9", concept=concept, anchors=anchors, device="cpu")
    with pytest.raises(ConTransError, match="^source: contrans-test/nowhere: no such local folder, and the hub cannot be reached"):
        ConTransLM(source="contrans-test/nowhere", target=TARGET, concept=concept, anchors=anchors, device="cpu")
    from lm_eval_contrans.pipeline import build_transplant  # what `contrans build` runs

    with pytest.raises(ConTransError, match=rf"^target: {TARGET}@v9: the hub cannot be reached"):
        build_transplant(SOURCE, f"{TARGET}@v9", concept, anchors=anchors, device="cpu", target_layer="auto")
    with pytest.raises(ConTransError, match=r"^source: contrans-test/tiny-llama@v9: the hub cannot be reached"):
        build_transplant(f"{SOURCE}@v9", TARGET, concept, anchors=anchors, device="cpu")
    assert model_identity(parse_model_spec(f"{TARGET}@{OLDER}", "target"))["commit"] == OLDER  # a commit in the cache is there

    import httpx2  # what huggingface_hub's errors carry: the hub's answer

    answer = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co"))
    for error, expected in ((RevisionNotFoundError("", response=answer), "^target: org/model has no revision 'v9' on the hub"),
                            (RepositoryNotFoundError("", response=answer), "^target: org/model@v9: no such local folder, and no such model")):
        def answering(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr("huggingface_hub.hf_hub_download", answering)
        loading.hub._hub_commit.cache_clear()
        with pytest.raises(ConTransError, match=expected):
            model_identity(parse_model_spec("org/model@v9", "target"))
