"""The database a comparison runs on: migrated and seeded, the same shop before every side, left as found."""

from __future__ import annotations

import os

from django.db import connections

from loadtests.site import StartError


def prepare(seed: str, static: bool = True) -> str:
    """Database up, migrated and seeded; returns the customer id range for orders ("first-last").

    `static`: collect static files too, for the sites this run starts (sites given with
    --target serve their own; in a container image the folder is not the run's to write).
    """
    from devtools.serve import configure_environment, prepare

    configure_environment()
    prepare(None if seed == "none" else seed, static=static)
    return customer_ids()


def customer_ids() -> str:
    from apps.customers.models import Customer

    ids = Customer.objects.order_by("pk").values_list("pk", flat=True)
    if not ids:
        raise StartError("the database has no customers to place orders: seed it (--seed small)")
    customers = f"{ids.first()}-{ids.last()}"
    connections.close_all()
    return customers


class Shop:
    """Every side starts on the same shop, and the run leaves it as the seed made it.

    Without reset(), each side would export and report over more orders than the
    one before, and the second side of a comparison would work harder than the
    first; orders need stock, so it is topped up for the run. restore() deletes
    the orders the run placed and puts every product's stock back: the seeded
    value for a product the seed made, what it had before the run for any other.
    """

    RUN_STOCK = 1_000_000

    def __init__(self) -> None:
        from apps.catalog.models import Product

        self.stock_before = dict(Product.objects.values_list("pk", "stock"))
        connections.close_all()

    def reset(self) -> None:
        from apps.catalog.models import Product

        self.delete_run_orders()
        Product.objects.update(stock=self.RUN_STOCK)
        connections.close_all()

    def delete_run_orders(self) -> None:
        from apps.orders.models import Order

        Order.objects.exclude(number__startswith="S-").delete()  # seeded orders are S-00000000...

    def restore(self) -> None:
        from apps.catalog.models import Product
        from apps.storefront.seeding import product_rows

        self.delete_run_orders()
        products = list(Product.objects.only("pk", "sku", "stock"))
        seeded_skus = [p.sku for p in products if p.sku.startswith("SKU-") and p.sku[4:].isdigit()]
        count = max((int(sku[4:]) for sku in seeded_skus), default=-1) + 1
        # The seed's rows come from a fixed random sequence, so they can be made again.
        seeded = {row.sku: row.stock for row in product_rows(count, [0])}
        for product in products:
            product.stock = seeded.get(product.sku, self.stock_before.get(product.pk, product.stock))
        Product.objects.bulk_update(products, ["stock"], batch_size=1000)
        connections.close_all()


def connections_allowed(spare: int = 3) -> int:
    """How many more connections the server takes now: max_connections less its reserved slots,
    the connections open now and `spare` (this run's own, a psql someone opens)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - coalesce(current_setting('reserved_connections', true)::int, 0)"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        )
        (allowed,) = cursor.fetchone()
    connections.close_all()
    return max(1, allowed - spare)


def embedded_server_running() -> bool:
    if os.environ.get("DATABASE_URL"):
        return False
    from devtools.localdb import LocalDatabase

    return LocalDatabase().running_server() is not None


def stop_embedded_server() -> bool:
    """Stop the embedded PostgreSQL; True if it was running."""
    from devtools.localdb import LocalDatabase

    return bool(LocalDatabase().stop())
