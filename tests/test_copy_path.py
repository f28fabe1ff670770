"""The way in for adopters: a new `django-admin startproject`, `backends/` copied in, the README's DATABASES.

Nothing of this project but `backends/` reaches the new one. It is checked,
migrated, and served under gunicorn's threads and under uvicorn; each view
reads through the ORM, then reports whether its connection was still checked
out when it went on to its slow call.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.db import connections

from tests.conftest import POOL
from tests.servers import ROOT, direct_connection, free_port

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(POOL != "native", reason="the README's engine is on Django's own pool: run once"),
]

VIEWS = """
import time

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connection
from django.http import JsonResponse


def held() -> bool:
    return connection.connection is not None


def users_then_slow_call(request):
    users = User.objects.count()
    held_during_call = held()
    time.sleep(0.05)  # the slow call: an API, a template, a loop
    return JsonResponse({"users": users, "held_during_call": held_during_call})


async def users_then_awaited_call(request):
    users = await User.objects.acount()
    held_during_call = await sync_to_async(held)()
    return JsonResponse({"users": users, "held_during_call": held_during_call})
"""

URLS = """
from django.urls import path

from mysite import views

urlpatterns = [
    path("sync/", views.users_then_slow_call),
    path("async/", views.users_then_awaited_call),
]
"""


def readme_databases() -> dict:
    """DATABASES as the README's adoption section gives it, evaluated."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(DATABASES = \{.*?\n\})\n```", readme, re.S)
    assert block, "the README shows a DATABASES block"
    tree = ast.parse(block.group(1))
    return ast.literal_eval(tree.body[0].value)


@pytest.fixture
def own_database():
    """A database of the new project's own on the test server, dropped afterwards."""
    settings = connections["default"].settings_dict
    name = f"test_copy_path_{free_port()}"
    with direct_connection("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield {"NAME": name, "HOST": settings["HOST"], "PORT": str(settings["PORT"] or ""),
           "USER": settings["USER"], "PASSWORD": settings["PASSWORD"]}  # fmt: skip
    with direct_connection("postgres") as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# What the per-view figures and manage.py connection_report need besides backends/ (the README says so).
METRICS_FOLDERS = ("apps/metrics", "apps/web")
METRICS_SETTINGS = """
INSTALLED_APPS += ['apps.metrics']
MIDDLEWARE = ['apps.metrics.middleware.DatabaseUsageMiddleware', *MIDDLEWARE]
"""
METRICS_URLS = """
from django.urls import include

urlpatterns.append(path("", include("apps.metrics.urls")))
"""


def copy(folder: str, where: Path) -> None:
    shutil.copytree(ROOT / folder, where / folder, ignore=shutil.ignore_patterns("__pycache__"))


def start_project(where: Path, database: dict, engine: str | None = None, metrics: bool = False) -> Path:
    where.mkdir()
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(where)], check=True)
    copy("backends", where)
    databases = readme_databases()
    # The README's entry as it stands, with the connection details of this server.
    databases["default"].update(database)
    if engine:
        databases["default"]["ENGINE"] = engine
    settings = where / "mysite" / "settings.py"
    settings.write_text(
        settings.read_text()
        + f"\nINSTALLED_APPS += ['backends']\nDATABASES = {databases!r}\nDEBUG = False\n"
        + "ALLOWED_HOSTS = ['127.0.0.1']\n"
        + (METRICS_SETTINGS if metrics else "")
    )
    (where / "mysite" / "views.py").write_text(VIEWS)
    (where / "mysite" / "urls.py").write_text(URLS + (METRICS_URLS if metrics else ""))
    if metrics:
        (where / "apps").mkdir()
        (where / "apps" / "__init__.py").write_text("")
        for folder in METRICS_FOLDERS:
            copy(folder, where)
    return where


def new_project_env() -> dict[str, str]:
    """This process's environment less what points at this project's settings."""
    return {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}


def run_in(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=new_project_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextmanager
def serving(project: Path, *worker: str) -> Iterator[str]:
    """gunicorn serving the new project; its base URL once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", *worker]
    log = project / f"gunicorn-{port}.log"
    with log.open("w") as output:
        server = subprocess.Popen(command, cwd=project, env=new_project_env(), stdout=output, stderr=output)
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).close()
            except urllib.error.HTTPError:
                break  # it answers (the new project has no page at /)
            except OSError:
                assert server.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
            else:
                break
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=20)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def serve_and_get(project: Path, path: str, *worker: str) -> dict:
    with serving(project, *worker) as base:
        return get_json(f"{base}{path}")


def test_a_new_project_with_only_backends_copied_in_releases_before_its_slow_call(tmp_path, own_database):
    project = start_project(tmp_path / "mysite", own_database)
    assert not (project / "apps").exists() and not (project / "project").exists()

    found = run_in(project, "-c", "import backends; print(backends.__file__)")
    assert found.stdout.startswith(str(project)), found.stdout + found.stderr  # the copy, nothing else

    checked = run_in(project, "manage.py", "check")
    assert checked.returncode == 0, checked.stderr
    migrated = run_in(project, "manage.py", "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr

    threaded = serve_and_get(project, "/sync/", "--threads", "4", "mysite.wsgi:application")
    assert threaded == {"users": 0, "held_during_call": False}
    under_uvicorn = serve_and_get(
        project, "/async/", "--worker-class", "uvicorn_worker.UvicornWorker", "mysite.asgi:application"
    )
    assert under_uvicorn == {"users": 0, "held_during_call": False}


def test_a_stock_project_with_the_metrics_copied_in_is_measured_before_switching(tmp_path, own_database):
    """Measure first: stock Django (the baseline engine), per-view figures, connection_report's prediction."""
    project = start_project(tmp_path / "mysite", own_database, engine="backends.baseline", metrics=True)
    assert run_in(project, "manage.py", "check").returncode == 0
    assert run_in(project, "manage.py", "migrate", "--noinput").returncode == 0

    with serving(project, "--threads", "4", "mysite.wsgi:application") as base:
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                assert get_json(f"{base}/sync/")["held_during_call"] is True  # stock holds it

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            report = run_in(
                project, "manage.py", "connection_report", "--url", base, "--seconds", "2", "--json"
            )
        finally:
            stop.set()
            sender.join(20)
    assert report.returncode == 0, report.stderr
    figures = json.loads(report.stdout)
    (view,) = [v for v in figures["views"] if v["view"] == "mysite.views.users_then_slow_call"]
    # Each request holds its connection through a 50 ms call that needs none of it.
    assert view["requests_per_s"] > 5
    assert view["idle_share"] > 0.8
    assert figures["total"]["connections_with_release"] < figures["total"]["connections_now"] / 5
