"""A model that ships its own code, refused by transformers without consent: the refusal names the arg."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lm_eval_contrans.errors import ConTransError
from lm_eval_contrans.loading.specs import ModelSpec


@contextmanager
def remote_code_explained(spec: ModelSpec) -> Iterator[None]:
    """transformers refuses a model that ships its own code with a traceback; say which arg runs it."""
    try:
        yield
    except ValueError as error:
        if "trust_remote_code" not in str(error) or spec.trust_remote_code:
            raise
        raise ConTransError("trust_remote_code", f"{spec.name} ships its own model code; to run it, pass "
                                                 "trust_remote_code=True (lm_eval --model_args) or --trust-remote-code "
                                                 "(contrans build/port/compare)") from None
