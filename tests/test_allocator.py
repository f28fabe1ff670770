"""project/allocator.py: threads share two malloc arenas, counted by glibc's own malloc_info();
free pages go back to the system, measured in the process's resident memory."""

from __future__ import annotations

import ctypes
import os
import runpy
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from project import allocator
from tests.servers import ROOT

pytestmark = pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "malloc_info"), reason="malloc arenas are glibc's"
)

# Eight threads, alive together, each mallocs (64 KiB blocks: under the mmap threshold, so
# from an arena); then malloc_info() describes every arena, one <heap> element each.
ARENAS_OF_EIGHT_THREADS = """
import ctypes, os, sys, tempfile, threading
from project import allocator
if sys.argv[1] == "limit":
    assert allocator.limit_arenas(2)
barrier = threading.Barrier(9)
def work():
    blocks = [bytes(65536) for _ in range(16)]
    barrier.wait()
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
barrier.wait()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
path = tempfile.NamedTemporaryFile(delete=False).name
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
barrier.wait()
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""


GLIBC_SETTINGS = ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")  # glibc's defaults, whatever CI's environment says


def run_fresh(script: str, mode: str) -> str:
    """`script`'s output, run with `mode` in a fresh interpreter under glibc's default settings."""
    env = {name: value for name, value in os.environ.items() if name not in GLIBC_SETTINGS}
    command = [sys.executable, "-c", script, mode]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def arenas(mode: str) -> int:
    return int(run_fresh(ARENAS_OF_EIGHT_THREADS, mode))


def test_threads_get_arenas_of_their_own_by_default():
    assert arenas("default") > 4


def test_limited_they_share_two():
    assert arenas("limit") <= 2


def test_the_sites_gunicorn_settings_limit_the_master_before_it_forks(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # the settings set it; put back after
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    calls = []
    monkeypatch.setattr("project.allocator.limit_arenas", calls.append)
    runpy.run_path(str(ROOT / "project" / "gunicorn.conf.py"))
    assert calls == [2]

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # glibc's own variable: it has read it already
    runpy.run_path(str(ROOT / "project" / "gunicorn.conf.py"))
    assert calls == [2]


# 32 MiB in 64 KiB blocks (under the mmap threshold: from an arena), all freed but the
# last, which keeps the free space below it from being the arena's top: glibc keeps it,
# resident. Prints the resident MiB before the blocks, after the free, and after `sys.argv[1]`.
FREED_BUT_KEPT = """
import os, sys, time
from project import allocator

def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

before = resident_mib()
blocks = [bytearray(65536) for _ in range(512)]  # bytearray(n) writes its n bytes: resident
last = bytearray(65536)
del blocks
kept = resident_mib()
if sys.argv[1] == "trim":
    assert allocator.trim()
elif sys.argv[1] == "thread":
    trimmer = allocator.start_trimming(0.05)
    time.sleep(0.5)
    trimmer.stop()
print(before, kept, resident_mib())
"""


def resident_around_a_free(mode: str) -> tuple[float, float, float]:
    """MiB resident before the blocks, after they are freed, and after `mode`, in a fresh interpreter."""
    before, kept, after = map(float, run_fresh(FREED_BUT_KEPT, mode).split())
    return before, kept, after


def test_freed_pages_below_a_live_block_stay_resident_without_a_trim():
    before, kept, after = resident_around_a_free("nothing")
    assert kept > before + 24  # of the 32 MiB freed
    assert after > kept - 4


@pytest.mark.parametrize("mode", ["trim", "thread"])
def test_a_trim_gives_them_back(mode):
    before, kept, after = resident_around_a_free(mode)
    assert kept > before + 24
    assert after < kept - 24


def test_without_glibcs_malloc_trim_nothing_is_trimmed(monkeypatch):
    monkeypatch.setattr(allocator, "_MALLOC_TRIM", None)
    assert allocator.trim() is False
    assert allocator.start_trimming(60) is None


def test_trim_seconds_default_to_a_minute_and_zero_starts_nothing(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_SECONDS", raising=False)
    assert allocator.trim_seconds() == 60
    monkeypatch.setenv("MALLOC_TRIM_SECONDS", "0")
    assert allocator.start_trimming(allocator.trim_seconds()) is None


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_a_bad_trim_interval_is_refused(monkeypatch, value):
    monkeypatch.setenv("MALLOC_TRIM_SECONDS", value)
    with pytest.raises(ImproperlyConfigured, match="MALLOC_TRIM_SECONDS"):
        allocator.trim_seconds()


def gunicorn_settings(monkeypatch, tmp_path) -> dict:
    """project/gunicorn.conf.py's names, run here with the master's malloc calls left out."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # the settings set it; put back after
    monkeypatch.setattr(allocator, "limit_arenas", lambda count: True)
    return runpy.run_path(str(ROOT / "project" / "gunicorn.conf.py"))


def test_each_gunicorn_worker_starts_trimming_after_the_fork(monkeypatch, tmp_path):
    monkeypatch.setenv("MALLOC_TRIM_SECONDS", "30")
    started = []
    monkeypatch.setattr(allocator, "start_trimming", started.append)
    gunicorn_settings(monkeypatch, tmp_path)["post_fork"](None, None)
    assert started == [30]


def test_the_sites_gunicorn_settings_refuse_a_bad_trim_interval_in_the_master(monkeypatch, tmp_path):
    monkeypatch.setenv("MALLOC_TRIM_SECONDS", "-5")
    with pytest.raises(ImproperlyConfigured, match="MALLOC_TRIM_SECONDS"):
        gunicorn_settings(monkeypatch, tmp_path)


def test_the_task_worker_starts_trimming_and_stops_on_a_bad_interval(monkeypatch, settings, tmp_path):
    from project import celery

    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(tmp_path / "in")}
    monkeypatch.setenv("DATABASE_URL", "postgres://unused")  # not the embedded server's check
    monkeypatch.setattr(allocator, "share_arenas", lambda: True)
    started = []
    monkeypatch.setattr(allocator, "start_trimming", started.append)
    monkeypatch.delenv("MALLOC_TRIM_SECONDS", raising=False)
    celery.prepare_worker()
    assert started == [60]

    monkeypatch.setenv("MALLOC_TRIM_SECONDS", "never")
    with pytest.raises(SystemExit, match="MALLOC_TRIM_SECONDS"):
        celery.prepare_worker()
    assert started == [60]
