#!/bin/sh
# Runs before every command of the image (the sites, migrate, Locust, the comparison).
set -e

# Without DJANGO_SECRET_KEY, a random key for this container alone: there is no built-in
# key that someone could copy. Sessions and signed values then last as long as the container;
# set DJANGO_SECRET_KEY (in .env, for compose) to keep them across restarts.
if [ -z "${DJANGO_SECRET_KEY}" ]; then
    DJANGO_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')"
    export DJANGO_SECRET_KEY
fi

# Where every process of the container writes its Prometheus metrics (gunicorn's workers,
# and migrate or seed, whose queries are measured too): it must exist before the first one.
if [ -n "${PROMETHEUS_MULTIPROC_DIR}" ]; then
    mkdir -p "${PROMETHEUS_MULTIPROC_DIR}"
fi

exec "$@"
