"""Prefect around :mod:`lora_tasks.steps`: thin tasks (cache policy, retries), UI artifacts,
task runners and the ``kaggle-lora`` flow. Import the submodules; this package imports nothing
so ``import lora_tasks.prefect.runners`` does not load the flow."""
