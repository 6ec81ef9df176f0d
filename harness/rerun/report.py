"""The rerun's two reports: report.md for a CI step summary, and a self-contained report.html with plots.

Both are rendered from the rerun verdict's JSON document alone, so any verdict.json (a merged one,
an old one) can be rendered again. The HTML loads nothing and runs no script: its plots are inline
SVG drawn here — training loss per seed (claimed log vs rerun), val_bpb per seed claimed vs
reproduced with the tolerance and the frontier, and bytes and times as bars against the track's
limits — so it reads the same from a CI artifact, a mail attachment or a file:// URL.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Callable

from harness.findings import FAIL, INFO, PASS, WARN
from harness.report import ICON, markdown_findings

OUTCOME = {"reproduced": "reproduced", "not_reproduced": "not reproduced", "run_failed": "rerun failed",
           "no_score": "no score", "not_run": "not run"}
CLAIMED_COLOR, REPRODUCED_COLOR, BAD_COLOR, LIMIT_COLOR = "#8c96a3", "#1f6feb", "#cf222e", "#cf222e"
STATUS_COLOR = {PASS: "#1a7f37", INFO: "#0969da", WARN: "#9a6700", FAIL: "#cf222e"}
SUMMARY_CHECKS = ("statistics", "significance")  # the aggregate: listed under the seed table, not again below


# --- Markdown -----------------------------------------------------------------------------------

def render_markdown(verdict: dict[str, Any]) -> str:
    """Per-seed table, the aggregate, then every finding (harness.report's table)."""
    seeds, facts = verdict["seeds"], verdict["rerun"]
    good = sum(row["outcome"] == "reproduced" for row in seeds.values())
    tol = facts["tolerances"]
    lines = [f"## pgolf rerun: {ICON[verdict['status']]} {verdict['status'].upper()} — {good} of {len(seeds)} "
             "seed(s) reproduced", "",
             f"`{verdict['target']}` · track `{verdict['track']}` · val_bpb tolerance ±{tol['val_bpb_abs']:g} BPB "
             f"(warning beyond {tol['val_bpb_claimed_std']:g} claimed std), bytes ±{tol['artifact_bytes_abs']:,}, "
             f"times ≤ {tol['time_ratio']:g}× claimed", "",
             "| seed | outcome | val_bpb claimed | reproduced | Δ BPB | Δ / claimed std | artifact bytes | "
             "train s | eval s | steps |", "|---|---|---|---|---|---|---|---|---|---|"]
    for seed, row in seeds.items():
        c, r = row["claimed"], row["reproduced"] or {}
        mark = "✅" if row["outcome"] == "reproduced" else "❌"
        lines.append(f"| {seed} | {mark} {OUTCOME[row['outcome']]} | {_num(c['val_bpb'], '.8f')} | "
                     f"{_num(r.get('val_bpb'), '.8f')} | {_num(row.get('delta_val_bpb'), '+z.8f')} | "
                     f"{_num(row.get('delta_claimed_std'), '+z.2f')} | "
                     + " | ".join(_pair(c[k], r.get(k), f) for k, f in (("artifact_bytes", ",.0f"), ("train_s", ".2f"),
                                                                     ("eval_s", ".2f"), ("steps", ",.0f")))
                     + " |")
    lines.append("")
    lines += [f"- {ICON[f['status']]} {f['message']}" for f in verdict["findings"] if f["check"] in SUMMARY_CHECKS]
    lines += [""] + markdown_findings([f for f in verdict["findings"] if f["check"] not in SUMMARY_CHECKS])
    return "\n".join(lines) + "\n"


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _pair(claimed: float | None, reproduced: float | None, fmt: str) -> str:
    return f"{_num(claimed, fmt)} → {_num(reproduced, fmt)}"


# --- HTML ---------------------------------------------------------------------------------------

def render_html(verdict: dict[str, Any]) -> str:
    facts = verdict["rerun"]
    seeds = verdict["seeds"]
    name = facts["submission"].rstrip("/").rsplit("/", 1)[-1]
    good = sum(row["outcome"] == "reproduced" for row in seeds.values())
    status = verdict["status"]
    agg = facts["aggregate"]
    body = [
        f"<header><h1>pgolf rerun · {_e(name)}</h1><p><span class='badge' style='background:{STATUS_COLOR[status]}'>"
        f"{status.upper()}</span> {good} of {len(seeds)} seed(s) reproduced · track <code>{_e(verdict['track'])}"
        f"</code> · <code>{_e(verdict['target'])}</code></p></header>",
        "<h2>Seeds</h2>", _seed_table(seeds),
        "<ul class='aggregate'>" + "".join(
            f"<li class='{f['status']}'>{_e(f['message'])}</li>" for f in verdict["findings"]
            if f["check"] in SUMMARY_CHECKS) + "</ul>" if agg["seeds"] else "",
        "<h2>Training loss per seed</h2><p class='note'>dashed: the claimed log · solid: the rerun</p>",
        "<figure id='plot-loss'>" + "".join(_loss_panel(seed, row) for seed, row in seeds.items()) + "</figure>",
        "<h2>val_bpb per seed</h2><figure id='plot-bpb'>" + _bpb_plot(seeds, facts) + "</figure>",
        "<h2>Budgets</h2><figure id='plot-budgets'>" + _budget_plots(seeds, facts["limits"]) + "</figure>",
        "<h2>Findings per seed</h2>", _findings_table([f for f in verdict["findings"]
                                                     if f["check"] not in SUMMARY_CHECKS]),
        f"<footer>pgolf {_e(verdict['tool']['version'])} · verdict.json beside this file holds every number</footer>",
    ]
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>pgolf rerun · {_e(name)} · "
            f"{status.upper()}</title><style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1120px;color:#1f2328}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
code{font-size:12px;background:#f6f8fa;padding:1px 4px;border-radius:4px}
.badge{color:#fff;font-weight:700;padding:2px 8px;border-radius:10px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border:1px solid #d0d7de;padding:4px 6px;
text-align:right;vertical-align:top}th{background:#f6f8fa}td.text{text-align:left}
td.pass,li.pass{color:#1a7f37}td.fail,li.fail{color:#cf222e}td.warn,li.warn{color:#9a6700}td.info,li.info{color:#0969da}
figure{margin:0;display:flex;flex-wrap:wrap;gap:12px}.note{color:#59636e;margin:0 0 6px}
svg{background:#fff;border:1px solid #d0d7de;border-radius:6px}svg text{font:11px system-ui,sans-serif;fill:#1f2328}
svg .axis{stroke:#59636e}svg .grid{stroke:#eaeef2}footer{margin-top:24px;color:#59636e;font-size:12px}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _seed_table(seeds: dict[str, Any]) -> str:
    head = ("<table id='seeds'><tr><th>seed</th><th>outcome</th><th>val_bpb claimed</th><th>reproduced</th>"
            "<th>Δ BPB</th><th>Δ / claimed std</th><th>artifact bytes</th><th>train s</th><th>eval s</th>"
            "<th>steps</th></tr>")
    rows = []
    for seed, row in seeds.items():
        c, r = row["claimed"], row["reproduced"] or {}
        status = PASS if row["outcome"] == "reproduced" else FAIL
        cells = [f"<td>{_e(seed)}</td>", f"<td class='text {status}'>{OUTCOME[row['outcome']]}</td>",
                 f"<td>{_num(c['val_bpb'], '.8f')}</td>", f"<td>{_num(r.get('val_bpb'), '.8f')}</td>",
                 f"<td>{_num(row.get('delta_val_bpb'), '+z.8f')}</td>",
                 f"<td>{_num(row.get('delta_claimed_std'), '+z.2f')}</td>"]
        cells += [f"<td>{_e(_pair(c[k], r.get(k), f))}</td>" for k, f in
                  (("artifact_bytes", ",.0f"), ("train_s", ".2f"), ("eval_s", ".2f"), ("steps", ",.0f"))]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return head + "".join(rows) + "</table>"


def _findings_table(findings: list[dict[str, Any]]) -> str:
    order = [FAIL, WARN, PASS, INFO]
    rows = "".join(f"<tr><td class='text {f['status']}'>{f['status'].upper()}</td><td class='text'>{_e(f['check'])}"
                   f"</td><td class='text'>{_e(f['message'])}</td></tr>"
                   for f in sorted(findings, key=lambda f: order.index(f["status"])))
    return f"<table id='findings'><tr><th>status</th><th>check</th><th>finding</th></tr>{rows}</table>"


# --- plotting -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Frame:
    """A plot area in pixels and the data range it shows; maps values to pixels (y grows upwards)."""

    left: float
    top: float
    width: float
    height: float
    x0: float
    x1: float
    y0: float
    y1: float

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / ((self.x1 - self.x0) or 1) * self.width

    def y(self, value: float) -> float:
        return self.top + self.height - (value - self.y0) / ((self.y1 - self.y0) or 1) * self.height


def _padded(values: list[float], share: float = 0.08) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * share or abs(lo) * 0.01 or 1.0
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> tuple[list[float], int]:
    """Round tick values (1, 2, 2.5, 5 × 10^k apart) inside [lo, hi], and the decimals that print them."""
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    if integer and step < 1:  # steps, seeds: no tick between two integers
        step, magnitude = 1.0, 1.0
    first = math.ceil(lo / step - 1e-9) * step
    ticks = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if round(step / magnitude, 6) == 2.5 else 0)
    return ticks, decimals


def _axes(frame: _Frame, x_ticks: bool = True, x_integer: bool = False) -> str:
    out = []
    ys, y_dec = _ticks(frame.y0, frame.y1, 4)
    for v in ys:
        y = frame.y(v)
        out.append(f"<line class='grid' x1='{frame.left:.1f}' x2='{frame.left + frame.width:.1f}' y1='{y:.1f}' "
                   f"y2='{y:.1f}'/><text x='{frame.left - 4:.1f}' y='{y + 4:.1f}' text-anchor='end'>"
                   f"{v:z.{y_dec}f}</text>")
    if x_ticks:
        xs, x_dec = _ticks(frame.x0, frame.x1, 5, integer=x_integer)
        for v in xs:
            x = frame.x(v)
            out.append(f"<text x='{x:.1f}' y='{frame.top + frame.height + 14:.1f}' text-anchor='middle'>"
                       f"{v:z,.{x_dec}f}</text>")
    bottom = frame.top + frame.height
    out.append(f"<path class='axis' fill='none' d='M{frame.left:.1f},{frame.top:.1f} V{bottom:.1f} "
               f"H{frame.left + frame.width:.1f}'/>")
    return "".join(out)


def _path(frame: _Frame, points: list[list[float]]) -> str:
    return "M" + " L".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in points)


def _loss_panel(seed: str, row: dict[str, Any]) -> str:
    claimed = row["claimed"]["loss_curve"]
    reproduced = (row["reproduced"] or {}).get("loss_curve") or []
    width, height = 360, 230
    head = (f"<svg class='plot loss' data-seed='{_e(seed)}' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' role='img'><title>training loss, seed {_e(seed)}</title>"
            f"<text x='12' y='18' style='font-weight:600'>seed {_e(seed)}</text>")
    points = claimed + reproduced
    if not points:
        return head + "<text x='180' y='120' text-anchor='middle'>no train_loss lines in either log</text></svg>"
    frame = _Frame(52, 28, width - 68, height - 64, 0, max(p[0] for p in points), *_padded([p[1] for p in points]))
    lines = []
    # the claimed curve is drawn wider underneath, so it still shows where the rerun retraces it exactly
    for curve, css, color, dash, stroke, radius in ((claimed, "claimed", CLAIMED_COLOR, "7 4", 5, 4.5),
                                                    (reproduced, "reproduced", REPRODUCED_COLOR, "none", 2, 2.5)):
        if curve:
            lines.append(f"<path class='{css}' d='{_path(frame, curve)}' fill='none' stroke='{color}' "
                         f"stroke-width='{stroke}' stroke-dasharray='{dash}'/>")
        if len(curve) <= 60:  # few logged steps: mark them, a single one draws no line
            lines += [f"<circle class='{css}' cx='{frame.x(x):.1f}' cy='{frame.y(y):.1f}' r='{radius}' "
                      f"fill='{color}'/>" for x, y in curve]
    legend = (f"<text x='{width - 12}' y='18' text-anchor='end'>{len(claimed)} claimed · {len(reproduced)} "
              "reproduced points</text>")
    caption = f"<text x='{frame.left + frame.width / 2:.1f}' y='{height - 8}' text-anchor='middle'>step</text>"
    return head + _axes(frame, x_integer=True) + "".join(lines) + legend + caption + "</svg>"


def _bpb_plot(seeds: dict[str, Any], facts: dict[str, Any]) -> str:
    tol = facts["tolerances"]["val_bpb_abs"]
    frontier = facts["frontier"]
    values = [v for row in seeds.values() for v in (row["claimed"]["val_bpb"] - tol, row["claimed"]["val_bpb"] + tol,
                                                     (row["reproduced"] or {}).get("val_bpb")) if v is not None]
    values += frontier["val_bpb"] if frontier else []
    width, height = 1080, 320
    frame = _Frame(80, 36, width - 300, height - 76, 0, len(seeds), *_padded(values))
    out = [f"<svg class='plot bpb' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img'>"
           "<title>val_bpb per seed, claimed vs reproduced</title>", _axes(frame, x_ticks=False)]
    if frontier:
        lo, hi, mean = min(frontier["val_bpb"]), max(frontier["val_bpb"]), sum(frontier["val_bpb"]) / len(
            frontier["val_bpb"])
        out.append(f"<rect class='frontier' x='{frame.left}' width='{frame.width}' y='{frame.y(hi):.1f}' "
                   f"height='{max(frame.y(lo) - frame.y(hi), 1):.1f}' fill='#fff1e5'/>"
                   f"<line class='frontier' x1='{frame.left}' x2='{frame.left + frame.width}' y1='{frame.y(mean):.1f}' "
                   f"y2='{frame.y(mean):.1f}' stroke='#bc4c00' stroke-dasharray='5 3'/>"
                   f"<text x='{frame.left + 6}' y='{frame.y(mean) - 5:.1f}' fill='#bc4c00'>frontier mean {mean:.5f} "
                   f"({len(frontier['val_bpb'])} seeds, {_e(frontier['source'])})</text>")
    for i, (seed, row) in enumerate(seeds.items()):
        x = frame.x(i + 0.5)
        c = row["claimed"]["val_bpb"]
        r = (row["reproduced"] or {}).get("val_bpb")
        out.append(f"<rect class='tolerance' x='{x - 18:.1f}' width='36' y='{frame.y(c + tol):.1f}' "
                   f"height='{max(frame.y(c - tol) - frame.y(c + tol), 1):.1f}' fill='#ddf4ff'/>"
                   f"<circle class='claimed' cx='{x - 8:.1f}' cy='{frame.y(c):.1f}' r='6' fill='#fff' "
                   f"stroke='{CLAIMED_COLOR}' stroke-width='2.5'/>"
                   f"<text x='{x:.1f}' y='{frame.top + frame.height + 16:.1f}' text-anchor='middle'>seed {_e(seed)}"
                   "</text>")
        if r is not None:
            color = REPRODUCED_COLOR if row["outcome"] == "reproduced" else BAD_COLOR
            out.append(f"<line x1='{x - 8:.1f}' y1='{frame.y(c):.1f}' x2='{x + 8:.1f}' y2='{frame.y(r):.1f}' "
                       f"stroke='#afb8c1'/><circle class='reproduced' cx='{x + 8:.1f}' cy='{frame.y(r):.1f}' r='6' "
                       f"fill='{color}'/>")
    legend_x = frame.left + frame.width + 8
    out.append(f"<circle cx='{legend_x + 6}' cy='46' r='6' fill='#fff' stroke='{CLAIMED_COLOR}' stroke-width='2.5'/>"
               f"<text x='{legend_x + 18}' y='50'>claimed</text>"
               f"<circle cx='{legend_x + 6}' cy='68' r='6' fill='{REPRODUCED_COLOR}'/>"
               f"<text x='{legend_x + 18}' y='72'>reproduced (red: not reproduced)</text>"
               f"<rect x='{legend_x}' y='84' width='12' height='12' fill='#ddf4ff'/>"
               f"<text x='{legend_x + 18}' y='94'>claim ± {tol:g} BPB</text>"
               + (f"<rect x='{legend_x}' y='106' width='12' height='12' fill='#fff1e5'/><text x='{legend_x + 18}' "
                  "y='116'>frontier seeds, lowest to highest</text>" if frontier else "")
               + f"<text x='16' y='{frame.top - 14}'>val_bpb</text></svg>")
    return "".join(out)


def _budget_plots(seeds: dict[str, Any], limits: dict[str, Any]) -> str:
    panels = (("artifact_bytes", "artifact bytes", limits["artifact_bytes"], _si_bytes),
              ("train_s", "train time (s)", limits["train_s"], lambda v: f"{v:g}"),
              ("eval_s", "eval time (s)", limits["eval_s"], lambda v: f"{v:g}"))
    return "".join(_budget_panel(seeds, key, title, limit, fmt) for key, title, limit, fmt in panels)


def _si_bytes(value: float) -> str:
    return f"{value / 1e6:g} MB" if value >= 1e6 else f"{value / 1e3:g} kB" if value >= 1e3 else f"{value:g} B"


def _budget_panel(seeds: dict[str, Any], key: str, title: str, limit: float | None,
                  fmt: Callable[[float], str]) -> str:
    bars = [(seed, who, row[who][key]) for seed, row in seeds.items() for who in ("claimed", "reproduced")
            if row[who] is not None and row[who][key] is not None]
    width, bar, gap = 350, 12, 10
    height = 70 + len(seeds) * (2 * bar + gap)
    top = max([v for _, _, v in bars] + ([limit] if limit else []) + [0]) or 1
    frame = _Frame(64, 30, width - 84, height - 62, 0, top * 1.08, 0, 1)
    out = [f"<svg class='plot budget' data-budget='{key}' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' role='img'><title>{_e(title)}</title>"
           f"<text x='12' y='18' style='font-weight:600'>{_e(title)}</text>"]
    xs, _ = _ticks(0, frame.x1, 4)
    for v in xs:
        out.append(f"<line class='grid' x1='{frame.x(v):.1f}' x2='{frame.x(v):.1f}' y1='{frame.top}' "
                   f"y2='{frame.top + frame.height}'/><text x='{frame.x(v):.1f}' y='{frame.top + frame.height + 14}' "
                   f"text-anchor='middle'>{_e(fmt(v))}</text>")
    for i, seed in enumerate(seeds):
        y = frame.top + 4 + i * (2 * bar + gap)
        out.append(f"<text x='{frame.left - 6}' y='{y + bar + 4}' text-anchor='end'>seed {_e(seed)}</text>")
        for j, who in enumerate(("claimed", "reproduced")):
            value = next((v for s, w, v in bars if s == seed and w == who), None)
            if value is None:
                continue
            over = limit is not None and value > limit
            color = BAD_COLOR if over else CLAIMED_COLOR if who == "claimed" else REPRODUCED_COLOR
            out.append(f"<rect class='bar {who}' x='{frame.left}' y='{y + j * bar}' height='{bar - 2}' "
                       f"width='{max(frame.x(value) - frame.left, 1):.1f}' fill='{color}'><title>seed {_e(seed)} "
                       f"{who}: {_e(fmt(value))}</title></rect>")
    if limit is not None:
        out.append(f"<line class='limit' x1='{frame.x(limit):.1f}' x2='{frame.x(limit):.1f}' y1='{frame.top - 6}' "
                   f"y2='{frame.top + frame.height}' stroke='{LIMIT_COLOR}' stroke-width='2'/>"
                   f"<text x='{frame.x(limit):.1f}' y='{frame.top - 9}' text-anchor='end' fill='{LIMIT_COLOR}'>limit "
                   f"{_e(fmt(limit))}</text>")
    else:
        out.append(f"<text x='{width - 12}' y='18' text-anchor='end'>no limit on this track</text>")
    out.append(f"<text x='{frame.left}' y='{height - 8}'>grey: claimed · blue: reproduced</text></svg>")
    return "".join(out)
