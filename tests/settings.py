"""Settings for the test suite: the project's own, with a throwaway secret key."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "insecure-key-for-the-test-suite-only")

from project.settings import *  # noqa: E402,F403
