"""Write a comparison as report.json, report.md and report.html with PNG charts.

The result comes first: one sentence per scenario (release as a share of the
ceiling, the connections each engine needs), one summary table, the key charts;
the detailed tables follow in report.md and report.html.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from loadtests.side import TITLES

ROWS = [
    # key, label, format
    ("rps", "throughput (req/s)", "{:.1f}"),
    ("failures", "failures", "{:d}"),
    ("pool_timeouts", "pool timeouts", "{:d}"),
    ("latency_p50_ms", "latency p50 (ms)", "{:.0f}"),
    ("latency_p95_ms", "latency p95 (ms)", "{:.0f}"),
    ("latency_p99_ms", "latency p99 (ms)", "{:.0f}"),
    ("hold_mean_ms", "hold per checkout, mean (ms)", "{:.2f}"),
    ("hold_p95_ms", "hold per checkout, p95 (ms)", "{:.2f}"),
    ("unloaded_hold_mean_ms", "hold per checkout on the idle server, mean (ms)", "{:.2f}"),
    ("wait_mean_ms", "wait for the pool, mean (ms)", "{:.2f}"),
    ("wait_p95_ms", "wait for the pool, p95 (ms)", "{:.2f}"),
    ("checkouts_per_request", "checkouts per request", "{:.2f}"),
    ("pool_size", "app pool (connections per worker)", "{:d}"),
    ("server", "server", "{}"),
    ("max_checked_out", "most connections out at once", "{:d}"),
    ("requests_ended_holding", "requests that ended holding (leaks)", "{:d}"),
    ("worker_cpu_ms_per_request", "worker CPU per request (ms)", "{:.2f}"),
    ("worker_busy_percent", "worker CPU busy under load (% of a core per worker)", "{:.0f}"),
]

# A task worker's requests are tasks (loadtests/tasks.py): the same figures, said of tasks.
TASK_LABELS = {
    "rps": "throughput (tasks/s)",
    "latency_p50_ms": "latency p50, queued to done (ms)",
    "latency_p95_ms": "latency p95, queued to done (ms)",
    "latency_p99_ms": "latency p99, queued to done (ms)",
    "checkouts_per_request": "checkouts per task",
    "requests_ended_holding": "tasks that ended holding (leaks)",
    "worker_cpu_ms_per_request": "worker CPU per task (ms)",
    "worker_busy_percent": "worker CPU busy under load (% of a core)",
}
TASK_ROWS = [
    ("request_hold_mean_ms", "connection held per task, mean (ms)", "{:.2f}"),
    ("tasks", "tasks queued", "{:d}"),
]


def runs_tasks(sides: dict) -> bool:
    """Whether a scenario's sides are task workers rather than sites."""
    return any(isinstance(side, dict) and side.get("server") == "worker" for side in sides.values())


def unit(sides: dict) -> str:
    return "tasks/s" if runs_tasks(sides) else "req/s"


def rate_unit(scenarios: dict) -> str:
    """What the summary's throughput columns count: requests, tasks, or either by scenario."""
    units = {unit(sides) for sides in scenarios.values()}
    return units.pop() if len(units) == 1 else "req/s (tasks/s)"


