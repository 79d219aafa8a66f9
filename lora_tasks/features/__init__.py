"""Features found without a config, for the table members: each a typed record with the reason
it fired (:class:`GeneratedFeature`), listed by ``kaggle-lora plan`` and switched off by a
competition's ``[features] disable``.

:func:`find_features` decides at plan time, from the feature columns alone; :func:`build_features`
computes the members' frames before their folds; :func:`target_encoding_transform` is the one
target-derived feature, fit inside each fold by the members. This package never receives the
target, and never imports MLX.
"""

from lora_tasks.features.categories import target_encoding_transform
from lora_tasks.features.generate import FeatureFrames, build_features, find_features
from lora_tasks.features.kinds import kinds_markdown
from lora_tasks.features.records import ALL, KIND_NAMES, FeatureKind, FeaturePlan, GeneratedFeature

__all__ = ["ALL", "KIND_NAMES", "FeatureFrames", "FeatureKind", "FeaturePlan", "GeneratedFeature", "build_features",
           "find_features", "target_encoding_transform", "kinds_markdown"]
