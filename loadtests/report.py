"""Write a comparison as report.json, report.md and report.html with PNG charts."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

ROWS = [
    # key, label, format, better ("up", "down" or None)
    ("rps", "throughput (req/s)", "{:.1f}", "up"),
    ("failures", "failures", "{:d}", "down"),
    ("pool_timeouts", "pool timeouts", "{:d}", "down"),
    ("latency_p50_ms", "latency p50 (ms)", "{:.0f}", "down"),
    ("latency_p95_ms", "latency p95 (ms)", "{:.0f}", "down"),
    ("latency_p99_ms", "latency p99 (ms)", "{:.0f}", "down"),
    ("hold_mean_ms", "hold per checkout, mean (ms)", "{:.2f}", "down"),
    ("hold_p95_ms", "hold per checkout, p95 (ms)", "{:.2f}", "down"),
    ("unloaded_hold_mean_ms", "hold per checkout on the idle server, mean (ms)", "{:.2f}", "down"),
    ("wait_mean_ms", "wait for the pool, mean (ms)", "{:.2f}", "down"),
    ("wait_p95_ms", "wait for the pool, p95 (ms)", "{:.2f}", "down"),
    ("checkouts_per_request", "checkouts per request", "{:.2f}", None),
    ("max_checked_out", "most connections out at once", "{:d}", None),
    ("requests_ended_holding", "requests that ended holding (leaks)", "{:d}", None),
    ("worker_cpu_ms_per_request", "worker CPU per request (ms)", "{:.2f}", "down"),
    ("worker_busy_percent", "worker CPU busy under load (% of a core per worker)", "{:.0f}", None),
]


def fmt(value, pattern: str) -> str:
    if value is None:
        return "–"
    if "d" in pattern:
        return pattern.format(int(value))
    return pattern.format(value)


def ratio(release, baseline) -> str:
    if release is None or baseline is None or baseline == 0:
        return ""
    return f"×{release / baseline:.2f}"


def summary(results: dict) -> str:
    config = results["config"]
    m = config["machine"]
    return (
        f"Pool `{config['pool']}`, {config['workers']} gunicorn worker(s) × {config['threads']} threads, "
        f"pool size {config['pool_size']}, {config['users']} users, {config['duration']} s per side, "
        f"external call {config['external_latency_ms']} ms (no server with these threads beats "
        f"{config['latency_ceiling_rps']:.0f} req/s). Machine: {m['cpu']} ({m['cores']} cores), "
        f"Python {m['python']}, Django {m['django']}, gunicorn {m.get('gunicorn', '?')}, "
        f"commit {m['commit']}."
        + (
            f" Each side ran {config['rounds']} times, the first side alternating; figures are "
            "medians, failures, pool timeouts and leaks the sum of all rounds."
            if config.get("rounds", 1) > 1
            else ""
        )
    )


def ran_first(sides: dict) -> str:
    """' The release side ran first.', from each side's position in the run (reports since it was kept)."""
    first = [name for name, side in sides.items() if side.get("ran") == 1]
    return f" The {first[0]} side ran first." if first else ""


def per_round(sides: dict) -> str:
    """' Per round, release ÷ baseline: ×4.10, ×4.32, ×4.21.' when the sides ran several times."""
    base, rel = sides["baseline"].get("rounds"), sides["release"].get("rounds")
    if not base or not rel:
        return ""
    ratios = ", ".join(ratio(r["rps"], b["rps"]) or "n/a" for b, r in zip(base, rel, strict=True))
    return f" Per round, release ÷ baseline: {ratios}."


def of_bound(side: dict, threads: int) -> str:
    """' (97.5% of the thread bound, 32 threads ÷ 52.6 ms)', where the scenario has one."""
    bound = side.get("thread_bound_rps")
    if not bound:
        return ""
    return (
        f" ({100 * side['rps'] / bound:.1f}% of the thread bound, {threads} threads ÷ "
        f"{side['unloaded_latency_ms']:.1f} ms, one request on the idle server)"
    )


def sections(results: dict):
    """(title, one-line verdict, header, rows) per table, for Markdown and HTML alike."""
    threads = results["config"]["workers"] * results["config"]["threads"]
    for name, sides in results["scenarios"].items():
        base, rel = sides["baseline"], sides["release"]
        verdict = (
            f"Release serves {fmt(rel['rps'], '{:.1f}')} req/s{of_bound(rel, threads)}, "
            f"baseline {fmt(base['rps'], '{:.1f}')} req/s: {ratio(rel['rps'], base['rps']) or 'n/a'}."
            f"{ran_first(sides)}{per_round(sides)}"
        )
        rows = [
            [
                label,
                fmt(base.get(key), pattern),
                fmt(rel.get(key), pattern),
                ratio(rel.get(key), base.get(key)),
            ]
            for key, label, pattern, _ in ROWS
        ]
        yield name, verdict, ["", "baseline", "release", "release / baseline"], rows
    if "overhead" in results:
        rows = overhead_rows(results["overhead"])
        yield "Per-query cost of release (one thread)", "", OVERHEAD_HEADER, rows