def fmt(value, pattern: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if "d" in pattern:
        return pattern.format(int(value))
    return pattern.format(value)


def ratio(release, baseline) -> str:
    if not isinstance(release, int | float) or not isinstance(baseline, int | float) or baseline == 0:
        return ""
    return f"×{release / baseline:.2f}"


def percent(part, whole) -> str:
    if part is None or not whole:
        return ""
    return f"{100 * part / whole:.0f}%"


def present(sides: dict) -> list[str]:
    """The sides a scenario ran, in report order."""
    return [name for name in TITLES if isinstance(sides.get(name), dict)]


def common_title(name: str, scenarios: dict) -> str:
    """The side's title with its pool where every scenario gave it the same, else the bare title."""
    titles = {side_title(name, s[name]) for s in scenarios.values() if isinstance(s.get(name), dict)}
    return titles.pop() if len(titles) == 1 else TITLES[name]


def side_title(name: str, side: dict) -> str:
    if name == "pgbouncer" and side.get("server_connections"):
        return f"{TITLES[name]} ({side['server_connections']} server connections)"
    if name == "ceiling" and side.get("pool_size"):
        return f"ceiling (stock, pool {side['pool_size']})"
    if side.get("pool_size"):
        return f"{TITLES[name]}, pool {side['pool_size']}"
    return TITLES[name]


# The result first


def headline(results: dict) -> list[str]:
    """One sentence per scenario: release against the ceiling, and the connections each needs."""
    lines = []
    needed_all = results.get("connections_needed", {})
    for name, sides in results["scenarios"].items():
        rel, base, ceiling = sides.get("release"), sides.get("baseline"), sides.get("ceiling")
        if not rel or not base:
            continue
        if ceiling:
            text = (
                f"{name}: release with {pool(rel)} connections served {percent(rel['rps'], ceiling['rps'])} "
                f"of stock Django with {pool(ceiling)} "
                f"({rel['rps']:.0f} against {ceiling['rps']:.0f} {unit(sides)}); "
                f"stock with {pool(base)} served {base['rps']:.0f}"
            )
        else:
            text = (
                f"{name}: release served {rel['rps']:.0f} {unit(sides)}, stock {base['rps']:.0f} on the "
                f"same pool of {pool(rel)} ({ratio(rel['rps'], base['rps'])})"
            )
        needed = needed_all.get(name)
        if needed:
            text += (
                f"; connections needed for 95% of the best: stock {needed_text(needed.get('baseline'))}, "
                f"release {needed_text(needed.get('release'))}"
            )
        lines.append(text + ".")
    return lines


def pool(side: dict) -> str:
    return str(side.get("pool_size") or "?")


def needed_text(size) -> str:
    return "more than tried" if size is None else str(size)


def summary_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """One row per scenario: the figures that decide it."""
    scenarios = results["scenarios"]
    names = [n for n in TITLES if any(isinstance(s.get(n), dict) for s in scenarios.values())]
    header = ["scenario", *[f"{common_title(n, scenarios)} {rate_unit(scenarios)}" for n in names]]
    header += ["release / stock", "release / ceiling", "hold per checkout, stock → release (ms)"]
    header += ["p50 latency, stock → release (ms)", "failures / pool timeouts, release (others)"]
    rows = []
    for scenario, sides in scenarios.items():
        base, rel = sides.get("baseline") or {}, sides.get("release") or {}
        others = [sides[n] for n in present(sides) if n != "release"]
        other_failures = sum(s.get("failures") or 0 for s in others)
        other_timeouts = sum(s.get("pool_timeouts") or 0 for s in others)
        rows.append(
            [
                scenario,
                *[fmt((sides.get(n) or {}).get("rps"), "{:.1f}") for n in names],
                ratio(rel.get("rps"), base.get("rps")),
                percent(rel.get("rps"), (sides.get("ceiling") or {}).get("rps")),
                f"{fmt(base.get('hold_mean_ms'), '{:.2f}')} → {fmt(rel.get('hold_mean_ms'), '{:.2f}')}",
                f"{fmt(base.get('latency_p50_ms'), '{:.0f}')} → {fmt(rel.get('latency_p50_ms'), '{:.0f}')}",
                f"{fmt(rel.get('failures'), '{:d}')} / {fmt(rel.get('pool_timeouts'), '{:d}')} "
                f"({other_failures} / {other_timeouts})",
            ]
        )
    return header, rows


def sweep_table(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """Throughput at each pool size, per scenario and side, and the connections each side needs."""
    sweep = results.get("sweep")
    if not sweep:
        return None
    sizes = sorted({int(size) for sides in sweep.values() for by_size in sides.values() for size in by_size})
    header = ["scenario", "side", *[f"pool {size}" for size in sizes], "connections needed"]
    rows = []
    for scenario, sides in sweep.items():
        needed = results.get("connections_needed", {}).get(scenario, {})
        for name, by_size in sides.items():
            rows.append(
                [
                    scenario,
                    TITLES[name],
                    *[fmt((by_size.get(str(size)) or {}).get("rps"), "{:.1f}") for size in sizes],
                    needed_text(needed.get(name)),
                ]
            )
    return header, rows


def prediction_table(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """The pool connection_report predicts from stock, beside what release needed in the sweep."""
    predictions = results.get("prediction")
    if not predictions:
        return None
    header = [
        "scenario",
        "stock: connections in use",
        "with release (predicted)",
        "predicted pool",
        "release needed (sweep)",
        "agrees (±1 or ±50%)",
    ]
    rows = [
        [
            scenario,
            f"{check['connections_now']:.2f} (pool {check['stock_pool_size']})",
            f"{check['connections_with_release']:.2f}",
            str(check["predicted_pool"]),
            needed_text(check["release_needs"]),
            {True: "yes", False: "no", None: "-"}[check["agrees"]],
        ]
        for scenario, check in predictions.items()
    ]
    return header, rows


PREDICTION_NOTE = (
    "From the stock side with every connection: the connections in use by Little's law (requests/s x "
    "hold), and with release (requests/s x the time release must keep one), as manage.py "
    "connection_report prints them for a running site."
)


def served_by(results: dict) -> dict[str, tuple[str, int | None]]:
    """{scenario: (server, users)} from the sides that ran; wsgi for reports that predate ASGI."""
    found = {}
    for name, sides in results["scenarios"].items():
        side = next((s for s in sides.values() if isinstance(s, dict)), {})
        if side.get("server") == "worker":
            found[name] = ("worker", side.get("tasks"))
        else:
            found[name] = (side.get("server", "wsgi"), side.get("users", results["config"].get("users")))
    return found


def servers_text(results: dict) -> str:
    """'1 gunicorn worker(s) × 32 threads (wsgi: raw, orm, 64 users; asgi: async, 256 users)'."""
    config = results["config"]
    by_server: dict[str, list[str]] = {}
    users: dict[str, set] = {}
    for scenario, (server, count) in served_by(results).items():
        by_server.setdefault(server, []).append(scenario)
        users.setdefault(server, set()).add(count)
    texts = []
    for server, scenarios in by_server.items():
        how = {"wsgi": f"{config['threads']} threads", "worker": f"Celery, {config['threads']} threads"}
        counts = "/".join(str(n) for n in sorted(users[server], key=str))
        what = "tasks" if server == "worker" else "users"
        how_served = how.get(server, "uvicorn workers")
        texts.append(f"{server} ({how_served}): {', '.join(scenarios)}, {counts} {what}")
    return f"{config['workers']} gunicorn worker(s); " + "; ".join(texts or [f"{config['threads']} threads"])


def config_text(results: dict) -> str:
    config = results["config"]
    m = config["machine"]
    sizes = config.get("pool_sizes") or []
    pools = f"pool sizes {', '.join(map(str, sizes))}" if sizes else f"pool size {config['pool_size']}"
    servers = {server for server, _ in served_by(results).values()}
    if servers == {"worker"}:
        # Only task workers: no site, no Locust, no request's external call.
        text = (
            f"Pool {config['pool']}, a Celery worker (threads pool) × {config['threads']} threads, {pools}, "
            f"each side the same {config.get('tasks', '?')} tasks, each calling the carrier for "
            f"{config.get('task_latency_ms', '?')} ms."
        )
    else:
        text = (
            f"Pool {config['pool']}, {servers_text(results)}, "
            f"{pools}, {config['duration']} s per side, "
            f"external call {config['external_latency_ms']} ms"
        )
        if "wsgi" in servers:
            bound = config["latency_ceiling_rps"]
            text += f" (under wsgi, no server with these threads beats {bound:.0f} req/s)"
        text += "."
        if "worker" in servers:
            text += f" Each task calls the carrier for {config.get('task_latency_ms', '?')} ms."
    text += (
        f" Machine: {m['cpu']} ({m['cores']} cores), Python {m['python']}, Django {m['django']}, "
        f"gunicorn {m.get('gunicorn', '?')}, commit {m['commit']}."
    )
    if config.get("rounds", 1) > 1:
        text += (
            f" Each side ran {config['rounds']} times, the first side alternating; figures are "
            "medians, failures, pool timeouts and leaks the sum of all rounds."
        )
    return text


# The details


def ran_first(sides: dict) -> str:
    """' The release side ran first.', from each side's position in the run."""
    first = [name for name in present(sides) if sides[name].get("ran") == 1]
    return f" The {first[0]} side ran first." if first else ""


def per_round(sides: dict) -> str:
    """' Per round, release ÷ baseline: ×4.10, ×4.32, ×4.21.' when the sides ran several times."""
    base, rel = (sides.get("baseline") or {}).get("rounds"), (sides.get("release") or {}).get("rounds")
    if not base or not rel:
        return ""
    # zip() stops at the shorter: while a run is under way, one side may have a round more.
    ratios = ", ".join(ratio(r["rps"], b["rps"]) or "n/a" for b, r in zip(base, rel))  # noqa: B905
    return f" Per round, release ÷ baseline: {ratios}."


def of_bound(side: dict, threads: int) -> str:
    """' (97.5% of the thread bound, 32 threads ÷ 52.6 ms)', where the scenario has one."""
    bound = side.get("thread_bound_rps")
    if not bound:
        return ""
    alone = "one request on the idle server"
    if side.get("server") == "worker":
        alone = "one task on the idle worker"
    return (
        f" ({100 * side['rps'] / bound:.1f}% of the thread bound, {threads} threads ÷ "
        f"{side['unloaded_latency_ms']:.1f} ms, {alone})"
    )


def sections(results: dict):
    """(title, one-line verdict, header, rows) per detailed table, for Markdown and HTML alike."""
    threads = results["config"]["workers"] * results["config"]["threads"]
    for name, sides in results["scenarios"].items():
        names = present(sides)
        base, rel = sides.get("baseline") or {}, sides.get("release") or {}
        per = unit(sides)
        verdict = (
            f"Release serves {fmt(rel.get('rps'), '{:.1f}')} {per}{of_bound(rel, threads) if rel else ''}, "
            f"baseline {fmt(base.get('rps'), '{:.1f}')} {per}: "
            f"{ratio(rel.get('rps'), base.get('rps')) or 'n/a'}."
            f"{ran_first(sides)}{per_round(sides)}"
        )
        tasks = runs_tasks(sides)
        rows = [
            [
                TASK_LABELS.get(key, label) if tasks else label,
                *[fmt(sides[n].get(key), pattern) for n in names],
                ratio(rel.get(key), base.get(key)),
            ]
            for key, label, pattern in ROWS + (TASK_ROWS if tasks else [])
        ]
        yield name, verdict, ["", *[side_title(n, sides[n]) for n in names], "release / stock"], rows
    table = sweep_table(results)
    if table:
        yield "Pool-size sweep (req/s)", "", *table
    table = prediction_table(results)
    if table:
        yield "Release pool predicted from stock", PREDICTION_NOTE, *table
    if overhead_says_something(results.get("overhead")):
        yield (
            "Per-query cost of release (one thread)",
            OVERHEAD_NOTE,
            OVERHEAD_HEADER,
            overhead_rows(results["overhead"]),
        )


OVERHEAD_NOTE = (
    "Each figure is the median of the per-round differences, with their interquartile range (IQR); "
    "'noisy' stands where the IQR is larger than the figure, or where the pool library alone came out "
    "above the whole engine."
)
OVERHEAD_HEADER = [
    "pool", "baseline µs/query", "release µs/query", "overhead", "CPU overhead",
    "engine alone", "engine alone, CPU", "with a ping per checkout",
    "pool library alone", "pool library alone, CPU",
]  # fmt: skip


def is_noisy(o: dict, key: str, floor_above: bool = False) -> bool:
    """Whether the rounds disagree more than figure `key` says, or the pool library came out above it."""
    value, spread = o.get(key), o.get(key.replace("_us", "_spread_us"))
    if value is None:
        return True
    return spread is not None and (floor_above or spread > abs(value))


def with_spread(o: dict, key: str, noisy: bool = False) -> str:
    """'+29.7 µs (IQR 6.1)', or 'noisy (IQR 410)' where the rounds disagree more than the figure says."""
    value, spread = o.get(key), o.get(key.replace("_us", "_spread_us"))
    if value is None:
        return "–"
    if spread is None:
        return f"{value:+.1f} µs"
    if is_noisy(o, key, noisy):
        return f"noisy (IQR {spread:.0f} µs)"
    return f"{value:+.1f} µs (IQR {spread:.1f})"


def figure_cells(o: dict) -> list[tuple[str, bool]]:
    """(key, pool library alone above the engine) of each figure of one pool's row, in column order."""
    # The floor above the whole engine: the round-to-round noise is larger than either.
    floor_above = o["pool_library_us"] > o["engine_overhead_us"]
    floor_cpu_above = o["pool_library_cpu_us"] > o["engine_cpu_overhead_us"]
    return [
        ("overhead_us", False),
        ("cpu_overhead_us", False),
        ("engine_overhead_us", floor_above),
        ("engine_cpu_overhead_us", floor_cpu_above),
        ("overhead_with_ping_us", False),
        ("pool_library_us", floor_above),
        ("pool_library_cpu_us", floor_cpu_above),
    ]


def overhead_rows(overhead: dict) -> list[list[str]]:
    """Rows of the per-query cost table, from loadtests.overhead.as_json()."""
    return [
        [
            pool_name,
            f"{o['per_query_us']['baseline']:.1f}",
            f"{o['per_query_us']['release']:.1f}",
            *(with_spread(o, key, floor) for key, floor in figure_cells(o)),
        ]
        for pool_name, o in overhead.items()
    ]


# The per-query cost is some microseconds against the hundreds a query takes, and the rounds
# a comparison has time for, on a busy or small machine, disagree by more than that: a table
# whose cells say "noisy" tells a reader nothing. The comparison's report shows it only from
# enough rounds (quartiles of fewer say little) and when most of its figures stand out of
# their spread; otherwise one line says how to measure it alone. report.json keeps the
# figures either way, and `make overhead` (loadtests.overhead) always prints its table.
OVERHEAD_MIN_ROUNDS = 10


def overhead_says_something(overhead: dict | None) -> bool:
    if not overhead:
        return False
    cells = [is_noisy(o, key, floor) for o in overhead.values() for key, floor in figure_cells(o)]
    enough_rounds = min(o.get("rounds", 0) for o in overhead.values()) >= OVERHEAD_MIN_ROUNDS
    return enough_rounds and 2 * sum(cells) < len(cells)


def overhead_line(results: dict) -> str | None:
    """In place of a per-query cost table that would say nothing, how to measure it: one line."""
    overhead = results.get("overhead")
    if not overhead or overhead_says_something(overhead):
        return None
    rounds = min(o.get("rounds", 0) for o in overhead.values())
    why = (
        f"{rounds} rounds are too few to tell it from noise"
        if rounds < OVERHEAD_MIN_ROUNDS
        else f"its {rounds} rounds here disagreed by more than the cost itself"
    )
    return (
        f"Per-query cost of release: not shown, {why}; measure it alone with `make overhead` "
        "(or `make instructions`, steady on a busy machine)."
    )


def locust_reports(results: dict) -> list[tuple[str, str]]:
    """(label, relative path) of every Locust HTML report of the run."""
    found = []
    for scenario, sides in results["scenarios"].items():
        for name in present(sides):
            side = sides[name]
            reports = [r.get("locust_report") for r in side.get("rounds", [side])]
            for number, path in enumerate(reports, start=1):
                if path:
                    label = f"{scenario}, {side_title(name, side)}" + (
                        f", round {number}" if len(reports) > 1 else ""
                    )
                    found.append((label, path))
    for scenario, sides in results.get("sweep", {}).items():
        for name, by_size in sides.items():
            for size, side in by_size.items():
                if side.get("locust_report"):
                    found.append((f"{scenario}, {TITLES[name]}, pool {size} (sweep)", side["locust_report"]))
    return list(dict.fromkeys(found))


# Markdown and HTML


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def summary_markdown(results: dict) -> str:
    """What the run prints at its end: the headline, the summary table, the sweep, the notes."""
    if not results.get("scenarios"):
        return "(no scenario finished)"
    lines = [*headline(results), "", *markdown_table(*summary_table(results)), ""]
    table = sweep_table(results)
    if table:
        lines += [*markdown_table(*table), ""]
    table = prediction_table(results)
    if table:
        lines += [PREDICTION_NOTE, "", *markdown_table(*table), ""]
    lines += [f"Note: {note}" for note in results.get("notes", [])]
    line = overhead_line(results)
    if line:
        lines.append(line)
    return "\n".join(lines).rstrip() + "\n"


def markdown(results: dict, images: list[str] = ()) -> str:
    lines = [summary_markdown(results), config_text(results), ""]
    lines += [f"![{name}]({name})" for name in images] + [""]
    for title, verdict, header, rows in sections(results):
        lines += [f"### {title}", ""] + ([verdict, ""] if verdict else [])
        lines += markdown_table(header, rows)
        lines.append("")
    reports = locust_reports(results)
    if reports:
        lines += ["Locust's own reports: " + ", ".join(f"[{label}]({path})" for label, path in reports), ""]
    return "\n".join(lines)


def html_code(text: str) -> str:
    """Escaped, with Markdown's `code` as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(results: dict, images: list[str]) -> str:
    parts = ["<h1>Connection release: stock Django against release</h1>"]
    if results.get("scenarios"):
        parts += [f'<p class="headline">{html.escape(line)}</p>' for line in headline(results)]
        parts.append(html_table(*summary_table(results)))
    parts.append(f"<p>{html.escape(config_text(results))}</p>")
    parts += [f"<p>{html.escape(note)}</p>" for note in results.get("notes", [])]
    line = overhead_line(results)
    if line:
        parts.append(f"<p>{html_code(line)}</p>")
    parts += [f'<p><img src="{html.escape(name)}" alt="{html.escape(name)}"></p>' for name in images]
    for title, verdict, header, rows in sections(results):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if verdict:
            parts.append(f"<p>{html.escape(verdict)}</p>")
        parts.append(html_table(header, rows))
    reports = locust_reports(results)
    if reports:
        links = "".join(
            f'<li><a href="{html.escape(p)}">{html.escape(label)}</a></li>' for label, p in reports
        )
        parts.append(f"<h2>Locust's own reports</h2><ul>{links}</ul>")
    parts.append('<p>Every figure: <a href="report.json">report.json</a>.</p>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Connection release report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;margin:0.5rem 0 1.5rem}}td,th{{border:1px solid #ccc;padding:0.25rem 0.6rem}}
td:not(:first-child){{text-align:right}}img{{max-width:100%}}.headline{{font-size:1.1rem;font-weight:600}}</style>
</head><body>
{chr(10).join(parts)}
</body></html>
"""


def write(results: dict, out: Path) -> None:
    from loadtests import charts

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(results, indent=2, default=str))
    if not results.get("scenarios"):
        return
    images = charts.draw(results, out)
    (out / "report.md").write_text(
        "# Connection release: stock Django against release\n\n" + markdown(results, images)
    )
    (out / "report.html").write_text(html_page(results, images))
