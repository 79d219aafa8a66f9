"""Ensembling: blending and stacking of out-of-fold predictions (:mod:`.blend`), the scikit-learn
and gradient-boosting members (:mod:`.members`) and the label cut (:mod:`.thresholds`).

Works on prediction arrays and frames only: never imports MLX or the models.
"""
