"""PNG pictures of a run for people: I-V loops and loop area against frequency."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_run(store, run_id: int, path: Path) -> Path:
    """Write a PNG of run ``run_id``: the I-V loops coloured by frequency (or cycle), and
    the loop area against frequency when the run has it; I(t) and V(t) otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    run = store.run(run_id)
    df = store.points(run_id)
    metrics = store.metrics(run_id)
    freq = metrics[(metrics["scope"] == "frequency")] if len(metrics) else metrics
    # a two-channel run drives a device per channel: each is drawn (and analysed) apart
    channels = sorted(int(c) for c in df["channel"].unique()) if len(df) else [0]
    several = len(channels) > 1
    on = _channel_labels(run) if several else {}
    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    ax = axes[0]
    cmap = plt.get_cmap("viridis")
    segments = sorted(df["segment"].unique()) if len(df) else []
    freqs = {}
    if len(freq):
        f = freq[freq["name"] == "frequency"]
        freqs = dict(zip(f["index"].astype(int), f["value"], strict=False))
    for n, channel in enumerate(channels):
        mine = df[df["channel"] == channel] if several else df
        who = f"{on.get(channel, f'channel {channel}')} " if several else ""
        for k, seg in enumerate(segments):
            g = mine[mine["segment"] == seg]
            last = g[g["cycle"] == g["cycle"].max()]  # the settled cycle
            label = f"{who}{freqs[seg]:g} Hz" if seg in freqs else f"{who}segment {seg}"
            color = cmap(k / max(1, len(segments) - 1))
            ls = styles[n % len(styles)]
            ax.plot(last["v"], last["i"] * 1e9, color=color, ls=ls, lw=1.2, label=label)
    ax.set_xlabel("V (V)")
    ax.set_ylabel("I (nA)")
    samples = ", ".join(dict.fromkeys((run.get("samples") or {}).values())) or run.get("sample")
    ax.set_title(f"run {run_id}: {run['protocol']} on {samples or ''}")
    ax.axhline(0, color="0.8", lw=0.5)
    ax.axvline(0, color="0.8", lw=0.5)
    if segments:
        ax.legend(fontsize=8)
    ax = axes[1]
    if len(freq):
        for channel in channels:
            a = freq[(freq["name"] == "loop_area") & (freq["channel"] == channel)]
            a = a.sort_values("index")
            fx = np.array([freqs.get(int(i), np.nan) for i in a["index"]])
            name = on.get(channel, f"channel {channel}") if several else None
            ax.semilogx(fx, a["value"] * 1e9, "o-", label=name)
        if several:
            ax.legend(fontsize=8)
        ax.set_xlabel("frequency (Hz)")
        ax.set_ylabel("loop area (nV·A = nW)")
        ax.set_title("loop area against frequency")
    else:
        for channel in channels:
            mine = df[df["channel"] == channel] if several else df
            ax.plot(mine["t"], mine["i"] * 1e9, lw=0.8)
        ax.set_xlabel("t (s)")
        ax.set_ylabel("I (nA)")
        ax.set_title("current against time")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _channel_labels(run) -> dict[int, str]:
    """Channel -> 'smua chipA' (the instrument's channel name and the sample on it)."""
    names = {
        e["channel"]: str(e.get("name", e["channel"]))
        for e in (run.get("metadata") or {}).get("channels") or []
        if isinstance(e, dict) and isinstance(e.get("channel"), int)
    }
    samples = run.get("samples") or {}
    return {
        c: f"{names.get(c, f'channel {c}')} {samples.get(c, '')}".strip()
        for c in set(names) | set(samples)
    }
