#!/usr/bin/env python3
"""Rebuilds wdbc.csv, wdbc_train.csv and wdbc_test.csv from scikit-learn's copy of the
Wisconsin Diagnostic Breast Cancer data (sklearn/datasets/data/breast_cancer.csv inside the
scikit-learn wheel from PyPI). Usage: make_wdbc.py path/to/breast_cancer.csv

Columns: the 30 features in scikit-learn's order, named in snake_case, then `diagnosis`
(1 = malignant, 0 = benign; scikit-learn's target is the opposite, 0 = malignant).
The split is stratified, 20% test, seeded: it never changes.
"""
import csv, random, sys
from pathlib import Path

BASE = ["radius", "texture", "perimeter", "area", "smoothness", "compactness",
        "concavity", "concave_points", "symmetry", "fractal_dimension"]
NAMES = [f"mean_{b}" for b in BASE] + [f"{b}_se" for b in BASE] + [f"worst_{b}" for b in BASE]

src = Path(sys.argv[1])
rows = list(csv.reader(src.open()))[1:]
assert len(rows) == 569 and all(len(r) == 31 for r in rows)
out = [r[:30] + [str(1 - int(r[30]))] for r in rows]
here = Path(__file__).parent
def write(name, data):
    with (here / name).open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(NAMES + ["diagnosis"])
        w.writerows(data)
write("wdbc.csv", out)
rng = random.Random(20261126)
test_idx = set()
for label in ("0", "1"):
    idx = [i for i, r in enumerate(out) if r[30] == label]
    rng.shuffle(idx)
    test_idx.update(idx[: round(len(idx) * 0.2)])
write("wdbc_train.csv", [r for i, r in enumerate(out) if i not in test_idx])
write("wdbc_test.csv", [r for i, r in enumerate(out) if i in test_idx])
