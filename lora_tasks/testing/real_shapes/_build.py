"""Building blocks of the shapes taken from real competitions: columns with a learnable signal,
and the split into train, test, sample submission and hidden solution.

Why one signal per shape: every column that should help is drawn from the same hidden score
(plus noise), and the targets are cut from it, so scikit-learn members beat the sample's
constant guess on a few hundred rows, which is what the suite checks. Values are synthetic;
only the headers, file names and packing are the competitions' own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..shapes import ShapeTables

R_TRAIN = 140
R_TEST = 50
N = R_TRAIN + R_TEST


class Gen:
    """Columns of ``N`` rows drawn from one hidden ``score`` (standard normal)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.score = rng.normal(size=N)

    def num(self, weight: float = 1.0, noise: float = 0.5, scale: float = 1.0, offset: float = 0.0,
            digits: int = 4) -> np.ndarray:
        """A number that follows the score (``weight``) with noise, rounded."""
        return np.round(offset + scale * (weight * self.score + noise * self.rng.normal(size=N)), digits)

    def noise(self, scale: float = 1.0, offset: float = 0.0, digits: int = 4) -> np.ndarray:
        return np.round(offset + scale * self.rng.normal(size=N), digits)

    def ints(self, low: int, high: int) -> np.ndarray:
        return self.rng.integers(low, high + 1, size=N)

    def pick(self, values: Sequence[object]) -> np.ndarray:
        return self.rng.choice(np.asarray(values, dtype=object), size=N)

    def cut(self, labels: Sequence[object], noise: float = 0.3) -> np.ndarray:
        """``labels`` by equal-count bins of the score (plus noise): the signal as a category."""
        noisy = self.score + noise * self.rng.normal(size=N)
        edges = np.quantile(noisy, np.linspace(0, 1, len(labels) + 1)[1:-1])
        return np.asarray(labels, dtype=object)[np.searchsorted(edges, noisy)]

    def words(self, labels: np.ndarray, cues: dict[object, Sequence[str]], filler: Sequence[str],
              n_words: tuple[int, int] = (6, 11)) -> list[str]:
        """A sentence per row: filler words and two cue words of the row's label."""
        out = []
        for label in labels:
            words = [str(w) for w in self.rng.choice(np.asarray(filler), size=int(self.rng.integers(*n_words)))]
            for cue in self.rng.choice(np.asarray(cues[label]), size=2):
                words.insert(int(self.rng.integers(0, len(words) + 1)), str(cue))
            out.append(" ".join(words).capitalize() + ".")
        return out

    def hex_ids(self, width: int, prefix: str = "") -> np.ndarray:
        """Unique random hexadecimal ids (``5130fd2cb5``), as competitions write them."""
        seen: set[str] = set()
        while len(seen) < N:
            seen.add(prefix + "".join(self.rng.choice(list("0123456789abcdef"), size=width)))
        return self.rng.permutation(np.array(sorted(seen), dtype=object))

    def timestamps(self, start: str, freq: str, fmt: str) -> np.ndarray:
        return pd.date_range(start, periods=N, freq=freq).strftime(fmt).to_numpy(dtype=object)


@dataclass(frozen=True)
class Ids:
    """Where a shape's ids live: ``test`` (column name, N values: the test rows' are the last
    ``R_TEST``), optionally ``train`` (another column of train.csv only), or none at all when
    the sample numbers test.csv's rows (``row_numbers_from``)."""

    sample: str
    test: str | None = None
    values: np.ndarray | None = None
    train: str | None = None
    train_values: np.ndarray | None = None
    row_numbers_from: int | None = None

    @classmethod
    def shared(cls, name: str, values: np.ndarray) -> Ids:
        """The usual case: one id column in train.csv, test.csv and the sample."""
        return cls(sample=name, test=name, values=values, train=name, train_values=values)


def assemble(
    columns: dict[str, np.ndarray | list[object]],
    targets: Sequence[str],
    ids: Ids,
    *,
    value_columns: Sequence[str] | None = None,
    placeholder: object = 0,
    classes: Sequence[str] | None = None,
    train_only: Sequence[str] = (),
    train_order: Sequence[str] | None = None,
    test_order: Sequence[str] | None = None,
) -> ShapeTables:
    """The four tables from ``N`` rows of ``columns`` (features, targets, train-only columns).

    ``value_columns``: the sample's names of the targets, in order (default: the targets');
    ``classes``: one probability column per class of the single target instead (the solution is
    then one-hot). ``train_order`` / ``test_order``: the real header's column order (default:
    ids, features, train-only columns, targets).
    """
    frame = pd.DataFrame(columns)
    features = [c for c in frame.columns if c not in (*targets, *train_only)]
    train, test = frame.iloc[:R_TRAIN].reset_index(drop=True), frame.iloc[R_TRAIN:].reset_index(drop=True)
    if ids.train is not None and ids.train_values is not None:
        train.insert(0, ids.train, ids.train_values[:R_TRAIN])
    test = test[features]
    if ids.test is not None and ids.values is not None:
        test.insert(0, ids.test, ids.values[R_TRAIN:])
        sample_ids = ids.values[R_TRAIN:]
    else:
        start = 1 if ids.row_numbers_from is None else ids.row_numbers_from
        sample_ids = np.arange(start, start + R_TEST)
    if train_order is not None:
        train = train[list(train_order)]
    if test_order is not None:
        test = test[list(test_order)]
    truth = frame.iloc[R_TRAIN:].reset_index(drop=True)
    if classes is not None:
        [target] = targets
        sample = pd.DataFrame({ids.sample: sample_ids, **{c: round(1 / len(classes), 6) for c in classes}})
        solution = pd.DataFrame({ids.sample: sample_ids,
                                 **{c: (truth[target] == c).astype(np.int64).to_numpy() for c in classes}})
        return ShapeTables(train, test, sample, solution)
    names = list(value_columns or targets)
    sample = pd.DataFrame({ids.sample: sample_ids, **{v: placeholder for v in names}})
    solution = pd.DataFrame({ids.sample: sample_ids, **{v: truth[t].to_numpy() for v, t in zip(names, targets, strict=True)}})
    return ShapeTables(train, test, sample, solution)


GOOD = ("great", "lovely", "superb", "happy", "excellent", "wonderful")
BAD = ("awful", "broken", "sad", "terrible", "boring", "poor")
FILLER = ("the", "movie", "was", "really", "quite", "plot", "acting", "and", "a", "film", "ending", "story", "of")
