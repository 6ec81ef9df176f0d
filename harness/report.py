"""Views of a verdict: the terminal report, a Markdown CI summary, and the JSON document.

All three are rendered from the same findings; the JSON is validated against
schemas/verdict.schema.json before it is written, so CI consumers can rely on it.
"""
from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from harness.checks import rank
from harness.findings import FAIL, INFO, PASS, WARN
from harness.validation import errors

_MARK = {PASS: "PASS", INFO: "INFO", WARN: "WARN", FAIL: "FAIL"}
_COLOR = {PASS: "32", INFO: "36", WARN: "33", FAIL: "31"}


_RANK = [PASS, INFO, WARN, FAIL]


def _groups(findings: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    checks = sorted({f["check"] for f in findings}, key=rank)
    return [(c, [f for f in findings if f["check"] == c]) for c in checks]


def _where(e: dict[str, Any]) -> str:
    return e["file"] + (f":{e['line']}" if "line" in e else "")


def _profile(verdict: dict[str, Any], form: str) -> str:
    """The submission.json profile, which only `check` has: run, rerun and verify print none."""
    return form.format(verdict["profile"]) if verdict["profile"] else ""


def render_terminal(verdict: dict[str, Any], out: TextIO = sys.stdout, verbose: bool = False) -> None:
    """Grouped findings, worst first; passes and infos are folded in a group that has problems."""
    paint = (lambda s, t: f"\033[{_COLOR[s]}m{t}\033[0m") if out.isatty() else (lambda s, t: t)  # noqa: E731
    out.write(f"pgolf {verdict['command']} {verdict['target']}\n  track {verdict['track']}{_profile(verdict, ', profile {}')}\n")
    for check, group in _groups(verdict["findings"]):
        worst = max((f["status"] for f in group), key=_RANK.index)
        out.write(f"\n{paint(worst, _MARK[worst])} {check}\n")
        for f in sorted(group, key=lambda f: -_RANK.index(f["status"])):
            if f["status"] in (PASS, INFO) and worst in (WARN, FAIL) and not verbose:
                continue
            out.write(f"  {paint(f['status'], _MARK[f['status']])} {f['message']}\n")
            for e in f["evidence"][:3]:
                out.write(f"       at {_where(e)}" + (f"  {e['text']}" if "text" in e else "") + "\n")
    counts = verdict["counts"]
    out.write(f"\n{paint(verdict['status'], verdict['status'].upper())}: {counts['fail']} fail, "
              f"{counts['warn']} warn, {counts['pass']} pass, {counts['info']} info\n")


ICON = {PASS: "✅", INFO: "ℹ️", WARN: "⚠️", FAIL: "❌"}


def render_markdown(verdict: dict[str, Any]) -> str:
    lines = [f"## pgolf {verdict['command']}: {ICON[verdict['status']]} {verdict['status'].upper()}", "",
             f"`{verdict['target']}` · track `{verdict['track']}`{_profile(verdict, ' · profile `{}`')}", ""]
    if verdict["seeds"]:
        lines += ["| seed | val_bpb | train ms | steps | model bytes | log |", "|---|---|---|---|---|---|"]
        for seed, s in verdict["seeds"].items():
            lines.append(f"| {seed} | {s['val_bpb']} | {s['train_time_ms']} | {s['steps']} | "
                         f"{s['model_bytes']} | `{s['log']}` |")
        lines.append("")
    return "\n".join(lines + markdown_findings(verdict["findings"])) + "\n"


def markdown_findings(findings: list[dict[str, Any]]) -> list[str]:
    """The findings as Markdown table lines, worst first (every command's summary ends with them)."""
    lines = ["| status | check | finding | evidence |", "|---|---|---|---|"]
    for f in sorted(findings, key=lambda f: -_RANK.index(f["status"])):
        ev = "; ".join(_where(e) for e in f["evidence"][:2])
        message = f["message"].replace("|", "\\|")
        lines.append(f"| {ICON[f['status']]} {f['status']} | {f['check']} | {message} | {ev} |")
    return lines


def verdict_json(verdict: dict[str, Any]) -> str:
    problems = list(errors("urn:pgolf:verdict", verdict))
    if problems:  # a bug in pgolf, not in the submission: refuse to write a document CI cannot trust
        raise AssertionError("verdict does not match schemas/verdict.schema.json: " + "; ".join(problems))
    return json.dumps(verdict, indent=2, ensure_ascii=False) + "\n"
