"""The one reader of the environment: settings and gunicorn.conf.py take their values from here.

Each function reads one variable, returns `default` when it is unset or empty, and raises
ImproperlyConfigured naming the variable when its value cannot be read as the type asked
for. DATABASE_URL is read as a string here and parsed by dj-database-url (project/database.py).
"""

from __future__ import annotations

import ipaddress
import os

from django.core.exceptions import ImproperlyConfigured

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def _raw(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def string(name: str, default: str = "") -> str:
    value = _raw(name)
    return default if value is None else value


def choice(name: str, choices, default: str) -> str:
    """One of `choices` (any collection of strings)."""
    value = _raw(name)
    if value is None:
        return default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not known: use one of {', '.join(choices)}.")
    return value


def boolean(name: str, default: bool = False) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not known: use 1 or 0 (or true/false, yes/no, on/off).")


def integer(name: str, default: int | None) -> int | None:
    value = _raw(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number.") from None


def number(name: str, default: float | None) -> float | None:
    value = _raw(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number.") from None


def strings(name: str, default: list[str]) -> list[str]:
    """A comma-separated list."""
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def networks(name: str, default: list[str]) -> list[str]:
    """A comma-separated list of IP addresses and networks (CIDR), or "*" for any address."""
    entries = strings(name, default)
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} has {entry!r}, which is not an IP address or network: give addresses "
                "and networks such as 127.0.0.1, ::1, 10.0.0.0/8 (host names are not looked up), "
                "or * for any address."
            ) from None
    return entries
