"""Write pipeline/dev/_data/breast_cancer_rows.json: 200 rows of scikit-learn's bundled breast
cancer data set, which `pipeline produce --synthetic` and the benchmark send as events.

Run `python scripts/make_sample_rows.py`; the output is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

OUT = Path(__file__).resolve().parents[1] / "pipeline" / "dev" / "_data" / "breast_cancer_rows.json"


def main() -> None:
    data = load_breast_cancer()
    picks = np.random.default_rng(7).choice(len(data.data), size=200, replace=False)
    rows = [[float(f"{x:.6g}") for x in data.data[i]] for i in sorted(picks)]
    OUT.write_text(
        json.dumps({"source": "sklearn.datasets.load_breast_cancer", "rows": rows}) + "\n"
    )


if __name__ == "__main__":
    main()
