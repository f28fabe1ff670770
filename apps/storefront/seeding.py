"""Fill the shop with deterministic sample data, fast, and only what is missing.

Every row has a natural key computed from its position (``SKU-000042``,
``customer000042@example.test``, order ``S-00000042``), and every random choice
comes from a generator with a fixed seed, so a second run computes the very same
rows, finds them in the database and inserts nothing. A bigger size (or more
order lines) later adds only the difference.

Rows go in with ``bulk_create`` in batches; order lines, the bulk of the data,
go in with PostgreSQL's COPY, which is several times faster for 100k+ rows.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone
from django.utils.text import slugify

from apps.catalog.models import Category, Product, Review
from apps.customers.models import Customer
from apps.orders.models import Order, OrderLine


@dataclass(frozen=True)
class Size:
    categories: int
    products: int
    customers: int
    reviews: int
    order_lines: int


SIZES = {
    "small": Size(categories=5, products=50, customers=50, reviews=200, order_lines=1_000),
    "medium": Size(categories=10, products=500, customers=2_000, reviews=5_000, order_lines=100_000),
    "large": Size(categories=20, products=5_000, customers=20_000, reviews=50_000, order_lines=1_000_000),
}

CATEGORY_NAMES = [
    "Books", "Kitchen", "Garden", "Toys", "Music", "Outdoor", "Office", "Bathroom", "Lighting", "Tools",
    "Pets", "Games", "Travel", "Sports", "Bedroom", "Crafts", "Cycling", "Camping", "Coffee", "Tea",
]  # fmt: skip
ADJECTIVES = [
    "Sturdy", "Compact", "Classic", "Handmade", "Recycled", "Deluxe", "Foldable", "Vintage", "Quiet",
    "Bright", "Waterproof", "Travel", "Organic", "Modular", "Minimal", "Heavy-duty",
]  # fmt: skip
NOUNS = [
    "Lamp", "Kettle", "Notebook", "Chair", "Backpack", "Mug", "Planter", "Puzzle", "Speaker", "Blanket",
    "Toolbox", "Bottle", "Tent", "Grinder", "Frame", "Basket", "Clock", "Rug",
]  # fmt: skip
FIRST_NAMES = [
    "Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Dennis",
    "Radia", "Tim", "Sophie", "Guido", "Hedy", "Linus", "Annie", "Niklaus", "Katherine", "John",
]  # fmt: skip
LAST_NAMES = [
    "Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton",
    "Ritchie", "Perlman", "Berners-Lee", "Wilson", "van Rossum", "Lamarr", "Torvalds", "Easley",
    "Wirth", "Johnson", "Backus",
]  # fmt: skip
REVIEW_TITLES = {
    1: ["Broke in a week", "Not as described"],
    2: ["Disappointing", "Could be better"],
    3: ["Does the job", "Average"],
    4: ["Very good", "Happy with it"],
    5: ["Excellent", "Would buy again"],
}
MAX_LINES_PER_ORDER = 7
ORDER_BATCH_LINES = 20_000  # order lines per transaction
BATCH_SIZE = 2_000  # rows per INSERT for bulk_create


def category_rows(count: int) -> list[Category]:
    names = CATEGORY_NAMES[:count] + [f"Category {i}" for i in range(len(CATEGORY_NAMES), count)]
    return [Category(name=name, slug=slugify(name)) for name in names]


def product_rows(count: int, categories: list[int]) -> list[Product]:
    rng = random.Random("products")
    rows = []
    for i in range(count):
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {i}"
        rows.append(
            Product(
                category_id=categories[i % len(categories)],
                sku=f"SKU-{i:06d}",
                name=name,
                description=f"The {name.lower()}: sample data for the demo shop.",
                price=Decimal(rng.randint(199, 49_999)) / 100,
                stock=rng.randint(100, 1_000),
            )
        )
    return rows


def customer_email(i: int) -> str:
    return f"customer{i:06d}@example.test"


def customer_rows(count: int) -> list[Customer]:
    rng = random.Random("customers")
    return [
        Customer(
            name=f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
            email=customer_email(i),
            address=f"{rng.randint(1, 300)} Sample Street, {rng.randint(10000, 99999)} Demo City",
        )
        for i in range(count)
    ]


def review_rows(count: int, products: list[int], customers: list[int]) -> list[Review]:
    """`count` reviews, each for a different (product, customer) pair."""
    pairs = len(products) * len(customers)
    count = min(count, pairs)
    # Walking the pairs with a step coprime to their number visits each at most
    # once and spreads the reviews over many products.
    step = next(s for s in range(7919, 7919 + pairs + 1) if math.gcd(s, pairs) == 1)
    rng = random.Random("reviews")
    now = timezone.now()
    rows = []
    for j in range(count):
        pair = (j * step) % pairs
        rating = rng.choices([1, 2, 3, 4, 5], weights=[1, 1, 2, 4, 4])[0]
        rows.append(
            Review(
                product_id=products[pair // len(customers)],
                customer_id=customers[pair % len(customers)],
                rating=rating,
                title=rng.choice(REVIEW_TITLES[rating]),
                body="Sample review." if rating > 2 else "Sample complaint.",
                created_at=now - timedelta(minutes=rng.randrange(365 * 24 * 60)),
            )
        )
    return rows


@dataclass
class Counts:
    total: int = 0
    new: int = 0


@dataclass
class SeedResult:
    counts: dict[str, Counts]
    seconds: float

    def summary(self) -> str:
        parts = ", ".join(f"{c.total:,} {name} ({c.new:,} new)" for name, c in self.counts.items())
        return f"Seeded in {self.seconds:.1f}s: {parts}."


class Seeder:
    def __init__(self, size: Size, say: Callable[[str], None] = print) -> None:
        self.size = size
        self.say = say
        self.counts: dict[str, Counts] = {}

    def run(self) -> SeedResult:
        started = time.perf_counter()
        size = self.size
        category_ids = self.insert_missing("categories", Category, category_rows(size.categories), "slug")
        product_ids = self.insert_missing(
            "products", Product, product_rows(size.products, category_ids), "sku"
        )
        customer_ids = self.insert_missing("customers", Customer, customer_rows(size.customers), "email")
        self.insert_reviews(product_ids, customer_ids)
        self.insert_orders(product_ids, customer_ids)
        with connection.cursor() as cursor:
            # Fresh statistics, so the report's plans fit the data just loaded.
            cursor.execute("ANALYZE catalog_product, catalog_review, orders_order, orders_orderline")
        return SeedResult(self.counts, time.perf_counter() - started)

    def insert_missing(self, label: str, model, rows: list, key: str) -> list[int]:
        """Insert the rows whose natural `key` is not there yet; the ids of all `rows`, in order."""
        keys = [getattr(row, key) for row in rows]
        before = model.objects.count()
        # ON CONFLICT DO NOTHING on the natural key: rows already there stay as they are
        # (a product's stock, say, is not reset by seeding again).
        model.objects.bulk_create(rows, batch_size=BATCH_SIZE, ignore_conflicts=True)
        ids = dict(model.objects.filter(**{f"{key}__in": keys}).values_list(key, "id"))
        new = model.objects.count() - before
        self.count(label, len(ids), new)
        return [ids[k] for k in keys]

    def insert_reviews(self, products: list[int], customers: list[int]) -> None:
        rows = review_rows(self.size.reviews, products, customers)
        before = Review.objects.count()
        Review.objects.bulk_create(rows, batch_size=BATCH_SIZE, ignore_conflicts=True)
        after = Review.objects.count()
        self.count("reviews", after, after - before)

    def insert_orders(self, products: list[int], customers: list[int]) -> None:
        """Orders "S-00000000", "S-00000001", … until they hold `order_lines` lines in all.

        The generator is walked from the first order every time, so order n
        always gets the same lines; orders already present are skipped.
        """
        existing = set(Order.objects.filter(number__startswith="S-").values_list("number", flat=True))
        prices = dict(Product.objects.filter(id__in=products).values_list("id", "price"))
        rng = random.Random("orders")
        now = timezone.now()
        statuses = [Order.Status.PAID, Order.Status.SHIPPED, Order.Status.CANCELLED]
        lines_per_order = min(MAX_LINES_PER_ORDER, len(products))
        orders: list[Order] = []
        lines: list[list[tuple[int, int, Decimal]]] = []  # per order: (product, quantity, price)
        planned_lines = new_orders = new_lines = 0
        number = 0
        while planned_lines < self.size.order_lines:
            # Draw everything for this order even if it exists, to keep the stream in step.
            picked = rng.sample(products, rng.randint(1, lines_per_order))
            quantities = [rng.randint(1, 5) for _ in picked]
            customer = customers[rng.randrange(len(customers))]
            status = rng.choices(statuses, weights=[70, 25, 5])[0]
            minutes_ago = rng.randrange(365 * 24 * 60)
            planned_lines += len(picked)
            key = f"S-{number:08d}"
            number += 1
            if key in existing:
                continue
            orders.append(
                Order(
                    number=key,
                    customer_id=customer,
                    status=status,
                    created_at=now - timedelta(minutes=minutes_ago),
                )
            )
            lines.append([(p, q, prices[p]) for p, q in zip(picked, quantities, strict=True)])
            new_orders += 1
            new_lines += len(picked)
            if sum(map(len, lines)) >= ORDER_BATCH_LINES:
                self.write_orders(orders, lines)
                self.say(f"  … {new_orders:,} new orders, {new_lines:,} new order lines")
                orders, lines = [], []
        if orders:
            self.write_orders(orders, lines)
        self.count("orders", Order.objects.filter(number__startswith="S-").count(), new_orders)
        self.count("order lines", OrderLine.objects.filter(order__number__startswith="S-").count(), new_lines)

    @staticmethod
    def write_orders(orders: list[Order], lines: list[list[tuple[int, int, Decimal]]]) -> None:
        # One transaction per batch: an interrupted run never leaves an order without its lines.
        with transaction.atomic():
            Order.objects.bulk_create(orders, batch_size=BATCH_SIZE)  # sets each order's id
            copy_sql = "COPY orders_orderline (order_id, product_id, quantity, unit_price) FROM STDIN"
            with connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
                for order, order_lines in zip(orders, lines, strict=True):
                    for product, quantity, price in order_lines:
                        copy.write_row((order.id, product, quantity, price))

    def count(self, label: str, total: int, new: int) -> None:
        self.counts[label] = Counts(total, new)
        self.say(f"{label}: {total:,} ({new:,} new)")
