"""What every command sets up the same way: quiet third-party logs, optional packages checked before any work
starts, and the TensorBoard writer of the training stages."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from .types import InputError


def quiet_libraries() -> None:
    """transformers' advisory warnings and progress bars off: mmemb prints its own progress."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def require(module: str, what: str, extra: str, alternative: str = "") -> None:
    """Refuse now, before any expensive work, when the optional `module` (of the `extra`) is not installed."""
    if importlib.util.find_spec(module) is None:
        hint = f" (or {alternative})" if alternative else ""
        raise InputError(f"{what} needs the {module} package: pip install 'mmemb[{extra}]'{hint}")


def check_tensorboard(enabled: bool) -> None:
    if enabled:
        require("tensorboard", "run.tensorboard", "train", "set run.tensorboard=false")


def tensorboard_writer(enabled: bool, output: Path, **kwargs):
    """A SummaryWriter under output/tensorboard, or None when run.tensorboard is off."""
    if not enabled:
        return None
    check_tensorboard(True)
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(output) / "tensorboard"), **kwargs)


def deprecated(parser: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """Keep the flag `old` working for one release: it sets `new`'s value and says on stderr to use `new`."""
    dest = new.lstrip("-").replace("-", "_")

    class Alias(argparse.Action):
        def __call__(self, p, namespace, values, option_string=None):
            print(f"mmemb: {old} is deprecated and goes in the next release; use {new}", file=sys.stderr)
            setattr(namespace, dest, values)

    parser.add_argument(old, dest=dest, action=Alias, help=argparse.SUPPRESS, **kwargs)
