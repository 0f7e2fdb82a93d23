"""The plot of ``aa-storage bench --scale --plot FILE``: total and per-process ops/s
against the number of processes, as a PNG.

matplotlib is optional (the ``dev`` extra has it): it is imported only here, only
when a plot is asked for, and drawn with its non-interactive Agg canvas, so no
display and no pyplot state are involved.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from aa_storage_redis.bench.scale import ScalePoint, saturation

INSTALL = "pip install matplotlib"


class PlotError(Exception):
    """The plot cannot be drawn or written; the message is one line for the user."""


def plot_problem(path: str) -> str | None:
    """Why a plot cannot be written to ``path`` (matplotlib missing or broken, or no
    such directory), as one line; None if nothing stands in the way. Cheap enough
    to ask before a run, so that the run is not wasted."""
    try:
        importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError:
        return f"--plot needs matplotlib, which is not installed: {INSTALL}"
    except Exception as exc:  # a broken install can fail in any way; say it in one line
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        return f"--plot needs matplotlib, which failed to load ({reason}): {INSTALL}"
    folder = Path(path).parent
    if not folder.is_dir():
        return f"--plot {path}: there is no directory {folder}"
    return None


def write_plot(points: Sequence[ScalePoint], path: str) -> None:
    """Write the PNG of ``points`` to ``path`` (PNG whatever its name ends with);
    ``PlotError`` if it cannot be drawn or written."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import StrMethodFormatter

        figure = Figure(figsize=(6.4, 4.0), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        counts = [point.processes for point in points]
        axes.plot(counts, [p.total_ops_per_sec for p in points], marker="o", label="total")
        axes.plot(counts, [p.ops_per_process for p in points], marker="s", label="per process")
        axes.set_xscale("log", base=2)
        axes.set_xticks(counts, [str(count) for count in counts])
        axes.set_xlabel("processes")
        axes.set_ylabel("ops/s")
        axes.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        if (saturated := saturation(points)) is not None:
            axes.axvline(saturated.processes, color="grey", linestyle="--", label="saturation")
        axes.set_ylim(bottom=0)
        axes.set_title("aa-storage bench --scale: increment and get_policy on one Redis")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.savefig(path, format="png", dpi=100)
    except Exception as exc:  # matplotlib's failures are of many kinds; none may reach the user raw
        raise PlotError(f"cannot write the plot to {path}: {type(exc).__name__}: {exc}") from exc
