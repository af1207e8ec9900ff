"""Deterministic arithmetic for schedules: the same float on every machine.

A schedule's lrs are logged in decisions and verified bit for bit on any machine, so they use
only IEEE double arithmetic (+ - * / and sqrt, correctly rounded everywhere), exact operations
(integer arithmetic, frexp, ldexp) and decimal multiplication (correctly rounded by its
specification): no libm. The C library's cos, exp, log and pow are not correctly rounded and
differ between platforms (and between CPUs with and without FMA), so the few transcendental
functions a schedule needs are here in pure Python: fdlibm's kernels (the polynomials of
FreeBSD's msun, < 1 ulp); the powers gamma ** n of the decaying families come from tables worked
out in 40-digit decimal (a few ulps at any n, where squaring in doubles would lose ~n ulps).

Frozen, as ``lrpilot.policies.common`` is: released schedule versions compute their lrs with
these functions, so changing a bit here changes what they decide. No version owns this module.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable
from decimal import Decimal

_INF = math.inf
_frexp, _ldexp, _floor = math.frexp, math.ldexp, math.floor

# Only + - * / (IEEE: correctly rounded, the same bits on every machine) and exact operations.
# The constants are fdlibm's (FreeBSD msun k_cos.c, k_sin.c, e_exp.c, e_log.c), bit for bit.

_C1 = float.fromhex("0x1.555555555554cp-5")
_C2 = float.fromhex("-0x1.6c16c16c15177p-10")
_C3 = float.fromhex("0x1.a01a019cb1590p-16")
_C4 = float.fromhex("-0x1.27e4f809c52adp-22")
_C5 = float.fromhex("0x1.1ee9ebdb4b1c4p-29")
_C6 = float.fromhex("-0x1.8fae9be8838d4p-37")
_S1 = float.fromhex("-0x1.5555555555549p-3")
_S2 = float.fromhex("0x1.111111110f8a6p-7")
_S3 = float.fromhex("-0x1.a01a019c161d5p-13")
_S4 = float.fromhex("0x1.71de357b1fe7dp-19")
_S5 = float.fromhex("-0x1.ae5e68a2b9cebp-26")
_S6 = float.fromhex("0x1.5d93a5acfd57cp-33")
_LN2_HI = float.fromhex("0x1.62e42fee00000p-1")  # 32 trailing zero bits: k * _LN2_HI is exact
_LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
_INV_LN2 = float.fromhex("0x1.71547652b82fep+0")
_P1 = float.fromhex("0x1.555555555553ep-3")
_P2 = float.fromhex("-0x1.6c16c16bebd93p-9")
_P3 = float.fromhex("0x1.1566aaf25de2cp-14")
_P4 = float.fromhex("-0x1.bbd41c5d26bf1p-20")
_P5 = float.fromhex("0x1.6376972bea4d0p-25")
_LG1 = float.fromhex("0x1.5555555555593p-1")
_LG2 = float.fromhex("0x1.999999997fa04p-2")
_LG3 = float.fromhex("0x1.2492494229359p-2")
_LG4 = float.fromhex("0x1.c71c51d8e78afp-3")
_LG5 = float.fromhex("0x1.7466496cb03dep-3")
_LG6 = float.fromhex("0x1.39a09d078c69fp-3")
_LG7 = float.fromhex("0x1.2f112df3e5244p-3")
_HALF_PI = float.fromhex("0x1.921fb54442d18p+0")  # math.pi / 2, exactly
_SQRT_HALF = float.fromhex("0x1.6a09e667f3bcdp-1")


def kcos(x: float) -> float:
    """cos(x) for |x| <= pi/4 (fdlibm's __kernel_cos, FreeBSD's form; < 1 ulp)."""
    z = x * x
    w = z * z
    r = z * (_C1 + z * (_C2 + z * _C3)) + w * w * (_C4 + z * (_C5 + z * _C6))
    hz = 0.5 * z
    w = 1.0 - hz
    return w + (((1.0 - w) - hz) + z * r)


def ksin(x: float) -> float:
    """sin(x) for |x| <= pi/4 (fdlibm's __kernel_sin; < 1 ulp)."""
    z = x * x
    w = z * z
    r = _S2 + z * (_S3 + z * _S4) + z * w * (_S5 + z * _S6)
    return x + z * x * (_S1 + z * r)


def cos2_ratio(a: int, b: int) -> float:
    """cos(pi * a / (2 * b)) ** 2 for integers 0 <= a <= b, b >= 1: the reduction is exact
    (integers), the angle a correctly rounded ratio times pi/2, at most pi/4."""
    # cos(t) = sin(pi/2 - t) above pi/4
    c = kcos(a / b * _HALF_PI) if a + a <= b else ksin((b - a) / b * _HALF_PI)
    return c * c


def cos2_frac(p: float) -> float:
    """cos(pi * p / 2) ** 2 for 0 <= p <= 1 (1 - p is exact for p >= 0.5)."""
    c = kcos(p * _HALF_PI) if p <= 0.5 else ksin((1.0 - p) * _HALF_PI)
    return c * c


def log(x: float) -> float:
    """The natural logarithm of a positive finite x (fdlibm's e_log.c; < 1 ulp)."""
    m, e = _frexp(x)
    if m < _SQRT_HALF:  # m in [sqrt(1/2), sqrt(2)): f = m - 1 is exact
        m += m
        e -= 1
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
    hfsq = 0.5 * f * f
    k = float(e)
    return k * _LN2_HI - ((hfsq - (s * (hfsq + r) + k * _LN2_LO)) - f)


def exp(y: float) -> float:
    """e ** y (fdlibm's e_exp.c; < 1 ulp), 0.0 below the smallest subnormal, inf above the
    largest double."""
    if y < -746.0:
        return 0.0
    if y > 710.0:
        return _INF
    k = int(y * _INV_LN2 + (0.5 if y > 0.0 else -0.5))
    hi = y - k * _LN2_HI
    lo = k * _LN2_LO
    r = hi - lo
    t = r * r
    c = r - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
    m = 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)
    try:
        return _ldexp(m, k)
    except OverflowError:
        return _INF


