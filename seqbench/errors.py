"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class SeqbenchError(Exception):
    """A user-facing error: bad input, missing data, incompatible choices.

    The CLI prints ``seqbench: error: <message>`` on one line and exits with ``code``.
    Anything else that escapes is a bug and keeps its traceback.
    """

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code
