"""Winograd minimal filtering F(2x2, 3x3) for the device's int8 convolutions.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), section 4.1:
a 2 x 2 output tile of a 3 x 3, stride-1 convolution is ``Y = A^T [(G g G^T) * (B^T d B)] A``
(their eq. 8, with the matrices of section 4.1), where ``d`` is the 4 x 4 input tile and
``*`` the element-wise product, summed over input channels before the output transform
(eq. 10-12: 16 independent channel reductions).  That is 16 multiplies per channel pair per
tile instead of 36: 2.25x fewer.

Integer exactness: ``G`` holds halves, so the weights are transformed with ``2G`` instead
(``U' = 2G g (2G)^T = 4 G g G^T``, integers of at most 9 x 128 in magnitude) and the kernel
divides the 4x result by 4 with an arithmetic shift, which is exact because ``4Y`` is a
multiple of 4.  ``B`` and ``A`` hold only 0 and +-1, so the input transform of values
``x - zero_point`` (at most 255 in magnitude) stays within int16 (at most 4 x 255) and the
reduction and output transform are int32 sums; ``4Y`` must fit in int32, which
:func:`fits` checks per layer.  The device result is therefore bit for bit the direct
convolution's accumulator (``runtime/tt_winograd.c``).

Weights are stored as int16 pairs in words, per output channel then per tile position
``xi`` (16) then per input channel, in the SXTB16 lane order of each group of 4 channels
(``[c0|c2][c1|c3]``) that the kernel's input transform produces: ``(OC * 16 * C/2)`` int32,
OC rounded up to even with a zero row.
"""

from __future__ import annotations

import numpy as np

# Section 4.1's matrices for F(2x2, 3x3), G scaled by 2 (see above).
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.int64)
G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], dtype=np.int64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.int64)
SCALE = 4  # U' = SCALE * G g G^T


def applies(weight_shape: tuple[int, ...], stride: tuple[int, int], groups: int) -> bool:
    """3 x 3, stride 1, groups 1, input channels a multiple of 4 (the kernel reads words)."""
    _, kh, kw, ic = weight_shape
    return (kh, kw) == (3, 3) and tuple(stride) == (1, 1) and groups == 1 and ic % 4 == 0


def fits(weight: np.ndarray, bias: np.ndarray) -> bool:
    """Whether ``4 * (acc)`` fits in int32 for every output channel and input (|x - zp| <= 255)."""
    w = np.abs(weight.reshape(weight.shape[0], -1).astype(np.int64)).sum(axis=1)
    bound = SCALE * w * 255
    return bool(np.all(bound < 2**31)) and bool(np.all(np.abs(bias.astype(np.int64)) < 2**30))


def transform_weights(weight: np.ndarray) -> np.ndarray:
    """``U' = 2G g (2G)^T`` per (output, input) channel: int64 ``[OC, 16, IC]`` (xi = 4 i + j)."""
    w = weight.astype(np.int64)  # [OC, 3, 3, IC]
    u = np.einsum("ik,okls,jl->oijs", G2, w, G2)  # [OC, 4, 4, IC]
    return u.reshape(w.shape[0], 16, w.shape[3])


def weight_words(weight: np.ndarray) -> np.ndarray:
    """The kernel's weight array: int16 pairs in int32 words, ``[OC][16][IC/2]`` with OC
    rounded up to even, channels of each group of 4 in SXTB16 lane order (c0, c2, c1, c3)."""
    u = transform_weights(weight)
    if u.shape[0] % 2:  # the kernel reduces channels in pairs: an odd last one gets a zero row
        u = np.concatenate([u, np.zeros_like(u[:1])])
    oc, _, ic = u.shape
    order = (np.arange(ic).reshape(-1, 4)[:, [0, 2, 1, 3]]).reshape(-1)
    lanes = np.ascontiguousarray(u[:, :, order].astype(np.int16))
    return lanes.view("<i4").reshape(oc * 16 * ic // 2).astype(np.int32)


def scratch_bytes(in_c: int) -> int:
    """Two tiles' transformed inputs (the kernel reduces tile pairs): 16 positions x ``in_c``
    int16 each."""
    return 2 * 16 * in_c * 2


def conv_tile_reference(tile: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The 2 x 2 outputs of one 4 x 4 x IC input tile (values minus the zero point) through
    the transforms, in int64: ``[OC, 2, 2]``; the test of the identity against direct sums."""
    v = np.einsum("ik,kls,jl->ijs", BT, tile.astype(np.int64), BT)  # [4, 4, IC]
    u = transform_weights(weight).reshape(weight.shape[0], 4, 4, weight.shape[3])
    m = np.einsum("oijs,ijs->oij", u, v)
    y = np.einsum("pi,oij,qj->opq", AT, m, AT)
    assert np.all(y % SCALE == 0)
    return y // SCALE
