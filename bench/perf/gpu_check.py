"""GPU check for model-parallel steering in bfloat16 (issue 7), run on a lent GPU machine.

The packaged GGUF pair cannot travel to that machine (it has no network and takes at most 64 MiB
of files), so the check builds random-weight models with the packaged pair's real shapes:
source Llama (30 blocks, hidden 576), target Gemma 3 (18 blocks, hidden 640), in bfloat16.
It checks, on the GPU:
1. a full build (plain-Python API) with both models on cuda in bfloat16;
2. the target loaded with `device_map="auto"` (what `parallelize=True` uses) and with a device map
   that splits the blocks between cuda:0 and the CPU: the hook adds alpha*v on the steered
   block's own device and dtype (logits equal adding by hand);
3. forward throughput, steered vs not, interleaved (the ratio of issue 5's eval-overhead target).

Run: python bench/perf/gpu_check.py                                  (random weights, the pair's shapes)
     python bench/perf/gpu_check.py --source S.gguf --target T.gguf    (the packaged pair itself, when its
     files have been carried to the machine; any model ids or folders work too)
     (where the package is not installed, as on a lent machine: PYTHONPATH=. python bench/perf/gpu_check.py ...)
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import torch

from _timing import add_json_argument, write_json

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("CONTRANS_CACHE", tempfile.mkdtemp(prefix="contrans-gpu-"))


def word_level_tokenizer():
    """A word-level tokenizer with BOS over the anchors, the sentiment set and the tests' tiny task: a copy
    of tests/conftest.py's `_word_level_tokenizer` (same texts, same vocabulary), as a benchmark does not
    import the tests."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    texts = [line for relative in ("lm_eval_contrans/data/neutral_anchors.txt", "concept_sets/sentiment.yaml",
                                   "tests/data/tiny_task.jsonl") for line in (REPO / relative).read_text().splitlines()]
    words = sorted({word for text in texts for word in re.findall(r"\w+|[^\w\s]", text)})
    vocab = {token: index for index, token in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                             special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left", model_max_length=512)


def main() -> None:
    import argparse

    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default=None)
    parser.add_argument("--target", default=None)
    add_json_argument(parser)
    args = parser.parse_args()

    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    if args.source and args.target:
        figures = real_check(args.source, args.target)
        write_json(args.json, figures)
        return
    tokenizer = word_level_tokenizer()
    root = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    source = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536,
                                          num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                          bos_token_id=2, eos_token_id=3, pad_token_id=0))
    target = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=640, intermediate_size=2048,
                                                num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                                                head_dim=256, bos_token_id=2, eos_token_id=3, pad_token_id=0))
    for name, model in (("source", source), ("target", target)):
        model.to(torch.bfloat16).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    del source, target

    write_json(args.json, checks(str(root / "source"), str(root / "target"), root / "target", tokenizer))


def real_check(source: str, target: str) -> dict:
    from transformers import AutoTokenizer

    from lm_eval_contrans.loading import parse_model_spec, pretrained_path

    start = time.perf_counter()
    folder = Path(pretrained_path(parse_model_spec(target, "target")))  # de-quantizes a GGUF file once
    pretrained_path(parse_model_spec(source, "source"))
    print(f"0. de-quantized both GGUF files in {time.perf_counter() - start:.1f} s", flush=True)
    return checks(source, target, folder, AutoTokenizer.from_pretrained(folder))


def checks(source: str, target: str, target_folder: Path, tokenizer) -> dict:
    from transformers import AutoModelForCausalLM

    from lm_eval_contrans.blocks import decoder_blocks
    from lm_eval_contrans.pipeline import build_transplant
    from lm_eval_contrans.transplant import steer

    start = time.perf_counter()
    transplant = build_transplant(source, target, "sentiment", dtype="bfloat16", device="cuda")
    print(f"1. build on cuda, bfloat16: {time.perf_counter() - start:.1f} s; blocks {transplant.source_layer} -> "
          f"{transplant.target_layer}; held-out R^2 {transplant.heldout_r2:.3f}", flush=True)
    vector_to_add = transplant.steering_vector()  # alpha in the artifact's unit, as ConTransLM adds it

    ids = tokenizer(["The hotel room was lovely and the staff were kind ."] * 4, return_tensors="pt")["input_ids"]
    layer, alpha = transplant.target_layer, 2.0
    split_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": "cpu", "lm_head": "cpu",
                 **{f"model.layers.{i}": (0 if i < 9 else "cpu") for i in range(18)}}
    for label, device_map in (("device_map=auto", "auto"), ("blocks split cuda:0 / cpu", split_map)):
        model = AutoModelForCausalLM.from_pretrained(target_folder, device_map=device_map, dtype=torch.bfloat16)
        block = decoder_blocks(model)[layer]
        placed = getattr(model, "hf_device_map", {}).get(f"model.layers.{layer}", str(next(block.parameters()).device))
        captured = {}

        def capture(module, inputs, output):
            captured["out"] = (output[0] if isinstance(output, tuple) else output).clone()

        with torch.no_grad():
            handle = block.register_forward_hook(capture)
            plain = model(ids.to(model.device)).logits.float()
            before = captured["out"]
            handle.remove()
            with steer(model, layer, vector_to_add, alpha):
                handle = block.register_forward_hook(capture)  # after the steering hook: sees its result
                steered = model(ids.to(model.device)).logits.float()
                handle.remove()
            after = captured["out"]
        added = (after.float() - before.float())[0, 0]
        expected = (alpha * vector_to_add).to(torch.bfloat16).float().to(added.device)
        error = float((added - expected).abs().max() / expected.abs().max())
        print(f"2. {label}: block {layer} on {placed}, output dtype {after.dtype}; added vector matches "
              f"alpha*v to {error:.1e} (relative, bfloat16); logits changed by {float((steered - plain).abs().mean()):.3f}",
              flush=True)
        del model

    model = AutoModelForCausalLM.from_pretrained(target_folder, device_map="auto", dtype=torch.bfloat16)
    batch = torch.randint(4, len(tokenizer), (32, 256), device="cuda")
    vector = vector_to_add.cuda()  # placed once, as ConTransLM does: no host-to-device copy per pass
    times = {"plain": [], "steered": []}
    with torch.no_grad():
        for repeat in range(12):
            for kind in (("plain", "steered") if repeat % 2 == 0 else ("steered", "plain")):
                torch.cuda.synchronize()
                start = time.perf_counter()
                if kind == "steered":
                    with steer(model, layer, vector, alpha):
                        model(batch)
                else:
                    model(batch)
                torch.cuda.synchronize()
                if repeat >= 2:  # warm-up
                    times[kind].append(time.perf_counter() - start)
    plain_time, steered_time = sorted(times["plain"])[len(times["plain"]) // 2], sorted(times["steered"])[len(times["steered"]) // 2]
    print(f"3. forward 32 x 256 tokens, bfloat16, device_map=auto: plain {plain_time * 1e3:.2f} ms, steered "
          f"{steered_time * 1e3:.2f} ms (medians of 10); RATIO throughput steered / plain = {plain_time / steered_time:.3f}",
          flush=True)
    return {"device": torch.cuda.get_device_name(0), "plain_ms": plain_time * 1e3, "steered_ms": steered_time * 1e3,
            "ratio": plain_time / steered_time}


def render(document: dict) -> str:
    """The throughput figures of a saved run."""
    return (f"{document['device']}: forward plain {document['plain_ms']:.2f} ms, steered {document['steered_ms']:.2f} ms → "
            f"throughput ratio **{document['ratio']:.3f}**")


if __name__ == "__main__":
    main()
