"""The report's PNG charts: throughput with the ceiling, the pool-size sweep, hold per checkout, latency."""

from __future__ import annotations

from pathlib import Path

from loadtests.side import TITLES

COLOURS = {"baseline": "#9e9e9e", "release": "#3a6ea5", "ceiling": "#2e7d32", "pgbouncer": "#ef8a17"}
WIDE = (8, 3.8)  # inches: at 110 dpi, 880 px, readable at a page's width


def draw(results: dict, out: Path) -> list[str]:
    """Write the charts the results allow; their file names, most telling first."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    # Its font cache, built on first use, announces itself at INFO amid the progress lines.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    written = [throughput(results, out)]
    if results.get("sweep"):
        written.append(sweep(results, out))
    written += [hold(results, out), latency(results, out)]
    return written


def sides_of(results: dict) -> list[str]:
    scenarios = results["scenarios"].values()
    return [n for n in TITLES if any(isinstance(s.get(n), dict) for s in scenarios)]


def grouped_bars(ax, results: dict, value, label=None) -> None:
    """One group of bars per scenario, one bar per side; `value(side)` gives its height."""
    names = list(results["scenarios"])
    sides = sides_of(results)
    width = 0.8 / len(sides)
    for i, side in enumerate(sides):
        positions = [p + (i - (len(sides) - 1) / 2) * width for p in range(len(names))]
        heights = [value(results["scenarios"][n].get(side) or {}) or 0 for n in names]
        bars = ax.bar(positions, heights, width, label=legend_label(results, side), color=COLOURS[side])
        if label:
            ax.bar_label(bars, fmt=label, fontsize=7)
    ax.set_xticks(range(len(names)), [scenario_label(results, n) for n in names])


def rate_label(results: dict) -> str:
    return "requests (tasks) per second" if "tasks" in results["scenarios"] else "requests per second"


def legend_label(results: dict, side: str) -> str:
    """The side's title, with its pool when every scenario gave it the same one."""
    pools = {
        (sides.get(side) or {}).get("pool_size")
        for sides in results["scenarios"].values()
        if isinstance(sides.get(side), dict)
    }
    (only,) = pools if len(pools) == 1 else (None,)
    return f"{TITLES[side]}, pool {only}" if only else TITLES[side]


def scenario_label(results: dict, name: str) -> str:
    """The scenario's name, and its server where the run used more than one."""
    servers = {
        side.get("server")
        for sides in results["scenarios"].values()
        for side in sides.values()
        if isinstance(side, dict)
    }
    if len(servers - {None}) < 2:
        return name
    server = next((s.get("server") for s in results["scenarios"][name].values() if isinstance(s, dict)), None)
    return f"{name} ({server})" if server else name


def save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name


def throughput(results: dict, out: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=WIDE)
    grouped_bars(ax, results, lambda side: side.get("rps"), "%.0f")
    for position, sides in enumerate(results["scenarios"].values()):
        if sides.get("ceiling"):  # the ceiling across the whole group, to read every bar against it
            ax.hlines(sides["ceiling"]["rps"], position - 0.45, position + 0.45, colors=COLOURS["ceiling"],
                      linestyles="--", linewidth=1)  # fmt: skip
    ax.set_ylabel(rate_label(results))
    ax.set_title("Throughput, higher is better (dashed: the ceiling, stock with every connection it can use)")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.18)
    ax.legend(fontsize=8, loc="upper center", ncols=4)
    return save(fig, out, "throughput.png")


