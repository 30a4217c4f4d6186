"""The paths lm-eval users walk out of habit, in process through `simple_evaluate` with model args as
lm-eval parses them from a string: its default device (cuda:0, on a CPU-only machine too), devices
that do not exist here, `batch_size auto` and `auto:N`, `dtype=auto|bfloat16|float16`,
`parallelize=True`, `peft=`, `delta=`, `tokenizer=`, a ConTransLM instance, and the registry."""

from __future__ import annotations

import logging

import pytest
import torch

from lm_eval_contrans.hf.lm_eval_model import ConTransLM


@pytest.fixture(scope="module")
def task_manager(task_dir):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir))


@pytest.fixture(scope="module")
def model_args(tiny_llama_dir, tiny_gpt2_dir, small_inputs) -> str:
    concept, anchors = small_inputs
    return f"source={tiny_llama_dir},target={tiny_gpt2_dir},concept={concept},anchors={anchors},alpha=4"


def evaluate(task_manager, model="contrans", model_args=None, **options) -> list[list[float]]:
    """The loglikelihoods lm-eval logged for the tiny multiple-choice task, one row per document."""
    import lm_eval

    results = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["contrans_tiny_choice"],
                                      task_manager=task_manager, limit=4, log_samples=True, **options)
    return [[response[0][0] for response in sample["resps"]] for sample in results["samples"]["contrans_tiny_choice"]]


@pytest.fixture(scope="module")
def reference(task_manager, model_args) -> torch.Tensor:
    return torch.tensor(evaluate(task_manager, model_args=model_args, device="cpu", batch_size=1))


