"""glibc's malloc for a worker whose threads take turns: two arenas, so freed memory is reused.

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
"""

from __future__ import annotations

import ctypes

from project import environment as env

ARENAS = 2
M_ARENA_MAX = -8  # malloc.h


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
