"""Several steerings of one target scored in one pass: the blocks before the steered block run once.

Every steering at block b sees the same states up to b; only the blocks after it and the output layer
depend on what is added there. `steer_lanes` turns block b's output [B, T, d] into [K·B, T, d] (lane k:
the states plus lane k's vectors) and repeats to K·B every other input of the later blocks whose first
dimension is B (an attention mask, position embeddings of a batch), so the tail and the output layer run
K times and the rest once. `lanes_work` checks that on the model itself, once per block: a family whose
later blocks take something that cannot be repeated that way (or gives other numbers) is scored lane by
lane, as without lanes. `score_lanes` is HFLM's loglikelihood loop with one pass for every lane: the same
requests, truncation, right padding, one-token-continuation grouping and scored window, and each lane's
answers as HFLM computes them from its logits.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lm_eval_contrans.activations import block_output_tensor, input_device
from lm_eval_contrans.blocks import decoder_blocks
from lm_eval_contrans.transplant import broken_outputs, steer, watch_final_states

# What one pass may hold beyond today's batch, so that many lanes still share their rows' early blocks: logits
# (lanes x rows x scored window x vocabulary, float32: an upper bound, as the output layer projects only each row's
# scored positions) and tokens after the steered block. A pass of the packaged Gemma on contrans_sentiment, 11 lanes
# x 8 rows, projects one position a row: 88 MiB of logits.
LANE_LOGITS_BYTES = 1 << 30
LANE_TOKENS = 16_384

_WORKS: weakref.WeakKeyDictionary[nn.Module, dict[int, bool]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Broken:
    """A lane whose outputs were not finite (or constant) at a request: its own row raises, not the pass's."""


BROKEN = Broken()


def _widened(value, rows: int, lanes: int):
    """`value` with every tensor whose first dimension is the batch's `rows` repeated for each lane (lane-major);
    tuples, lists and dicts are walked. A 1-D tensor (cache positions) is never a batch."""
    if isinstance(value, torch.Tensor):
        return value.repeat(lanes, *[1] * (value.ndim - 1)) if value.ndim >= 2 and value.shape[0] == rows else value
    if isinstance(value, (tuple, list)):
        return type(value)(_widened(item, rows, lanes) for item in value)
    if isinstance(value, dict):
        return {key: _widened(item, rows, lanes) for key, item in value.items()}
    return value


@contextmanager
def steer_lanes(model: nn.Module, block: int, lanes: list[list[torch.Tensor]]) -> Iterator[None]:
    """Within it, a forward pass of `model` on B rows returns K·B rows: lane k's rows are the pass with its
    vectors (each already times its alpha) added in turn to block `block`'s output, as `steer` adds them.

    Args:
        model: a causal LM whose decoder blocks are found (`blocks.decoder_blocks`).
        block: the 0-based block every lane steers.
        lanes: for each lane, the vectors it adds (none: the unsteered model).
    """
    blocks = decoder_blocks(model)
    rows = [0]  # this pass's batch, read at the steered block
    placed: dict[tuple, list[list[torch.Tensor]]] = {}  # the vectors on the states' device and dtype, once each

    def widen_output(module, inputs, output):
        hidden = block_output_tensor(output)
        rows[0] = hidden.shape[0]
        key = (hidden.device, hidden.dtype)
        if key not in placed:
            placed[key] = [[vector.to(device=hidden.device, dtype=hidden.dtype) for vector in vectors] for vectors in lanes]
        parts = []
        for vectors in placed[key]:
            part = hidden
            for vector in vectors:  # one at a time, as one hook per direction adds them
                part = part + vector
            parts.append(part)
        wide = torch.cat(parts)
        if isinstance(output, tuple):
            return (wide, *output[1:])
        return [wide, *output[1:]] if isinstance(output, list) else wide

    def widen_inputs(module, args, kwargs):
        if rows[0] < 2:  # a batch of one broadcasts against every lane's rows as it is
            return None
        return _widened(args, rows[0], len(lanes)), _widened(kwargs, rows[0], len(lanes))

    handles = [blocks[block].register_forward_hook(widen_output)]
    handles += [later.register_forward_pre_hook(widen_inputs, with_kwargs=True) for later in blocks[block + 1:]]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def lanes_work(model: nn.Module, block: int) -> bool:
    """Whether `steer_lanes` at `block` gives this model's own steered passes, each lane as `steer` alone gives it
    (to rounding: `shared_context.rounding_tolerance`), on a right-padded batch of two and on a batch of one; decided
    once per model and block."""
    from lm_eval_contrans.hf.shared_context import rounding_tolerance

    known = _WORKS.setdefault(model, {})
    if block not in known:
        known[block] = _probe(model, block, rounding_tolerance(model))
    return known[block]


