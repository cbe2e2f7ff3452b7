"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class SeqbenchError(Exception):
    """A user-facing error: bad input, missing data, incompatible choices.

    The CLI prints ``seqbench: error: <message>`` on one line and exits with ``code``.
    Anything else that escapes is a bug and keeps its traceback.
    """

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def clip(text: str, limit: int = 80) -> str:
    """Echoed user input, cut to ``limit`` characters (an error line stays one readable line)."""
    text = str(text).replace("\n", "\\n")
    return text if len(text) <= limit else f"{text[: limit - 1]}…({len(text)} chars)"
