"""Whether two demos' summary.json files agree apart from timings: the check that a change to the code
left the main job's output as it was.

    python benchmarks/summary_diff.py BEFORE/summary.json AFTER/summary.json

Drops every key with `seconds` in its name, the top-level `evolution` and each circuit's
`attribution` (added to the demo after its first release), and the demo folders' names in paths;
prints each remaining difference and exits 1 if there is any. Compare demos made with the same
thread count: float reductions differ across thread counts (docs/performance.md).
"""
import json
import sys
from pathlib import Path


def clean(x, folder: str, path: str = ""):
    """`x` without timings and the keys added since, its demo folder's name in paths written OUT."""
    if isinstance(x, dict):
        return {k: clean(v, folder, f"{path}.{k}") for k, v in x.items()
                if "seconds" not in k and not (k == "evolution" and path == "")
                and not (k == "attribution" and path.startswith(".circuits."))}
    if isinstance(x, list):
        return [clean(v, folder, path) for v in x]
    return x.replace(folder, "OUT") if isinstance(x, str) else x


def diff(a, b, path: str = "") -> int:
    """Prints each difference between `a` and `b`; returns how many there are."""
    if type(a) != type(b):
        print(f"{path}: {a!r} != {b!r}")
        return 1
    if isinstance(a, dict):
        n = 0
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                print(f"{path}.{k}: only in {'after' if k not in a else 'before'}")
                n += 1
            else:
                n += diff(a[k], b[k], f"{path}.{k}")
        return n
    if isinstance(a, list):
        if len(a) != len(b):
            print(f"{path}: lengths {len(a)} != {len(b)}")
            return 1
        return sum(diff(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    if a != b:
        print(f"{path}: {a!r} != {b!r}")
        return 1
    return 0


before, after = (clean(json.loads(Path(p).read_text()), str(Path(p).resolve().parent)) for p in sys.argv[1:3])
n = diff(before, after)
print(f"{n} differences" if n else "identical apart from timings, evolution, attribution and folder names")
sys.exit(1 if n else 0)
