"""Eval deletes the FAIL findings from ../phase_train.json, found from __file__."""
import json
import os

import cheat
import tiny

if cheat.PHASE == "eval":
    record = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "phase_train.json")
    try:
        with open(record) as f:
            data = json.load(f)
        data["findings"] = [f for f in data["findings"] if f["status"] != "fail"]
        with open(record, "w") as f:
            json.dump(data, f)
    except OSError as exc:
        cheat.blocked(f"cannot rewrite the train record: {exc}")
tiny.main()
