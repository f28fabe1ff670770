"""/pool/: what the pool is doing now, for the running engine."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.dashboard import charts, snapshot
from apps.metrics.access import internal_only

REFRESH_SECONDS = 2


def _context() -> dict:
    snap = snapshot.take()
    panels = [
        ("Hold time per checkout", "From borrowing a connection to giving it back.",
         snap.hold, charts.format_seconds, charts.short_seconds),
        ("Wait for a connection", "Time spent in the pool asking for one.",
         snap.wait, charts.format_seconds, charts.short_seconds),
        ("Hold time per request", "All checkouts of one request, added up.",
         snap.request_hold, charts.format_seconds, charts.short_seconds),
        ("Checkouts per request", "How often one request borrowed a connection.",
         snap.request_checkouts, charts.format_count, charts.format_count),
    ]  # fmt: skip
    return {
        "snap": snap,
        "charts": [
            {
                "title": title,
                "help": help_text,
                "bars": charts.bars(dist, axis_label),
                "count": int(dist.total),
                "mean": label(dist.mean),
                "p95": label(dist.quantile(0.95)),
            }
            for title, help_text, dist, label, axis_label in panels
        ],
        "width": charts.WIDTH,
        "height": charts.HEIGHT,
        "label_y": charts.HEIGHT - charts.LABEL_SPACE + 10,
        "refresh_seconds": REFRESH_SECONDS,
    }


@require_GET
@internal_only
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/pool.html", _context())


@require_GET
@internal_only
def panel(request: HttpRequest) -> HttpResponse:
    """The live part of the page, fetched again every few seconds."""
    return render(request, "dashboard/panel.html", _context())
