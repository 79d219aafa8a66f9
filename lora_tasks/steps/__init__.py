"""The pipeline as plain functions, one module per step: files in, files out.

Why plain functions: every step must be usable from a notebook or a test without Prefect, and
the Prefect tasks (:mod:`lora_tasks.prefect.tasks`) stay one call each. Large things travel as
files named by content hash (:mod:`.store`); steps hand each other typed records
(:class:`Prepared`, :class:`Plan`, :class:`AdapterResult`, ...).

1. :mod:`.download` - Kaggle (or the fake server) -> data folder
2. :mod:`.prepare` - CSVs -> ``prepared-*.json`` (:class:`Prepared`)
3. :mod:`.plan` - profile + auto-config -> ``plan-*.json`` (:class:`Plan`)
4. :mod:`.train` - token files; one fold's adapter + OOF/test ``.npy``; scikit-learn members
5. :mod:`.combine` - blend the members (weights fit on OOF) or merge the adapters
6. :mod:`.submit` - ``submission-*.csv`` in Kaggle's format, validate, submit once, score
7. :mod:`.run` - all of them in order for one :class:`~lora_tasks.options.RunOptions`
"""

from lora_tasks.steps.adapter_sets import (
    ADAPTERS_MEMBER,
    AdapterSet,
    adapter_set_overrides,
    check_adapter_set,
    parse_adapter_sets,
    recipe_adapter_sets,
)
from lora_tasks.steps.combine import (
    COMBINE_METHODS,
    DEFAULT_BLEND_METHOD,
    CombineResult,
    combine,
    merged_predict,
)
from lora_tasks.steps.download import (
    DEMO_SLUG,
    download_data,
    kaggle_endpoint,
    offline_kaggle,
)
from lora_tasks.steps.plan import OVERRIDABLE, Plan, given_overrides, plan_training
from lora_tasks.steps.prepare import Prepared, prepare_data
from lora_tasks.steps.run import PipelineResult, plan_run, run_pipeline
from lora_tasks.steps.spec import (
    METADATA_NAME,
    CompetitionMetadata,
    competition_slug,
    competition_spec,
)
from lora_tasks.steps.store import (
    PIPELINE_VERSION,
    PipelineError,
    load_json,
    save_array,
    save_json,
)
from lora_tasks.steps.submit import (
    read_score,
    submission_frame,
    submission_run_id,
    submit_file,
    submit_run,
    validate,
    write_submission,
)
from lora_tasks.steps.targets import (
    fold_assignment,
    inverse_transform,
    score_predictions,
)
from lora_tasks.steps.train import (
    AdapterResult,
    MemberResult,
    TokenFiles,
    load_dataset,
    tokenize_data,
    train_adapter,
    train_members,
)

__all__ = [
    "ADAPTERS_MEMBER", "COMBINE_METHODS", "DEFAULT_BLEND_METHOD", "DEMO_SLUG", "METADATA_NAME", "OVERRIDABLE", "PIPELINE_VERSION",
    "AdapterResult", "AdapterSet", "MemberResult", "CombineResult", "CompetitionMetadata", "PipelineError", "PipelineResult", "Plan",
    "Prepared", "TokenFiles", "adapter_set_overrides", "check_adapter_set", "combine", "competition_slug",
    "competition_spec", "download_data", "fold_assignment", "given_overrides", "inverse_transform", "kaggle_endpoint", "load_dataset",
    "load_json", "merged_predict", "offline_kaggle", "parse_adapter_sets", "plan_run", "plan_training",
    "prepare_data", "read_score", "recipe_adapter_sets", "run_pipeline", "save_array", "save_json",
    "score_predictions", "submission_frame", "submission_run_id", "submit_file", "submit_run", "tokenize_data",
    "train_adapter", "train_members", "validate", "write_submission",
]
