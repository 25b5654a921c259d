"""The optional ``jti`` deny-list: a text file, one token id per line (``#`` comments).

The file is re-read when its modification time or size changes, checked at most every
``check_interval`` seconds, so an operator revokes a token by appending a line. A file that
disappears or cannot be read keeps the last list (and says so in the log).

Whoever re-reads it (a verification, or the sweep of connected tokens), ``version`` goes up
with every change, so the sweep compares versions rather than asking whether it was the one
to notice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from service.telemetry import log_event


class DenyList:
    """Revoked token ids, from a file."""

    def __init__(self, path: Path, logger: logging.Logger, *, check_interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._log = logger
        self._interval = check_interval
        self._clock = clock
        self._stamp: tuple[int, int] | None = None
        self._checked_at = float("-inf")
        self._ids: frozenset[str] = frozenset()
        #: goes up by one each time the list of ids changes
        self.version = 0
        self.reload()

    def __contains__(self, jti: object) -> bool:
        self.refresh()
        return isinstance(jti, str) and jti in self._ids

    def refresh(self) -> None:
        """Re-read the file if it is time to check it again."""
        if self._clock() - self._checked_at >= self._interval:
            self.reload()

    def reload(self) -> bool:
        """Re-read the file if it changed; True when the list changed."""
        self._checked_at = self._clock()
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return False
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            log_event(self._log, "denylist_unreadable", logging.WARNING, path=str(self.path),
                      error_type=type(exc).__name__, kept=len(self._ids))
            return False
        ids = frozenset(s for s in (line.split("#", 1)[0].strip() for line in lines) if s)
        self._stamp = stamp
        changed = ids != self._ids
        self._ids = ids
        if changed:
            self.version += 1
            log_event(self._log, "denylist_loaded", path=str(self.path), entries=len(ids))
        return changed
