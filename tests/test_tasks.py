"""Shipped tasks run end to end through `lm_eval` on tiny models, and match lm-eval's references."""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval.tasks
import pytest

from test_cli import BIN, lm_eval_results, run

pytestmark = pytest.mark.cli
DATA = Path(__file__).resolve().parent / "data"
LM_EVAL_TASKS = Path(lm_eval.tasks.__file__).parent


def test_honesty_tasks_equal_lm_evals_truthfulqa_on_the_same_file(tiny_llama_dir, tmp_path):
    data = DATA / "tiny_truthfulqa.jsonl"
    builtin = tmp_path / "builtin"
    builtin.mkdir()
    for kind in ("mc1", "mc2"):
        (builtin / f"local_truthfulqa_{kind}.yaml").write_text(
            f"include: {LM_EVAL_TASKS / 'truthfulqa' / f'truthfulqa_{kind}.yaml'}\n"
            f"task: local_truthfulqa_{kind}\ntag: []\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {data}\n")
    output = tmp_path / "out"
    result = run([str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={tiny_llama_dir}",
                  "--tasks", "contrans_honesty_mc1,contrans_honesty_mc2,local_truthfulqa_mc1,local_truthfulqa_mc2",
                  "--include_path", str(builtin), "--metadata", json.dumps({"truthfulqa_data": str(data)}),
                  "--device", "cpu", "--output_path", str(output)], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    scores = {task: values["acc,none"] for task, values in lm_eval_results(output)["results"].items()}
    assert scores["contrans_honesty_mc1"] == scores["local_truthfulqa_mc1"]
    assert scores["contrans_honesty_mc2"] == scores["local_truthfulqa_mc2"]
    assert 0 < scores["contrans_honesty_mc2"] < 1


def test_sentiment_task_runs_under_contrans_and_moves_with_alpha(tiny_llama_dir, tiny_gpt2_dir, small_inputs, tmp_path):
    concept, anchors = small_inputs  # the task is under test here, not the shipped corpus
    margins = {}
    for alpha in (-20, 20):
        output = tmp_path / f"out{alpha}"
        result = run([str(BIN / "lm_eval"), "--model", "contrans", "--model_args",
                      f"source={tiny_llama_dir},target={tiny_gpt2_dir},concept={concept},anchors={anchors},alpha={alpha}",
                      "--tasks", "contrans_sentiment", "--limit", "8", "--device", "cpu",
                      "--output_path", str(output)], tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
        values = lm_eval_results(output)["results"]["contrans_sentiment"]
        assert {"acc,none", "acc_norm,none", "margin,none"} <= set(values)
        margins[alpha] = values["margin,none"]
    assert margins[-20] != margins[20]


def test_sentiment_data_override(tiny_gpt2_dir, tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"prompt": "The tea was", "positive": " lovely", "negative": " awful"}) + "\n")
    output = tmp_path / "out"
    result = run([str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={tiny_gpt2_dir}",
                  "--tasks", "contrans_sentiment", "--metadata", json.dumps({"sentiment_data": str(data)}),
                  "--device", "cpu", "--output_path", str(output), "--log_samples"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    samples = sorted(output.rglob("samples_contrans_sentiment_*.jsonl"))[-1].read_text().splitlines()
    assert len(samples) == 1 and json.loads(samples[0])["doc"]["prompt"] == "The tea was"


def test_emotion_tasks_hold_other_and_own_scenarios(tiny_llama_dir, tmp_path):
    output = tmp_path / "out"
    result = run([str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={tiny_llama_dir}",
                  "--tasks", "contrans_emotion_sadness,contrans_emotion_sadness_own", "--device", "cpu",
                  "--output_path", str(output), "--log_samples"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    results = lm_eval_results(output)
    assert results["n-samples"]["contrans_emotion_sadness"]["effective"] == 50  # 10 scenarios x 5 other emotions
    assert results["n-samples"]["contrans_emotion_sadness_own"]["effective"] == 10
    samples = [json.loads(line) for line in
               sorted(output.rglob("samples_contrans_emotion_sadness_2*.jsonl"))[-1].read_text().splitlines()]
    docs = [sample["doc"] for sample in sorted(samples, key=lambda sample: sample["doc_id"])]
    others = {"happiness", "anger", "fear", "disgust", "surprise"}
    assert {doc["emotion"] for doc in docs} == others and all(doc["target"] == 1 for doc in docs)
    # interleaved: any --limit prefix is a balanced mix of the other emotions
    assert {doc["emotion"] for doc in docs[:5]} == others


def test_toxicity_task_on_a_local_toxigen_layout(tiny_gpt2_dir, tmp_path):
    root = tmp_path / "toxigen"
    (root / "prompts").mkdir(parents=True)
    (root / "demonstrations" / "race").mkdir(parents=True)
    # stand-in sentences: the layout matters here, not the content
    (root / "prompts" / "hate_asian_1k.txt").write_text("- statement a1\\n- statement a2\\n-\n- statement a3\\n-\n")
    (root / "prompts" / "neutral_asian_1k.txt").write_text("- neutral n1\\n- neutral n2\\n-\n")
    (root / "demonstrations" / "race" / "neutral_asian_sentences.txt").write_text("neutral n1\nneutral n9\n")
    (root / "demonstrations" / "race" / "hate_asian_sentences.txt").write_text("statement a1\nstatement a7\n")
    output = tmp_path / "out"
    result = run([str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={tiny_gpt2_dir}",
                  "--tasks", "contrans_toxicity", "--metadata", json.dumps({"toxigen_data": str(root)}),
                  "--device", "cpu", "--output_path", str(output), "--log_samples"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    values = lm_eval_results(output)["results"]["contrans_toxicity"]
    assert {"acc,none", "acc_norm,none", "margin,none"} <= set(values)
    docs = [json.loads(line)["doc"] for line in
            sorted(output.rglob("samples_contrans_toxicity_*.jsonl"))[-1].read_text().splitlines()]
    assert len(docs) == 3
    for doc in docs:  # candidates never repeat a statement of their own prompt
        assert doc["neutral"] not in doc["prompt"] and doc["hateful"] not in doc["prompt"]
    assert docs[0]["prompt"] == "- statement a1\n- statement a2\n-"


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory, tiny_llama_dir):
    """A tiny random sentiment classifier (labels NEGATIVE / POSITIVE) with the word-level tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, num_labels=2,
                         id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                         initializer_range=0.5)
    folder = tmp_path_factory.mktemp("tiny-classifier")
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_generation_task_scores_continuations_with_the_classifier(tiny_llama_dir, tiny_classifier_dir, tmp_path):
    from transformers import pipeline

    output = tmp_path / "out"
    metadata = {"classifier": str(tiny_classifier_dir), "classifier_label": "POSITIVE"}
    result = run([str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={tiny_llama_dir}",
                  "--tasks", "contrans_sentiment_gen", "--limit", "3", "--metadata", json.dumps(metadata),
                  "--gen_kwargs", "max_gen_toks=6", "--device", "cpu", "--output_path", str(output),
                  "--log_samples"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    samples = [json.loads(line) for line in
               sorted(output.rglob("samples_contrans_sentiment_gen_*.jsonl"))[-1].read_text().splitlines()]
    classify = pipeline("text-classification", model=str(tiny_classifier_dir), top_k=None, device="cpu")
    for sample in samples:
        text = sample["filtered_resps"][0]
        scores = classify([text if text.strip() else "."])[0]  # one input -> its list of label scores
        expected = {s["label"]: s["score"] for s in scores}["POSITIVE"]
        assert sample["positive"] == pytest.approx(expected, abs=1e-6)
    mean = lm_eval_results(output)["results"]["contrans_sentiment_gen"]["positive,none"]
    assert mean == pytest.approx(sum(s["positive"] for s in samples) / len(samples))


def test_generation_task_names_a_missing_label(tiny_llama_dir, tiny_classifier_dir, tmp_path):
    metadata = {"classifier": str(tiny_classifier_dir), "classifier_label": "JOYFUL"}
    result = run([str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={tiny_llama_dir}",
                  "--tasks", "contrans_sentiment_gen", "--limit", "1", "--metadata", json.dumps(metadata),
                  "--gen_kwargs", "max_gen_toks=2", "--device", "cpu"], tmp_path)
    assert result.returncode != 0 and "has no label 'JOYFUL'" in result.stderr


def test_facts_task_runs_and_takes_a_local_file(tiny_gpt2_dir, tmp_path):
    shipped = [json.loads(line) for line in
               (Path(__file__).resolve().parents[1] / "tasks" / "contrans_facts" / "facts.jsonl").read_text().splitlines()]
    assert len(shipped) >= 100
    assert all(len(set(item["choices"])) == 4 and 0 <= item["answer"] < 4 for item in shipped)
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"prompt": "The capital of France is", "choices": ["Paris", "Rome", "Oslo", "Lima"],
                                "answer": 0}) + "\n")
    for metadata, expected in (({}, 5), ({"facts_data": str(data)}, 1)):
        output = tmp_path / f"out{expected}"
        result = run([str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={tiny_gpt2_dir}",
                      "--tasks", "contrans_facts", "--limit", "5", "--metadata", json.dumps(metadata),
                      "--device", "cpu", "--output_path", str(output), "--log_samples"], tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
        results = lm_eval_results(output)
        assert results["n-samples"]["contrans_facts"]["effective"] == expected
        samples = [json.loads(line) for line in sorted(output.rglob("samples_contrans_facts_*.jsonl"))[-1].read_text().splitlines()]
        # accuracy: the share of documents whose answer has the highest loglikelihood of the four
        chosen = [max(range(4), key=lambda i: float(sample["resps"][i][0][0])) == int(sample["target"]) for sample in samples]
        assert results["results"]["contrans_facts"]["acc,none"] == pytest.approx(sum(chosen) / expected)
