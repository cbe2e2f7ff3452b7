"""Progress of a long loop: a tqdm bar on a terminal, plain periodic lines elsewhere.

Progress bars written to a file or a CI log fill it with carriage returns and escape sequences; when
stderr is not a terminal, ``Progress`` prints instead one plain line at most every ``every`` seconds
(``  epoch 3: 400/1688 steps, loss 0.4321``). ``quiet`` silences both.
"""
from __future__ import annotations

import sys
import time


def interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class Progress:
    def __init__(self, iterable, total: int | None = None, desc: str = "", quiet: bool = False,
                 every: float = 30.0, unit: str = "steps", leave: bool = False):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.quiet, self.every = quiet, every
        self.postfix: dict = {}
        self.bar = None
        if not quiet and interactive():
            from tqdm.auto import tqdm

            self.bar = tqdm(iterable, total=total, desc=desc, leave=leave, mininterval=1.0, dynamic_ncols=True)

    def __iter__(self):
        if self.bar is not None:
            yield from self.bar
            return
        last = start = time.monotonic()
        for i, item in enumerate(self.iterable):
            yield item
            now = time.monotonic()
            if not self.quiet and now - last >= self.every:
                last = now
                self._line(i + 1, now - start)

    def _line(self, done: int, elapsed: float) -> None:
        of = f"/{self.total}" if self.total else ""
        post = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"  {self.desc}: {done}{of} {self.unit}{post} ({elapsed:.0f} s)", file=sys.stderr, flush=True)

    def set_postfix(self, **kw) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**kw)
        else:
            self.postfix = kw

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write(msg: str) -> None:
    """A line that must not break a bar on screen (the bars' own ``write``), else a plain print."""
    if interactive():
        from tqdm.auto import tqdm

        tqdm.write(msg)
    else:
        print(msg, flush=True)
