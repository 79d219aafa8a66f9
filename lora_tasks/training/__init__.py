"""Training: the model factories (every ``create_*`` of the public API), the training engine,
checkpoints, K-fold CV, the frozen-prefix cache, precision, fused and multi-adapter training.

Never imports Prefect or the steps: the engine runs in a notebook as well as in a flow task.
"""
