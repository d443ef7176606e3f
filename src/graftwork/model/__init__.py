"""The network a classifier runs: backbone + head (:mod:`.graft`, with the BatchNorm policy),
heads (:mod:`.heads`), per-layer summaries (:mod:`.summary`), BatchNorm doctor and
recalibration (:mod:`.bn`), BN folding while fine-tuning (:mod:`.fold`), temperature scaling
and test-time augmentation (:mod:`.calibration`)."""
from __future__ import annotations

from graftwork.model.graft import (GraftModel, bn_layers, freeze_backbone, parameter_counts,
                                   resolve_unfreeze)

__all__ = ["GraftModel", "freeze_backbone", "parameter_counts", "bn_layers", "resolve_unfreeze"]
