"""The registry of check names is the one list: findings, reports and the verdict schema follow it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.checks import CHECKS
from harness.findings import FAIL, Finding
from harness.report import _groups
from harness.validation import load_schema

HARNESS = Path(__file__).resolve().parents[1] / "harness"


def test_the_verdict_schema_lists_the_registered_checks_in_report_order():
    schema = load_schema("verdict")
    assert schema["$defs"]["finding"]["properties"]["check"]["enum"] == list(CHECKS)


def test_a_finding_refuses_an_unregistered_check():
    with pytest.raises(ValueError, match="not registered"):
        Finding("speed", FAIL, "speed.slow", "not a check pgolf knows")


def test_every_check_named_in_the_code_is_registered():
    named = {}
    for path in HARNESS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Finding" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                named.setdefault(node.args[0].value, f"{path.relative_to(HARNESS)}:{node.lineno}")
    assert len(named) > 15  # the scan finds the literals
    assert {name: where for name, where in named.items() if name not in CHECKS} == {}


def test_reports_group_findings_in_registry_order():
    findings = [{"check": c} for c in reversed(CHECKS)]
    assert [check for check, _ in _groups(findings)] == list(CHECKS)
