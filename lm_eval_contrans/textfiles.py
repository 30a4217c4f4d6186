"""Text files users write for us (concept sets, anchor corpora), read as their editors saved them."""

from __future__ import annotations

import codecs
from pathlib import Path

from lm_eval_contrans.errors import ConTransError


def read_user_text(path: Path, argument: str) -> str:
    """The file's text: UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8", Windows editors), or
    UTF-16 with its mark (Excel's "Unicode Text"); anything else is refused naming the file."""
    data = path.read_bytes()
    encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        offending = data[error.start:error.start + 1]
        raise ConTransError(argument, f"{path} is not UTF-8 text (at byte offset {error.start}: {offending!r}); "
                                      "save it as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as read_text does: CRLF and CR line ends
