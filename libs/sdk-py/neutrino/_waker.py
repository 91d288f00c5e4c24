"""A file descriptor one thread polls and another sets, to wake the first out of `poll()`.

An eventfd on Linux (one fd, one syscall per set or clear), a non-blocking pipe elsewhere.
"""

from __future__ import annotations

import contextlib
import os


class Waker:
    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self._rfd = self._wfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux
            self._rfd, self._wfd = os.pipe()
            os.set_blocking(self._rfd, False)
            os.set_blocking(self._wfd, False)
        self.closed = False

    def fileno(self) -> int:
        return self._rfd

    def set(self) -> None:
        # BlockingIOError: already set (the counter or pipe is full), which is all we want.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wfd, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._rfd, 4096)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._rfd)
            if self._wfd != self._rfd:  # pragma: no cover - non-Linux
                os.close(self._wfd)
