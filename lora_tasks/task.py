"""The kind of learning problem a competition poses: one name per concept, MLX-free.

Why one enum: the competition config says ``binary``, the model heads say
``binary_classification``, scikit-learn says ``binary`` (``type_of_target``) and picks a
classifier or a regressor, and the submission holds labels, probabilities or values. Each of
those used to keep its own table of spellings; :class:`Task` knows all of them, so a new task
kind is added in one place.

It is a :class:`~enum.StrEnum`: ``Task.BINARY == "binary"``, so configs, saved JSON and code that
compares strings keep working, and :meth:`Task.parse` reads every spelling in use.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

#: What a prediction or a submission column holds.
Output = Literal["labels", "probabilities", "values"]


class Task(StrEnum):
    """binary, multiclass, multilabel, regression or multitarget_regression."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"
    REGRESSION = "regression"
    MULTITARGET_REGRESSION = "multitarget_regression"

    @classmethod
    def parse(cls, name: str | Task) -> Task:
        """The task a name means: the short names, the model head types
        (``binary_classification``), and common variants (case, ``-`` or spaces ignored).

        ``regression`` is the head of both regression tasks; it parses as single-target
        :attr:`REGRESSION` (a k-output regression head says so by its ``num_labels``)."""
        if isinstance(name, Task):
            return name
        key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
        task = _SPELLINGS.get(key)
        if task is None:
            raise ValueError(
                f"Unknown task {name!r}; use one of {', '.join(t.value for t in cls)} "
                f"(or a head type: {', '.join(HEAD_TYPES)})."
            )
        return task

    @property
    def head_type(self) -> str:
        """The model head that learns this task (:mod:`lora_tasks.models.heads`)."""
        return _HEAD_TYPE[self]

    @property
    def sklearn_kind(self) -> str:
        """scikit-learn's name for the target (:func:`sklearn.utils.multiclass.type_of_target`)."""
        return _SKLEARN_KIND[self]

    @property
    def estimator_type(self) -> Literal["classifier", "regressor"]:
        """Which kind of scikit-learn estimator fits it."""
        return "classifier" if self.is_classification else "regressor"

    @property
    def is_classification(self) -> bool:
        return self in (Task.BINARY, Task.MULTICLASS, Task.MULTILABEL)

    @property
    def is_regression(self) -> bool:
        return not self.is_classification

    @property
    def multi_output(self) -> bool:
        """Several target columns, predicted together as an (n, k) array."""
        return self in (Task.MULTILABEL, Task.MULTITARGET_REGRESSION)

    @property
    def predicts(self) -> Output:
        """What the model outputs before any cut: probabilities for classes, values otherwise."""
        return "probabilities" if self.is_classification else "values"

    @property
    def submits(self) -> tuple[Output, ...]:
        """What a submission of this task may hold (a label is a cut of the probabilities)."""
        return ("labels", "probabilities") if self.is_classification else ("values",)


_HEAD_TYPE: dict[Task, str] = {
    Task.BINARY: "binary_classification",
    Task.MULTICLASS: "multiclass_classification",
    Task.MULTILABEL: "multilabel_classification",
    Task.REGRESSION: "regression",
    Task.MULTITARGET_REGRESSION: "regression",
}
_SKLEARN_KIND: dict[Task, str] = {
    Task.BINARY: "binary",
    Task.MULTICLASS: "multiclass",
    Task.MULTILABEL: "multilabel-indicator",
    Task.REGRESSION: "continuous",
    Task.MULTITARGET_REGRESSION: "continuous-multioutput",
}
#: Every head type a model may carry, in a stable order (the heads' own table).
HEAD_TYPES: tuple[str, ...] = tuple(dict.fromkeys(_HEAD_TYPE.values()))

_SPELLINGS: dict[str, Task] = {
    **{t.value: t for t in Task},
    **{head: t for t, head in reversed(_HEAD_TYPE.items())},  # "regression" -> REGRESSION
    "classification": Task.BINARY,
    "binary_classification": Task.BINARY,
    "multi_class": Task.MULTICLASS,
    "multi_label": Task.MULTILABEL,
    "multilabel_indicator": Task.MULTILABEL,
    "multi_label_classification": Task.MULTILABEL,
    "multitarget": Task.MULTITARGET_REGRESSION,
    "multi_target_regression": Task.MULTITARGET_REGRESSION,
    "multioutput_regression": Task.MULTITARGET_REGRESSION,
    "multi_output_regression": Task.MULTITARGET_REGRESSION,
    "continuous": Task.REGRESSION,
    "continuous_multioutput": Task.MULTITARGET_REGRESSION,
}

__all__ = ["HEAD_TYPES", "Output", "Task"]
