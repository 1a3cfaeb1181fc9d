"""Roofline figures (matplotlib, an optional extra: ``pip install 'memwall[plot]'``).

matplotlib is imported inside :func:`roofline_figure` only; without it a :class:`MissingExtraError` names the
extra to install.  The figure is log-log: arithmetic intensity (ops per DRAM byte) against attainable
throughput (ops/s); each device draws its DRAM roof and its compute roofs (dense, and 2:4-sparse dashed),
and the layer points of each compression variant get their own marker.
"""
from __future__ import annotations

import os

__all__ = ["MissingExtraError", "roofline_figure", "have_matplotlib", "require_matplotlib", "check_output_path",
           "ROOF_DTYPES"]

#: Compute roofs drawn per device (those the device has; FP32 is added on CPUs).
ROOF_DTYPES = ("fp16", "int8", "int4")

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (without importing it twice)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def require_matplotlib() -> None:
    """Raise :class:`MissingExtraError` (naming the ``plot`` extra) when matplotlib cannot be imported."""
    _pyplot()


def check_output_path(out) -> str:
    """``out`` as a str, after checking its suffix (.png, .svg, .pdf) and that its folder exists."""
    out = os.fspath(out)
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".png", ".svg", ".pdf"):
        raise ValueError(f"--out {out!r}: expected a .png, .svg or .pdf file name")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out {out!r}: folder {folder} does not exist")
    return out


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingExtraError(
            "matplotlib is not installed: roofline figures need the plot extra (pip install 'memwall[plot]')"
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def roofline_figure(devices, points, out, *, title: str | None = None, dtypes=ROOF_DTYPES) -> str:
    """Draw the roofline of ``devices`` with ``points`` and save it to ``out`` (format from the suffix:
    .png, .svg or .pdf).  Returns the path written.

    ``points`` are dicts with ``device``, ``variant``, ``intensity`` (ops/byte) and ``perf`` (ops/s), as
    :func:`memwall.simulator.analysis.roofline_points` returns them."""
    import numpy as np

    out = check_output_path(out)
    plt = _pyplot()
    from .devices import load_device

    devices = [load_device(d) for d in devices]
    fig, ax = plt.subplots(figsize=(9, 6.2))
    ai = [p["intensity"] for p in points] or [1.0]
    lo = min(0.05, min(ai) / 2)
    hi = max(2e4, max(ai) * 2)
    x = np.logspace(np.log10(lo), np.log10(hi), 400)
    color = {d.id: _COLORS[i % len(_COLORS)] for i, d in enumerate(devices)}
    for d in devices:
        c = color[d.id]
        bw = d.dram_bandwidth
        # the baseline roof is FP32 on CPUs (and on any device without FP16)
        dts = list(dtypes) if d.kind == "gpu" and d.has_dtype("fp16") else ["fp32", *dtypes]
        for dt in dict.fromkeys(dts):
            if not d.has_dtype(dt):
                continue
            peak = d.peak(dt)
            ax.plot(x, np.minimum(peak, bw * x), color=c, lw=1.6 if dt == "fp16" else 1.0)
            ax.annotate(f"{d.id} {dt} {peak / 1e12:.0f}T", (hi, peak), color=c, fontsize=7, ha="right",
                        va="bottom")
            if d.has_dtype(dt, sparse=True):
                ax.plot(x, np.minimum(d.peak(dt, sparse=True), bw * x), color=c, lw=0.8, ls="--")
    variants = list(dict.fromkeys(p["variant"] for p in points))
    marker = {v: _MARKERS[i % len(_MARKERS)] for i, v in enumerate(variants)}
    for d in devices:
        for v in variants:
            sel = [p for p in points if p["device"] == d.id and p["variant"] == v]
            if sel:
                ax.scatter([p["intensity"] for p in sel], [p["perf"] for p in sel], marker=marker[v], s=22,
                           facecolors="none" if v != variants[0] else color[d.id], edgecolors=color[d.id],
                           linewidths=0.9, label=f"{d.id}: {v}", alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (ops per DRAM byte)")
    ax.set_ylabel("attainable throughput (ops/s)")
    ax.set_title(title or "memwall roofline")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    if points:
        ax.legend(fontsize=7, loc="lower right", ncol=max(1, len(devices) // 2))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
