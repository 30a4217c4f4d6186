"""The one error type users see for bad input: it always names the argument at fault."""

from __future__ import annotations


class ConTransError(ValueError):
    """Bad input to the transplant pipeline; `argument` names the model arg / option at fault."""

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        self.message = message
        super().__init__(f"{argument}: {message}")