def _probe(model: nn.Module, block: int, tolerance: float) -> bool:
    from lm_eval_contrans.pipeline.depth import residual_width

    device = input_device(model)
    generator = torch.Generator().manual_seed(0)
    vectors = [torch.randn(residual_width(model), generator=generator) for _ in range(2)]
    lanes = [[], [vectors[0]], [vectors[1], vectors[0]]]
    vocabulary = int(getattr(model.get_input_embeddings(), "num_embeddings", 0) or 2)
    tokens = torch.randint(1, max(2, min(vocabulary, 100)), (2, 6), generator=generator)
    tokens[1, 4:] = 0  # HFLM's right padding
    try:
        for batch in (tokens.to(device), tokens[1:].to(device)):
            with steer_lanes(model, block, lanes):
                shared = _final_states(model, batch).split(batch.shape[0])
            for lane, vectors in zip(shared, lanes, strict=True):
                with ExitStack() as stack:
                    for vector in vectors:
                        stack.enter_context(steer(model, block, vector))
                    alone = _final_states(model, batch)
                if lane.shape != alone.shape or not float((lane - alone).abs().max()) <= tolerance * max(1.0, float(alone.abs().max())):
                    return False
    except Exception:  # noqa: BLE001 - a later block that takes what cannot be repeated: scored lane by lane
        return False
    return True


class _Stop(Exception):
    """Raised at the output layer's input: the probe compares the states there, not 262,144 logits a position."""


