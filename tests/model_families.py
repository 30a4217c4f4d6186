"""Tiny random models of many decoder families in the installed transformers, for the family tests.

One shared byte-level BPE tokenizer (conftest) serves them all. Each entry: the config's
model_type and what that family needs beyond the common small sizes (None drops a common field).
"""

from __future__ import annotations

from pathlib import Path

COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=512, tie_word_embeddings=False,
              initializer_range=0.3)
MOE = dict(num_experts=4, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
           shared_expert_intermediate_size=16)

FAMILIES: dict[str, dict] = {
    "llama": {}, "mistral": {}, "mixtral": MOE, "qwen2": {}, "qwen2_moe": MOE, "qwen3": {}, "qwen3_moe": MOE,
    "gemma": {}, "gemma2": {}, "gemma3_text": {}, "gemma3": {}, "phi": {}, "phi3": {}, "gpt2": {}, "gpt_neox": {},
    "opt": dict(word_embed_proj_dim=16),  # OPT-350m's shape: narrower embeddings projected into the blocks
    "bloom": {}, "falcon": dict(head_dim=None), "mpt": {}, "stablelm": {}, "starcoder2": {}, "olmo": {},
    "olmo2": {}, "cohere": {}, "granite": {}, "granitemoe": MOE, "glm4": {}, "smollm3": {},
    "gptj": dict(rotary_dim=4), "codegen": dict(rotary_dim=4), "gpt_neo": dict(attention_types=[[["global", "local"], 1]],
                                                                               num_layers=2),
    # state-space and hybrid families
    "mamba": dict(state_size=4), "mamba2": dict(num_heads=8, head_dim=8, expand=2, n_groups=1, state_size=4, chunk_size=16),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=2,
                  num_experts_per_tok=1, mamba_d_state=4, mamba_dt_rank=4, mamba_expand=2),
    "bamba": dict(mamba_n_heads=8, mamba_d_head=8, mamba_expand=2, mamba_n_groups=1, mamba_d_state=4,
                  mamba_chunk_size=16, attn_layer_indices=[1]),
    "falcon_h1": dict(mamba_d_ssm=64, mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=4,
                      mamba_chunk_size=16),
    "lfm2": {},
    "qwen3_next": dict(layer_types=["linear_attention", "full_attention"], linear_num_value_heads=4,
                       linear_num_key_heads=2, linear_key_head_dim=8, linear_value_head_dim=8, **MOE),
    "qwen3_5_text": dict(layer_types=["linear_attention", "full_attention"], linear_num_value_heads=4,
                         linear_num_key_heads=2, linear_key_head_dim=8, linear_value_head_dim=8),
    "gemma4_text": {},
    "openai-gpt": {},  # its blocks return a list, not a tuple
}


def tiny_config(family: str, vocab_size: int, special_id: int, extra: dict | None = None):
    """The family's config at the common tiny sizes, with its entry above (none for a family not listed,
    as scripts/family_sweep.py tries) and `extra` fields."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fields = {**COMMON, "vocab_size": vocab_size, "pad_token_id": special_id, "bos_token_id": special_id,
              "eos_token_id": special_id}
    for key, value in {**FAMILIES.get(family, {}), **(extra or {})}.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    if family == "gemma3":  # the multimodal ForConditionalGeneration, loaded for text
        text = {key: value for key, value in fields.items() if key != "tie_word_embeddings"}
        return CONFIG_MAPPING[family](
            text_config=text, tie_word_embeddings=False, mm_tokens_per_image=4,
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=28, patch_size=14),
            boi_token_index=vocab_size, eoi_token_index=vocab_size + 1, image_token_index=vocab_size + 2)
    return CONFIG_MAPPING[family](**fields)


def save_tiny_model(family: str, tokenizer, folder: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    special = tokenizer.eos_token_id
    vocab = len(tokenizer) + (3 if family == "gemma3" else 0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab, special)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
