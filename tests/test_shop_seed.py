"""`manage.py seed`: fills every table, deterministically, and never twice."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from apps.catalog.models import Category, Product, Review
from apps.customers.models import Customer
from apps.orders.models import Order, OrderLine

pytestmark = pytest.mark.django_db


def seed(*args: str) -> str:
    out = io.StringIO()
    call_command("seed", *args, stdout=out)
    return out.getvalue()


def table_sizes() -> dict[str, int]:
    return {
        "categories": Category.objects.count(),
        "products": Product.objects.count(),
        "customers": Customer.objects.count(),
        "reviews": Review.objects.count(),
        "orders": Order.objects.count(),
        "order lines": OrderLine.objects.count(),
    }


def seeded_lines() -> list[tuple]:
    return list(
        OrderLine.objects.order_by("order__number", "product__sku").values_list(
            "order__number", "product__sku", "quantity", "unit_price"
        )
    )


def test_seed_small_fills_every_table():
    output = seed("--size", "small")

    sizes = table_sizes()
    assert {k: v for k, v in sizes.items() if k not in ("orders", "order lines")} == {
        "categories": 5,
        "products": 50,
        "customers": 50,
        "reviews": 200,
    }
    # Orders have 1 to 7 lines; the last order may go a little past the target.
    assert 1_000 <= sizes["order lines"] < 1_007
    assert 1_000 / 7 <= sizes["orders"] <= 1_000
    assert output.startswith("Seeding size 'small'")
    assert output.splitlines()[-1].startswith("Seeded in ")
    assert f"{sizes['order lines']:,} order lines ({sizes['order lines']:,} new)" in output


def test_seeding_again_adds_nothing():
    seed("--size", "small")
    before = table_sizes()
    lines = seeded_lines()

    output = seed("--size", "small")

    assert table_sizes() == before
    summary = output.splitlines()[-1].split(": ", 1)[1].rstrip(".")
    assert all(part.endswith("(0 new)") for part in summary.split(", ")), summary
    assert seeded_lines() == lines


def test_more_order_lines_later_adds_only_the_difference():
    seed("--order-lines", "100")
    first = dict(Order.objects.values_list("number", "created_at"))

    seed("--order-lines", "300")

    assert OrderLine.objects.count() >= 300
    after = dict(Order.objects.values_list("number", "created_at"))
    assert {number: after[number] for number in first} == first, "the first orders are untouched"
    assert len(after) > len(first)


def test_seeding_again_keeps_what_changed_since():
    seed("--order-lines", "10")
    Product.objects.filter(sku="SKU-000000").update(stock=0)

    seed("--order-lines", "10")

    assert Product.objects.get(sku="SKU-000000").stock == 0


def test_seeded_data_is_the_same_on_every_database():
    seed("--order-lines", "50")
    first = seeded_lines()
    OrderLine.objects.all().delete()
    Order.objects.all().delete()

    seed("--order-lines", "50")

    assert seeded_lines() == first


def test_seeded_lines_are_priced_at_their_products_price():
    seed("--order-lines", "50")
    line = OrderLine.objects.select_related("product").first()
    assert line.unit_price == line.product.price


def test_seed_refuses_a_negative_number_of_order_lines():
    with pytest.raises(CommandError, match="--order-lines"):
        seed("--order-lines", "-1")
    assert table_sizes()["products"] == 0


def test_seed_refuses_an_unknown_size():
    with pytest.raises(CommandError, match="invalid choice"):
        seed("--size", "enormous")
