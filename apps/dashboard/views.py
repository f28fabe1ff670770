"""/pool/: what this site's pool is doing, beside another site's (DASHBOARD_PEER_URL), live."""

from __future__ import annotations

from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.dashboard import charts, history
from apps.dashboard.snapshot import Snapshot
from apps.metrics import prediction
from apps.metrics.access import internal_only

REFRESH_SECONDS = 2
VIEWS_SHOWN = 8  # the views holding the most idle connections
WINDOW_SECONDS = 30  # the "recent" column: what happened in the last half minute
TREND_SECONDS = 120

HISTOGRAMS = [
    # (attribute, title, help, format of a value, format of an axis label)
    ("hold", "Hold time per checkout", "From borrowing a connection to giving it back.",
     charts.format_seconds, charts.short_seconds),
    ("wait", "Wait for a connection", "Time spent in the pool asking for one.",
     charts.format_seconds, charts.short_seconds),
    ("request_hold", "Hold time per request", "All checkouts of one request, added up.",
     charts.format_seconds, charts.short_seconds),
    ("request_checkouts", "Checkouts per request", "How often one request borrowed a connection.",
     charts.format_count, charts.format_count),
]  # fmt: skip
# How each histogram's p95 reads, where it is not as its other values.
P95_FORMAT = {"request_checkouts": charts.format_whole_quantile}

COUNTERS = [
    # (attribute or optional counter, title, what one count is, shown when zero?)
    ("timeouts", "Pool timeouts", "requests answered 503", True),
    ("ended_holding", "Leaked cursors", "requests that ended holding a connection", True),
    ("pinned", "Pinned checkouts", "kept to the request's end by session-level SQL", False),
    ("retries", "Retried reads", "ORM reads retried on a fresh connection", False),
]


def _engine(snap: Snapshot) -> str:
    return ", ".join(snap.engines) or "no checkout yet"


def _stats(dist, label, p95_label) -> dict:
    return {"count": int(dist.total), "mean": label(dist.mean), "p95": p95_label(dist.quantile(0.95))}


def _pool_size(now: Snapshot, per_worker: int | None) -> str:
    """ "8 (2 workers x 4)": the site's pools, summed over its workers, and how."""
    total = int(now.max_size)
    if per_worker and total > per_worker and total % per_worker == 0:
        return f"{total} ({total // per_worker} workers × {per_worker})"
    return str(total)


def _views(recent: Snapshot, seconds: float | None) -> list[dict]:
    """The views ranked by the connections they hold idle (what release gives back), over the window."""
    if not seconds:
        return []
    rates = prediction.predict(recent.views, seconds).views[:VIEWS_SHOWN]
    return [
        {
            "view": v.view,
            "requests_per_second": v.requests_per_s,
            "held": v.hold_s_per_s,
            "database": v.db_s_per_s,
            "idle": v.idle_s_per_s,
            "idle_share": v.idle_share,
        }
        for v in rates
    ]


def _side(name: str, now: Snapshot, recent: Snapshot, seconds: float, per_worker: int | None = None) -> dict:
    counters = []
    for attribute, title, note, always in COUNTERS:
        if hasattr(now, attribute):
            total, last = getattr(now, attribute), getattr(recent, attribute)
        elif attribute in now.optional:
            total, last = now.optional[attribute], recent.optional.get(attribute, 0.0)
        else:
            continue  # this server does not count it
        if total or always:
            counters.append({"title": title, "note": note, "total": total, "recent": last})
    return {
        "name": name,
        "engine": _engine(now),
        "pools": ", ".join(now.pools),
        "checked_out": now.checked_out,
        "max_size": now.max_size,
        "pool_size": _pool_size(now, per_worker),
        "views": _views(recent, seconds),
        "idle": now.idle,
        "full": bool(now.max_size) and now.checked_out >= now.max_size,
        "checkouts_total": now.checkouts,
        "checkouts_recent": recent.checkouts,
        "checkouts_per_second": recent.checkouts / seconds if seconds else None,
        "counters": counters,
        "charts": [
            {
                "chart": charts.histogram(getattr(recent, attr), axis_label),
                "recent": _stats(getattr(recent, attr), label, P95_FORMAT.get(attr, label)),
                "total": _stats(getattr(now, attr), label, P95_FORMAT.get(attr, label)),
            }
            for attr, _, _, label, axis_label in HISTOGRAMS
        ],
    }


def _trend(readings: list[history.Reading], now: float, here_name: str, peer_name: str | None):
    here = [(now - r.at, r.here.checked_out) for r in readings]
    lines = [(here_name, "here", here, readings[-1].here.max_size if readings else 0)]
    if peer_name:
        peer = [(now - r.at, r.peer.checked_out) for r in readings if r.peer is not None]
        size = next((r.peer.max_size for r in reversed(readings) if r.peer is not None), 0)
        lines.append((peer_name, "peer", peer, size))
    return charts.trend(lines, TREND_SECONDS)


def _context() -> dict:
    readings = history.recorder().history()
    current, peer_error = history.read_now()
    peer_now = current.peer
    start = history.reading_before(readings, current.at, WINDOW_SECONDS)
    if start is None:  # the first half minute after the first look: everything, since start
        seconds, window = None, "since start"
    else:
        seconds = current.at - start.at
        window = f"last {seconds:.0f} s"

    def recent(now: Snapshot, earlier: Snapshot | None) -> Snapshot:
        return now if earlier is None else now.since(earlier)

    here_name = f"this site: {_engine(current.here)}"
    here_pool = connections["default"].pool_usage().max_size
    sides = [_side(here_name, current.here, recent(current.here, start and start.here), seconds, here_pool)]
    peer_name = None
    if peer_now is not None:
        peer_name = f"{history.peer_url()}: {_engine(peer_now)}"
        sides.append(_side(peer_name, peer_now, recent(peer_now, start and start.peer), seconds))

    return {
        "sides": sides,
        "peer_url": history.peer_url(),
        "peer_error": peer_error,
        "rows": [
            {"title": title, "help": help_text, "cells": [side["charts"][i] for side in sides]}
            for i, (_, title, help_text, _, _) in enumerate(HISTOGRAMS)
        ],
        "window": window,
        "windowed": seconds is not None,
        "window_seconds": WINDOW_SECONDS,
        "trend": _trend(readings + [current], current.at, here_name, peer_name),
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
