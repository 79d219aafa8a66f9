"""The Task enum: every spelling in use parses to one task, which knows its head and outputs."""

from __future__ import annotations

import json

import pytest
from sklearn.utils.multiclass import type_of_target

from lora_tasks.task import HEAD_TYPES, Task


@pytest.mark.parametrize(
    ("spelling", "task"),
    [
        ("binary", Task.BINARY),
        ("binary_classification", Task.BINARY),
        ("Binary-Classification", Task.BINARY),
        ("multiclass_classification", Task.MULTICLASS),
        ("multilabel_classification", Task.MULTILABEL),
        ("multi-label", Task.MULTILABEL),
        ("regression", Task.REGRESSION),
        ("multitarget_regression", Task.MULTITARGET_REGRESSION),
        ("multi target regression", Task.MULTITARGET_REGRESSION),
    ],
)
def test_short_names_and_head_types_parse_to_one_task(spelling, task):
    assert Task.parse(spelling) is task
    assert Task.parse(task) is task


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"'ranking'.*binary, multiclass.*binary_classification"):
        Task.parse("ranking")


def test_string_compatibility_for_configs_and_json():
    assert Task.BINARY == "binary" and f"{Task.MULTILABEL}" == "multilabel"
    assert json.loads(json.dumps({"task": Task.MULTITARGET_REGRESSION})) == {"task": "multitarget_regression"}
    assert Task("regression") is Task.REGRESSION


def test_head_types_and_outputs():
    assert {t.head_type for t in Task} == set(HEAD_TYPES)
    assert Task.MULTITARGET_REGRESSION.head_type == Task.REGRESSION.head_type == "regression"
    assert Task.MULTILABEL.head_type == "multilabel_classification"
    assert [t for t in Task if t.predicts == "probabilities"] == [Task.BINARY, Task.MULTICLASS, Task.MULTILABEL]
    assert Task.REGRESSION.submits == ("values",) and "labels" in Task.BINARY.submits
    assert [t for t in Task if t.multi_output] == [Task.MULTILABEL, Task.MULTITARGET_REGRESSION]
    assert Task.MULTILABEL.estimator_type == "classifier" and Task.MULTITARGET_REGRESSION.estimator_type == "regressor"


@pytest.mark.parametrize(
    ("target", "task"),
    [
        ([0, 1, 1, 0], Task.BINARY),
        ([0, 2, 1, 3], Task.MULTICLASS),
        ([[0, 1], [1, 1], [1, 0]], Task.MULTILABEL),
        ([0.5, 1.2, 3.3], Task.REGRESSION),
        ([[0.5, 1.0], [1.2, 0.1]], Task.MULTITARGET_REGRESSION),
    ],
)
def test_sklearn_kind_is_what_scikit_learn_calls_the_target(target, task):
    assert type_of_target(target) == task.sklearn_kind
