"""Per-unit log files: everything a unit prints or logs also goes to ``<output_dir>/logs/<unit>.log``."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class _Tee:
    """A text stream writing to the console stream and the log file."""

    def __init__(self, console: IO[str], log: IO[str]):
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.console.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def unit_log(path: Path) -> Iterator[IO[str]]:
    """Tee stdout/stderr and the root logger into ``path`` (appended: a rerun adds to the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            with contextlib.redirect_stdout(_Tee(sys.stdout, fh)), contextlib.redirect_stderr(_Tee(sys.stderr, fh)):
                yield fh
        finally:
            root.removeHandler(handler)
