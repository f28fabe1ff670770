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

exec "$@"
