"""The ``memwall`` command line.

Subcommands live in small modules (``_cli_*.py``), each with a ``register(subparsers)`` function, so the
simulator, kernel and calibration commands stay apart.  Heavy imports (Numba, matplotlib) happen inside the
handlers that need them: ``memwall estimate`` must answer in well under a second.

Errors the user can fix (bad names, impossible configurations, malformed files) print one line on stderr
and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Short OpenBLAS spin-wait (why: memwall.kernels.cpu.THREAD_ENV_DEFAULTS).
# Set before NumPy loads OpenBLAS; an explicit setting by the user wins.
from memwall.kernels.cpu import apply_thread_env_defaults  # noqa: E402 - stdlib-only module

apply_thread_env_defaults()

#: Modules that contribute subcommands (each defines ``register(subparsers)``).
_COMMAND_MODULES = ("_cli_kernels", "_cli_sim", "_cli_calib", "_cli_e2e", "_cli_plan")


class UsageError(Exception):
    """A user error that the CLI reports in one line with exit status 2."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memwall")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memwall",
        description="Compressed-NN kernels and a memory-wall simulator: what does compression buy on that hardware?",
    )
    parser.add_argument("--version", action="version", version=f"memwall {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        rc = args.func(args)
    except (UsageError, ValueError, TypeError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"memwall {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `memwall devices | head`
        return 0
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
