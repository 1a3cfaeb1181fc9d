"""Energy: ops x energy/op(dtype) + bytes x energy/byte(level) + static power x time, by component.

Energy per operation
    Device profiles may list published per-op figures (``[energy_per_op]``); where they do not, the loader uses
    :func:`horowitz_pj_per_op`: the 45 nm, 0.9 V table of Horowitz ("Computing's Energy Problem (and what we
    can do about it)", ISSCC 2014) scaled linearly by process node.

    * One op is half a multiply-accumulate: ``pJ/op = (E_mul(dtype) + E_add(accumulator)) / 2``.
    * Horowitz figures used directly: 8-bit int multiply 0.2 pJ, 32-bit int add 0.1 pJ (INT8/INT4 products
      accumulate in INT32), 16-bit float multiply 1.1 pJ, 32-bit float multiply 3.7 pJ, 32-bit float add 0.9 pJ
      (FP16/BF16/TF32/FP8 products accumulate in FP32, as tensor cores and AVX-512 BF16/VNNI do).
    * Not in the table (estimates, multiplier energy ~ mantissa bits squared): FP64 multiply
      3.7 x (53/24)^2 = 18.0 pJ and FP64 add 2 x 0.9 = 1.8 pJ; BF16 and TF32 multiply taken equal to FP16
      (8/11-bit mantissas: an upper bound); FP8 (E4M3, 4-bit significand) multiply 1.1 x (4/11)^2 = 0.145 pJ;
      INT4 multiply 0.2 x (4/8)^2 = 0.05 pJ.
    * Process scaling rule: ``E(node) = E_45 x node_nm / 45``.  Switching energy is C V^2; below 45 nm supply
      voltage has stayed near 0.7-0.9 V (the end of Dennard scaling) while capacitance tracks feature size,
      so energy falls roughly linearly with the node name.  Marketing node names ("4N") are taken at their
      family value (5 nm).  This is a first-order rule: treat results as +-2x.

Energy per byte
    Per memory level, from the profile (``energy_pj_per_byte``: incremental energy to move one byte at that
    level, e.g. Antepara et al., SC'25 measured on A100).  A byte counted at a level is charged that level's
    energy; a byte fetched from DRAM is also counted in every cache level it passes through (the traffic model
    in :mod:`~memwall.simulator.roofline` makes inner-level traffic >= outer-level traffic).

Static energy
    ``idle_w x time``: leakage and clocks of the whole device while the kernel runs (kernel launch overhead
    included).
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "HOROWITZ_45NM_PJ",
    "HOROWITZ_SOURCE",
    "horowitz_pj_per_op",
    "energy_components",
]

#: Horowitz ISSCC 2014 (45 nm) multiply / add energies in pJ; ``*`` entries are the estimates described in
#: the module doc.
HOROWITZ_45NM_PJ = {
    "int8_mul": 0.2,
    "int32_add": 0.1,
    "fp16_mul": 1.1,
    "fp32_mul": 3.7,
    "fp32_add": 0.9,
    "fp64_mul*": 3.7 * (53 / 24) ** 2,
    "fp64_add*": 2 * 0.9,
    "fp8_mul*": 1.1 * (4 / 11) ** 2,
    "int4_mul*": 0.2 * (4 / 8) ** 2,
}

#: (multiplier, accumulator) entries of :data:`HOROWITZ_45NM_PJ` per dtype.
_PAIRS = {
    "fp64": ("fp64_mul*", "fp64_add*"),
    "fp32": ("fp32_mul", "fp32_add"),
    "tf32": ("fp16_mul", "fp32_add"),
    "fp16": ("fp16_mul", "fp32_add"),
    "bf16": ("fp16_mul", "fp32_add"),
    "fp8": ("fp8_mul*", "fp32_add"),
    "int8": ("int8_mul", "int32_add"),
    "int4": ("int4_mul*", "int32_add"),
}

#: The source string recorded for per-op energies derived by :func:`horowitz_pj_per_op`.
HOROWITZ_SOURCE = ("Horowitz ISSCC 2014 45 nm table, (multiply + accumulate add) / 2 per op, scaled by "
                   "node_nm / 45 (memwall.simulator.energy.horowitz_pj_per_op)")


def horowitz_pj_per_op(dtype: str, node_nm: float) -> float:
    """Energy of one op (half a MAC) of ``dtype`` at process ``node_nm``, in pJ (see the module doc).

    Parameters
    ----------
    dtype : str
        One of ``fp64 fp32 tf32 fp16 bf16 fp8 int8 int4``.
    node_nm : float
        Process node in nanometres (> 0).
    """
    if dtype not in _PAIRS:
        raise ValueError(f"dtype: expected one of {', '.join(_PAIRS)}, got {dtype!r}")
    if not (isinstance(node_nm, (int, float)) and np.isfinite(node_nm) and node_nm > 0):
        raise ValueError(f"node_nm: expected a finite number > 0, got {node_nm!r}")
    mul, add = _PAIRS[dtype]
    return (HOROWITZ_45NM_PJ[mul] + HOROWITZ_45NM_PJ[add]) / 2 * (node_nm / 45.0)


def energy_components(device, unit_ops: dict, level_bytes: dict, time_s: float) -> dict:
    """Energy in joules by component for one estimate.

    Parameters
    ----------
    device : Device
    unit_ops : dict
        ``{component_name: (ops, dtype)}`` — e.g. ``{"tensor": (2*m*n*k, "fp16"), "vector": (ops, "fp16")}``.
    level_bytes : dict
        ``{level_name: bytes}`` for the device's memory levels.
    time_s : float
        Duration charged at the idle/static power.

    Returns
    -------
    dict
        ``{component: joules}`` with one entry per compute component, one per memory level, and ``static``.
    """
    out = {}
    for comp, (ops, dtype) in unit_ops.items():
        out[comp] = float(ops) * device.energy_j_per_op[dtype]
    for lv in device.memory_levels:
        out[lv.name] = float(level_bytes.get(lv.name, 0.0)) * lv.energy_j_per_byte
    out["static"] = device.idle_w * float(time_s)
    return out
