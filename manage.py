#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    if not os.environ.get("DATABASE_URL"):
        # No server given: start (or reuse) the embedded one before any command connects.
        from devtools import localdb

        try:
            localdb.ensure_database()
        except localdb.LocalDatabaseError as exc:
            sys.exit(f"error: {exc}")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