@pytest.mark.parametrize("device", [None, "cuda:0", "cuda:1", "cpu"])
def test_any_device_argument_evaluates_where_the_model_runs(task_manager, model_args, reference, device):
    # lm-eval passes device="cuda:0" when --device is not given; on a CPU-only machine the build
    # used to load the source there and fail ("Torch not compiled with CUDA enabled")
    scores = torch.tensor(evaluate(task_manager, model_args=model_args, device=device, batch_size=1))
    tolerance = 0 if not torch.cuda.is_available() else 1e-2
    torch.testing.assert_close(scores, reference, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("batch_size", [3, "auto", "auto:2"])
def test_batch_sizes_give_the_same_scores(task_manager, model_args, reference, batch_size):
    scores = torch.tensor(evaluate(task_manager, model_args=model_args, device="cpu", batch_size=batch_size))
    torch.testing.assert_close(scores, reference, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("dtype", "expected"), [("auto", torch.float32), ("bfloat16", torch.bfloat16),
                                                  ("float16", torch.float16)])
def test_dtypes_load_the_target_and_build_in_that_dtype(task_manager, model_args, reference, dtype, expected):
    from lm_eval.api.registry import get_model

    lm = get_model("contrans").create_from_arg_string(f"{model_args},dtype={dtype}", {"device": "cpu", "batch_size": 2})
    assert lm.model.dtype == expected
    assert torch.isfinite(lm.transplant.vector).all() and lm.transplant.vector.norm() > 0
    scores = torch.tensor(evaluate(task_manager, model=lm))
    assert torch.isfinite(scores).all()
    # half precision changes the numbers a little, not the picture
    torch.testing.assert_close(scores, reference, atol=0.5 if expected != torch.float32 else 1e-4, rtol=0.05)


def test_parallelize_true_runs_on_what_the_machine_has(task_manager, model_args, reference):
    scores = torch.tensor(evaluate(task_manager, model_args=f"{model_args},parallelize=True", batch_size=1))
    torch.testing.assert_close(scores, reference, atol=1e-2 if torch.cuda.is_available() else 1e-5, rtol=1e-4)


def test_registry_and_an_instance_passed_to_simple_evaluate(task_manager, model_args, reference):
    from lm_eval.api.registry import get_model

    assert get_model("contrans") is ConTransLM
    lm = get_model("contrans").create_from_arg_string(model_args, {"device": "cpu", "batch_size": 1})
    assert lm.alpha == 4.0 and isinstance(lm.alpha, float)  # "4" from the string, a number here
    torch.testing.assert_close(torch.tensor(evaluate(task_manager, model=lm)), reference, atol=1e-5, rtol=1e-5)


def test_device_that_does_not_exist_says_so_once(caplog):
    from lm_eval_contrans.loading import evaluation_device

    with caplog.at_level(logging.INFO, logger="lm_eval_contrans"):
        chosen = evaluation_device("cuda:7")
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert chosen == ("cuda" if torch.cuda.is_available() else "cpu")
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert "cuda:7" in caplog.records[0].getMessage()


@pytest.fixture(scope="module")
def lora_adapter(tiny_gpt2_dir, tmp_path_factory):
    """A LoRA adapter for the tiny target, initialised so that it changes the model's states."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir),
                           LoraConfig(r=4, target_modules=["c_attn", "c_fc"], init_lora_weights=False))
    folder = tmp_path_factory.mktemp("lora")
    model.save_pretrained(folder)
    return folder


def test_peft_adapter_names_the_targets_states_and_the_builds_own_load_applies_it(tiny_llama_dir, tiny_gpt2_dir,
                                                                                small_inputs, lora_adapter):
    """HFLM applies peft= to the target the transplant is fitted to; the cached target states belong to
    the adapted weights (before, a build with the adapter read the plain target's states from the cache)."""
    from lm_eval_contrans.loading import load_model, parse_model_spec
    from lm_eval_contrans.transplant_args import engine_target_spec as _target_spec

    concept, anchors = small_inputs
    args = dict(source=str(tiny_llama_dir), target=str(tiny_gpt2_dir), concept=concept, anchors=anchors, device="cpu")
    plain = ConTransLM(**args).transplant
    adapted_lm = ConTransLM(**args, peft=str(lora_adapter))
    adapted = adapted_lm.transplant
    assert not torch.allclose(plain.map_weight, adapted.map_weight)
    torch.testing.assert_close(ConTransLM(**args, peft=str(lora_adapter)).transplant.map_weight, adapted.map_weight)

    spec = _target_spec(str(tiny_gpt2_dir), None, {"peft": str(lora_adapter)})
    assert spec.adapter == ("peft", str(lora_adapter)) and spec != parse_model_spec(str(tiny_gpt2_dir), "target")
    built_here, _ = load_model(spec, device="cpu")  # the build's own load (target_layer=auto, contrans build)
    ids = torch.tensor([[5, 17, 33, 60]])
    with torch.no_grad():
        torch.testing.assert_close(built_here(input_ids=ids).logits, adapted_lm.model(input_ids=ids).logits)


def test_delta_weights_are_added_by_the_builds_own_load(tiny_gpt2_dir, tmp_path):
    """delta= (HFLM adds a model's weights to the target's): the build's own loads add them the same way,
    and the states are keyed on them."""
    from transformers import AutoModelForCausalLM

    from lm_eval_contrans.loading import load_model, model_identity, parse_model_spec
    from lm_eval_contrans.transplant_args import engine_target_spec as _target_spec

    delta = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    with torch.no_grad():
        for parameter in delta.parameters():
            parameter.fill_(0.25)
    delta.save_pretrained(tmp_path / "delta")
    spec = _target_spec(str(tiny_gpt2_dir), None, {"delta": str(tmp_path / "delta")})
    plain, _ = load_model(parse_model_spec(str(tiny_gpt2_dir), "target"), device="cpu")
    shifted, _ = load_model(spec, device="cpu")
    name = "transformer.h.0.mlp.c_fc.weight"
    torch.testing.assert_close(shifted.state_dict()[name], plain.state_dict()[name] + 0.25)
    assert model_identity(spec)["delta"]["name"] == str((tmp_path / "delta").resolve())


def test_tokenizer_arg_names_the_targets_states(tiny_llama_dir, tiny_gpt2_dir, small_inputs):
    """tokenizer= (HFLM reads the target's texts with another tokenizer): the build pairs and records
    the target's anchor tokens with it, and caches them apart from the model's own tokenizer's."""
    concept, anchors = small_inputs
    args = dict(source=str(tiny_gpt2_dir), target=str(tiny_llama_dir), concept=concept, anchors=anchors, device="cpu")
    other = ConTransLM(**args, tokenizer=str(tiny_gpt2_dir))  # byte-level BPE ids fit the Llama's larger vocabulary
    own = ConTransLM(**args)
    assert type(other.tokenizer) is not type(own.tokenizer) or len(other.tokenizer) != len(own.tokenizer)
    assert not torch.allclose(other.transplant.map_weight, own.transplant.map_weight)
    torch.testing.assert_close(ConTransLM(**args, tokenizer=str(tiny_gpt2_dir)).transplant.map_weight,
                               other.transplant.map_weight)
