"""A card-payment fraud pipeline over named columns, for the import tests (issue 22).

Two numeric columns (amount, hour) are scaled and two string columns (country, channel)
one-hot encoded by a `ColumnTransformer` fitted on a DataFrame, then a logistic
regression; `sample_frame` holds rows the pipeline was not fitted on, two of them with
categories the encoder never saw.
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

COUNTRIES = ["FR", "DE", "US", "GB"]
CHANNELS = ["web", "pos", "app"]
UNSEEN = {"country": "ZZ", "channel": "phone"}  # categories the encoder never saw


def payments(rows: int, seed: int) -> pd.DataFrame:
    """Card payments: two numeric columns, two string columns."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 60.0, rows).round(2),
            "hour": rng.integers(0, 24, rows),
            "country": rng.choice(COUNTRIES, rows),
            "channel": rng.choice(CHANNELS, rows),
        }
    )


def fraud_pipeline(path: Path) -> Pipeline:
    """Fit the fraud pipeline on 400 payments and pickle it with joblib at `path`."""
    frame = payments(400, seed=1)
    fraud = (frame["amount"] > 150) & frame["country"].isin(["US", "GB"])
    columns = ColumnTransformer(
        [
            ("numbers", StandardScaler(), ["amount", "hour"]),
            ("names", OneHotEncoder(handle_unknown="ignore"), ["country", "channel"]),
        ]
    )
    model = Pipeline([("columns", columns), ("classify", LogisticRegression(max_iter=500))])
    model.fit(frame, fraud.astype(int))
    joblib.dump(model, path)
    return model


def sample_frame() -> pd.DataFrame:
    """60 payments the pipeline was not fitted on, two with unseen categories."""
    frame = payments(60, seed=2)
    frame.loc[3, "country"] = UNSEEN["country"]
    frame.loc[7, "channel"] = UNSEEN["channel"]
    return frame


MESSAGES = [
    "card declined again at the shop",
    "great service, thanks a lot!",
    "refund my money now or else",
    "lovely staff and quick delivery",
    "charged twice for one order",
    "thanks, all arrived safely",
]


def text_pipeline(path: Path) -> Pipeline:
    """Fit TF-IDF then a logistic regression on short messages; pickle it at `path`."""
    model = Pipeline([("words", TfidfVectorizer()), ("classify", LogisticRegression(max_iter=500))])
    model.fit(MESSAGES * 5, [1, 0, 1, 0, 1, 0] * 5)
    joblib.dump(model, path)
    return model


TEXT_SAMPLE = [*MESSAGES, "Declined TWICE, refund now!!", "words it never saw", ""]
"""Messages for parity: the fitted ones, upper case, unseen words and an empty one."""
