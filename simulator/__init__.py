"""memwall.simulator — a roofline / memory-wall model of what compression buys on a device.

Device profiles are data (``devices/*.toml``), workloads are layers and models, and every estimate is an
explained record (ops, bytes per memory level, time per roof, bound, energy by component).  This package
depends on NumPy only; the kernels are imported lazily by the calibration, benchmark and end-to-end paths.
"""
