"""The release engines beside the packages projects run with them: the debug toolbar, Sentry, OpenTelemetry.

Each sits between a view and its queries. The debug toolbar's SQL panel wraps
every cursor Django makes in a second instance of the engine's own cursor
class, around the same driver cursor, and closes only its own wrapper. Sentry's
Django integration patches Django's ``CursorWrapper.execute`` and
``BaseDatabaseWrapper.connect`` in place. OpenTelemetry adds its middleware
(and an ``execute_wrapper`` for its SQL commenter) and makes psycopg build its
cursors from a traced subclass of Django's.

With any of them, a view whose cursors are closed gives its connection back
before it waits on another service, and no request is reported as having ended
holding one (``db_requests_ended_holding_total``).

Requests go through Django's WSGIHandler, as a WSGI server calls it, so that
Sentry's patched handler opens its transaction. Each package patches
process-wide state; its tests undo that when they end.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import types
import wsgiref.util
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sentry_sdk
from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.staticfiles.storage import staticfiles_storage
from django.core.checks.registry import registry
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection, connections
from django.http import JsonResponse
from django.test.utils import override_system_checks
from django.urls import include, path
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.transport import Transport

from apps.catalog import external
from apps.catalog.models import Product
from loadtests.measure import Scrape
from tests.conftest import close_pool, holding
from tests.test_shop_support import make_shop

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

# Stock Django (DB_RELEASE=request) keeps the connection for the whole request.
HELD_BY_THE_ENGINE = settings.DB_RELEASE == "request"


# A driver cursor wrapped again, as these packages do ---------------------------------------------


def wrapped_again(cursor):
    """A second wrapper of the engine's own class around the same driver cursor, as the SQL panel makes."""
    return type(cursor)(cursor.cursor, cursor.db)


def test_a_driver_cursor_wrapped_twice_counts_once(database):
    alias = database()
    cursor = connections[alias].cursor()
    with wrapped_again(cursor) as again:  # only the outer wrapper is closed, as the toolbar does
        again.execute("SELECT 1")
        assert holding(alias)
    assert not holding(alias)


def test_closing_both_wrappers_of_a_driver_cursor_counts_it_down_once(database):
    alias = database()
    other = connections[alias].cursor()
    other.execute("SELECT 1")
    cursor = connections[alias].cursor()
    wrapped_again(cursor).close()
    cursor.close()
    cursor.close()
    assert holding(alias), "the other cursor is still open"
    other.close()
    assert not holding(alias)


@pytest.mark.parametrize("server_side_binding", [False, True])
def test_a_server_side_cursor_wrapped_twice_counts_once(database, server_side_binding):
    # With server_side_binding, the driver cursor is psycopg's own ServerCursor (no instance __dict__).
    alias = database(options={"server_side_binding": server_side_binding})
    Group.objects.using(alias).bulk_create([Group(name=f"g{i}") for i in range(5)])
    rows = Group.objects.using(alias).order_by("name").iterator(chunk_size=2)
    assert next(rows).name == "g0"
    assert holding(alias)
    wrapper = connections[alias]
    with wrapped_again(wrapper.chunked_cursor()) as again:
        again.execute("SELECT name FROM auth_group ORDER BY name")
        assert [name for (name,) in again.fetchmany(2)] == ["g0", "g1"]
    assert [group.name for group in rows] == ["g1", "g2", "g3", "g4"]
    assert not holding(alias)


@pytest.mark.parametrize("release", ["cursor", "request"])
def test_twice_wrapped_cursors_once_closed_are_no_leak(database, settings, caplog, release):
    settings.DB_LEAK_DIAGNOSTICS = True
    alias = database(release=release)
    for number in range(3):
        with wrapped_again(connections[alias].cursor()) as again:
            again.execute("SELECT %s", [number])
    with caplog.at_level(logging.WARNING, logger="backends.leaks"):
        connections[alias].close()  # the end of the request
    assert [record for record in caplog.records if record.name == "backends.leaks"] == []


# A view with closed queries, served beside the site -----------------------------------------------


def closed_queries(request):
    """Three raw queries, each cursor closed, then an ORM read in chunks (a server-side cursor) to the end."""
    wrappers, drivers = [], []
    for number in range(3):
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s", [number])
            cursor.fetchone()
        wrappers.append(type(cursor).__name__)
        drivers.append(type(cursor.cursor).__name__)
    skus = [product.sku for product in Product.objects.order_by("sku").iterator(chunk_size=2)]
    return JsonResponse(
        {
            "cursor_classes": wrappers,
            "driver_cursor_classes": drivers,
            "skus": skus,
            "held": external.holds_connection(),
        }
    )


def site_urls(*extra) -> types.ModuleType:
    """A URLconf: `extra`, the view above, then the whole site."""
    urls = types.ModuleType("instrumented_site_urls")
    urls.urlpatterns = [*extra, path("closed-queries/", closed_queries), path("", include("project.urls"))]
    return urls


