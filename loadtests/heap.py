"""What a worker's memory is made of, read from inside it: tells a leak from the allocator's high-water mark.

RSS alone cannot say why a process grew. These figures can:

    python_blocks_k   objects and other small blocks Python has allocated (thousands):
                      sys.getallocatedblocks(). Growing without end: a leak in Python.
    malloc_in_use_mb  what C code (and Python, for anything over 512 bytes) has malloc'd
                      and not freed: glibc's mallinfo2(), uordblks + hblkhd. Growing with
                      Python's blocks flat: a leak in a C extension (libpq, psycopg).
    malloc_free_mb    freed memory malloc keeps for reuse (fordblks). Growing while the
                      two above stay flat: the allocator's high-water mark, not a leak.
                      Pages a trim gave back (project/allocator.py) still count here,
                      though no longer resident.
    python_arenas_mb  the arenas (1 MiB on 64-bit CPython 3.10 and later) Python's own allocator
                      holds for objects of 512 bytes or less (from
                      _PyObject_DebugMallocStats, what sys._debugmallocstats() prints). An
                      arena goes back only once every object in it is freed: growing while
                      Python's blocks stay flat, the blocks are spread over more arenas.
    stacks_mb         the threads' stacks, resident part (/proc/self/task/*/syscall gives each
                      blocked thread's stack pointer, /proc/self/smaps its mapping's RSS). A
                      stack keeps the pages its deepest call touched.

A worker started with loadtests/gunicorn_heap.conf.py writes them to HEAP_REPORT_DIR
every HEAP_REPORT_SECONDS (default 5), as <pid>.json; the soak reads them beside RSS.
Without glibc 2.33 or later (musl, macOS, older distributions) the two malloc figures are missing;
without Linux's /proc, the stacks; with PYTHONMALLOC=malloc or a free-threaded build, Python's arenas.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
import threading
from pathlib import Path

LINES = [
    ("python_blocks_k", "Python's allocated blocks, each worker (sys.getallocatedblocks)", "thousands"),
    ("malloc_in_use_mb", "malloc'd and not freed, each worker (mallinfo2)", "MB"),
    ("malloc_free_mb", "freed memory malloc keeps for reuse, each worker (mallinfo2)", "MB"),
    ("python_arenas_mb", "Python's object arenas, each worker (sys._debugmallocstats)", "MB"),
    ("stacks_mb", "threads' stacks, resident, each worker (/proc/self/smaps)", "MB"),
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


class _MallocStats:
    """CPython's _PyObject_DebugMallocStats(FILE *), written into memory with glibc's open_memstream().

    The one private interface this module touches (tests/test_heap.py checks it still answers):
    sys._debugmallocstats() prints the same report, but to the C stderr, where a worker's log is.
    """

    def __init__(self) -> None:
        libc = ctypes.CDLL(None)
        self.open_memstream, self.fclose, self.free = libc.open_memstream, libc.fclose, libc.free
        self.open_memstream.restype = ctypes.c_void_p
        self.open_memstream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.fclose.argtypes = self.free.argtypes = [ctypes.c_void_p]
        self.report = ctypes.pythonapi._PyObject_DebugMallocStats
        self.report.argtypes, self.report.restype = [ctypes.c_void_p], ctypes.c_int

    def __call__(self) -> str:
        buffer, size = ctypes.c_void_p(), ctypes.c_size_t()
        stream = self.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
        if not stream:
            return ""
        try:
            self.report(stream)
        finally:
            self.fclose(stream)  # sets buffer and size
        try:
            return ctypes.string_at(buffer.value, size.value).decode()
        finally:
            self.free(buffer)


def _malloc_stats():
    try:
        return _MallocStats()
    except (OSError, AttributeError):  # not glibc, or a Python without the function
        return None


_MALLOC_STATS = _malloc_stats()
# "42 arenas * 1048576 bytes/arena = 44,040,192": the arenas Python's allocator holds now.
_ARENAS = re.compile(r"^\d+ arenas \* \d+ bytes/arena\s*=\s*([\d,]+)\s*$", re.MULTILINE)


def python_arenas_bytes() -> int | None:
    """Bytes in the arenas of Python's small-object allocator; None without pymalloc or the function."""
    if _MALLOC_STATS is None:
        return None
    found = _ARENAS.search(_MALLOC_STATS())
    return int(found.group(1).replace(",", "")) if found else None


