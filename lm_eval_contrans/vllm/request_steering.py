"""What one request asks of a bank: an alpha per direction, and the positions it is added at.

A request names its steering in vLLM's own per-request field for custom arguments: `vllm_xargs` in the
OpenAI-compatible server (`extra_body={"vllm_xargs": {"concept": "honesty", "alpha": 2}}` with the `openai`
client), `SamplingParams.extra_args` offline. Its keys mean what the model args of the same names mean:

- `concept`: a concept of the bank, or several as `a+b` (or a list); by default every concept of the bank;
- `alpha`: one for every named concept, or one each as `1.5+2` (or a list); concepts not named get 0;
- `positions`: `all`, `prompt` or `generated`; by default the engine's.

A request naming none of them gets the engine's default steering. The front end parses a request once
(`steering_of`), refuses what it cannot honour, and hands the workers the result under `CANONICAL_KEY`,
which they turn into each token's coefficients; the steering also salts the request's prefix-cache key, so
two requests with one prompt and different steering never share KV blocks.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.vllm.crossing import Bank

KEYS = ("concept", "alpha", "positions")
CANONICAL_KEY = "_contrans_steering"  # what the front end hands the workers: {"alphas": [...], "positions": ...}
LONGEST_VALUE = 4096  # characters of a key's value: more is not a concept list a bank could hold


@dataclass(frozen=True)
class RequestSteering:
    """An alpha per bank entry, and where they are added."""

    alphas: tuple[float, ...]
    positions: str

    def coefficient_rows(self) -> tuple[list[float], list[float]]:
        """(what a prompt token gets, what a generated token gets): one coefficient per bank entry."""
        zeros = [0.0] * len(self.alphas)
        alphas = list(self.alphas)
        return (zeros if self.positions == "generated" else alphas, zeros if self.positions == "prompt" else alphas)

    def canonical(self) -> dict:
        """What crosses to the workers in the request's `extra_args`."""
        return {"alphas": list(self.alphas), "positions": self.positions}

    @classmethod
    def from_canonical(cls, data: dict) -> RequestSteering:
        return cls(tuple(float(alpha) for alpha in data["alphas"]), str(data["positions"]))

    def salt(self) -> str:
        """A prefix-cache salt naming this steering (vLLM hashes a request's `cache_salt` into its first block's
        hash, and so into every later block's)."""
        return "contrans:" + hashlib.sha256(json.dumps(self.canonical()).encode()).hexdigest()[:32]

    def describe(self, bank: Bank) -> list[dict]:
        """What steers, for the `x-contrans-steering` header and logs: each concept at its block and alpha."""
        return [{"concept": entry.name, "block": entry.block, "alpha": alpha, "alpha_unit": entry.alpha_unit,
                 **({"positions": self.positions} if self.positions != "all" else {})}
                for entry, alpha in zip(bank.entries, self.alphas) if alpha != 0]


def default_steering(bank: Bank) -> RequestSteering:
    """What a request that names no steering gets."""
    return RequestSteering(tuple(entry.default_alpha for entry in bank.entries), bank.positions)


def steering_of(bank: Bank, extra_args: dict | None) -> RequestSteering:
    """The steering a request asks for, checked against the bank.

    Args:
        bank: the engine's bank.
        extra_args: the request's `vllm_xargs` / `SamplingParams.extra_args` (other keys, vLLM's own
            `session_id` or another plugin's, are left alone).

    Returns:
        The request's steering; the engine's default where it names none.

    Raises:
        ConTransError: an unknown key of ours (or a near miss of one), a concept the bank does not hold, an alpha
            that is not a finite number or is past the push limit, positions not one of the three.
    """
    from lm_eval_contrans.request import parse_alphas, spread
    from lm_eval_contrans.transplant import check_positions

    asked = _our_keys(extra_args or {})
    if not asked:
        return default_steering(bank)
    concepts = _concepts(bank, asked.get("concept"))
    alpha = asked.get("alpha", 1.0)
    if isinstance(alpha, bool) or (isinstance(alpha, list) and any(isinstance(value, bool) for value in alpha)):
        raise ConTransError("vllm_xargs.alpha", f"expected a number, got {alpha!r}")
    try:
        per_name = dict(zip(concepts, spread(parse_alphas(alpha), len(concepts), "alpha")))
        positions = check_positions(asked.get("positions", bank.positions))
    except ConTransError as error:
        raise ConTransError(f"vllm_xargs.{error.argument}", error.message) from None
    alphas = tuple(per_name.get(entry.name, 0.0) for entry in bank.entries)
    for entry, value in zip(bank.entries, alphas):
        if abs(value) > entry.most_alpha:
            raise ConTransError("vllm_xargs.alpha", f"{value:g} for {entry.name} is past the push limit: at most "
                                                    f"{entry.most_alpha:.4g} ({entry.alpha_unit} units), beyond which "
                                                    f"block {entry.block}'s output would be the vector's alone")
    return RequestSteering(alphas, positions)


def _our_keys(extra_args: dict) -> dict:
    """The request's keys that are ours; a key that looks like one of ours but is not is refused, so that a
    misspelt key is not answered at the default steering."""
    ours = {}
    for key, value in extra_args.items():
        if key in KEYS:
            if isinstance(value, str) and len(value) > LONGEST_VALUE:
                raise ConTransError(f"vllm_xargs.{key}", f"a value of {len(value)} characters")
            ours[key] = value
            continue
        near = difflib.get_close_matches(str(key), KEYS, n=1, cutoff=0.75)
        if near or str(key).lstrip("_").startswith("contrans"):
            hint = f"; did you mean {near[0]}?" if near else ""
            raise ConTransError("vllm_xargs", f"unknown key {str(key)[:80]!r}{hint} The steering keys: "
                                              f"{', '.join(KEYS)}")
    return ours


def _concepts(bank: Bank, asked) -> list[str]:
    """The concept names a request asks for, each one the bank holds, none twice."""
    names = bank.concepts
    if asked is None:
        return names
    given = asked if isinstance(asked, list) else str(asked).split("+") if isinstance(asked, str) else [asked]
    if not given or not all(isinstance(name, str) and name.strip() for name in given):
        raise ConTransError("vllm_xargs.concept", f"expected concept names, got {str(asked)[:200]!r}")
    given = [name.strip() for name in given]
    for name in given:
        if name not in names:
            raise ConTransError("vllm_xargs.concept", f"{name[:200]!r} is not loaded in this engine; it steers with: "
                                                      f"{', '.join(names)}")
    if len(set(given)) != len(given):
        raise ConTransError("vllm_xargs.concept", f"a concept named twice in {'+'.join(given)[:200]!r}")
    return given