def served(url: str) -> tuple[str, bytes]:
    """GET `url` as a WSGI server does: Django's handler, the body read, then close() (request_finished)."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": url, "REMOTE_ADDR": "127.0.0.1"}
    wsgiref.util.setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    started = []
    response = WSGIHandler()(environ, lambda status, headers, exc_info=None: started.append(status))
    try:
        body = b"".join(response)
    finally:
        response.close()
    return started[0], body


def served_json(url: str) -> dict:
    status, body = served(url)
    assert status.startswith("200"), (status, body[:500])
    return json.loads(body)


def requests_ended_holding() -> float:
    status, body = served("/metrics")
    assert status.startswith("200"), status
    return Scrape.parse(body.decode()).total("db_requests_ended_holding_total", alias="default")


@contextmanager
def no_request_ends_holding() -> Iterator[None]:
    before = requests_ended_holding()
    yield
    assert requests_ended_holding() == before, "a request ended holding its connection: a cursor counted open"


def assert_closed_queries_give_the_connection_back() -> dict:
    make_shop()
    with no_request_ends_holding():
        data = served_json("/closed-queries/")
    assert data["skus"] == ["BOOK-1", "BOOK-2", "KIT-1"]
    assert data["held"] is HELD_BY_THE_ENGINE
    return data


def assert_the_external_call_waits_without_a_connection(flavour: str) -> None:
    shop = make_shop()
    with no_request_ends_holding():
        data = served_json(f"/api/{flavour}/products/{shop.kettle.pk}/with-external-call/")
    assert data["product"]["sku"] == "KIT-1"
    assert data["external"]["db_connection_held_during_call"] is HELD_BY_THE_ENGINE


@pytest.fixture(autouse=True)
def site(settings):
    settings.ROOT_URLCONF = site_urls()
    settings.EXTERNAL_LATENCY_MS = 1


# Patches for good, put back -----------------------------------------------------------------------


# What a patch replaces; other module state (caches Django resets itself) is left as it is.
PATCHED_TYPES = (types.FunctionType, property)


def django_modules_and_classes() -> list:
    owners = []
    for name, module in list(sys.modules.items()):
        if module is not None and (name == "django" or name.startswith("django.")):
            owners.append(module)
            # type(v), not isinstance(): that asks a lazy object for its __class__, which evaluates it.
            owners += [v for v in vars(module).values() if issubclass(type(v), type) and v.__module__ == name]
    return owners


@contextmanager
def patches_put_back() -> Iterator[None]:
    """Put back what the block patched for good: Django's functions, the static files storage's bases.

    The functions and properties of Django's modules and classes (Sentry's
    integration, the toolbar's cache panel), and the base classes of the
    static files storage's class (the toolbar's static files panel). Neither
    package has a way to undo them. What they patch is imported before the
    snapshot: the handlers here, the rest with the packages at the top of this
    module (importing them patches nothing).
    """
    import django.core.handlers.asgi  # noqa: F401 - Sentry patches ASGIHandler

    storage_class = staticfiles_storage.__class__  # the configured storage's class, not the lazy object's
    storage_bases = storage_class.__bases__
    saved = [
        (owner, {name: value for name, value in vars(owner).items() if type(value) in PATCHED_TYPES})
        for owner in django_modules_and_classes()
    ]
    try:
        yield
    finally:
        missing = object()
        for owner, before in saved:
            for name, value in before.items():
                if vars(owner).get(name, missing) is not value:
                    setattr(owner, name, value)
        storage_class.__bases__ = storage_bases


# django-debug-toolbar -----------------------------------------------------------------------------


def show_toolbar(request) -> bool:
    return True


@pytest.fixture(params=[False, True], ids=["DEBUG off", "DEBUG on"])
def debug_toolbar(request, settings) -> Iterator[None]:
    """The toolbar as its installation guide sets it up, shown on every request, its SQL panel on."""
    settings.DEBUG = request.param  # on: Django's debug cursors, which the panel subclasses the same way
    settings.DEBUG_TOOLBAR_CONFIG = {"SHOW_TOOLBAR_CALLBACK": f"{__name__}.show_toolbar"}
    # The toolbar's ready() adds itself to MIGRATION_MODULES, in place: a copy's.
    settings.MIGRATION_MODULES = dict(settings.MIGRATION_MODULES)
    first, *rest = settings.MIDDLEWARE  # the metrics middleware stays first
    settings.MIDDLEWARE = [first, "debug_toolbar.middleware.DebugToolbarMiddleware", *rest]
    # Loading its app registers its system checks, and its panels' ready()
    # patch Django's cache handler and the static files storage, for good.
    with override_system_checks(registry.get_checks()), patches_put_back():
        settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "debug_toolbar"]
        settings.ROOT_URLCONF = site_urls(path("__debug__/", include("debug_toolbar.urls")))
        yield
    # The SQL panel replaces cursor() and chunked_cursor() on each connection
    # object it instruments, for good: drop those objects, so that the next
    # access builds them anew from the settings.
    for wrapper in connections.all(initialized_only=True):
        if "cursor" in vars(wrapper):
            wrapper.close()
            del connections[wrapper.alias]


class TestDebugToolbar:
    def test_closed_queries_give_the_connection_back_through_the_sql_panels_wrappers(self, debug_toolbar):
        data = assert_closed_queries_give_the_connection_back()
        assert data["cursor_classes"] == ["DjDTCursorWrapper"] * 3, "the SQL panel wrapped each cursor"

    @pytest.mark.parametrize("flavour", ["orm", "raw"])
    def test_the_shop_view_waits_on_its_external_call_without_a_connection(self, debug_toolbar, flavour):
        assert_the_external_call_waits_without_a_connection(flavour)


# Sentry ------------------------------------------------------------------------------------------


class KeptEnvelopes(Transport):
    """A Sentry transport that keeps what it is given: nothing leaves the process."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list = []

    def capture_envelope(self, envelope) -> None:
        self.envelopes.append(envelope)

    def db_spans(self) -> list[str]:
        """The SQL of every database span of the transactions sent so far."""
        events = (envelope.get_transaction_event() for envelope in self.envelopes)
        return [
            span.get("description", "")
            for event in events
            if event is not None
            for span in event.get("spans", [])
            if span.get("op") == "db"
        ]