OVERHEAD_HEADER = [
    "pool", "baseline µs/query", "release µs/query", "overhead", "CPU overhead",
    "engine alone", "engine alone, CPU", "with a ping per checkout",
    "pool library alone", "pool library alone, CPU",
]  # fmt: skip


def overhead_rows(overhead: dict) -> list[list[str]]:
    """Rows of the per-query cost table, from loadtests.overhead.as_json()."""
    return [
        [
            pool,
            f"{o['per_query_us']['baseline']:.1f}",
            f"{o['per_query_us']['release']:.1f}",
            f"{o['overhead_us']:+.1f} µs",
            f"{o['cpu_overhead_us']:+.1f} µs",
            f"{o['engine_overhead_us']:+.1f} µs",
            f"{o['engine_cpu_overhead_us']:+.1f} µs",
            f"{o['overhead_with_ping_us']:+.1f} µs",
            f"{o['pool_library_us']:+.1f} µs",
            f"{o['pool_library_cpu_us']:+.1f} µs",
        ]
        for pool, o in overhead.items()
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(results: dict) -> str:
    lines = [summary(results), ""]
    for title, verdict, header, rows in sections(results):
        lines += [f"### {title}", ""] + ([verdict, ""] if verdict else [])
        lines += markdown_table(header, rows)
        lines.append("")
    return "\n".join(lines)


def html_tables(results: dict) -> str:
    parts = [f"<p>{html.escape(summary(results))}</p>"]
    for title, verdict, header, rows in sections(results):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if verdict:
            parts.append(f"<p>{html.escape(verdict)}</p>")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
        )
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    return "\n".join(parts)


def charts(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["scenarios"])
    if not names:
        return []
    written = []
    colours = {"baseline": "#9e9e9e", "release": "#3a6ea5"}
    x = range(len(names))
    width = 0.38

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, side in enumerate(("baseline", "release")):
        values = [results["scenarios"][n][side]["rps"] for n in names]
        bars = ax.bar([p + (i - 0.5) * width for p in x], values, width, label=side, color=colours[side])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    labelled = False
    for position, name in zip(x, names, strict=True):
        bound = results["scenarios"][name]["release"].get("thread_bound_rps")
        if bound:
            ax.hlines(bound, position - width, position + width, colors="#c62828", linestyles="--",
                      linewidth=1, label=None if labelled else "thread bound")  # fmt: skip
            labelled = True
    ax.set_xticks(list(x), names)
    ax.set_ylabel("requests per second")
    ax.set_title("Throughput on the same pool")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # room for the legend above the bars and bounds
    ax.legend(fontsize=8, loc="upper center", ncols=3)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    written.append("throughput.png")

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, side in enumerate(("baseline", "release")):
        p50 = [results["scenarios"][n][side]["latency_p50_ms"] for n in names]
        p95 = [results["scenarios"][n][side]["latency_p95_ms"] for n in names]
        positions = [p + (i - 0.5) * width for p in x]
        ax.bar(positions, p95, width, color=colours[side], alpha=0.35, label=f"{side} p95")
        ax.bar(positions, p50, width, color=colours[side], label=f"{side} p50")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("milliseconds (client side)")
    ax.set_title("Latency")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")

    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names, strict=True):
        for side in ("baseline", "release"):
            dist = results["scenarios"][name][side]["hold_distribution"]
            total = sum(count for _, count in dist) or 1
            bounds = [b for b, _ in dist if not math.isinf(b)]
            shares = [100 * c / total for b, c in dist if not math.isinf(b)]
            ax.step([b * 1000 for b in bounds], shares, where="pre", color=colours[side], label=side)
        ax.set_xscale("log")
        ax.set_title(name)
    axes[0][0].set_ylabel("% of checkouts")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("How long each checkout held its connection")
    fig.supxlabel("hold per checkout (ms, histogram bucket upper bound, log scale)")
    fig.tight_layout()
    fig.savefig(out / "hold.png", dpi=110)
    plt.close(fig)
    written.append("hold.png")
    return written


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "report.md").write_text(
        "# Connection release: baseline against release\n\n" + markdown(results) + "\n"
    )
    images = charts(results, out)
    body = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in images)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Connection release report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;margin:0.5rem 0 1.5rem}}td,th{{border:1px solid #ccc;padding:0.25rem 0.6rem}}
td:not(:first-child){{text-align:right}}img{{max-width:100%}}</style></head>
<body><h1>Connection release: baseline against release</h1>
{html_tables(results)}
{body}
<p>Raw numbers: <a href="report.json">report.json</a>. Locust's own reports: locust/*.html.</p>
</body></html>
"""
    (out / "report.html").write_text(page)
