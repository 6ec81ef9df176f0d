"""JSON Schema validation with messages a participant can act on.

All schemas are Draft 2020-12, in schemas/ at the repository root; the package reads them as its
data (harness/schemas links there; a wheel holds copies), so an installed pgolf needs no checkout.
Errors are reported as "<json path>: <what was expected>" rather than jsonschema's repr-heavy text.
"""
from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any, Iterator

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load schemas/<name>.schema.json."""
    return json.loads(files("harness").joinpath("schemas", f"{name}.schema.json").read_text("utf-8"))


@cache
def _registry() -> Registry:
    names = ("submission", "verdict", "rules", "protocol", "data_variants", "phase_record")
    return Registry().with_resources(
        (load_schema(n)["$id"], Resource.from_contents(load_schema(n))) for n in names
    )


def validator(ref: str) -> Draft202012Validator:
    """A validator for a schema or one of its $defs, e.g. 'urn:pgolf:submission#/$defs/strict'."""
    return Draft202012Validator({"$ref": ref}, registry=_registry(),
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def json_path(error: ValidationError) -> str:
    """'$.seed_results.42.val_bpb' style path of the offending value."""
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _expected(error: ValidationError) -> str:
    v = error.validator
    if v == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"missing required key '{missing}'"
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"expected {want}, got {type(error.instance).__name__} {_short(error.instance)}"
    if v == "enum":
        return f"expected one of {error.validator_value}, got {_short(error.instance)}"
    if v == "const":
        return f"expected {error.validator_value!r}, got {_short(error.instance)}"
    if v == "pattern":
        return f"expected text matching {error.validator_value}, got {_short(error.instance)}"
    if v == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unexpected key(s)")
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        return f"expected {v} {error.validator_value}, got {_short(error.instance)}"
    if v == "uniqueItems":
        return f"expected distinct items, got {_short(error.instance)}"
    if v in ("minItems", "minProperties"):
        return f"expected at least {error.validator_value} item(s)"
    if v == "propertyNames":
        return f"key {_short(error.instance)} is not allowed here"
    return error.message


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


MAX_DEPTH = 100  # nesting levels a validated document may have (submission.json needs 4, rules.yaml 5)


def too_deep(instance: Any, limit: int = MAX_DEPTH) -> bool:
    """True when lists and objects nest more than `limit` levels: walked without recursion, since the
    validator's own recursion would end in RecursionError on a document nested ~1,000 levels."""
    level: list[Any] = [instance]
    for _ in range(limit + 1):
        level = [child for node in level
                 for child in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else ())]
        if not level:
            return False
    return True


def errors(ref: str, instance: Any) -> Iterator[str]:
    """Every violation of schema `ref` by `instance`, one readable line each, in path order."""
    if too_deep(instance):
        yield f"$: nested more than {MAX_DEPTH} levels deep; not a document pgolf reads"
        return
    found = sorted(validator(ref).iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    for error in found:
        # anyOf/oneOf: the branch errors say more than "is not valid under any of the given schemas"
        best = min(error.context, key=lambda e: len(e.absolute_path), default=None) if error.context else None
        shown = best if best is not None and error.validator in ("anyOf", "oneOf") else error
        yield f"{json_path(shown)}: {_expected(shown)}"
