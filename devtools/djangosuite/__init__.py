"""Django's own test suite, run against this project's release engines (`make django-suite`).

The installed Django's wheel has no tests, so the matching source release is fetched with pip
into .cache/django-tests/ once, and its tests/runtests.py runs a chosen set of apps with
settings that select one engine (settings.py). Tests known to differ on the release engines
are listed, with the reason, in expected.py; anything else that fails fails the run.
"""
