"""What a worker's memory is made of, read from inside it: tells a leak from the allocator's high-water mark.

RSS alone cannot say why a process grew. Three figures can:

    python_blocks_k   objects and other small blocks Python has allocated (thousands):
                      sys.getallocatedblocks(). Growing without end: a leak in Python.
    malloc_in_use_mb  what C code (and Python, for anything over 512 bytes) has malloc'd
                      and not freed: glibc's mallinfo2(), uordblks + hblkhd. Growing with
                      Python's blocks flat: a leak in a C extension (libpq, psycopg).
    malloc_free_mb    freed memory malloc keeps for reuse (fordblks). Growing while the
                      two above stay flat: the allocator's high-water mark, not a leak.

A worker started with loadtests/gunicorn_heap.conf.py writes them to HEAP_REPORT_DIR
every HEAP_REPORT_SECONDS (default 5), as <pid>.json; the soak reads them beside RSS.
Without glibc 2.33 or later (musl, macOS, older distributions) the two malloc figures are missing.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
from pathlib import Path

LINES = [
    ("python_blocks_k", "Python's allocated blocks, each worker (sys.getallocatedblocks)", "thousands"),
    ("malloc_in_use_mb", "malloc'd and not freed, each worker (mallinfo2)", "MB"),
    ("malloc_free_mb", "freed memory malloc keeps for reuse, each worker (mallinfo2)", "MB"),
]


class _MallInfo2(ctypes.Structure):
    # glibc's struct mallinfo2 (malloc.h, glibc 2.33 and later): every field a size_t.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _mallinfo2():
    """glibc's mallinfo2() (summed over every arena), or None where the C library has none."""
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


_MALLINFO2 = _mallinfo2()


def figures() -> dict[str, float]:
    """This process's figures now (see the module's docstring)."""
    found = {"python_blocks_k": sys.getallocatedblocks() / 1000}
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        found["malloc_in_use_mb"] = (info.uordblks + info.hblkhd) / 2**20
        found["malloc_free_mb"] = info.fordblks / 2**20
    return found


class Reporter(threading.Thread):
    """Writes this process's figures to `directory`/<pid>.json every `every` seconds, until stopped."""

    def __init__(self, directory: Path, every: float) -> None:
        super().__init__(name="heap-reporter", daemon=True)
        self.directory, self.every = directory, every
        self.stopping = threading.Event()

    def run(self) -> None:
        path = self.directory / f"{os.getpid()}.json"
        partial = path.with_suffix(".partial")
        while True:
            try:
                partial.write_text(json.dumps(figures()))
                os.replace(partial, path)  # a reader never sees half a file
            except OSError:  # the folder is gone (the soak has ended) or full: try again next time
                pass
            if self.stopping.wait(self.every):
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def start_reporting() -> Reporter | None:
    """In a worker: report to HEAP_REPORT_DIR if it is set."""
    directory = os.environ.get("HEAP_REPORT_DIR")
    if not directory:
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    reporter = Reporter(Path(directory), float(os.environ.get("HEAP_REPORT_SECONDS", "5")))
    reporter.start()
    return reporter


def read_reports(directory: Path) -> dict[int, dict[str, float]]:
    """pid -> its latest figures, for every worker that has reported to `directory`."""
    reports = {}
    for path in directory.glob("*.json"):
        try:
            reports[int(path.stem)] = json.loads(path.read_text())
        except (OSError, ValueError):  # gone, or not one of ours
            continue
    return reports
