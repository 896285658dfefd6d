"""``ropeconf run --shard K/N``: split a run's (adapter, variant, dtype, device) cells over N machines.

The plan is deterministic: every shard computes the same assignment from the same
adapters, cells and cost table, and takes its own part.  Cells are placed longest
first (LPT) on the shard whose load grows least, counting an adapter's start-up cost
(imports, compiles) once per shard that runs any of its cells, so an adapter's cells
stay together unless splitting them balances better.  Costs are the seconds measured
per cell in a real run (``conformance/costs.json``, written by ``scripts/gen_costs.py``
from a run's JSON); a cell not in the table costs its adapter's median, an adapter not
in the table the table's median.

Each shard's JSON carries the plan's digest and its index; ``ropeconf report merge``
refuses parts of different plans and a plan with a shard missing or given twice, so a
shard that never reported cannot make the merged run look complete.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from pathlib import Path
from typing import Any

COSTS = Path(__file__).resolve().parent / "costs.json"
Cell = tuple[str, str, str]          # (variant, dtype, device)


def parse(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 1 <= K <= N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"--shard {text!r}: give K/N, e.g. 2/4 (the second of four shards)")
    k, n = int(m.group(1)), int(m.group(2))
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text!r}: K must be in 1..N (got K={k}, N={n})")
    return k, n


def cell_key(cell: Cell) -> str:
    return "|".join(cell)


def load_costs(path: Path | None = None) -> dict[str, Any]:
    p = path or COSTS
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return {"adapters": {}}


def _estimates(adapters: list[str], cells: list[Cell], costs: dict[str, Any]) -> tuple[dict, dict]:
    table = costs.get("adapters", {})
    every = [float(v) for a in table.values() for v in a.get("cells", {}).values()]
    starts = [float(a.get("startup", 0.0)) for a in table.values()]
    cell_default = statistics.median(every) if every else 1.0
    start_default = statistics.median(starts) if starts else 1.0
    cost, startup = {}, {}
    for a in adapters:
        known = table.get(a, {})
        mine = [float(v) for v in known.get("cells", {}).values()]
        here = statistics.median(mine) if mine else cell_default
        startup[a] = float(known.get("startup", start_default))
        for c in cells:
            cost[(a, c)] = float(known.get("cells", {}).get(cell_key(c), here))
    return cost, startup


def plan(adapters: list[str], cells: list[Cell], n: int, costs: dict[str, Any] | None = None) -> list[list[tuple[str, Cell]]]:
    """The N shards' (adapter, cell) lists: every cell of every adapter in exactly one shard."""
    cost, startup = _estimates(adapters, cells, costs if costs is not None else load_costs())
    items = sorted(((a, c) for a in adapters for c in cells), key=lambda ac: (-cost[ac], ac[0], ac[1]))
    load = [0.0] * n
    has: list[set[str]] = [set() for _ in range(n)]
    out: list[list[tuple[str, Cell]]] = [[] for _ in range(n)]
    for a, c in items:
        grow = [cost[(a, c)] + (0.0 if a in has[b] else startup[a]) for b in range(n)]
        b = min(range(n), key=lambda i: (load[i] + grow[i], i))
        load[b] += grow[b]
        has[b].add(a)
        out[b].append((a, c))
    order = {c: i for i, c in enumerate(cells)}
    return [sorted(s, key=lambda ac: (adapters.index(ac[0]), order[ac[1]])) for s in out]


def digest(shards: list[list[tuple[str, Cell]]]) -> str:
    return hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()[:16]


def check_parts(parts: list[dict[str, Any]]) -> None:
    """Raise ValueError unless the sharded parts among ``parts`` are whole plans: each plan's shards
    1..N present exactly once."""
    plans: dict[str, dict[int, int]] = {}
    sizes: dict[str, int] = {}
    for p in parts:
        s = p.get("shard")
        if not s:
            continue
        seen = plans.setdefault(s["plan"], {})
        seen[s["index"]] = seen.get(s["index"], 0) + 1
        sizes[s["plan"]] = s["count"]
    if len(plans) > 1:
        raise ValueError(f"the parts come from {len(plans)} different shard plans ({', '.join(sorted(plans))}): "
                         "every shard must run with the same adapters, options and costs table")
    for key, seen in plans.items():
        n = sizes[key]
        missing = [k for k in range(1, n + 1) if k not in seen]
        twice = [k for k, c in seen.items() if c > 1]
        if missing or twice:
            raise ValueError(f"shard plan {key} (N={n}): " + "; ".join(
                ([f"shard(s) {', '.join(f'{k}/{n}' for k in missing)} missing"] if missing else [])
                + ([f"shard(s) {', '.join(f'{k}/{n}' for k in twice)} given twice"] if twice else []))
                + " (a merged run is complete only with every shard)")
