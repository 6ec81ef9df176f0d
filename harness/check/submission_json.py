"""submission.json (the module is named for the file, not for the submission folder): read it safely, validate it,
and normalise what it claims.

The challenge's history has many spellings of the same claim (rules.md §3):
per-seed scores under `seed_results`, under a `seeds` dict, or only as a mean;
the headline as `val_bpb`, `mean_val_bpb` or `mean_bpb`. `Claims` is the one
shape the rest of the checker reads, with the JSON path of every value so a
finding can point at it. Numbers keep the text they were written with, because
"equal at printed precision" needs the printed precision.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.findings import FAIL, Evidence, Finding
from harness.validation import errors

MAX_JSON_BYTES = 1024 * 1024
FILE = "submission.json"
_HEADLINE_KEYS = ("val_bpb", "mean_val_bpb", "mean_bpb")
_RERUN_KEY = re.compile(r"re[_\- ]?run", re.IGNORECASE)  # e.g. $.compliance_rerun


class Num(float):
    """A JSON number that remembers how it was written."""

    text: str

    def __new__(cls, text: str) -> "Num":
        obj = super().__new__(cls, float(text))
        obj.text = text
        return obj

    @property
    def decimals(self) -> int:
        mantissa = self.text.lower().split("e")[0]
        return len(mantissa.split(".")[1]) if "." in mantissa else 0


@dataclass(frozen=True)
class Claim:
    value: float
    decimals: int
    path: str  # JSON path, e.g. $.seed_results.42.val_bpb
    text: str  # as written in the JSON, e.g. "1.08100"


@dataclass
class Claims:
    headline: Claim | None = None
    std: Claim | None = None
    seeds: list[int] = field(default_factory=list)  # in the order the JSON lists them
    seeds_path: str | None = None
    per_seed: dict[int, Claim] = field(default_factory=dict)
    per_seed_bytes: dict[int, Claim] = field(default_factory=dict)
    bytes_total: Claim | None = None
    disclosed_runs: int | None = None  # all runs executed, when the JSON says
    disclosure_path: str | None = None
    track: str | None = None
    date: str | None = None
    listed_vs_results: tuple[list[int], list[str]] | None = None  # $.seeds and the keys of $.seed_results
    # Declared re-runs: a reported seed run again with its own log (e.g. a compliance re-run with a larger
    # GPTQ reserve), seed -> the re-run's val_bpb; its log is the one of that seed showing this score.
    reruns: dict[int, Claim] = field(default_factory=dict)


def _claim(value: Any, path: str) -> Claim | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    decimals = value.decimals if isinstance(value, Num) else 0
    return Claim(float(value), decimals, path, value.text if isinstance(value, Num) else str(value))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"duplicate key(s) {', '.join(repr(d) for d in dupes)} in one object")
    return dict(pairs)


def load(folder: Path) -> tuple[dict[str, Any] | None, list[Finding]]:
    """Parse submission.json; a finding (never an exception) for anything unreadable."""
    path = folder / FILE
    if not path.is_file():
        return None, []  # the folder check reports the missing file
    where = (Evidence(FILE),)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            return None, [Finding("json", FAIL, "json.too_large",
                                  f"{FILE} is {size:,} bytes; a submission.json over {MAX_JSON_BYTES:,} bytes "
                                  "is not metadata", where)]
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Finding("json", FAIL, "json.not_utf8",
                              f"{FILE} is not UTF-8 text (bad byte at offset {exc.start})", where)]
    except OSError as exc:
        return None, [Finding("json", FAIL, "json.unreadable", f"cannot read {FILE}: {exc.strerror or exc}", where)]
    if not text.strip():
        return None, [Finding("json", FAIL, "json.empty", f"{FILE} is empty; expected a JSON object", where)]
    try:
        data = json.loads(text, parse_float=_finite, parse_int=_integer, parse_constant=_not_a_number,
                          object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as exc:
        return None, [Finding("json", FAIL, "json.malformed",
                              f"{FILE} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                              (Evidence(FILE, exc.lineno, _line(text, exc.lineno)),))]
    except (ValueError, RecursionError) as exc:
        return None, [Finding("json", FAIL, "json.malformed", f"{FILE} is not usable JSON: {exc}", where)]
    if not isinstance(data, dict):
        return None, [Finding("json", FAIL, "json.not_object",
                              f"{FILE} must hold a JSON object, found a {type(data).__name__}", where)]
    return data, []


def _is_seed(key: Any) -> bool:
    """A seed key of seed_results: ASCII digits ('²' and '٣' are digits to str.isdigit, not to int)."""
    return isinstance(key, str) and key.isascii() and key.isdigit()


def _seed_order(key: str) -> tuple[int, int, str]:
    """Seed keys in numeric order, any other key after them."""
    return (0, int(key), "") if _is_seed(key) else (1, 0, key)


def _finite(text: str) -> Num:
    """A JSON number as written; one beyond float's range (1e400) is refused, not turned into inf."""
    number = Num(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


def _integer(text: str) -> int:
    """A JSON integer; one no float can hold (every claim is compared as a float) is refused."""
    value = int(text)
    try:
        float(value)
    except OverflowError:
        raise ValueError(f"the number {text[:40]}... is out of range") from None
    return value


def _not_a_number(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _line(text: str, number: int) -> str:
    lines = text.splitlines()
    return lines[number - 1].strip()[:160] if 0 < number <= len(lines) else ""


def validate(data: dict[str, Any], profile: str) -> list[Finding]:
    """Schema findings for the chosen profile: strict (new submissions) or historic."""
    ref = f"urn:pgolf:submission#/$defs/{profile}"
    return [Finding("json", FAIL, "json.schema", f"{FILE} ({profile} profile) {problem}", (Evidence(FILE),))
            for problem in errors(ref, data)]


def claims(data: dict[str, Any]) -> Claims:
    """Normalise every historic spelling of the claims into one Claims."""
    out = Claims()
    out.headline = next((c for k in _HEADLINE_KEYS if k in data and (c := _claim(data[k], f"$.{k}"))), None)
    out.std = next((c for k in ("val_bpb_std", "std_bpb") if k in data and (c := _claim(data[k], f"$.{k}"))), None)
    out.bytes_total = _claim(data.get("bytes_total"), "$.bytes_total")
    out.track = data.get("track") if isinstance(data.get("track"), str) else None
    out.date = data.get("date") if isinstance(data.get("date"), str) else None

    seeds = data.get("seeds")
    results = data.get("seed_results")
    if isinstance(seeds, list) and isinstance(results, dict):
        out.listed_vs_results = (sorted(s for s in seeds if isinstance(s, int)), sorted(results, key=_seed_order))
    if isinstance(seeds, list):
        # a negative seed is the schema's finding; as a per-seed finding it would break the verdict's schema
        out.seeds = [s for s in seeds if isinstance(s, int) and not isinstance(s, bool) and s >= 0]
        out.seeds_path = "$.seeds"
    elif isinstance(data.get("seed"), int) and not isinstance(data["seed"], bool) and data["seed"] >= 0:
        out.seeds, out.seeds_path = [data["seed"]], "$.seed"
    for key in ("seed_results", "seeds"):
        table = data.get(key)
        if not isinstance(table, dict):
            continue
        for seed_text, result in table.items():
            if not (_is_seed(seed_text) and isinstance(result, dict)):
                continue
            seed = int(seed_text)
            if seed not in out.seeds:
                out.seeds.append(seed)
                out.seeds_path = out.seeds_path or f"$.{key}"
            bpb = _claim(result.get("val_bpb"), f"$.{key}.{seed_text}.val_bpb")
            if bpb and seed not in out.per_seed:
                out.per_seed[seed] = bpb
            size = next((c for k in ("artifact_bytes", "bytes_total")
                         if (c := _claim(result.get(k), f"$.{key}.{seed_text}.{k}"))), None)
            if size and seed not in out.per_seed_bytes:
                out.per_seed_bytes[seed] = size

    for key, block in data.items():
        table = block.get("seed_results") if _RERUN_KEY.search(key) and isinstance(block, dict) else None
        for seed_text, result in (table.items() if isinstance(table, dict) else ()):
            bpb = _claim(result.get("val_bpb"), f"$.{key}.seed_results.{seed_text}.val_bpb") \
                if isinstance(result, dict) and seed_text.isdigit() else None
            if bpb:
                out.reruns.setdefault(int(seed_text), bpb)

    runs = data.get("runs_executed")
    if isinstance(runs, int) and not isinstance(runs, bool):
        out.disclosed_runs, out.disclosure_path = runs, "$.runs_executed"
    disclosure = data.get("seed_results_all_runs_disclosure")
    if isinstance(disclosure, dict):
        all_seeds = next((v for k, v in disclosure.items() if k.endswith("_val_bpb") and isinstance(v, dict)), None)
        if all_seeds:
            out.disclosed_runs = len(all_seeds)
            out.disclosure_path = "$.seed_results_all_runs_disclosure"
    return out
