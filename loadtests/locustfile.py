"""Locust scenarios against the sample shop, one user class each.

    orm     ORM product page, then a slow external call        OrmUser
    raw     raw SQL (`with connection.cursor()`), then the call RawUser
    mixed   a shop: browsing, raw reports, orders, exports      MixedUser
    atomic  write transactions only (release gains nothing)    AtomicUser
    leaky   a raw cursor never closed (release cannot help)    LeakyUser
    async   async ORM reads around an awaited call (ASGI)       AsyncUser

Pick one by class name, e.g. `locust -f loadtests/locustfile.py RawUser`, or by
scenario name with `--tags raw`. The external call's latency is the server's
EXTERNAL_LATENCY_MS. SHOP_CUSTOMER_IDS ("first-last") says which customers may
place orders; the seeded ones are 1-50 on a fresh database.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import urllib.request

from locust import FastHttpUser, constant, events, tag, task

product_ids: list[int] = []


# The CSV export's last line (apps/orders/export.py): a 200 cut short mid-stream has none.
EXPORT_TRAILER = re.compile(r"# end of export: (\d+) order lines\r\n\Z")


def export_is_complete(text: str) -> bool:
    """Whether a CSV export ends with its trailer, and has as many order lines as the trailer counts."""
    trailer = EXPORT_TRAILER.search(text)
    if trailer is None:
        return False
    rows = sum(1 for _ in csv.reader(io.StringIO(text)))  # a product name may hold a line break
    return rows == int(trailer.group(1)) + 2  # the header, the order lines, the trailer


def customer_ids() -> range:
    first, _, last = os.environ.get("SHOP_CUSTOMER_IDS", "1-50").partition("-")
    return range(int(first), int(last) + 1)


@events.test_start.add_listener
def learn_product_ids(environment, **kwargs) -> None:
    """Ask the shop which products exist (one request per Locust process)."""
    if product_ids or not environment.host:
        return
    with urllib.request.urlopen(f"{environment.host}/api/orm/products/?page_size=100", timeout=30) as r:
        product_ids.extend(p["id"] for p in json.load(r)["results"])


class ShopUser(FastHttpUser):
    abstract = True
    wait_time = constant(0)  # closed loop: the next request as soon as an answer arrives

    def product(self) -> int:
        return random.choice(product_ids) if product_ids else 1

    def get_json(self, path: str, name: str) -> None:
        with self.client.get(path, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")

    def place_order(self) -> None:
        order = {
            "customer": random.choice(customer_ids()),
            "lines": [{"product": self.product(), "quantity": 1}],
        }
        with self.client.post("/api/orders/", json=order, name="/api/orders/", catch_response=True) as r:
            if r.status_code != 201:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")


class OrmUser(ShopUser):
    @tag("orm")
    @task
    def product_then_external_call(self) -> None:
        self.get_json(
            f"/api/orm/products/{self.product()}/with-external-call/",
            "/api/orm/products/[id]/with-external-call/",
        )


class RawUser(ShopUser):
    @tag("raw")
    @task
    def product_then_external_call(self) -> None:
        self.get_json(
            f"/api/raw/products/{self.product()}/with-external-call/",
            "/api/raw/products/[id]/with-external-call/",
        )


class MixedUser(ShopUser):
    @tag("mixed")
    @task(4)
    def browse(self) -> None:
        self.get_json(f"/products/?page={random.randint(1, 3)}", "/products/")

    @tag("mixed")
    @task(4)
    def product_page(self) -> None:
        self.get_json(f"/api/orm/products/{self.product()}/", "/api/orm/products/[id]/")

    @tag("mixed")
    @task(3)
    def product_with_shipping_estimate(self) -> None:
        self.get_json(
            f"/api/orm/products/{self.product()}/with-external-call/",
            "/api/orm/products/[id]/with-external-call/",
        )

    @tag("mixed")
    @task(2)
    def raw_with_external_call(self) -> None:
        self.get_json(
            f"/api/raw/products/{self.product()}/with-external-call/",
            "/api/raw/products/[id]/with-external-call/",
        )

    @tag("mixed")
    @task(1)
    def sales_report(self) -> None:
        self.get_json("/api/raw/reports/sales/", "/api/raw/reports/sales/")

    @tag("mixed")
    @task(1)
    def order(self) -> None:
        self.place_order()

    @tag("mixed")
    @task(1)
    def export_now_and_then(self) -> None:
        if random.random() < 0.05:
            with self.client.get("/orders/export.csv", name="/orders/export.csv", catch_response=True) as r:
                if r.status_code != 200:
                    r.failure(f"HTTP {r.status_code}")
                elif not export_is_complete(r.text):
                    r.failure("export cut short: no trailer, or fewer lines than it counts")


class AtomicUser(ShopUser):
    @tag("atomic")
    @task
    def order(self) -> None:
        self.place_order()


class LeakyUser(ShopUser):
    @tag("leaky")
    @task
    def leaky_cursor(self) -> None:
        self.get_json("/api/raw/leaky/", "/api/raw/leaky/")


class AsyncUser(ShopUser):
    @tag("async")
    @task
    def product_then_awaited_call(self) -> None:
        self.get_json(
            f"/api/async/products/{self.product()}/with-external-call/",
            "/api/async/products/[id]/with-external-call/",
        )
