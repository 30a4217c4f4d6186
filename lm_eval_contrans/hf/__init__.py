"""The transplant in Hugging Face transformers under lm-eval: `lm_eval --model contrans`.

- `lm_eval_model.py`: `ConTransLM`, lm-eval's HFLM with the transplant's model args and hooks;
- `scoring.py`: `FastScoringHFLM`, HFLM's loglikelihood with the scored-position window and shared contexts;
- `shared_context.py`: one pass over a context shared by several choices, its key/value cache reused;
- `lanes.py`: several steerings of one target scored in one pass.

Beside it, `vllm/` is the same transplant inside vLLM.
"""
