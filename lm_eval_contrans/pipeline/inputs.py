"""What a build reads, checked before any model loads for it: batch sizes, and texts against each
model's context length."""

from __future__ import annotations

from lm_eval_contrans.concepts import ConceptSet
from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading import ModelSpec, read_only_tokenizer
from lm_eval_contrans.pipeline.depth import load_config

CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
# a token covers at least one byte of UTF-8, so a text of fewer bytes than this margin below the context
# length fits whatever the tokenizer does (the margin leaves room for BOS/EOS and other added tokens)
SPECIAL_TOKEN_MARGIN = 8


def check_batch_size(value: int | str, argument: str = "build_batch_size") -> int | str:
    """`auto`, or a whole number of texts >= 1 (an integral float from lm-eval's parser is accepted)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConTransError(argument, f"expected a whole number >= 1 or auto, got {value!r}") from None
    if not number.is_integer() or number < 1:
        raise ConTransError(argument, f"expected a whole number >= 1 or auto, got {value!r}")
    return int(number)


def context_length(spec: ModelSpec) -> int | None:
    """The longest input the model's config allows, or None where it does not say."""
    config = load_config(spec)
    if config is None:
        return None
    text = getattr(config, "text_config", None) or config
    return next((getattr(text, name) for name in CONTEXT_FIELDS if isinstance(getattr(text, name, None), int)), None)


def check_text_lengths(spec: ModelSpec, limit: int | None, texts: list[str], where: str, argument: str,
                       unit: str = "text") -> None:
    """Refuse a text longer than `limit`, the model's context (None: not stated). Not truncated: the concept
    vector and the map read a text's last tokens, and a cut text would be read at another place than the one
    it was written to end at."""
    if limit is None:
        return
    long = [index for index, text in enumerate(texts) if len(text.encode("utf-8")) > limit - SPECIAL_TOKEN_MARGIN]
    if not long:
        return
    tokenizer = read_only_tokenizer(spec)
    for index in long:
        tokens = len(tokenizer(texts[index], add_special_tokens=True)["input_ids"])
        if tokens > limit:
            raise ConTransError(argument, f"{where}, {unit} {index + 1}: {tokens} tokens, longer than {spec.name}'s "
                                          f"context of {limit}; shorten or remove it (a cut text would be read at "
                                          "another last token than the one it ends at)")


def check_build_texts(source: ModelSpec, target: ModelSpec, sets: list, anchor_texts: list[str],
                      anchors_name: str) -> None:
    """Concept pairs are read in the source; anchor texts in both models."""
    limits = {"source": context_length(source), "target": context_length(target)}
    for concept in sets:
        if isinstance(concept, ConceptSet):
            for side in ("positives", "negatives"):
                check_text_lengths(source, limits["source"], list(getattr(concept, side)),
                                   concept.source or concept.name, "concept", f"{side.removesuffix('s')} of pair")
    for role, spec in (("source", source), ("target", target)):
        check_text_lengths(spec, limits[role], anchor_texts, f"anchor corpus {anchors_name}", "anchors")
