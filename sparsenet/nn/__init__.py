"""Layers, models and losses with PyTorch's names and semantics, on NumPy arrays.

``y = layer(x)`` runs ``forward``; ``grad_x = layer.backward(grad_y)`` accumulates into each
parameter's ``.grad``; ``model.backward_params(grad_y)`` does the same without the input
gradient (what a training step needs: the first layer's input gradient is never used);
``model.parameters()`` lists weights before biases in definition order.
"""
from . import init
from .activation import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .conv import Conv2d, LocallyConnected2d, SparseConv2d
from .dropout import Dropout, Flatten
from .linear import Linear, SparseLinear
from .loss import CrossEntropyLoss, MSELoss
from .module import Module, Parameter, Sequential, from_config, register_module
from .normalization import BatchNorm1d, BatchNorm2d
from .pool import AvgPool2d, MaxPool2d

__all__ = [
    "Module", "Parameter", "Sequential", "from_config", "register_module", "init",
    "Linear", "SparseLinear", "Conv2d", "SparseConv2d", "LocallyConnected2d", "MaxPool2d", "AvgPool2d",
    "BatchNorm1d", "BatchNorm2d", "Dropout", "Flatten",
    "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softmax",
    "CrossEntropyLoss", "MSELoss",
]
