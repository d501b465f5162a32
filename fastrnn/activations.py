"""Scalar activations for the Numba kernels, chosen by the argument's precision.

Numba on this project's targets has no SVML, so ``math.tanh``/``math.exp`` in a
loop are scalar library calls that block vectorisation. For float32 the
kernels instead use a clamped rational approximation of tanh (the minimax
13/6 form used by Eigen's ``generic_fast_tanh_float``): only multiplies, adds,
one divide and two compares, all of which LLVM vectorises. Its maximum
absolute error against the exact tanh is below 5e-7 over the whole real line
(``tests/test_activations.py`` measures it), well inside float32's parity
tolerance with torch.nn. Inputs of any size saturate to ±1: no overflow, no
NaN.

For float64 the exact ``math.tanh`` is used, so float64 results agree with
torch.nn to rounding.

``sigmoid(x) = 0.5 + 0.5 * tanh(x / 2)`` exactly, so the sigmoid inherits
tanh's accuracy and saturation.
"""

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload
from numba.np import numpy_support

__all__ = [
    "tanh",
    "sigmoid",
    "relu",
    "exp_nonpos",
    "TANH_F32_MAX_ABS_ERROR",
    "EXP_F32_MAX_REL_ERROR",
]

#: Bound on ``|tanh_f32(x) - tanh(x)|`` over all x, checked by the tests.
TANH_F32_MAX_ABS_ERROR = 5e-7

_CLAMP = np.float32(7.90531110763549805)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)


def _tanh_rational(x):
    """Clamped rational tanh; exact formula shared by Python and Numba."""
    x = _CLAMP if x > _CLAMP else x
    x = -_CLAMP if x < -_CLAMP else x
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    p = x * p
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return p / q


#: Bound on the relative error of the float32 ``exp_nonpos`` on [-87, 0], checked by the tests.
EXP_F32_MAX_REL_ERROR = 3e-7

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # Cody-Waite split of ln 2: exact high part
_LN2_LO = np.float32(-2.12194440e-4)
#: Below this, exp(x) < 2**-126 (float32's smallest normal number) and is returned as 0.
_EXP_MIN = np.float32(-87.33)
_ZERO = np.float32(0.0)
_C0, _C1, _C2, _C3, _C4, _C5, _C6 = (np.float32(1.0 / math.factorial(i)) for i in range(7))


@intrinsic
def _exp2_integral(typingctx, n):
    """``2**n`` for a float32 ``n`` holding an integer in [-126, 127]: the exponent field
    written directly (convert, add the bias, shift, reinterpret), which vectorises; a
    table lookup is a gather, slow on AVX2."""
    if not (isinstance(n, types.Float) and n.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        k = builder.fptosi(args[0], i32)
        bits = builder.shl(builder.add(k, ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(n), codegen


@intrinsic
def _floor_f32(typingctx, x):
    """``floor(x)`` of a float32, as a float32 (LLVM's ``llvm.floor``, which vectorises;
    Numba's ``math.floor`` returns an integer and ``np.floor`` a float64)."""
    if not (isinstance(x, types.Float) and x.bitwidth == 32):
        return None

    def codegen(context, builder, signature, args):
        floor = builder.module.declare_intrinsic("llvm.floor", [ir.FloatType()])
        return builder.call(floor, args)

    return types.float32(x), codegen


def _exp_nonpos_f32(x):
    """exp(x) for x <= 0 in float32, vectorisable: x = n ln2 + r, |r| <= ln2/2,
    exp(r) by a degree-6 polynomial, 2**n from its exponent bits. 0 below ``_EXP_MIN``
    (where the exact result is under 1.2e-38), and for -inf."""
    x = _ZERO if x > 0 else x  # the domain is x <= 0 (float32 constants: x * 0 is float64)
    y = x if x > _EXP_MIN else _EXP_MIN  # finite, and 2**n stays a normal number
    n = _floor_f32(y * _LOG2E + np.float32(0.5))
    r = (y - n * _LN2_HI) - n * _LN2_LO
    p = r * _C6 + _C5
    p = r * p + _C4
    p = r * p + _C3
    p = r * p + _C2
    p = r * p + _C1
    p = r * p + _C0
    e = p * _exp2_integral(n)
    if x != x:
        return x  # NaN in, NaN out
    return e if x > _EXP_MIN else _ZERO


def exp_nonpos(x):
    """``exp(x)`` for ``x <= 0`` (softmax after max-subtraction): vectorisable in float32,
    exact in float64; ``exp(-inf) = 0``."""
    return math.exp(x)


def tanh(x):
    """Hyperbolic tangent: rational approximation for float32, exact otherwise."""
    return math.tanh(x)


def sigmoid(x):
    """Logistic function ``1 / (1 + exp(-x))`` computed as ``0.5 + 0.5 tanh(x/2)``."""
    return 0.5 + 0.5 * math.tanh(0.5 * x)


def relu(x):
    """``max(x, 0)``."""
    return x if x > 0 else 0.0 * x


def _is_f32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(tanh)
def _tanh_overload(x):
    if _is_f32(x):
        return _tanh_rational  # compiled as the overload itself: one level, not two
    return lambda x: math.tanh(x)


@overload(sigmoid)
def _sigmoid_overload(x):
    if _is_f32(x):

        def impl(x):
            return numba.float32(0.5) + numba.float32(0.5) * tanh(numba.float32(0.5) * x)

        return impl
    return lambda x: 0.5 + 0.5 * math.tanh(0.5 * x)


@overload(exp_nonpos)
def _exp_overload(x):
    if _is_f32(x):
        return _exp_nonpos_f32
    return lambda x: math.exp(x)


@overload(relu)
def _relu_overload(x):
    zero = numpy_support.as_dtype(x).type(0)  # of x's type: ``x * 0`` is a float64

    return lambda x: x if not x <= 0 else zero  # NaN stays NaN, -inf gives 0
