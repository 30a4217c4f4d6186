"""Recording residual states at chosen decoder blocks: of the last token, or of every token.

One no-grad forward per batch, stopped right after the deepest block we need (the LM head and the
later blocks never run). Texts are sorted by length so batches carry little padding; padding is
applied on the tokenizer's side, position ids follow the attention mask, and the state taken is
that of the last *real* token, so results do not depend on batch size or padding side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from itertools import accumulate

import torch
from torch import nn
from tqdm.auto import tqdm

from lm_eval_contrans.blocks import decoder_blocks
from lm_eval_contrans.errors import ConTransError

logger = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised from the deepest hook to end the forward pass early."""


def block_output_tensor(output) -> torch.Tensor:
    """Decoder blocks return a tensor, or a tuple (a list in OpenAI GPT) whose first item is the hidden state."""
    return output[0] if isinstance(output, (tuple, list)) else output


def input_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go: its input embeddings' device. With weights offloaded by accelerate
    (meta tensors) inputs start on the CPU and accelerate's hooks move them on."""
    try:
        device = model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        device = next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    encoded = tokenizer(list(texts), add_special_tokens=True, truncation=max_length is not None,
                        max_length=max_length)["input_ids"]
    return [list(ids) if len(ids) else [_pad_id(tokenizer)] for ids in encoded]


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    """(input_ids, attention_mask, position_ids, last_real_index) for a list of token-id lists."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        ids_tensor = torch.tensor(ids, dtype=torch.long)
        if side == "left":
            input_ids[row, width - len(ids):] = ids_tensor
            attention_mask[row, width - len(ids):] = 1
        else:
            input_ids[row, : len(ids)] = ids_tensor
            attention_mask[row, : len(ids)] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    positions = torch.arange(width).expand_as(attention_mask)
    last_real_index = (positions * attention_mask).argmax(-1)
    return input_ids, attention_mask, position_ids, last_real_index


def _batches(order: list[int], lengths: list[int], batch_size: int | str, token_budget: int) -> list[list[int]]:
    """Split length-sorted indices into batches: a fixed size, or ("auto") at most `token_budget`
    padded tokens per batch, so short texts go in big batches and long ones in small."""
    if batch_size != "auto":
        size = int(batch_size)
        if size < 1:
            raise ValueError(f"batch_size must be >= 1 or 'auto', got {batch_size!r}")
        return [order[start : start + size] for start in range(0, len(order), size)]
    batches, current, width = [], [], 0
    for index in order:
        new_width = max(width, lengths[index])
        if current and new_width * (len(current) + 1) > token_budget:
            batches.append(current)
            current, new_width = [], lengths[index]
        current.append(index)
        width = new_width
    if current:
        batches.append(current)
    return batches


def default_token_budget(device: torch.device) -> int:
    # CPU throughput stops improving around a few thousand tokens per batch; GPUs want more.
    return 16384 if device.type == "cuda" else 1024


@torch.no_grad()
def _record(model, tokenizer, sequences, layers, *, batch_size, padding_side, progress, token_budget, keep):
    """Run `sequences` (token-id lists) through the model, stopping after the deepest wanted block;
    `keep(states [batch, width, hidden], rows, last_real_index, batch_indices)` takes what it needs."""
    blocks = decoder_blocks(model)
    wanted = sorted(set(int(layer) for layer in layers))
    deepest = wanted[-1]
    side = padding_side or getattr(tokenizer, "padding_side", "right") or "right"
    pad_id = _pad_id(tokenizer)
    device = input_device(model)
    order = sorted(range(len(sequences)), key=lambda index: -len(sequences[index]))
    current: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(module, inputs, output):
            current[layer] = block_output_tensor(output)
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in wanted]
    try:
        batches = _batches(order, [len(ids) for ids in sequences], batch_size,
                           token_budget or default_token_budget(device))
        # padded tokens per batch: the cost a batch's forward pass is roughly proportional to
        costs = [len(batch) * max(len(sequences[index]) for index in batch) for batch in batches]
        if progress is not None:
            logger.info("%s: recording %d texts (%d tokens) up to block %d on %s", progress, len(sequences),
                        sum(len(ids) for ids in sequences), deepest, device)
        started = time.perf_counter()
        for number, batch_indices in enumerate(tqdm(batches, desc=progress, disable=progress is None, leave=False)):
            if progress is not None and number == min(3, len(batches) - 1) and number > 0:
                rate = (time.perf_counter() - started) / sum(costs[:number])
                logger.info("%s: about %.0f s to go", progress, rate * sum(costs[number:]))
            batch = [sequences[index] for index in batch_indices]
            input_ids, attention_mask, position_ids, last = pad_batch(batch, pad_id, side)
            current.clear()
            try:
                model(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    position_ids=position_ids.to(device),
                    use_cache=False,
                )
            except _StopForward:
                pass
            for layer in wanted:
                keep(layer, current[layer], batch_indices, batch, attention_mask, last)
    finally:
        for handle in handles:
            handle.remove()
    if progress is not None:
        logger.info("%s: done in %.0f s", progress, time.perf_counter() - started)
    return order


@torch.no_grad()
def last_token_states(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int | str = "auto",
    max_length: int | None = None,
    padding_side: str | None = None,
    progress: str | None = None,
    token_budget: int | None = None,
) -> dict[int, torch.Tensor]:
    """The output of each block in `layers` at each text's last real token (the pass stops after the
    deepest block asked for).

    Args:
        model, tokenizer: the model as loaded.
        texts: the texts, one state each.
        layers: 0-based block indices.
        batch_size: a number of texts, or "auto" (batches of at most `token_budget` padded tokens).
        max_length: truncate longer texts to this many tokens (None: not truncated).
        padding_side: "left" or "right" (None: the tokenizer's own).
        progress: a tqdm description (None: no bar).
        token_budget: the padded tokens of one "auto" batch (None: by device).

    Returns:
        {layer: float32 CPU tensor [len(texts), hidden]}.

    Raises:
        ValueError: no texts.
    """
    if not texts:
        raise ValueError("no texts to record")
    collected: dict[int, list[torch.Tensor]] = {int(layer): [] for layer in layers}

    def keep(layer, states, batch_indices, batch, attention_mask, last):
        rows = torch.arange(len(batch_indices), device=states.device)
        collected[layer].append(states[rows, last.to(states.device)].float().cpu())
        check_finite(collected[layer][-1], layer, model, progress)

    order = _record(model, tokenizer, tokenize_texts(tokenizer, texts, max_length), layers, batch_size=batch_size,
                    padding_side=padding_side, progress=progress, token_budget=token_budget, keep=keep)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {layer: torch.cat(parts)[inverse] for layer, parts in collected.items()}


def check_finite(values: torch.Tensor, layer: int, model: nn.Module, progress: str | None) -> None:
    """Recorded states must be finite. A model that overflows in its precision (Gemma in float16 does)
    gives inf/NaN, which a map fitted on them would carry into the vector and the cache; checked batch
    by batch, so the build stops at the first one."""
    if not torch.isfinite(values).all():
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        raise ConTransError("dtype", f"{progress or 'recording states'}: block {layer} gives non-finite values "
                                     f"(inf or NaN) in {dtype}; the model overflows in that precision: use "
                                     "dtype=bfloat16 or float32")


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type recorded states are kept in: float32, or a narrower float type as it is (exact)."""
    return dtype if dtype.is_floating_point and torch.finfo(dtype).bits < 32 else torch.float32


@torch.no_grad()
def token_states(
    model: nn.Module,
    tokenizer,
    sequences: Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    batch_size: int | str = "auto",
    progress: str | None = None,
    token_budget: int | None = None,
) -> dict[int, torch.Tensor]:
    """Every real token's output of each block: {layer: CPU tensor [sum of lengths, hidden]}, the
    tokens of sequence 0 first, then those of sequence 1, and so on. Float32, or the model's own type
    when it is a narrower float (bfloat16, float16): those values are kept exactly, in half the memory
    (dense anchors over many blocks of a large model run to gigabytes); convert with `.float()`."""
    if not sequences:
        raise ValueError("no texts to record")
    lengths = [len(ids) for ids in sequences]
    starts = [0, *accumulate(lengths[:-1])]
    # Written in place into one tensor per block: collecting pieces and concatenating them would
    # hold every state twice, and dense anchors over many blocks run to gigabytes.
    recorded: dict[int, torch.Tensor] = {}

    def keep(layer, states, batch_indices, batch, attention_mask, last):
        if layer not in recorded:  # the block's width and type are known once it has run
            recorded[layer] = torch.empty(sum(lengths), states.shape[-1], dtype=storage_dtype(states.dtype))
        check_finite(states[attention_mask.bool().to(states.device)], layer, model, progress)  # real tokens only
        for row, index in enumerate(batch_indices):
            real = attention_mask[row].bool().to(states.device)
            recorded[layer][starts[index] : starts[index] + lengths[index]] = states[row][real].cpu()

    _record(model, tokenizer, [list(ids) for ids in sequences], layers, batch_size=batch_size, padding_side=None,
            progress=progress, token_budget=token_budget, keep=keep)
    return recorded
