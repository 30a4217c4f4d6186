"""Shipped tasks run end to end through lm-eval's evaluator on tiny models, and match lm-eval's references.

In this process (`conftest.evaluate`: what the `lm_eval` command computes; test_cli.py runs the command)."""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval.tasks
import pytest

from conftest import evaluate

pytestmark = pytest.mark.tasks
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
    output = evaluate(f"pretrained={tiny_llama_dir}", ["contrans_honesty_mc1", "contrans_honesty_mc2", "local_truthfulqa_mc1",
                      "local_truthfulqa_mc2"], include_path=str(builtin), metadata={"truthfulqa_data": str(data)})
    scores = {task: values["acc,none"] for task, values in output["results"].items()}
    assert scores["contrans_honesty_mc1"] == scores["local_truthfulqa_mc1"]
    assert scores["contrans_honesty_mc2"] == scores["local_truthfulqa_mc2"]
    assert 0 < scores["contrans_honesty_mc2"] < 1


def test_sentiment_task_runs_under_contrans_and_moves_with_alpha(tiny_llama_dir, tiny_gpt2_dir, small_inputs):
    concept, anchors = small_inputs  # the task is under test here, not the shipped corpus
    margins = {}
    for alpha in (-20, 20):
        output = evaluate(f"source={tiny_llama_dir},target={tiny_gpt2_dir},concept={concept},anchors={anchors},alpha={alpha}",
                          ["contrans_sentiment"], model="contrans", limit=8)
        values = output["results"]["contrans_sentiment"]
        assert {"acc,none", "acc_norm,none", "margin,none"} <= set(values)
        margins[alpha] = values["margin,none"]
    assert margins[-20] != margins[20]


def test_sentiment_data_override(tiny_gpt2_dir, tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"prompt": "The tea was", "positive": " lovely", "negative": " awful"}) + "\n")
    samples = evaluate(f"pretrained={tiny_gpt2_dir}", ["contrans_sentiment"],
                       metadata={"sentiment_data": str(data)})["samples"]["contrans_sentiment"]
    assert len(samples) == 1 and samples[0]["doc"]["prompt"] == "The tea was"


def test_emotion_tasks_hold_other_and_own_scenarios(tiny_llama_dir):
    results = evaluate(f"pretrained={tiny_llama_dir}", ["contrans_emotion_sadness", "contrans_emotion_sadness_own"])
    assert results["n-samples"]["contrans_emotion_sadness"]["effective"] == 50  # 10 scenarios x 5 other emotions
    assert results["n-samples"]["contrans_emotion_sadness_own"]["effective"] == 10
    samples = results["samples"]["contrans_emotion_sadness"]
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
    output = evaluate(f"pretrained={tiny_gpt2_dir}", ["contrans_toxicity"], metadata={"toxigen_data": str(root)})
    assert {"acc,none", "acc_norm,none", "margin,none"} <= set(output["results"]["contrans_toxicity"])
    docs = [sample["doc"] for sample in sorted(output["samples"]["contrans_toxicity"], key=lambda sample: sample["doc_id"])]
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


def test_generation_task_scores_continuations_with_the_classifier(tiny_llama_dir, tiny_classifier_dir):
    from transformers import pipeline

    metadata = {"classifier": str(tiny_classifier_dir), "classifier_label": "POSITIVE"}
    output = evaluate(f"pretrained={tiny_llama_dir}", ["contrans_sentiment_gen"], metadata=metadata, limit=3,
                      gen_kwargs="max_gen_toks=6")
    samples = output["samples"]["contrans_sentiment_gen"]
    classify = pipeline("text-classification", model=str(tiny_classifier_dir), top_k=None, device="cpu")
    for sample in samples:
        text = sample["filtered_resps"][0]
        scores = classify([text if text.strip() else "."])[0]  # one input -> its list of label scores
        expected = {s["label"]: s["score"] for s in scores}["POSITIVE"]
        assert sample["positive"] == pytest.approx(expected, abs=1e-6)
    mean = output["results"]["contrans_sentiment_gen"]["positive,none"]
    assert mean == pytest.approx(sum(s["positive"] for s in samples) / len(samples))


def test_generation_task_names_a_missing_label(tiny_llama_dir, tiny_classifier_dir):
    metadata = {"classifier": str(tiny_classifier_dir), "classifier_label": "JOYFUL"}
    with pytest.raises(ValueError, match="has no label 'JOYFUL'"):
        evaluate(f"pretrained={tiny_llama_dir}", ["contrans_sentiment_gen"], metadata=metadata, limit=1,
                 gen_kwargs="max_gen_toks=2")


def test_facts_task_runs_and_takes_a_local_file(tiny_gpt2_dir, tmp_path):
    shipped = [json.loads(line) for line in
               (Path(__file__).resolve().parents[1] / "tasks" / "contrans_facts" / "facts.jsonl").read_text().splitlines()]
    assert len(shipped) >= 100
    assert all(len(set(item["choices"])) == 4 and 0 <= item["answer"] < 4 for item in shipped)
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"prompt": "The capital of France is", "choices": ["Paris", "Rome", "Oslo", "Lima"],
                                "answer": 0}) + "\n")
    for metadata, expected in (({}, 5), ({"facts_data": str(data)}, 1)):
        results = evaluate(f"pretrained={tiny_gpt2_dir}", ["contrans_facts"], metadata=metadata, limit=5)
        assert results["n-samples"]["contrans_facts"]["effective"] == expected
        samples = results["samples"]["contrans_facts"]
        # accuracy: the share of documents whose answer has the highest loglikelihood of the four
        chosen = [max(range(4), key=lambda i: float(sample["resps"][i][0][0])) == int(sample["target"]) for sample in samples]
        assert results["results"]["contrans_facts"]["acc,none"] == pytest.approx(sum(chosen) / expected)
