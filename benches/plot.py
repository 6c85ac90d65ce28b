#!/usr/bin/env python3
"""benches/plot.py: draw BENCHMARKS.md's plots from benches/results/*.csv. Python 3 standard library only.

Inputs (in benches/results/):
  runs.csv       scenario,system,round,rps,p50_ms,p99_ms: one line per bench.sh run (an empty cell: not recorded).
                 `CSV=benches/results/runs.csv SCENARIO=name benches/compare.sh ...` appends lines in this format.
  scenarios.csv  scenario,title,when,command: what each scenario is, in the order the plots show them.
Outputs (in benches/plots/):
  throughput.svg grouped bars: median requests/s per system, one group per scenario;
  latency.svg    dot plot: median p50 and p99 per system and scenario.
Medians are over the rounds a system ran in. Run: python3 benches/plot.py
"""

import csv
import math
import os
import statistics
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
PLOTS = os.path.join(HERE, "plots")

# System ids in runs.csv -> legend name and colour. Unknown ids are drawn in grey under their own name.
SYSTEMS = {
    "nginx": ("nginx-proxy (no JWT check)", "#3b8a46"),
    "haproxy": ("HAProxy with jwt_verify", "#d9822b"),
    "credgate-pgo": ("credgate, profile-guided build", "#1f5fa8"),
    "credgate-plain": ("credgate, plain release build", "#8fb3de"),
    "credgate-pgo-std-pool": ("credgate, hyper-util pool (fallback)", "#6a4c93"),
    "credgate-pgo-std-timer": ("credgate, tokio timer (fallback)", "#b07cc6"),
}
FONT = "font-family:Helvetica,Arial,sans-serif"


def load():
    with open(os.path.join(RESULTS, "scenarios.csv"), newline="") as f:
        scenarios = list(csv.DictReader(f))
    runs = {}
    with open(os.path.join(RESULTS, "runs.csv"), newline="") as f:
        for r in csv.DictReader(f):
            runs.setdefault((r["scenario"], r["system"]), []).append(r)
    return scenarios, runs


def median(rows, key, integer=False):
    vals = [float(r[key]) for r in rows if r[key].strip()]
    if not vals:
        return None
    m = statistics.median(vals)
    return round(m) if integer else m


def systems_in(runs, scenario):
    order = list(SYSTEMS) + sorted({s for (sc, s) in runs if s not in SYSTEMS})
    return [s for s in order if (scenario, s) in runs]


def style(system):
    return SYSTEMS.get(system, (system, "#888888"))


def nice_max(v, ticks=6):
    """An axis end >= v and its tick step, with steps of 1, 2, 2.5 or 5 times a power of ten."""
    raw = v / ticks
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    return step * math.ceil(v / step - 1e-9), step


def text(x, y, s, size=12, anchor="start", weight="normal", fill="#222", extra=""):
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" '
            f'fill="{fill}" style="{FONT}"{extra}>{escape(s)}</text>')


def svg(width, height, body, title):
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img">\n<title>{escape(title)}</title>\n'
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>\n' + "\n".join(body) + "\n</svg>\n")


def caption(body, y, scenarios, note):
    """Small print under a plot: what the figures are, then the command behind each scenario."""
    body.append(text(20, y, note, size=11, fill="#444"))
    for i, sc in enumerate(scenarios, 1):
        y += 15
        body.append(text(20, y, f"[{i}] {sc['command']}", size=10, fill="#555"))
    y += 17
    body.append(text(20, y, "Data: benches/results/runs.csv, medians over rounds. "
                            "Regenerate: python3 benches/plot.py", size=10, fill="#555"))
    return y


def legend(body, x, y, systems):
    for s in systems:
        name, colour = style(s)
        body.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{colour}"/>')
        body.append(text(x + 18, y, name, size=12))
        y += 18
    return y


def throughput(scenarios, runs):
    scs = [sc for sc in scenarios if any(median(runs[(sc["scenario"], s)], "rps") for s in systems_in(runs, sc["scenario"]))]
    groups = [(sc, [(s, median(runs[(sc["scenario"], s)], "rps", integer=True)) for s in systems_in(runs, sc["scenario"])])
              for sc in scs]
    used = [s for s in SYSTEMS if any(s == g for _, bars in groups for g, _ in bars)]
    bar, gap = 44, 80
    left, top, plot_h = 80, 60, 300
    plot_w = sum(len(b) * bar for _, b in groups) + gap * (len(groups) + 1)
    width = max(left + plot_w + 290, 900)
    top_val, step = nice_max(max(v for _, b in groups for _, v in b if v))
    body = [text(20, 30, "Throughput: credgate beside nginx-proxy and HAProxy", size=17, weight="bold"),
            text(20, 48, "requests/s, median over interleaved rounds; wrk 64 connections, system under test alone on one core",
                 size=12, fill="#444")]
    y0 = top + plot_h
    v = 0
    while v <= top_val + 1e-9:
        y = y0 - plot_h * v / top_val
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        body.append(text(left - 8, y + 4, f"{v / 1000:g}k", size=11, anchor="end", fill="#444"))
        v += step
    body.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="#555"/>')
    body.append(f'<line x1="{left}" y1="{y0}" x2="{left + plot_w}" y2="{y0}" stroke="#555"/>')
    body.append(text(22, top + plot_h / 2, "requests per second", size=12, anchor="middle",
                     extra=f' transform="rotate(-90 22 {top + plot_h / 2:.1f})"'))
    x = left + gap
    for i, (sc, bars) in enumerate(groups, 1):
        gx = x
        for s, val in bars:
            if val is None:
                continue
            h = plot_h * val / top_val
            body.append(f'<rect x="{x}" y="{y0 - h:.1f}" width="{bar - 4}" height="{h:.1f}" fill="{style(s)[1]}">'
                        f'<title>{escape(style(s)[0])}: {val:,} req/s</title></rect>')
            body.append(text(x + (bar - 4) / 2, y0 - h - 5, f"{val / 1000:.1f}k", size=11, anchor="middle"))
            x += bar
        mid = (gx + x - 4) / 2
        body.append(text(mid, y0 + 18, f"{sc['title']} [{i}]", size=12, anchor="middle", weight="bold"))
        for j, part in enumerate(sc["when"].split(", ", 1)):
            body.append(text(mid, y0 + 33 + 13 * j, part, size=10, anchor="middle", fill="#555"))
        x += gap
    legend(body, left + plot_w + 30, top + 10, used)
    end = caption(body, y0 + 80, scs, "Bars from different scenarios are different sittings: compare bars "
                                     "within a group only (the VM's speed moves between sittings).")
    return svg(width, end + 15, body, "credgate throughput beside nginx-proxy and HAProxy")


