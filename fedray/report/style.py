"""How report figures look: a colour-blind-safe palette, axis units and the Agg backend.

Colours are Okabe & Ito's eight ("Color Universal Design", 2008), distinguishable under the
common forms of colour blindness; runs beyond eight also change line style. Figures are drawn at
a size and DPI whose text reads at 100% zoom (about 15 px for 10 pt).
"""

from __future__ import annotations

from pathlib import Path

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}
_RUN_ORDER = ("blue", "vermillion", "green", "orange", "purple", "sky_blue", "black", "yellow")
_LINESTYLES = ("-", "--", ":", "-.")

# Timeline phases; device tiers use the remaining colours so the two never share one.
PHASE_COLORS = {
    "download": OKABE_ITO["sky_blue"],
    "compute": OKABE_ITO["blue"],
    "upload": OKABE_ITO["orange"],
    "dropped": OKABE_ITO["vermillion"],
    "idle": "#E6E6E6",
}
# Yellow last: it is faint as a line on white.
TIER_COLORS = tuple(OKABE_ITO[c] for c in ("green", "purple", "black", "yellow"))

DPI = 110
WIDE = (7.5, 4.2)  # inches: 825 x 462 px at DPI


def run_style(index: int) -> dict:
    """Colour and line style of the index-th run of a report."""
    color = OKABE_ITO[_RUN_ORDER[index % len(_RUN_ORDER)]]
    return {"color": color, "linestyle": _LINESTYLES[(index // len(_RUN_ORDER)) % len(_LINESTYLES)]}


def tier_color(index: int) -> str:
    return TIER_COLORS[index % len(TIER_COLORS)]


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "legend.fontsize": 9})
    return plt


def time_unit(max_seconds: float) -> tuple[float, str]:
    """Divisor and unit that keep simulated-time tick labels short."""
    if max_seconds >= 3 * 3600:
        return 3600.0, "h"
    if max_seconds >= 3 * 60:
        return 60.0, "min"
    return 1.0, "s"


def bytes_unit(max_bytes: float) -> tuple[float, str]:
    for divisor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if max_bytes >= divisor:
            return divisor, unit
    return 1.0, "B"


def human_bytes(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    divisor, unit = bytes_unit(value)
    return f"{value / divisor:.3g} {unit}"


def human_seconds(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    divisor, unit = time_unit(value)
    return f"{value / divisor:.4g} {unit}"


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
