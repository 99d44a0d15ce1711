"""Fine-tuning SAM3: matcher, losses, optimiser, the accelerate training loop.

* :func:`train` / :class:`Trainer` - run a :class:`TrainingConfig` (``medsam3 train``);
* :func:`load_config` - a training YAML -> :class:`TrainingConfig`;
* :class:`SetCriterion`, :class:`LossWeights`, :class:`RowTarget` - SAM3's losses
  (``LossWeights.meta_sam3()``: Meta's configuration, see docs/losses.md);
* :func:`hungarian_match`, :func:`one_to_many_match`, :func:`quality_one_to_many_match` -
  query-to-instance assignment;
* :func:`build_optimizer`, :func:`build_scheduler` - AdamW groups with layer decay and the
  inverse-square-root schedule;
* :class:`DetectorForTraining` - ``Sam3Model`` with every decoder layer's outputs.

Names are imported lazily, so ``import medsam3.train`` stays light for the CLI.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "train": "medsam3.train.loop",
    "Trainer": "medsam3.train.loop",
    "TrainingError": "medsam3.train.loop",
    "TrainingResult": "medsam3.train.loop",
    "TrainingConfig": "medsam3.train.config",
    "load_config": "medsam3.train.config",
    "config_from_dict": "medsam3.train.config",
    "SetCriterion": "medsam3.train.losses",
    "LossWeights": "medsam3.train.losses",
    "RowTarget": "medsam3.train.losses",
    "hungarian_match": "medsam3.train.matcher",
    "one_to_many_match": "medsam3.train.matcher",
    "quality_one_to_many_match": "medsam3.train.matcher",
    "MatchCosts": "medsam3.train.matcher",
    "build_optimizer": "medsam3.train.optim",
    "build_scheduler": "medsam3.train.optim",
    "InverseSqrtSchedule": "medsam3.train.optim",
    "DetectorForTraining": "medsam3.train.model",
    "enable_activation_checkpointing": "medsam3.train.model",
    "apply_lora": "medsam3.train.lora",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - computed once, a list


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medsam3.train' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
