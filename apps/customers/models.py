from django.db import models
from django.utils import timezone


class Customer(models.Model):
    name = models.CharField(max_length=120)
    # The natural key: the seed command and the admin find a customer by it.
    email = models.EmailField(unique=True)
    # Private: only the admin shows it, never a public page.
    address = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["name"])]

    def __str__(self) -> str:
        return self.name

    @property
    def public_name(self) -> str:
        """What public pages may show: "Ada L." for "Ada Lovelace", never the email."""
        first, _, rest = self.name.partition(" ")
        return f"{first} {rest[0]}." if rest else first
