"""What runs the project on a developer machine, apart from its configuration (project/).

localdb         the embedded PostgreSQL used when DATABASE_URL is unset
pytest_plugin   starts it for the test suite, before Django reads its settings
serve           `make run`: migrate, seed and serve the shop under gunicorn
serve_ab        `make run-ab`: the release and stock sites side by side
djangosuite     `make django-suite`: Django's own tests against the release engines
"""
