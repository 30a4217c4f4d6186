"""Adapters on a model's weights (HFLM's `peft=` and `delta=`), applied as HFLM applies them."""

from __future__ import annotations

import torch
from torch import nn

from lm_eval_contrans.errors import ConTransError


def with_adapter(model: nn.Module, kind: str, name: str) -> nn.Module:
    """What HFLM does with its `peft=` / `delta=` args, for the build's own loads of the target."""
    if kind == "peft":
        from peft import PeftModel

        return PeftModel.from_pretrained(model, name)
    from transformers import AutoModelForCausalLM

    delta = AutoModelForCausalLM.from_pretrained(name, dtype=next(model.parameters()).dtype).state_dict()
    with torch.no_grad():
        for key, parameter in model.state_dict().items():
            if key not in delta:
                raise ConTransError("delta", f"{name} has no weights for {key}")
            parameter += delta[key]
    return model
