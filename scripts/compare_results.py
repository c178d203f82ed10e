"""Compare two default-study results dirs: tables (content), fit JSONs and fit parquets, check tables.

Fields that measure time or host (wall_s, tokens_per_s, step_time, host, versions, timestamps) are excluded.
Prints one line per file: identical / differs (with the first differing keys).
"""

import json, sys, pathlib
import pandas as pd
import numpy as np

A, B = map(pathlib.Path, sys.argv[1:3])
VOLATILE = ("wall_s", "wall_time_s", "tokens_per_s", "step_time", "host", "versions", "created")


def vol(k):
    return str(k).lower() in VOLATILE


def clean(o):
    if isinstance(o, dict):
        return {k: clean(v) for k, v in o.items() if not vol(k)}
    if isinstance(o, list):
        return [clean(v) for v in o]
    return o


def diff(a, b, path=""):
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k} only in {'B' if k not in a else 'A'}")
            else:
                out += diff(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            out += diff(x, y, f"{path}[{i}]")
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b)):
        out.append(f"{path}: {str(a)[:60]} != {str(b)[:60]}")
    return out


def frame(p):
    df = pd.read_parquet(p)
    df = df[[c for c in df.columns if not vol(c)]]
    return df.sort_values(list(df.columns[: min(4, len(df.columns))])).reset_index(drop=True)


ok = True
for sub in ["tables", "fits", "checks"]:
    for pa in sorted((A / sub).glob("*")):
        pb = B / sub / pa.name
        if pa.is_dir():
            continue
        if not pb.exists():
            print(f"MISSING in B: {sub}/{pa.name}")
            ok = False
            continue
        if pa.suffix == ".json":
            d = diff(clean(json.loads(pa.read_text())), clean(json.loads(pb.read_text())))
        elif pa.suffix == ".parquet":
            fa, fb = frame(pa), frame(pb)
            if list(fa.columns) != list(fb.columns):
                d = [f"columns {sorted(set(fa.columns) ^ set(fb.columns))}"]
                common = [c for c in fa.columns if c in fb.columns]
                fa, fb = fa[common], fb[common]
            else:
                d = []
            try:
                pd.testing.assert_frame_equal(fa, fb, check_exact=True, check_dtype=False)
            except AssertionError as e:
                d.append(str(e).replace("\n", " ")[:300])
        else:
            d = [] if pa.read_bytes() == pb.read_bytes() else ["bytes differ"]
        print(
            ("identical " if not d else "DIFFERS   ")
            + f"{sub}/{pa.name}"
            + ("" if not d else ": " + "; ".join(d[:4]) + (f" (+{len(d) - 4})" if len(d) > 4 else ""))
        )
        ok &= not d
    for pb in sorted((B / sub).glob("*")):
        if not (A / sub / pb.name).exists() and pb.is_file():
            print(f"only in B: {sub}/{pb.name}")
print("ALL IDENTICAL" if ok else "SOME DIFFER")
