"""Per-run figures about clients: the timeline (who was busy when, and with what) and
participation (how often each client's update made it into the model, and how its local
training went — the fairness picture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedray.report import data
from fedray.report.runs import Run, tiers
from fedray.report.style import (
    DPI,
    OKABE_ITO,
    PHASE_COLORS,
    WIDE,
    pyplot,
    save,
    tier_color,
    time_unit,
)

TIMELINE_CLIENTS = 30  # rows a timeline draws: readable at 100% zoom whatever the population


def timeline_figure(run: Run, out: Path, k: int = TIMELINE_CLIENTS) -> tuple[Path, dict]:
    """A Gantt chart of a seeded sample of clients; returns the file and what it shows
    (``clients``, ``segments``, ``tiers``) for the report's text and tests."""
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    plt = pyplot()
    ids = data.sample_clients(run.events, k, run.seed)
    segments = data.timeline_segments(run.events, ids)
    tier_info = tiers(run)
    tier_of = tier_info[1](ids) if tier_info else np.zeros(len(ids), dtype=np.int64)
    order = np.lexsort((ids, tier_of))
    ids, tier_of = ids[order], tier_of[order]
    row = {int(c): i for i, c in enumerate(ids)}
    ends = [run.rounds.sim_time_s.max(), (segments.start_s + segments.duration_s).max()]
    end = float(np.nanmax(ends)) if np.isfinite(ends).any() else 1.0  # 1.0: a run with no rounds
    divisor, unit = time_unit(end)

    fig, ax = plt.subplots(
        figsize=(WIDE[0], 1.9 + 0.24 * max(len(ids), 4)), dpi=DPI, layout="constrained"
    )
    y = np.arange(len(ids))
    ax.barh(y, end / divisor, left=0, height=0.8, color=PHASE_COLORS["idle"], linewidth=0)
    if run.mode == "sync" and len(run.rounds) <= 100:  # round ends: who waited for whom
        ax.vlines(
            run.rounds.sim_time_s / divisor,
            -0.5,
            len(ids) - 0.5,
            color="#AAAAAA",
            linewidth=0.6,
            zorder=1.5,
        )
    # A task shorter than ~2 px would vanish on a long run: draw it at least that wide, in the
    # colour of its longest phase, under its true phases (the data keeps the true durations).
    tasks = run.events[run.events.client_id.isin(ids)]
    phases = tasks[["download_s", "compute_s", "upload_s"]].to_numpy()
    main = np.array(["download", "compute", "upload"])[phases.argmax(axis=1)] if len(tasks) else []
    main = np.where(tasks.status.astype(str).to_numpy() == "dropped", "dropped", main)
    _rects(
        ax,
        tasks.client_id.map(row).to_numpy(),
        tasks.dispatch_time_s.to_numpy() / divisor,
        np.maximum(phases.sum(axis=1), end * 2.5e-3) / divisor,
        facecolors=[PHASE_COLORS[p] for p in main],
    )
    straggled = segments.status == "straggler"
    for phase in ("download", "compute", "upload", "dropped"):
        for late in (False, True):
            seg = segments[(segments.phase == phase) & (straggled == late)]
            if not len(seg):
                continue
            _rects(
                ax,
                seg.client_id.map(row).to_numpy(),
                seg.start_s.to_numpy() / divisor,
                seg.duration_s.to_numpy() / divisor,
                facecolors=PHASE_COLORS[phase],
                alpha=0.5 if late else 1.0,
                hatch="////" if late else None,
                edgecolors="white" if late else "none",
            )
    ax.set_yticks(y, [str(c) for c in ids], fontsize=8)
    ax.set_ylim(max(len(ids), 1) - 0.5, -0.5)
    ax.set_xlim(0, end / divisor)
    ax.set_xlabel(f"simulated time ({unit})")
    ax.set_ylabel("client id")
    handles = [Patch(color=PHASE_COLORS[p], label=p) for p in PHASE_COLORS]
    if straggled.any():
        handles.append(
            Patch(
                facecolor=PHASE_COLORS["compute"], alpha=0.5, hatch="////", label="straggler (cut)"
            )
        )
    if tier_info:
        strip = blended_transform_factory(ax.transAxes, ax.transData)
        ax.barh(
            y,
            0.012,
            left=-0.016,
            height=0.9,
            color=[tier_color(t) for t in tier_of],
            transform=strip,
            clip_on=False,
        )
        ax.tick_params(axis="y", pad=12)  # room for the strip between labels and axis
        handles += [Patch(color=tier_color(i), label=name) for i, name in enumerate(tier_info[0])]
        note = "left strip: device tier"
    else:
        note = "profile has no device tiers"
    ax.set_title(
        f"client timeline of {run.name}: {len(ids)} of {run.num_clients} clients (seeded sample)"
        f"\n{note}",
        fontsize=10,
    )
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 5), frameon=False
    )
    info = {
        "clients": ids,
        "segments": segments,
        "tiers": tier_info[0] if tier_info else None,
        "tier_of": tier_of,
    }
    return save(fig, out / f"timeline_{_slug(run.name)}.png"), info


