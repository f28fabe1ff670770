"""glibc's malloc for a worker whose threads take turns: two arenas, so freed memory is reused,
and what stays free is handed back to the system every minute.

glibc gives each new thread a malloc arena of its own, up to eight per core. A gthread
worker's threads each fill theirs to the most they ever held at once, and malloc keeps
that memory when it is freed, for the same thread to reuse: a worker's resident memory
creeps up for as long as some thread meets a new high, with nothing leaking (measured
under the soak's load: docs/soak.md#memory). With two arenas shared by every thread, one
thread's freed memory serves the next.

It must be set before the process starts its threads, and forked workers inherit it:
gunicorn's settings call share_arenas() in the master, the task worker when it starts.
It does what MALLOC_ARENA_MAX=2 in the environment does; when that variable (glibc's
own) or GLIBC_TUNABLES' glibc.malloc.arena_max is set, glibc has read it and this
leaves it be.

Freed memory malloc keeps is still resident. glibc gives an arena's pages back only from
its top, and only once more than a threshold (128 KiB) is free there. When a block of 128
KiB or more that it had mapped on its own is freed, it stops mapping blocks that size, so
later ones come from the arenas, and raises the threshold to twice the block's size. After
an export or a fault, a worker keeps pages it no longer uses, and which ones depends on
where the last live blocks landed. malloc_trim(0) gives back every whole free page,
wherever it lies. A worker calls it every MALLOC_TRIM_SECONDS (60; 0: never) from a
thread of its own (start_trimming(), after the fork), taking each arena's lock while it
walks that arena.
"""

from __future__ import annotations

import ctypes
import math
import threading

from django.core.exceptions import ImproperlyConfigured

from project import environment as env

ARENAS = 2
M_ARENA_MAX = -8  # malloc.h
TRIM_SECONDS = 60


def share_arenas() -> bool:
    """ARENAS arenas for this process, unless the environment says otherwise; False if not set here."""
    if env.string("MALLOC_ARENA_MAX") or "glibc.malloc.arena_max" in env.string("GLIBC_TUNABLES"):
        return False
    return limit_arenas(ARENAS)


def limit_arenas(count: int) -> bool:
    """Cap this process's malloc arenas at `count` (children it forks included); False outside glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator works otherwise
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt(M_ARENA_MAX, count) == 1


def _malloc_trim():
    """glibc's malloc_trim(), or None where the C library has none."""
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator works otherwise
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_MALLOC_TRIM = _malloc_trim()


def trim() -> bool:
    """Give every whole free page of every arena back to the system: True if some went."""
    return _MALLOC_TRIM is not None and _MALLOC_TRIM(0) == 1


class Trimmer(threading.Thread):
    """Calls trim() every `every` seconds until stopped."""

    def __init__(self, every: float) -> None:
        super().__init__(name="malloc-trim", daemon=True)
        self.every = every
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            trim()

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def trim_seconds() -> float:
    """MALLOC_TRIM_SECONDS: seconds between trims, 0 for never (read where a bad value stops the start)."""
    every = env.number("MALLOC_TRIM_SECONDS", TRIM_SECONDS)
    if not math.isfinite(every) or every < 0:  # float() reads "nan" and "inf" too
        raise ImproperlyConfigured(f"MALLOC_TRIM_SECONDS={every!r} is not a number of seconds (0 for never).")
    return every


def start_trimming(every: float) -> Trimmer | None:
    """In a worker, after the fork: trim() every `every` seconds; None when that is 0 or not glibc."""
    if every == 0 or _MALLOC_TRIM is None:
        return None
    trimmer = Trimmer(every)
    trimmer.start()
    return trimmer
