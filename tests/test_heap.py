"""A worker's heap figures (loadtests/heap.py): read from this very process, written and read back."""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading

import pytest

from loadtests import heap, soak
from tests.servers import ROOT

reads_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux's /proc")
glibc_only = pytest.mark.skipif(heap._MALLINFO2 is None, reason="mallinfo2() is glibc's")


@glibc_only
def test_malloc_in_use_follows_what_is_allocated_and_freed():
    before = heap.figures()
    # 4,000 blocks of 8 KiB: over Python's 512-byte limit, so each one is malloc's.
    blocks = [bytes(8192) for _ in range(4000)]
    held = heap.figures()
    del blocks
    after = heap.figures()

    grown = held["malloc_in_use_mb"] - before["malloc_in_use_mb"]
    assert grown == pytest.approx(4000 * 8192 / 2**20, rel=0.2)
    assert after["malloc_in_use_mb"] < held["malloc_in_use_mb"] - 0.8 * grown
    assert held["malloc_free_mb"] >= 0


def test_python_blocks_count_objects_held():
    before = heap.figures()["python_blocks_k"]
    objects = [object() for _ in range(50_000)]
    assert heap.figures()["python_blocks_k"] - before == pytest.approx(50, rel=0.2)
    del objects


cpython_on_glibc = pytest.mark.skipif(
    heap._MALLINFO2 is None or sys.implementation.name != "cpython", reason="CPython's allocator on glibc"
)


@cpython_on_glibc
def test_pythons_arenas_are_read_as_sys_debugmallocstats_prints_them(capfd):
    # The one private function the module calls: still there, and its report still parsed.
    assert heap._MALLOC_STATS is not None
    capfd.readouterr()
    sys._debugmallocstats()
    printed = heap._ARENAS.search(capfd.readouterr().err)
    if printed is None:  # PYTHONMALLOC=malloc: no arenas to count, none reported
        assert heap.python_arenas_bytes() is None
        return
    assert heap.python_arenas_bytes() == int(printed.group(1).replace(",", ""))


@cpython_on_glibc
def test_python_arenas_follow_small_objects_held_and_freed():
    before = heap.python_arenas_bytes()
    if before is None:
        pytest.skip("PYTHONMALLOC=malloc: Python's objects are malloc's")
    # 400,000 small objects, about 29 MiB: more than the free room in the arenas already held
    # (however much earlier tests left), so new arenas come, and go back once all are freed.
    objects = [[] for _ in range(400_000)]
    held = heap.python_arenas_bytes()
    del objects
    after = heap.python_arenas_bytes()

    assert held - before >= 8 * 2**20
    assert after < held - 6 * 2**20


@reads_proc
def test_stacks_find_every_blocked_thread():
    stacks = heap.Stacks()
    stacks.resident_bytes()
    before = set(stacks.known)
    release, ready = threading.Event(), threading.Barrier(5)

    def waits() -> None:
        ready.wait()
        release.wait()

    threads = [threading.Thread(target=waits) for _ in range(4)]
    for thread in threads:
        thread.start()
    ready.wait()
    try:
        # A thread just let through the barrier may still be on a CPU (no stack pointer) for a moment.
        for _ in range(100):
            resident = stacks.resident_bytes()
            if len(stacks.known - before) >= 4:
                break
            release.wait(0.01)
        # Each new thread's stack is a mapping of its own, with at least the page it waits on.
        assert len(stacks.known - before) == 4
        assert resident >= 4 * 4096
        assert heap.figures(stacks)["stacks_mb"] == pytest.approx(stacks.resident_bytes() / 2**20, rel=0.1)
    finally:
        release.set()
        for thread in threads:
            thread.join()


@reads_proc
def test_taking_the_figures_interns_no_string(monkeypatch):
    # The reporter takes them every few seconds in the worker it measures: strings interned and
    # dropped each time would make the interpreter rebuild its table of interned strings, 1 MB
    # larger, in the middle of a soak (loadtests/heap.py, _stack_pointers()).
    interned = []
    intern = sys.intern
    monkeypatch.setattr(sys, "intern", lambda text: interned.append(text) or intern(text))
    stacks = heap.Stacks()
    for _ in range(3):
        assert "stacks_mb" in heap.figures(stacks)  # every thread's /proc/self/task/<id> read
    assert interned == []


def test_a_reporter_writes_its_figures_and_the_soak_reads_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAP_REPORT_DIR", str(tmp_path / "heap"))
    monkeypatch.setenv("HEAP_REPORT_SECONDS", "0.05")
    reporter = heap.start_reporting()
    assert reporter is not None
    path = tmp_path / "heap" / f"{os.getpid()}.json"
    for _ in range(100):
        if path.exists():
            break
        reporter.join(0.05)
    reporter.stop()
    (tmp_path / "heap" / "notes.json").write_text("not a worker's")
    (tmp_path / "heap" / "7.json").write_text("{half a fi")

    reports = heap.read_reports(tmp_path / "heap")
    assert list(reports) == [os.getpid()]
    assert reports[os.getpid()]["python_blocks_k"] > 1


def test_no_reporter_without_a_folder(monkeypatch):
    monkeypatch.delenv("HEAP_REPORT_DIR", raising=False)
    assert heap.start_reporting() is None


def test_the_soaks_gunicorn_settings_are_the_projects_with_a_worker_hook(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # the settings set it; put back after
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")  # or they would set this process's malloc arenas
    project = runpy.run_path(str(ROOT / "project" / "gunicorn.conf.py"))
    soaks = runpy.run_path(str(ROOT / "loadtests" / "gunicorn_heap.conf.py"))
    for name in ("bind", "workers", "threads", "worker_class", "wsgi_app", "timeout", "on_starting",
                 "post_fork", "worker_exit", "child_exit"):  # fmt: skip
        ours, theirs = soaks[name], project[name]
        if callable(theirs):
            assert ours.__code__ == theirs.__code__, name
        else:
            assert ours == theirs, name
    assert "post_worker_init" in soaks and "post_worker_init" not in project


def test_heap_figures_are_shown_from_minute_5_without_a_verdict():
    blocks = {"wsgi/1": [[60.0 * i, 400 + (i >= 5) * 40] for i in range(31)]}
    (verdict,) = soak.memory_verdicts(blocks, 1800, "python_blocks_k", judged=False)
    assert verdict.passed is None and verdict.note == "+0.0%"
    assert verdict.rule == "figures only, from minute 5 to the end"
    assert json.dumps(soak.LINES).count("mallinfo2") == 2