def _stack_pointers() -> set[int] | None:
    """The stack pointer of every thread of this process blocked in (or between) system calls.

    None where no thread's /proc/self/task/*/syscall could be read (no /proc, or not allowed).
    """
    pointers, read = set(), False
    for task in os.listdir("/proc/self/task"):
        # A plain string, not a Path: pathlib interns every part of a path. Thread ids interned
        # and dropped every few seconds use up the slots of the interpreter's table of interned
        # strings, which is then rebuilt for three times the strings it holds: in a Django
        # worker (over 21,845) 131,072 slots in place of 65,536, 1 MB more, kept.
        try:
            with open(f"/proc/self/task/{task}/syscall") as syscall:
                fields = syscall.read().split()
        except OSError:  # the thread has ended, or the kernel does not say
            continue
        read = True
        # "nr arg1 .. arg6 sp pc" in a system call, "-1 sp pc" outside one, "running" on a CPU.
        if len(fields) >= 3:
            pointers.add(int(fields[-2], 16))
    return pointers if read else None


def _stack_mappings() -> dict[tuple[int, int], int]:
    """(start, end) -> resident bytes of each mapping that can be a stack: private, writable,
    anonymous (a thread's) or the main thread's [stack]; from /proc/self/smaps."""
    mappings, current = {}, None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if line.startswith("Rss:") and current is not None:
                mappings[current] = int(line.split()[1]) * 1024
                current = None
            elif not line[0].isupper():  # a mapping's header: "start-end perms offset dev inode [path]"
                fields = line.split()
                path = fields[5] if len(fields) > 5 else ""
                if fields[1].startswith("rw") and fields[1].endswith("p") and path in ("", "[stack]"):
                    start, end = fields[0].split("-")
                    current = (int(start, 16), int(end, 16))
    return mappings


class Stacks:
    """The resident part of this process's thread stacks.

    A stack is found by a stack pointer inside it; a thread busy on a CPU when one reading is
    taken has none, so every stack found stays known while its mapping stays the same.
    """

    def __init__(self) -> None:
        self.known: set[tuple[int, int]] = set()  # (start, end) of each stack's mapping

    def resident_bytes(self) -> int | None:
        """None where the threads' stack pointers cannot be read."""
        pointers = _stack_pointers()
        if pointers is None:
            return None
        mappings = _stack_mappings()
        found = {span for span in mappings if any(span[0] <= sp < span[1] for sp in pointers)}
        self.known = (self.known | found) & mappings.keys()
        return sum(mappings[span] for span in self.known)


def figures(stacks: Stacks | None = None) -> dict[str, float]:
    """This process's figures now (see the module's docstring); `stacks` remembers the stacks found."""
    found = {"python_blocks_k": sys.getallocatedblocks() / 1000}
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        found["malloc_in_use_mb"] = (info.uordblks + info.hblkhd) / 2**20
        found["malloc_free_mb"] = info.fordblks / 2**20
    arenas = python_arenas_bytes()
    if arenas is not None:
        found["python_arenas_mb"] = arenas / 2**20
    if stacks is not None:
        try:
            resident = stacks.resident_bytes()
        except OSError:  # no /proc: not Linux
            resident = None
        if resident is not None:
            found["stacks_mb"] = resident / 2**20
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
        stacks = Stacks()
        while True:
            try:
                partial.write_text(json.dumps(figures(stacks)))
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
