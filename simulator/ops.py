"""The operations a workload reduces to — the contract between ``workload`` (layers, model zoo) and the
cost model (``compression``, ``roofline``, ``energy``).

A layer becomes one or more ops:

* :class:`GemmOp` — ``count`` independent products of an (m x k) activation matrix with a (k x n) operand.
  When ``weight_operand`` is true the (k x n) operand is a layer weight (stored as PyTorch does, out x in =
  n x k) and compression applies to it; otherwise both operands are activations (attention scores,
  attention-times-values) and only the activation dtype applies.
* :class:`MemoryOp` — elementwise / normalization / softmax / embedding gathers: no tensor-core work,
  cost is the elements moved (and a few vector ops per element).

Sizes are element counts, never bytes: bytes follow from the dtypes chosen by a compression config.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GemmOp:
    """``count`` GEMMs of (m x k) @ (k x n); 2*m*n*k*count ops (multiply + add)."""

    name: str
    m: int
    n: int
    k: int
    count: int = 1
    weight_operand: bool = True
    kind: str = "linear"  # linear | conv | attention_qk | attention_pv | lm_head ...

    def __post_init__(self):
        for f in ("m", "n", "k", "count"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"GemmOp {self.name!r}: {f} must be a non-negative int, got {v!r}")

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k * self.count

    @property
    def ops(self) -> int:
        return 2 * self.macs

    @property
    def weight_elements(self) -> int:
        """Elements of the weight operand (0 when both operands are activations)."""
        return self.n * self.k * self.count if self.weight_operand else 0


@dataclass(frozen=True)
class MemoryOp:
    """A memory-bound op: reads ``elements_read`` and writes ``elements_written`` activation elements,
    plus ``weight_elements`` parameter elements (norm gains, embedding rows actually gathered), doing
    ``ops_per_element`` vector ops per element written."""

    name: str
    elements_read: int
    elements_written: int
    ops_per_element: float = 1.0
    weight_elements: int = 0
    kind: str = "elementwise"  # elementwise | norm | softmax | embedding | pool ...

    def __post_init__(self):
        for f in ("elements_read", "elements_written", "weight_elements"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"MemoryOp {self.name!r}: {f} must be a non-negative int, got {v!r}")

    @property
    def ops(self) -> float:
        return self.ops_per_element * self.elements_written


Op = GemmOp | MemoryOp