def _final_states(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The output layer's input at every position (the logits where the output layer is not a module)."""
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    if not isinstance(head, nn.Module):
        return model(input_ids=batch).logits.float()
    captured = []

    def capture(module, args):
        captured.append(args[0].float())
        raise _Stop

    handle = head.register_forward_pre_hook(capture)
    try:
        model(input_ids=batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


def passes(rows: int, lanes: int, length: int, window: int, vocabulary: int) -> tuple[int, int]:
    """(rows, lanes) of one pass over a batch of `rows` padded to `length` tokens, `window` of them projected:
    every lane over as many rows as fit within what today's batch holds or LANE_LOGITS_BYTES and LANE_TOKENS,
    whichever is more; where one row's lanes do not fit, lanes in groups over one row."""
    logits_budget = max(rows * window * vocabulary * 4, LANE_LOGITS_BYTES)
    tokens_budget = max(rows * length, LANE_TOKENS)
    per_lane_row = (window * vocabulary * 4, length)
    fitting_rows = min(logits_budget // (lanes * per_lane_row[0]), tokens_budget // (lanes * per_lane_row[1]))
    if fitting_rows >= 1:
        return min(rows, fitting_rows), lanes
    return 1, max(1, min(logits_budget // per_lane_row[0], tokens_budget // per_lane_row[1]))


def score_lanes(lm, requests: list[tuple], block: int, lanes: list[list[torch.Tensor]], rows: int,
                disable_tqdm: bool = False) -> list[list]:
    """Every lane's answers (log p(continuation), whether greedy) to lm-eval loglikelihood requests, as HFLM's
    `_loglikelihood_tokens` gives them for that lane's steering alone: [lane][request], `BROKEN` where a lane's
    outputs were not finite.

    Args:
        lm: a FastScoringHFLM (its `_model_call`, scored window, max length, softmax dtype and logits cache).
        requests: (strings, context tokens, continuation tokens), each.
        block: the block every lane steers.
        lanes: each lane's vectors (`steer_lanes`).
        rows: requests per batch, as HFLM's batch size.
        disable_tqdm: no progress bar.
    """
    # HFLM's one-token-continuation cache: requests whose context + continuation[:-1] agree share one input row,
    # its representative the first with the longest continuation, rows ordered longest first (lm-eval's Collator)
    groups: dict = {}
    for index, (_, context, continuation) in enumerate(requests):
        groups.setdefault(tuple(context + continuation[:-1]) if lm.logits_cache else index, []).append(index)
    representatives = sorted(((max(members, key=lambda i: len(requests[i][2])), members) for members in groups.values()),
                             key=lambda item: (-len(requests[item[0]][1] + requests[item[0]][2]),
                                               tuple(requests[item[0]][1] + requests[item[0]][2])))
    answers: list[list] = [[None] * len(requests) for _ in lanes]
    vocabulary = _vocabulary(lm.model)
    progress = tqdm(total=len(requests), desc=f"Running loglikelihood requests in {len(lanes)} lanes",
                    disable=disable_tqdm or lm.rank != 0)
    lm._longest_continuation = max(len(continuation) for _, _, continuation in requests)
    try:
        for start in range(0, len(representatives), rows):
            chunk = representatives[start:start + rows]
            inputs = [(requests[i][1] + requests[i][2])[-(lm.max_length + 1):][:-1] for i, _ in chunk]
            padded = torch.zeros((len(chunk), max(map(len, inputs))), dtype=torch.long, device=lm.device)
            for row, tokens in enumerate(inputs):
                padded[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            window = lm._scored_window(padded) or padded.shape[1]
            per_pass, lanes_per_pass = passes(len(chunk), len(lanes), padded.shape[1], window, vocabulary)
            for first_row in range(0, len(chunk), per_pass):
                for first_lane in range(0, len(lanes), lanes_per_pass):
                    some = range(first_lane, min(first_lane + lanes_per_pass, len(lanes)))
                    _one_pass(lm, requests, chunk[first_row:first_row + per_pass], inputs[first_row:first_row + per_pass],
                              padded[first_row:first_row + per_pass], block, [lanes[k] for k in some],
                              [answers[k] for k in some])
            progress.update(sum(len(members) for _, members in chunk))
    finally:
        lm._longest_continuation = None
        progress.close()
    return answers


def _one_pass(lm, requests, chunk, inputs, padded, block, lanes, answers) -> None:
    broken: set[int] = set()

    def note_broken(states: torch.Tensor) -> None:
        broken.update(k for k, part in enumerate(states.chunk(len(lanes))) if broken_outputs(part))

    longest = max(len(requests[representative][2]) for representative, _ in chunk)
    ends = [len(tokens) for tokens in inputs]
    with watch_final_states(lm.model, note_broken), \
            _projecting_only(lm.model, ends, padded.shape[1], longest, len(lanes)) as gathered:
        logits = lm._model_call(padded, around=steer_lanes(lm.model, block, lanes))
    log_probs = F.log_softmax(logits, dim=-1, dtype=lm.softmax_dtype).split(len(chunk))
    del logits
    for k, lane in enumerate(log_probs):
        for row, ((representative, members), end) in enumerate(zip(chunk, ends, strict=True)):
            if k in broken:
                for index in members:
                    answers[k][index] = BROKEN
                continue
            # each row's last `longest` positions; else HFLM's ctx_len arithmetic, from the end of the scored window
            end = longest if gathered else end + lane.shape[1] - padded.shape[1]
            scored = lane[row, end - len(requests[representative][2]):end]
            greedy = scored.argmax(dim=-1)
            for index in members:
                continuation = torch.tensor(requests[index][2], dtype=torch.long, device=scored.device)
                # as HFLM: greedy over the trailing positions, log-probabilities gathered from the leading ones
                # (the same positions whenever the group's continuations are equally long, as one-token ones are)
                equal = bool((greedy[-len(continuation):] == continuation).all())
                answers[k][index] = (float(scored[:len(continuation)].gather(1, continuation[:, None]).sum()), equal)


@contextmanager
def _projecting_only(model: nn.Module, ends: list[int], width: int, longest: int, lanes: int) -> Iterator[list]:
    """Within it, the output layer projects of each row of a batch padded to `width` only its last `longest` input
    positions (those before `ends[row]`), not the scored window every row shares: with right padding, a batch's window spans its rows'
    differences in length, and in a shared pass each lane would pay for it. Yields a list that is true once the
    output layer was called so (a model that multiplies by its weights itself projects the window)."""
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    gathered: list = []
    if not isinstance(head, nn.Module):
        yield gathered
        return

    def keep_scored(module, args):
        states = args[0]  # [lanes x rows, positions, d]: the padded batch's last positions (its scored window)
        first = torch.tensor(ends, device=states.device)[:, None] - longest + states.shape[1] - width
        index = (first + torch.arange(longest, device=states.device)[None]).clamp(min=0).repeat(lanes, 1)
        gathered[:] = [True]
        return (states.gather(1, index[..., None].expand(-1, -1, states.shape[-1])), *args[1:])

    handle = head.register_forward_pre_hook(keep_scored)
    try:
        yield gathered
    finally:
        handle.remove()


def _vocabulary(model: nn.Module) -> int:
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    return int(getattr(getattr(model.config, "text_config", model.config), "vocab_size", 0) or 1)


def lane_vectors(directions, alphas) -> list[torch.Tensor]:
    """What a lane adds at its block: alpha times each direction's steering vector, in turn (alpha 0: nothing)."""
    return [alpha * direction.steering_vector().detach() for direction, alpha in zip(directions, alphas, strict=True)
            if alpha != 0.0]