def _rects(ax, rows, left, width, height: float = 0.8, **style) -> None:
    """One collection of bars for many tasks: a patch per bar (``barh``) costs seconds to draw
    when a long run's sampled clients ran thousands of tasks."""
    from matplotlib.collections import PolyCollection

    if not len(rows):
        return
    top, bottom = rows - height / 2, rows + height / 2
    right = left + width
    verts = np.stack(
        [np.column_stack(p) for p in ((left, top), (right, top), (right, bottom), (left, bottom))],
        axis=1,
    )
    ax.add_collection(PolyCollection(verts, linewidths=0, zorder=2, **style))


def participation_figure(run: Run, out: Path) -> tuple[Path, dict]:
    """Left: updates aggregated per client (a bar per client up to 100 clients, else how many
    clients were aggregated how often). Right: distribution of each client's mean local train loss."""
    plt = pyplot()
    table = data.participation(run.events)
    population = run.num_clients
    g = data.gini(table.aggregated.to_numpy(), population)
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDE[0] * 1.3, WIDE[1]), layout="constrained")
    if population <= 100:
        full = table.reindex(np.arange(population), fill_value=0)
        other = full.selected - full.aggregated - full.dropped
        x = full.index.to_numpy()
        left.bar(x, full.aggregated, width=0.85, color=OKABE_ITO["blue"], label="aggregated")
        left.bar(
            x,
            full.dropped,
            width=0.85,
            bottom=full.aggregated,
            color=PHASE_COLORS["dropped"],
            label="dropped",
        )
        left.bar(
            x,
            other,
            width=0.85,
            bottom=full.aggregated + full.dropped,
            color="#999999",
            label="not aggregated (straggler, stale, ...)",
        )
        left.set_xlabel("client id")
        left.set_ylabel("tasks")
        left.yaxis.get_major_locator().set_params(integer=True)
        left.set_ylim(0, max(int(full.selected.max()), 1) * 1.35)  # headroom for the legend
        left.legend(loc="upper left", ncol=2, fontsize=8)
    else:
        # Too many clients for a bar each: how many clients took part how often (zeros included).
        per_client = np.bincount(table.aggregated.to_numpy(), minlength=1)
        per_client[0] += population - len(table)
        left.bar(np.arange(len(per_client)), per_client, width=0.85, color=OKABE_ITO["blue"])
        left.set_yscale("log")
        left.set_xlabel("updates aggregated per client")
        left.set_ylabel("clients (log scale)")
        left.xaxis.get_major_locator().set_params(integer=True)
    left.set_title(
        f"participation: {int((table.aggregated > 0).sum())} of {population} clients aggregated, "
        f"Gini {g:.2f}",
        fontsize=10,
    )
    left.grid(alpha=0.3, axis="y")

    losses = table.train_loss.dropna()
    tier_info = tiers(run)
    if len(losses):
        bins = np.histogram_bin_edges(losses.to_numpy(), bins=min(30, max(5, len(losses) // 3)))
        if tier_info:
            tier_of = tier_info[1](losses.index.to_numpy())
            for i, name in enumerate(tier_info[0]):
                part = losses.to_numpy()[tier_of == i]
                if len(part):
                    right.hist(
                        part,
                        bins=bins,
                        histtype="step",
                        linewidth=1.8,
                        color=tier_color(i),
                        label=f"{name} ({len(part)})",
                    )
            right.legend(loc="upper right", fontsize=8)
        else:
            right.hist(losses.to_numpy(), bins=bins, color=OKABE_ITO["green"])
    right.set_xlabel("client's mean local train loss (aggregated tasks)")
    right.set_ylabel("clients")
    right.yaxis.get_major_locator().set_params(integer=True)
    right.set_title("per-client train loss (fairness)", fontsize=10)
    right.grid(alpha=0.3, axis="y")
    info = {"table": table, "gini": g, "population": population}
    return save(fig, out / f"participation_{_slug(run.name)}.png"), info


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