def sweep(results: dict, out: Path) -> str:
    """Throughput against pool size (log 2), both engines, the ceiling a line, connections needed circled."""
    import matplotlib.pyplot as plt

    scenarios = list(results["sweep"])
    columns = min(2, len(scenarios))
    rows = (len(scenarios) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(scenarios) :]:
        ax.set_visible(False)
    for ax, scenario in zip(axes.flat, scenarios, strict=False):
        needed = results.get("connections_needed", {}).get(scenario, {})
        all_sizes = sorted({int(s) for by_size in results["sweep"][scenario].values() for s in by_size})
        for side, by_size in results["sweep"][scenario].items():
            sizes = sorted(int(s) for s in by_size)
            rps = [by_size[str(s)]["rps"] for s in sizes]
            ax.plot(sizes, rps, marker="o", color=COLOURS[side], label=TITLES[side])
            size = needed.get(side)
            if size is not None:
                point = (size, by_size[str(size)]["rps"])
                ax.plot(*point, marker="o", markersize=13, fillstyle="none", color=COLOURS[side])
                at_right = size == all_sizes[-1]
                ax.annotate(f"{TITLES[side]} needs {size}", point, textcoords="offset points",
                            xytext=(-10 if at_right else 10, -16 if side == "baseline" else 8),
                            ha="right" if at_right else "left", fontsize=8, color=COLOURS[side])  # fmt: skip
        ceiling = (results["scenarios"].get(scenario) or {}).get("ceiling")
        if ceiling:
            ax.axhline(ceiling["rps"], color=COLOURS["ceiling"], linestyle="--", linewidth=1,
                       label=f"ceiling (stock, pool {ceiling.get('pool_size', '?')})")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_sizes, [str(s) for s in all_sizes])
        ax.set_xlim(all_sizes[0] / 1.5, all_sizes[-1] * 1.5)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
        ax.set_title(f"{scenario}: throughput against pool size")
        ax.set_xlabel("pool size (connections per worker, log 2)")
        ax.set_ylabel(f"{'tasks' if scenario == 'tasks' else 'requests'} per second")
        ax.legend(fontsize=7, loc="lower right")
    return save(fig, out, "sweep.png")


def pale_p95_key():
    """The legend's entry for the pale bars behind the others."""
    from matplotlib.patches import Patch

    return Patch(facecolor="grey", alpha=0.3, label="p95 (pale, behind)")


def hold(results: dict, out: Path) -> str:
    """Hold per checkout: the mean (solid) and p95 (pale, behind), per scenario and side, log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=WIDE)
    names = list(results["scenarios"])
    sides = sides_of(results)
    width = 0.8 / len(sides)
    for i, side in enumerate(sides):
        positions = [p + (i - (len(sides) - 1) / 2) * width for p in range(len(names))]
        figures = [results["scenarios"][n].get(side) or {} for n in names]
        ax.bar(positions, [f.get("hold_p95_ms") or 0 for f in figures], width, color=COLOURS[side], alpha=0.3)
        bars = ax.bar(positions, [f.get("hold_mean_ms") or 0 for f in figures], width, color=COLOURS[side],
                      label=legend_label(results, side))  # fmt: skip
        ax.bar_label(bars, fmt="%.2g", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("ms per checkout (log scale)")
    ax.set_title("How long a checkout held its connection, lower is better: mean, and p95 (pale) behind it")
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*handles, pale_p95_key()], fontsize=8, ncols=4, loc="upper center")
    ax.set_ylim(top=ax.get_ylim()[1] * 8)
    return save(fig, out, "hold.png")


def latency(results: dict, out: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=WIDE)
    grouped_bars(ax, results, lambda side: side.get("latency_p95_ms"))
    for bar_container in list(ax.containers):
        for patch in bar_container:
            patch.set_alpha(0.35)
    grouped_bars(ax, results, lambda side: side.get("latency_p50_ms"), label="%.0f")
    handles, _ = ax.get_legend_handles_labels()
    half = len(handles) // 2
    ax.legend(handles=[*handles[half:], pale_p95_key()], fontsize=8, ncols=4)
    ax.set_ylabel("milliseconds (client side)")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.18)  # room for the legend
    ax.set_title("Latency, lower is better: p50 (labelled), and p95 (pale) behind it")
    return save(fig, out, "latency.png")


def soak_chart(
    samples: dict, lines: list[tuple[str, str, str]], faults: list[dict], out: Path, log_scale=frozenset()
) -> str:
    """A soak's lines over time, one panel each, one curve per subject; kills dotted, the restart dashed."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(lines), 1, figsize=(8, 1.9 * len(lines)), sharex=True, squeeze=False)
    for ax, (key, title, unit) in zip(axes.flat, lines, strict=True):
        for subject, points in sorted(samples.get(key, {}).items()):
            ax.plot([t / 60 for t, _ in points], [v for _, v in points], linewidth=1, label=subject)
        for fault in faults:
            restart = fault["kind"] == "restart"
            ax.axvline(fault["t"] / 60, color="#c62828" if restart else "#9e9e9e",
                       linestyle="--" if restart else ":", linewidth=1)  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        if key in log_scale and samples.get(key):
            ax.set_yscale("log")
        ax.tick_params(labelsize=7)
        if len(samples.get(key, {})) > 1:
            ax.legend(fontsize=6, loc="upper left", ncols=4)
    axes.flat[-1].set_xlabel("minutes (dotted: every session terminated; dashed: PostgreSQL restarted)")
    return save(fig, out, "soak.png")
