"""Sales per day in the caller's time zone: per-request session state that never outlives the transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import connections

from apps.orders.models import Order
from tests.conftest import Worker
from tests.test_shop_support import make_order, make_shop

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def late_evening_order():
    shop = make_shop()
    order = make_order(shop.ada, [(shop.novel, 2)], number="D-1")
    # 20:00 UTC is already the next morning in Tokyo.
    placed = datetime.now(UTC).replace(hour=20, minute=0, second=0, microsecond=0) - timedelta(days=2)
    Order.objects.filter(pk=order.pk).update(created_at=placed)
    return placed


def test_days_are_cut_in_the_callers_time_zone(client, late_evening_order):
    utc = client.get("/api/raw/reports/sales/daily/?days=5").json()
    tokyo = client.get("/api/raw/reports/sales/daily/?days=5&tz=Asia/Tokyo").json()
    assert utc["time_zone"] == "UTC" and tokyo["time_zone"] == "Asia/Tokyo"
    assert [day["day"] for day in utc["days"]] == [late_evening_order.date().isoformat()]
    assert [day["day"] for day in tokyo["days"]] == [
        (late_evening_order + timedelta(days=1)).date().isoformat()
    ]
    assert tokyo["days"][0]["revenue"] == utc["days"][0]["revenue"] == "25.00"


def test_the_time_zone_goes_with_the_transaction(client, late_evening_order):
    client.get("/api/raw/reports/sales/daily/?tz=Asia/Tokyo")
    if settings.DB_RELEASE == "cursor":
        assert connections["default"].connection is None, "given back at the commit, not pinned"

    def session_time_zone() -> str:
        with connections["default"].cursor() as cursor:
            cursor.execute("SHOW TimeZone")
            return cursor.fetchone()[0]

    worker = Worker(session_time_zone)
    worker.start()
    assert worker.finish() == "UTC"


def test_an_unknown_time_zone_is_refused(client):
    response = client.get("/api/raw/reports/sales/daily/?tz=Mars/Olympus")
    assert response.status_code == 400
    assert "tz" in response.json()["fields"]