def ipow(x: float, n: int) -> float:
    """x ** n for an integer n >= 0, by squaring (overflow gives inf, underflow 0.0)."""
    result = 1.0
    while n:
        if n & 1:
            result *= x
        n >>= 1
        if n:
            x *= x
    return result


# 40 significant digits, no exponent limit a power can reach, no traps: decimal's multiplication
# is correctly rounded by its specification, so a product is the same digits everywhere.
_DECIMAL = decimal.Context(prec=40, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])


def decimal_ipow(x: Decimal, n: int) -> float:
    """x ** n for an integer n >= 0, by squaring in 40-digit decimal, rounded once to a double
    (beyond the largest double: inf; below the smallest: 0.0)."""
    result = Decimal(1)
    while n:
        if n & 1:
            result = _DECIMAL.multiply(result, x)
        n >>= 1
        if n:
            x = _DECIMAL.multiply(x, x)
    return float(result)


def powers(g: float) -> Callable[[int], float]:
    """n -> g ** n for integers n >= 0, within a few ulps: below 2**30 a product of up to five
    tabled powers g ** (i * 64 ** level), i < 64, each worked out in 40-digit decimal and
    rounded once to a double (a product that needs fewer tables multiplies by no 1.0: the same
    bits either way); from 2**30 on, a decimal power by squaring."""
    if g == 1.0:
        return lambda n: 1.0
    exact = Decimal(g)
    tables: list[list[float]] = []
    unit = exact
    for _level in range(5):
        row, x = [], Decimal(1)
        for _ in range(64):
            row.append(float(x))
            x = _DECIMAL.multiply(x, unit)
        tables.append(row)
        unit = x  # g ** (64 ** (_level + 1))
    t0, t1, t2, t3, t4 = tables

    def power(n: int) -> float:
        if n < 4096:
            return t1[n >> 6] * t0[n & 63]
        if n < 1073741824:
            high = t4[n >> 24] * t3[(n >> 18) & 63] * t2[(n >> 12) & 63]
            return high * t1[(n >> 6) & 63] * t0[n & 63]
        return decimal_ipow(exact, n)

    return power


def pow01(x: float, p: float) -> float:
    """x ** p for 0 < x <= 1 and p >= 0: by squaring for an integer p, else exp(p * log x)."""
    if p.is_integer() and p <= 64.0:
        return ipow(x, int(p))
    return exp(p * log(x))


def sin2_frac(p: float) -> float:
    """sin(pi * p / 2) ** 2 for 0 <= p <= 1, i.e. (1 - cos(pi * p)) / 2 without its
    cancellation near p = 0 (1 - p is exact for p >= 0.5)."""
    s = ksin(p * _HALF_PI) if p <= 0.5 else kcos((1.0 - p) * _HALF_PI)
    return s * s


def cos2_turns(x: float) -> float:
    """cos(pi * x) ** 2 for a finite x >= 0, i.e. (1 + cos(2 pi x)) / 2: x reduced exactly to
    [0, 1/2] (cos ** 2 has period 1 and is even about 1/2), then ``cos2_frac``."""
    r = x - _floor(x)  # the fraction of a double is a double: exact
    if r > 0.5:
        r = 1.0 - r  # exact for r >= 0.5
    return cos2_frac(r + r)


def cos2_turns_ratio(n: int, d: int) -> float:
    """cos(pi * n / d) ** 2 for integers n >= 0, d >= 1, reduced exactly (integers: any n,
    however large, keeps every digit), then ``cos2_ratio``."""
    r = n % d
    if r + r > d:
        r = d - r
    return cos2_ratio(r + r, d)