def latency(scenarios, runs):
    rows = []  # (scenario index, scenario, system, p50, p99)
    scs = []
    for sc in scenarios:
        got = [(s, median(runs[(sc["scenario"], s)], "p50_ms"), median(runs[(sc["scenario"], s)], "p99_ms"))
               for s in systems_in(runs, sc["scenario"])]
        got = [g for g in got if g[1] is not None or g[2] is not None]
        if got:
            scs.append(sc)
            rows.append((len(scs), sc, got))
    used = [s for s in SYSTEMS if any(s == g[0] for _, _, gs in rows for g in gs)]
    left, top, row_h, head_h = 300, 70, 22, 24
    plot_w = 440
    n_rows = sum(len(g) for _, _, g in rows)
    plot_h = n_rows * row_h + len(rows) * head_h
    hi, step = nice_max(max(v for _, _, g in rows for _, a, b in g for v in (a, b) if v is not None) * 1.08)
    width = left + plot_w + 270
    body = [text(20, 30, "Latency: median p50 and p99 per system", size=17, weight="bold"),
            text(20, 48, "milliseconds; wrk 64 connections (closed loop), system under test alone on one core",
                 size=12, fill="#444")]
    y0 = top + plot_h

    def xpos(v):
        return left + plot_w * v / hi

    v = 0
    while v <= hi + 1e-9:
        body.append(f'<line x1="{xpos(v):.1f}" y1="{top}" x2="{xpos(v):.1f}" y2="{y0}" stroke="#e3e3e3"/>')
        body.append(text(xpos(v), y0 + 16, f"{v:g}", size=11, anchor="middle", fill="#444"))
        v += step
    body.append(f'<line x1="{left}" y1="{y0}" x2="{left + plot_w}" y2="{y0}" stroke="#555"/>')
    body.append(text(left + plot_w / 2, y0 + 34, "latency, ms (lower is better)", size=12, anchor="middle"))
    y = top
    for i, sc, got in rows:
        body.append(text(20, y + 16, f"[{i}] {sc['title']}, {sc['when'].split(',')[0]}", size=12, weight="bold"))
        y += head_h
        for s, p50, p99 in got:
            name, colour = style(s)
            cy = y + row_h / 2
            body.append(text(36, cy + 4, name, size=12))
            if p50 is not None and p99 is not None:
                body.append(f'<line x1="{xpos(p50):.1f}" y1="{cy:.1f}" x2="{xpos(p99):.1f}" y2="{cy:.1f}" '
                            f'stroke="{colour}" stroke-width="2"/>')
            if p50 is not None:
                body.append(f'<circle cx="{xpos(p50):.1f}" cy="{cy:.1f}" r="5" fill="{colour}">'
                            f'<title>{escape(name)} p50 {p50:.2f} ms</title></circle>')
                body.append(text(xpos(p50) - 8, cy + 4, f"{p50:.2f}", size=10, anchor="end", fill="#333"))
            if p99 is not None:
                d = 6
                px = xpos(p99)
                body.append(f'<path d="M{px:.1f},{cy - d:.1f} L{px + d:.1f},{cy:.1f} L{px:.1f},{cy + d:.1f} '
                            f'L{px - d:.1f},{cy:.1f} Z" fill="{colour}" stroke="#222" stroke-width="0.6">'
                            f'<title>{escape(name)} p99 {p99:.2f} ms</title></path>')
                body.append(text(px + 9, cy + 4, f"{p99:.2f}", size=10, fill="#333"))
            y += row_h
    lx, ly = left + plot_w + 30, top + 10
    body.append(f'<circle cx="{lx + 6}" cy="{ly - 4}" r="5" fill="#666"/>')
    body.append(text(lx + 18, ly, "p50 (median run)", size=12))
    ly += 18
    body.append(f'<path d="M{lx + 6},{ly - 10} L{lx + 12},{ly - 4} L{lx + 6},{ly + 2} L{lx},{ly - 4} Z" '
                f'fill="#666" stroke="#222" stroke-width="0.6"/>')
    body.append(text(lx + 18, ly, "p99 (median run)", size=12))
    legend(body, lx, ly + 26, used)
    end = caption(body, y0 + 62, scs, "A row with only a diamond: that sitting recorded p99 but not p50. "
                                     "Compare rows within one scenario only.")
    return svg(width, end + 15, body, "credgate latency percentiles beside nginx-proxy and HAProxy")


def main():
    scenarios, runs = load()
    os.makedirs(PLOTS, exist_ok=True)
    for name, draw in (("throughput.svg", throughput), ("latency.svg", latency)):
        path = os.path.join(PLOTS, name)
        with open(path, "w") as f:
            f.write(draw(scenarios, runs))
        print(os.path.relpath(path, os.path.dirname(HERE)))


if __name__ == "__main__":
    main()
