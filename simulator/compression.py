"""Compression configurations and the exact bytes of a compressed weight matrix.

A :class:`Compression` says how one layer is stored and run: weight dtype, activation dtype, group size and
the dtype of scales / zero points, and a sparsity format (``dense``, unstructured ``csr``, block ``bsr``,
structured ``nm``, or ``channel``-pruned -> a smaller dense matrix) with its ratio.

Byte model (weights are ``rows = out`` x ``cols = in``; it matches the kernels' ``nbytes_breakdown()``)
    itemsize(values): fp32/tf32 4, fp16/bf16 2, fp8/int8 1; int4 is packed two per byte (``ceil(count / 2)``
    bytes; dense int4 packs each row along K: ``rows * ceil(cols / 2)``, as ``pack_int4`` does).

    Index dtype: int32 when every value the index arrays must hold (nnz or number of blocks, and the column
    count) is < 2**31, else int64 (``idx`` = 4 or 8 bytes).

    * dense float (fp32/tf32/fp16/bf16/fp8): values only (fp8 carries no scales unless ``group_size`` is set).
    * dense int8/int4: values + scales: one per row (``group_size=None``) or ``rows * cols / group_size``
      (groups along K), each ``itemsize(scale_dtype)``; ``zero_points=True`` adds as many zero points in the
      same dtype (asymmetric quantization).
    * CSR (``nnz = rows*cols - floor(sparsity * rows*cols)``): values nnz*itemsize; indices nnz*idx;
      indptr (rows+1)*idx; int8/int4 values add per-row float32 scales rows*4.
    * BSR r x c (``nb = blocks - floor(sparsity * blocks)``): values nb*r*c*itemsize; indices nb*idx;
      indptr (rows/r + 1)*idx; int8/int4 add one float32 scale per stored block nb*4.
    * N:M (n of every m along cols): kr = cols/m*n kept per row; values rows*kr*itemsize; metadata uint8
      ``rows * ceil(kr * ceil(log2 m) / 8)``; int8/int4 add per-row float32 scales rows*4.  No indptr.
    * channel: ``rows - floor(sparsity * rows)`` output channels kept, stored as a dense matrix.

    The pruned counts follow :func:`memwall.kernels.prune.prune_count` (``floor(s*N + 1e-9)``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

__all__ = [
    "DTYPES",
    "FORMATS",
    "SCALE_DTYPES",
    "ITEMSIZE",
    "Compression",
    "weight_bytes",
    "weight_total_bytes",
    "kept_weight_elements",
    "index_itemsize",
    "prune_count",
    "activation_itemsize",
    "check_shape",
    "INT_DTYPES",
]

#: Weight / activation dtypes a compression config may use.
DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")
#: Sparsity formats.
FORMATS = ("dense", "csr", "bsr", "nm", "channel")
#: Dtypes allowed for scales and zero points of dense quantized weights.
SCALE_DTYPES = ("fp32", "fp16", "bf16")
#: Bytes per element (int4: half a byte, packed).
ITEMSIZE = {"fp32": 4.0, "tf32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
#: Integer (quantized) dtypes: scales are part of the format.
INT_DTYPES = ("int8", "int4")

_SPARSITY_EPS = 1e-9  # same rule as memwall.kernels.prune.prune_count
_INDEX_LIMIT = 2**31


def prune_count(sparsity: float, units: int) -> int:
    """Units pruned at ``sparsity`` out of ``units``: ``floor(sparsity * units + 1e-9)`` (the kernels' rule)."""
    return min(int(units), int(math.floor(sparsity * units + _SPARSITY_EPS)))


def index_itemsize(*largest: int) -> int:
    """4 when every value an index array must hold is < 2**31, else 8."""
    return 4 if max(largest, default=0) < _INDEX_LIMIT else 8


def activation_itemsize(dtype: str) -> float:
    """Bytes per activation element of ``dtype`` (int4: 0.5)."""
    _check_dtype(dtype, "acts")
    return ITEMSIZE[dtype]


def _check_dtype(value, name: str) -> str:
    if value not in DTYPES:
        raise ValueError(f"{name}: unknown dtype {value!r}; valid dtypes: {', '.join(DTYPES)}")
    return value


def _posint(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class Compression:
    """How one layer's weights and activations are stored and computed.

    Parameters
    ----------
    weights, acts : str
        Dtypes of the weights and of the activations (inputs and outputs), one of :data:`DTYPES`.
    group_size : int or None
        Quantization group along K (the reduction dimension) for int8/int4/fp8 weights; ``None``: one scale
        per output row for int8/int4, none for fp8.
    scale_dtype : str
        Dtype of scales and zero points of dense quantized weights (``fp32``, ``fp16``, ``bf16``).
    zero_points : bool
        Asymmetric quantization (int weights): one zero point per scale.
    format : str
        ``dense``, ``csr``, ``bsr`` (needs ``block``), ``nm`` (needs ``n``, ``m``), ``channel``.
    block : (int, int) or None
        BSR block ``(r, c)``.
    n, m : int or None
        N:M pattern (``n`` kept of every ``m`` along K).
    sparsity : float
        Fraction pruned, in [0, 1): entries (csr), blocks (bsr), output channels (channel); implied
        ``1 - n/m`` for nm; must be 0 for dense.
    """

    weights: str = "fp16"
    acts: str = "fp16"
    group_size: int | None = None
    scale_dtype: str = "fp16"
    zero_points: bool = False
    format: str = "dense"
    block: tuple[int, int] | None = None
    n: int | None = None
    m: int | None = None
    sparsity: float = 0.0

    def __post_init__(self):
        _check_dtype(self.weights, "weights")
        _check_dtype(self.acts, "acts")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"scale_dtype: unknown {self.scale_dtype!r}; valid: {', '.join(SCALE_DTYPES)}")
        if self.format not in FORMATS:
            raise ValueError(f"format: unknown {self.format!r}; valid formats: dense, csr, bsr:RxC, nm:N:M, channel")
        if not isinstance(self.zero_points, bool):
            raise ValueError(f"zero_points: expected a bool, got {self.zero_points!r}")
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0.0 <= s < 1.0:
            raise ValueError(f"sparsity: expected a number in [0, 1), got {s!r}")
        object.__setattr__(self, "sparsity", float(s))
        if self.group_size is not None:
            _posint(self.group_size, "group_size")
            if self.weights not in ("int8", "int4", "fp8"):
                raise ValueError(f"group_size: applies to int8/int4/fp8 weights, not {self.weights}")
            if self.format not in ("dense", "channel"):
                raise ValueError(f"group_size: group scales apply to dense/channel formats, not {self.format} "
                                 "(sparse formats carry per-row or per-block float32 scales)")
        if self.zero_points and self.weights not in INT_DTYPES:
            raise ValueError(f"zero_points: apply to int8/int4 weights, not {self.weights}")
        if self.format == "bsr":
            if self.block is None:
                raise ValueError("block: format bsr needs a block shape (r, c), e.g. 'bsr:16x16'")
            if not isinstance(self.block, (tuple, list)) or len(self.block) != 2:
                raise ValueError(f"block: expected (r, c), got {self.block!r}")
            object.__setattr__(self, "block", (_posint(self.block[0], "block[0]"), _posint(self.block[1], "block[1]")))
        elif self.block is not None:
            raise ValueError(f"block: only the bsr format has a block shape (format is {self.format})")
        if self.format == "nm":
            if self.n is None or self.m is None:
                raise ValueError("n, m: format nm needs an N:M pattern, e.g. 'nm:2:4'")
            _posint(self.n, "n")
            _posint(self.m, "m")
            if not self.n < self.m:
                raise ValueError(f"n, m: expected n < m, got {self.n}:{self.m}")
            implied = 1.0 - self.n / self.m
            if self.sparsity not in (0.0, implied) and abs(self.sparsity - implied) > 1e-9:
                raise ValueError(f"sparsity: nm:{self.n}:{self.m} implies sparsity {implied:g}, got {self.sparsity:g}")
            object.__setattr__(self, "sparsity", implied)
        elif self.n is not None or self.m is not None:
            raise ValueError(f"n, m: only the nm format has an N:M pattern (format is {self.format})")
        if self.format == "dense" and self.sparsity != 0.0:
            raise ValueError("sparsity: the dense format has no sparsity; use --format csr, bsr:RxC or channel")

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, weights: str = "fp16", acts: str | None = None, group=None, format: str = "dense",
              sparsity=0.0, scale_dtype: str = "fp16", zero_points: bool = False) -> "Compression":
        """Build a config from CLI-style strings.

        ``format``: ``dense``, ``csr``, ``bsr:RxC`` (e.g. ``bsr:16x16``; plain ``bsr`` means 16x16), ``nm:N:M``
        (plain ``nm`` means 2:4), ``channel``.  ``acts`` defaults to ``weights`` for fp32/tf32/fp16/bf16
        weights and to ``fp16`` for int8/int4/fp8 weights (weight-only quantization).  ``group``: int, numeric
        string, or None/0/"none".  Raises ValueError listing the valid names.
        """
        if not isinstance(weights, str):
            raise ValueError(f"weights: expected a dtype name, got {weights!r}; valid dtypes: {', '.join(DTYPES)}")
        weights = weights.strip().lower()
        _check_dtype(weights, "weights")
        if acts is None:
            acts = "fp16" if weights in INT_DTYPES or weights == "fp8" else weights
        if not isinstance(acts, str):
            raise ValueError(f"acts: expected a dtype name, got {acts!r}; valid dtypes: {', '.join(DTYPES)}")
        acts = acts.strip().lower()
        if isinstance(group, str):
            g = group.strip().lower()
            if g in ("", "none", "0"):
                group = None
            else:
                try:
                    group = int(g)
                except ValueError:
                    raise ValueError(f"group: expected a positive integer or 'none', got {group!r}") from None
        elif group == 0:
            group = None
        if isinstance(sparsity, str):
            try:
                sparsity = float(sparsity)
            except ValueError:
                raise ValueError(f"sparsity: expected a number in [0, 1), got {sparsity!r}") from None
        if not isinstance(format, str):
            raise ValueError(f"format: expected a string, got {format!r}")
        f = format.strip().lower()
        kw: dict = {}
        if f in ("dense", "csr", "channel"):
            fmt = f
        elif f == "bsr" or f.startswith("bsr:"):
            fmt = "bsr"
            mt = re.fullmatch(r"bsr(?::(\d+)x(\d+))?", f)
            if not mt:
                raise ValueError(f"format: expected bsr:RxC (e.g. bsr:16x16), got {format!r}")
            kw["block"] = (int(mt.group(1)), int(mt.group(2))) if mt.group(1) else (16, 16)
        elif f == "nm" or f.startswith("nm:"):
            fmt = "nm"
            mt = re.fullmatch(r"nm(?::(\d+):(\d+))?", f)
            if not mt:
                raise ValueError(f"format: expected nm:N:M (e.g. nm:2:4), got {format!r}")
            kw["n"], kw["m"] = (int(mt.group(1)), int(mt.group(2))) if mt.group(1) else (2, 4)
        else:
            raise ValueError(f"format: unknown {format!r}; valid formats: dense, csr, bsr:RxC, nm:N:M, channel")
        if fmt == "nm" and sparsity in (0, 0.0):
            sparsity = 1.0 - kw["n"] / kw["m"]
        return cls(weights=weights, acts=acts, group_size=group, scale_dtype=scale_dtype, zero_points=zero_points,
                   format=fmt, sparsity=sparsity, **kw)

    @property
    def format_spec(self) -> str:
        """The format as the CLI spells it (``bsr:16x16``, ``nm:2:4``)."""
        if self.format == "bsr":
            return f"bsr:{self.block[0]}x{self.block[1]}"
        if self.format == "nm":
            return f"nm:{self.n}:{self.m}"
        return self.format

    @property
    def label(self) -> str:
        """Short human label, e.g. ``fp16``, ``int4/fp16 g128``, ``fp16 csr 90%``, ``fp16 nm:2:4``."""
        s = self.weights if self.weights == self.acts else f"{self.weights}/{self.acts}"
        if self.group_size:
            s += f" g{self.group_size}"
        if self.zero_points:
            s += " zp"
        if self.format != "dense":
            s += f" {self.format_spec}"
            if self.format != "nm":
                s += f" {self.sparsity * 100:.3g}%"
        return s

    def with_(self, **changes) -> "Compression":
        """A copy with fields replaced (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {"weights": self.weights, "acts": self.acts, "group_size": self.group_size,
                "scale_dtype": self.scale_dtype, "zero_points": self.zero_points, "format": self.format_spec,
                "sparsity": self.sparsity, "label": self.label}


def check_shape(rows: int, cols: int, comp: Compression) -> None:
    """Raise ValueError when ``comp`` cannot store a ``rows x cols`` weight (block / group / M not dividing)."""
    if comp.format == "bsr":
        r, c = comp.block
        if rows % r or cols % c:
            raise ValueError(f"block: {r}x{c} does not divide the {rows}x{cols} weight (out x in)")
    if comp.format == "nm" and cols % comp.m:
        raise ValueError(f"m: nm:{comp.n}:{comp.m} needs in-features divisible by {comp.m}, got {cols}")
    if comp.group_size is not None and cols % comp.group_size:
        raise ValueError(f"group_size: {comp.group_size} does not divide K = {cols} (in-features)")


def kept_weight_elements(rows: int, cols: int, comp: Compression) -> int:
    """Weight elements stored (and multiplied) after pruning: nnz, nb*r*c, rows*kr or kept_rows*cols."""
    total = rows * cols
    if comp.format == "csr":
        return total - prune_count(comp.sparsity, total)
    if comp.format == "bsr":
        r, c = comp.block
        nblocks = (rows // r) * (cols // c)
        return (nblocks - prune_count(comp.sparsity, nblocks)) * r * c
    if comp.format == "nm":
        return rows * (cols // comp.m * comp.n)
    if comp.format == "channel":
        return (rows - prune_count(comp.sparsity, rows)) * cols
    return total


def _packed(count: int, dtype: str) -> int:
    return (count + 1) // 2 if dtype == "int4" else int(count * ITEMSIZE[dtype])


def weight_bytes(rows: int, cols: int, comp: Compression) -> dict:
    """Exact bytes of a ``rows x cols`` (out x in) weight stored as ``comp`` says.

    Returns
    -------
    dict
        ``{"values", "indices", "indptr", "metadata", "scales", "zero_points"}`` in bytes (ints; zero where
        absent).  The total is ``sum(d.values())`` (:func:`weight_total_bytes`).

    Raises
    ------
    ValueError
        Negative sizes, or a block / group / M that does not divide the weight.
    """
    for v, name in ((rows, "rows"), (cols, "cols")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}: expected a non-negative integer, got {v!r}")
    if not isinstance(comp, Compression):
        raise TypeError(f"comp: expected a Compression, got {type(comp).__name__}")
    check_shape(rows, cols, comp)
    w = comp.weights
    out = {"values": 0, "indices": 0, "indptr": 0, "metadata": 0, "scales": 0, "zero_points": 0}
    quant = w in INT_DTYPES
    fmt = comp.format
    if fmt in ("dense", "channel"):
        kept_rows = rows - prune_count(comp.sparsity, rows) if fmt == "channel" else rows
        out["values"] = kept_rows * ((cols + 1) // 2) if w == "int4" else int(kept_rows * cols * ITEMSIZE[w])
        if comp.group_size is not None:
            nscales = kept_rows * (cols // comp.group_size)
        elif quant:
            nscales = kept_rows
        else:
            nscales = 0
        sb = int(ITEMSIZE[comp.scale_dtype])
        out["scales"] = nscales * sb
        if comp.zero_points:
            out["zero_points"] = nscales * sb
    elif fmt == "csr":
        nnz = kept_weight_elements(rows, cols, comp)
        idx = index_itemsize(nnz, cols)
        out["values"] = _packed(nnz, w)
        out["indices"] = nnz * idx
        out["indptr"] = (rows + 1) * idx
        if quant:
            out["scales"] = rows * 4
    elif fmt == "bsr":
        r, c = comp.block
        nblocks = (rows // r) * (cols // c)
        nb = nblocks - prune_count(comp.sparsity, nblocks)
        idx = index_itemsize(nb, cols)
        out["values"] = _packed(nb * r * c, w)
        out["indices"] = nb * idx
        out["indptr"] = (rows // r + 1) * idx
        if quant:
            out["scales"] = nb * 4
    else:  # nm
        kr = cols // comp.m * comp.n
        bits = max(1, math.ceil(math.log2(comp.m)))
        out["values"] = rows * ((kr + 1) // 2) if w == "int4" else int(rows * kr * ITEMSIZE[w])
        out["metadata"] = rows * math.ceil(kr * bits / 8)
        if quant:
            out["scales"] = rows * 4
    return out


def weight_total_bytes(rows: int, cols: int, comp: Compression) -> int:
    """``sum(weight_bytes(rows, cols, comp).values())``."""
    return sum(weight_bytes(rows, cols, comp).values())