SENTRY_CODE = f"{os.sep}sentry_sdk{os.sep}"


def sentrys_patches() -> list[str]:
    """Every function or property of Django's modules and classes that is Sentry's."""
    found = []
    for owner in django_modules_and_classes():
        for name, value in list(vars(owner).items()):
            # By type(value): any other look at a lazy object evaluates it. By
            # where the code is: functools.wraps gives a patch Django's __module__.
            function = value.fget if type(value) is property else value
            if type(function) is types.FunctionType and SENTRY_CODE in function.__code__.co_filename:
                found.append(f"{owner.__name__}.{name}")
    return found


@pytest.fixture(scope="class")
def sentry() -> Iterator[KeptEnvelopes]:
    """Sentry's Django integration, on for the tests of a class, every transaction and its spans kept."""
    kept = KeptEnvelopes()
    with patches_put_back():
        sentry_sdk.init(
            dsn="http://public@127.0.0.1:9/1",  # never reached: the transport keeps everything
            transport=kept,
            integrations=[DjangoIntegration()],
            default_integrations=False,
            auto_enabling_integrations=False,
            traces_sample_rate=1.0,
        )
        assert "CursorWrapper.execute" in sentrys_patches(), "the check that they are undone sees them"
        try:
            yield kept
        finally:
            sentry_sdk.get_client().close()
            sentry_sdk.get_global_scope().set_client(None)
    assert sentrys_patches() == [], "Sentry patched a Django module imported while it was on"


class TestSentry:
    def test_closed_queries_give_the_connection_back_with_sentrys_sql_hook(self, sentry):
        assert_closed_queries_give_the_connection_back()
        assert sum("SELECT" in sql for sql in sentry.db_spans()) >= 4, "Sentry recorded the queries"

    @pytest.mark.parametrize("flavour", ["orm", "raw"])
    def test_the_shop_view_waits_on_its_external_call_without_a_connection(self, sentry, flavour):
        assert_the_external_call_waits_without_a_connection(flavour)


# OpenTelemetry -----------------------------------------------------------------------------------


@pytest.fixture
def opentelemetry(settings) -> Iterator[list]:
    """OpenTelemetry's Django and psycopg instrumentation, SQL commenters on; the finished spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The instrumentor inserts its middleware into the list itself: a copy of the site's.
    settings.MIDDLEWARE = list(settings.MIDDLEWARE)
    # The pool's connections were made before: psycopg's instrumentation sees only new ones.
    close_pool("default")
    DjangoInstrumentor().instrument(tracer_provider=provider, is_sql_commentor_enabled=True)
    PsycopgInstrumentor().instrument(tracer_provider=provider, enable_commenter=True)
    try:
        yield exporter.get_finished_spans
    finally:
        PsycopgInstrumentor().uninstrument()
        DjangoInstrumentor().uninstrument()
        close_pool("default")  # its connections build traced cursors
        provider.shutdown()


class TestOpenTelemetry:
    def test_closed_queries_give_the_connection_back_on_traced_cursors(self, opentelemetry):
        data = assert_closed_queries_give_the_connection_back()
        assert data["driver_cursor_classes"] == ["TracedCursorFactory"] * 3
        spans = opentelemetry()
        assert any(span.attributes.get("db.system") == "postgresql" for span in spans)
        assert any(span.name.startswith("GET") for span in spans), "the Django middleware's span"

    @pytest.mark.parametrize("flavour", ["orm", "raw"])
    def test_the_shop_view_waits_on_its_external_call_without_a_connection(self, opentelemetry, flavour):
        assert_the_external_call_waits_without_a_connection(flavour)
