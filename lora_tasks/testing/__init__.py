"""Offline stand-ins for Kaggle: the fake Kaggle server and the ``demo`` competition.

Shipped in the package (not only in tests) so a fresh machine without a Kaggle account can run
the whole pipeline through the same code path as a real competition. Import the submodules
directly (``lora_tasks.testing.fake_kaggle``, ``lora_tasks.testing.demo``); this package must
not import MLX or ``lora_tasks.models``.
"""
