"""Sample data for the shop tests (this module holds no tests of its own)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from apps.catalog.models import Category, Product, Review
from apps.customers.models import Customer
from apps.orders.models import Order, OrderLine
from loadtests.site import BASE_DIR as ROOT


@dataclass
class Shop:
    books: Category
    kitchen: Category
    novel: Product  # books, 12.50
    atlas: Product  # books, 40.00
    kettle: Product  # kitchen, 25.00
    ada: Customer
    alan: Customer


def make_shop() -> Shop:
    books = Category.objects.create(name="Books", slug="books")
    kitchen = Category.objects.create(name="Kitchen", slug="kitchen")
    shop = Shop(
        books=books,
        kitchen=kitchen,
        novel=make_product(books, "BOOK-1", "A Long Novel", "12.50", stock=10),
        atlas=make_product(books, "BOOK-2", "World Atlas", "40.00", stock=3),
        kettle=make_product(kitchen, "KIT-1", "Whistling Kettle", "25.00", stock=5),
        ada=Customer.objects.create(
            name="Ada Lovelace", email="ada@private.example", address="12 Secret Lane, London"
        ),
        alan=Customer.objects.create(
            name="Alan Turing", email="alan@private.example", address="3 Hidden Road, Manchester"
        ),
    )
    Review.objects.create(product=shop.novel, customer=shop.ada, rating=5, title="Gripping", body="Loved it.")
    Review.objects.create(product=shop.novel, customer=shop.alan, rating=3, title="Too long")
    return shop


def make_product(category: Category, sku: str, name: str, price: str, stock: int) -> Product:
    return Product.objects.create(category=category, sku=sku, name=name, price=Decimal(price), stock=stock)


def make_order(
    customer: Customer,
    lines: list[tuple[Product, int]],
    *,
    number: str,
    days_ago: float = 1,
    status: str = Order.Status.PAID,
) -> Order:
    """An order as the seed data has them: written directly, stock untouched."""
    order = Order.objects.create(
        number=number,
        customer=customer,
        status=status,
        created_at=timezone.now() - timedelta(days=days_ago),
    )
    for product, quantity in lines:
        OrderLine.objects.create(order=order, product=product, quantity=quantity, unit_price=product.price)
    return order


def stock_of(*products: Product) -> list[int]:
    return [Product.objects.get(pk=product.pk).stock for product in products]


def private_details(shop: Shop) -> list[str]:
    """What no public page or endpoint may show about the customers."""
    return [shop.ada.email, shop.ada.address, shop.alan.email, shop.alan.address, "Lovelace", "Turing"]


def exports_complete(texts: list[str]) -> list[bool]:
    """What the load test (loadtests/locustfile.py) says of each CSV export: whole, or cut short?

    Asked in a process of its own: importing Locust patches threading (gevent) for good.
    """
    script = (
        "import json, sys\n"
        "from loadtests.locustfile import export_is_complete\n"
        "print(json.dumps([export_is_complete(text) for text in json.load(sys.stdin)]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(texts), capture_output=True, text=True, cwd=ROOT, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(run.stdout)
