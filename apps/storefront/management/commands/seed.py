from django.core.management.base import BaseCommand, CommandError

from apps.storefront.seeding import SIZES, Seeder, Size


class Command(BaseCommand):
    help = (
        "Fill the database with deterministic sample data. Idempotent: a second run finds the rows "
        "and adds nothing; a bigger size adds only what is missing."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--size", choices=sorted(SIZES), default="small", help="default: small")
        parser.add_argument(
            "--order-lines",
            type=int,
            metavar="N",
            help="about N order lines (at least N) instead of the size's own number",
        )

    def handle(self, *args, size: str, order_lines: int | None, **options) -> None:
        chosen = SIZES[size]
        if order_lines is not None:
            if order_lines < 0:
                raise CommandError("--order-lines must be 0 or more.")
            chosen = Size(**{**chosen.__dict__, "order_lines": order_lines})
        self.stdout.write(
            f"Seeding size {size!r}: {chosen.categories:,} categories, {chosen.products:,} products, "
            f"{chosen.customers:,} customers, {chosen.reviews:,} reviews, {chosen.order_lines:,} order lines"
        )
        result = Seeder(chosen, say=self.stdout.write).run()
        self.stdout.write(self.style.SUCCESS(result.summary()))
