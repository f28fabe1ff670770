# The sample site (and the Locust tools), for docker-compose.yml.
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_DEBUG=0 \
    GUNICORN_BIND=0.0.0.0:8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /app
RUN useradd --create-home --uid 10001 app

# The dependencies first, in a layer of their own: editing the code does not reinstall them.
# The project itself is not installed: it runs from /app, its only copy in the image.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extras['dj-db-conn-pool'] + extras['load'] + extras['asgi'] + extras['tasks']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY manage.py ./
COPY docker/entrypoint.sh /usr/local/bin/docker-entrypoint
COPY templates ./templates
COPY project ./project
COPY devtools ./devtools
COPY backends ./backends
COPY apps ./apps
COPY loadtests ./loadtests

# Static files are collected at build time, without a database: importing the settings starts
# and connects to nothing. `python -m django`, not manage.py, which would start the embedded
# PostgreSQL for lack of DATABASE_URL (the image has none; compose gives the URL at run time).
RUN DJANGO_SECRET_KEY=collectstatic-only-$(python -c "import secrets; print(secrets.token_hex(32))") \
    DJANGO_SETTINGS_MODULE=project.settings \
    python -m django collectstatic --noinput --verbosity 0 \
    && mkdir reports && chown app:app reports

# The commit the image was built from, for the comparison reports (there is no git inside):
# docker compose build --build-arg GIT_COMMIT=$(git rev-parse --short HEAD), or export GIT_COMMIT.
ARG GIT_COMMIT=unknown
ENV GIT_COMMIT=${GIT_COMMIT}

USER app
EXPOSE 8000
ENTRYPOINT ["docker-entrypoint"]
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["gunicorn", "-c", "project/gunicorn.conf.py"]
