"""Write conformance/costs.json, the shard planner's cost table, from a real run's JSON.

    python scripts/gen_costs.py out/results.json [more.json ...]

Per adapter: the measured wall seconds of each (variant, dtype, device) cell, and its start-up
(the adapter's seconds not spent in any cell: imports, compiles).  Rounded to 0.01 s so the file
only changes when the costs do.  ``ropeconf run --shard K/N`` balances shards with it
(conformance/shard.py); a missing table only makes the plan less even, never incomplete.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "conformance" / "costs.json"


def costs(results: list[dict]) -> dict:
    table: dict[str, dict] = {}
    for res in results:
        for rep in res.get("adapters", []):
            cells = {f"{c['variant']}|{c['dtype']}|{c['device']}": round(c["seconds"], 2)
                     for c in rep.get("cells", []) if c.get("seconds") is not None}
            if not cells:
                continue
            startup = max(0.0, (rep.get("seconds") or 0.0) - sum(cells.values()))
            table[rep["adapter"]] = {"startup": round(startup, 2), "cells": dict(sorted(cells.items()))}
    return {"about": "seconds per cell measured by scripts/gen_costs.py; read by conformance/shard.py",
            "adapters": dict(sorted(table.items()))}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    table = costs([json.loads(Path(p).read_text()) for p in argv])
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(table['adapters'])} adapters, "
          f"{sum(len(a['cells']) for a in table['adapters'].values())} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
