"""Optimizers (``SGD``, ``Adam``, ``AdamW``) and learning-rate schedulers, PyTorch-compatible.

For sparse weights the state is nnz-shaped; after a pattern change call
``optimizer.remap(param, *match_patterns(old_csr, new_csr))``.
"""
from . import lr_scheduler
from .lr_scheduler import CosineAnnealingLR, StepLR
from .optimizer import SGD, Adam, AdamW, Optimizer, match_patterns

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "match_patterns", "lr_scheduler", "StepLR", "CosineAnnealingLR"]
