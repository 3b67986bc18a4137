"""Derive r4/summary-elements.json from the R4 StructureDefinitions (see ../README.md).

    python3 summary-elements.py package/dist/fhir/r4/profiles-resources.json > ../r4/summary-elements.json

For each concrete resource type: its top-level elements marked isSummary (what `_summary=true`
keeps) and those with min > 0 (what `_summary=text` keeps besides text, id and meta). A choice
element keeps its `[x]`.
"""

import json
import sys


def main(path):
    bundle = json.load(open(path, encoding="utf-8"))
    table = {}
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if (sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource"
                or sd.get("abstract") or sd.get("derivation") != "specialization"):
            continue
        name = sd["type"]
        top = [e for e in sd["snapshot"]["element"] if e["path"].count(".") == 1]
        table[name] = {
            "summary": sorted(e["path"].split(".", 1)[1] for e in top if e.get("isSummary")),
            "mandatory": sorted(e["path"].split(".", 1)[1] for e in top if e.get("min", 0) > 0),
        }
    json.dump(dict(sorted(table.items())), sys.stdout, indent=0, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
