"""The model: directory format, loading and serving backends, export, quantisation, training, scoring.

The only package that imports torch and transformers (the import contract in pyproject.toml checks
it): ``classifier/`` serves with it and ``retrain/`` trains with it, and neither imports the other.
Importing ``model`` itself is cheap; the heavy imports happen in the submodules that need them.
"""

from __future__ import annotations


def quiet_transformers() -> None:
    """Errors only from transformers, and no per-model "Loading weights" bars: CLI output stays readable."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def torch_info() -> dict[str, str | int]:
    """torch's version and intra-op threads, for reports that say what machine measured them."""
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def has_accelerator() -> bool:
    """True when training would run on CUDA (``TrainSpec.device`` defaults to it)."""
    import torch

    return torch.cuda.is_available()
