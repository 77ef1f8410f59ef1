"""Sparse deep learning on truly sparse CSR weights: regularisers, pruning, SET, RigL, growth.

Every method changes patterns through one helper that builds the new canonical CSR matrix and
calls the optimizer's ``remap``, so momentum and Adam moments follow their connections.  Each
is a :class:`~sparsenet.train.Callback` for :func:`~sparsenet.train.fit` and a plain call.

=========================  ==============================================================
Regularisers (proximal)    :class:`L1Prox`, :class:`GroupLassoProx`, :class:`HardThreshold`
Compaction                 :func:`compact`, :func:`remove_zeros`, :func:`remove_units`
Pruning                    :func:`magnitude_prune`, :class:`MagnitudePruner`,
                           :class:`GradualMagnitudePruner`, :func:`cubic_sparsity`,
                           :func:`structured_prune`, :class:`GradualStructuredPruner`,
                           :func:`snip_prune`, :class:`LotteryTicket`, :func:`to_sparse`
Dynamic sparse training    :class:`SET`, :func:`set_update`, :func:`erdos_renyi_densities`,
                           :class:`RigL`, :func:`rigl_update`, :func:`conv_patches`
Growing networks           :class:`GrowingNetwork`, :func:`add_units`, :func:`grow_connections`,
                           :func:`prune_units`
Sparse autoencoder         :class:`SparseAutoencoder`, :func:`kl_sparsity`, :func:`l1_activity`
=========================  ==============================================================
"""
from .autoencoder import (SparseAutoencoder, kl_sparsity, kl_sparsity_backward, l1_activity,
                          l1_activity_backward)
from .compact import compact, remove_units, remove_zeros, unit_pairs
from .grow import GrowingNetwork, add_units, grow_connections, prune_units, unit_importance
from .prune import (GradualMagnitudePruner, GradualStructuredPruner, LotteryTicket, MagnitudePruner,
                    cubic_sparsity, magnitude_prune, saliency_scores, snip_prune, snip_scores, structured_prune,
                    to_sparse)
from .regularize import GroupLassoProx, HardThreshold, L1Prox, group_soft_threshold, soft_threshold
from .rigl import RigL, conv_patches, cosine_drop_fraction, rigl_update
from .set import SET, erdos_renyi_densities, set_update

__all__ = [
    "soft_threshold", "group_soft_threshold", "L1Prox", "GroupLassoProx", "HardThreshold",
    "compact", "remove_zeros", "remove_units", "unit_pairs",
    "cubic_sparsity", "MagnitudePruner", "GradualMagnitudePruner", "magnitude_prune", "structured_prune",
    "GradualStructuredPruner",
    "to_sparse", "saliency_scores", "snip_scores", "snip_prune", "LotteryTicket",
    "SET", "set_update", "erdos_renyi_densities", "RigL", "rigl_update", "cosine_drop_fraction", "conv_patches",
    "GrowingNetwork", "add_units", "grow_connections", "prune_units", "unit_importance",
    "SparseAutoencoder", "kl_sparsity", "kl_sparsity_backward", "l1_activity", "l1_activity_backward",
]
