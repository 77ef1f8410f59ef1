"""Parameter sharing and sparse connectivity, made countable.

A convolution is a fully connected layer with most connections removed (each output sees
only a local receptive field) and the remaining ones tied (one filter slid over the input).
:func:`connectivity_costs` counts, for one input shape and one layer geometry, what each
step of that story costs in parameters and multiply-adds.
"""
from collections import namedtuple

from .functional.conv import _is_int, _output_size, _pair

__all__ = ["LayerCost", "connectivity_costs"]

LayerCost = namedtuple("LayerCost", ["weights", "biases", "macs"])
LayerCost.__doc__ = """Cost of one layer: weight count, bias count, multiply-adds per input image."""


def connectivity_costs(input_shape, out_channels, kernel_size, *, stride=1, padding=0, dilation=1, groups=1,
                       dense_units=None, density=None):
    """Parameters and multiply-adds of the dense, locally connected and convolutional versions of a layer.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` of one input image.
    out_channels : int
        Filters of the convolution (and of the locally connected layer).
    kernel_size, stride, padding, dilation : int or pair of int
        Geometry, as in :func:`sparsenet.functional.conv2d`.
    groups : int, default=1
        Convolution groups (the locally connected layer is counted without groups).
    dense_units : int, optional
        Output units of the fully connected version; default ``out_channels * OH * OW``, the
        same number of outputs as the convolution.
    density : float in [0, 1], optional
        If given, also count a weight-sparse convolution keeping this fraction of the taps.

    Returns
    -------
    dict of str to LayerCost
        Keys ``"dense"``, ``"locally_connected"``, ``"conv"`` and, with ``density``,
        ``"sparse_conv"``.  Biases: one per unit (dense), per output unit (locally
        connected), per filter (conv).  ``macs`` are multiply-adds per image.

    Raises
    ------
    TypeError, ValueError
        Bad geometry, as in :func:`sparsenet.functional.conv2d`.

    Examples
    --------
    A 32x32 grey image: 1000 fully connected units need 1,024,000 weights; one 3x3
    convolution filter needs 9 weights and 1 bias, whatever the image size.

    >>> from sparsenet import connectivity_costs
    >>> costs = connectivity_costs((1, 32, 32), out_channels=1, kernel_size=3, dense_units=1000)
    >>> costs["dense"]
    LayerCost(weights=1024000, biases=1000, macs=1024000)
    >>> costs["conv"]
    LayerCost(weights=9, biases=1, macs=8100)
    >>> costs["locally_connected"]     # local fields, but one filter per output position
    LayerCost(weights=8100, biases=900, macs=8100)

    Sharing cuts parameters, not work: the convolution does as many multiply-adds as the
    locally connected layer.  Sparsity cuts both:

    >>> c = connectivity_costs((64, 32, 32), 64, 3, padding=1, density=0.1)
    >>> c["conv"].weights, c["sparse_conv"].weights, c["conv"].macs, c["sparse_conv"].macs
    (36864, 3686, 37748736, 3774464)
    """
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3 and all(_is_int(v) for v in input_shape)):
        raise TypeError(f"input_shape must be a tuple (channels, height, width) of ints; got {input_shape!r}")
    c, h, w = (int(v) for v in input_shape)
    if min(c, h, w) < 1:
        raise ValueError(f"input_shape entries must be positive; got {tuple(input_shape)}")
    if not _is_int(out_channels) or out_channels < 1:
        raise ValueError(f"out_channels must be a positive int; got {out_channels!r}")
    if not _is_int(groups) or groups < 1 or c % groups or out_channels % groups:
        raise ValueError(f"groups must be a positive int dividing in_channels={c} and out_channels={out_channels}; "
                         f"got {groups!r}")
    kernel = _pair(kernel_size, "kernel_size", 1)
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    out_h, out_w = _output_size((1, c, h, w), kernel, stride, padding, dilation, f"kernel_size {kernel}")
    positions = out_h * out_w
    n_in = c * h * w
    units = out_channels * positions if dense_units is None else int(dense_units)
    fan_in = c // groups * kernel[0] * kernel[1]
    conv_w = out_channels * fan_in
    costs = {
        "dense": LayerCost(n_in * units, units, n_in * units),
        "locally_connected": LayerCost(positions * out_channels * c * kernel[0] * kernel[1],
                                       out_channels * positions,
                                       positions * out_channels * c * kernel[0] * kernel[1]),
        "conv": LayerCost(conv_w, out_channels, conv_w * positions),
    }
    if density is not None:
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density must be in [0, 1]; got {density!r}")
        nnz = int(round(density * conv_w))
        costs["sparse_conv"] = LayerCost(nnz, out_channels, nnz * positions)
    return costs
