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
import time
import urllib.request
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


def start_project(where: Path, database: dict) -> Path:
    where.mkdir()
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(where)], check=True)
    shutil.copytree(ROOT / "backends", where / "backends", ignore=shutil.ignore_patterns("__pycache__"))
    databases = readme_databases()
    # The README's entry as it stands, with the connection details of this server.
    databases["default"].update(database)
    settings = where / "mysite" / "settings.py"
    settings.write_text(
        settings.read_text()
        + f"\nINSTALLED_APPS += ['backends']\nDATABASES = {databases!r}\nDEBUG = False\n"
        + "ALLOWED_HOSTS = ['127.0.0.1']\n"
    )
    (where / "mysite" / "views.py").write_text(VIEWS)
    (where / "mysite" / "urls.py").write_text(URLS)
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


def serve_and_get(project: Path, path: str, *worker: str) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", *worker]
    log = project / f"gunicorn-{port}.log"
    with log.open("w") as output:
        server = subprocess.Popen(command, cwd=project, env=new_project_env(), stdout=output, stderr=output)
    try:
        answer = None
        for _ in range(150):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                    answer = json.load(response)
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(0.2)
        assert answer is not None, log.read_text()[-3000:]
        return answer
    finally:
        server.terminate()
        server.wait(timeout=20)


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
