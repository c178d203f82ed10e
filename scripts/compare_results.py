"""Compare two study results dirs: tables, fit JSONs and parquets, checks.

Only fields that measure time are left out (wall_s, wall_time_s, tokens_per_s, step_time): everything else, curves,
parameters, predictions, check outcomes, must be equal exactly. Usage:

    python scripts/compare_results.py RESULTS_A RESULTS_B     # exit 0 when all files are identical
"""

import json
import math
import sys
from pathlib import Path

import pandas as pd

TIMING = {"wall_s", "wall_time_s", "tokens_per_s", "step_time"}
PARTS = ("tables", "fits", "checks")


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k} only in one" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += _diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return [] if a == b or both_nan else [f"{path}: {str(a)[:60]} != {str(b)[:60]}"]


def _frame(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    return df[[c for c in df.columns if c not in TIMING]]


def compare_file(pa: Path, pb: Path) -> list[str]:
    if pa.suffix == ".json":
        return _diff(_clean(json.loads(pa.read_text())), _clean(json.loads(pb.read_text())))
    if pa.suffix == ".parquet":
        try:
            pd.testing.assert_frame_equal(_frame(pa), _frame(pb), check_exact=True, check_dtype=False)
        except AssertionError as e:
            return [" ".join(str(e).split())[:300]]
        return []
    return [] if pa.read_bytes() == pb.read_bytes() else ["bytes differ"]


def compare(a: Path, b: Path) -> bool:
    same = True
    for part in PARTS:
        names = sorted(
            {p.name for p in (a / part).glob("*") if p.is_file()}
            | {p.name for p in (b / part).glob("*") if p.is_file()}
        )
        for name in names:
            pa, pb = a / part / name, b / part / name
            if not (pa.is_file() and pb.is_file()):
                print(f"only in one: {part}/{name}")
                same = False
                continue
            d = compare_file(pa, pb)
            print(
                ("identical " if not d else "DIFFERS   ")
                + f"{part}/{name}"
                + ("" if not d else ": " + "; ".join(d[:4]))
            )
            same &= not d
    print("ALL IDENTICAL" if same else "SOME DIFFER")
    return same


if __name__ == "__main__":
    sys.exit(0 if compare(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
