"""The side-by-side benchmark's tables: GPU runs are costly, so what it prints from them must compare the right runs."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "side_by_side_h100.py"
spec = importlib.util.spec_from_file_location("side_by_side_h100", BENCH)
side_by_side = importlib.util.module_from_spec(spec)
spec.loader.exec_module(side_by_side)


def run(recipe: str, seed: int, offset: float, heldout: float, ema: float | None = None) -> dict:
    curve = {s: 10.0 - 0.05 * s + offset for s in range(1, 41)}
    return {"run": f"{recipe}/{seed}", "recipe": recipe, "seed": seed, "steps": 40, "loop_step": 18, "curve": curve,
            "heldout_raw": heldout, "heldout_ema": ema, "tok_s_before_loop": 1, "tok_s_after_loop": 1,
            "startup_s": 1.0, "peak_mib": 1}


def comparison_rows(text: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and (" − " in cells[0] or ": seed " in cells[0]):
            rows[cells[0], cells[1]] = cells[2:]
    return rows


def test_variants_are_compared_with_their_base_at_equal_seeds_and_each_recipe_with_its_other_seed():
    runs = [run("ref", 1, 0.0, 4.0), run("ref", 2, 0.1, 4.3), run("anchor", 1, 0.02, 4.05, 4.1),
            run("anchor", 2, 0.12, 4.25, 4.3), run("anchor+ATTN_GATE=1", 2, 0.32, 4.75, 4.5),
            run("anchor+LOADER=shard", 3, 0.5, 5.0)]
    rows = comparison_rows(side_by_side.report(runs, 40, {"documents": 1, "train_tokens": 1, "heldout_tokens": 1},
                                               [10, 20]))
    assert rows[("anchor − ref", "1")] == ["0.02", "0.05", "None"]
    assert rows[("anchor − ref", "2")] == ["0.02", "-0.05", "None"]
    assert rows[("anchor+ATTN_GATE=1 − anchor", "2")] == ["0.2", "0.5", "0.2"]  # its base is anchor, not ref
    assert rows[("ref: seed 1 − seed 2", "—")] == ["-0.1", "-0.3", "None"]
    assert rows[("anchor: seed 1 − seed 2", "—")] == ["-0.1", "-0.2", "-0.2"]
    assert not any(name.startswith("anchor+LOADER") for name, _ in rows)  # no anchor run with seed 3
