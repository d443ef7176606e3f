"""The data layer: finding the images of a folder (:mod:`.discover`), decoding them
(:mod:`.images`), transforms and augmentation (:mod:`.transforms`), the eval preprocessing
(:mod:`.preprocess`) and content digests of files (:mod:`.digests`)."""
from __future__ import annotations

from graftwork.data.discover import (IMAGE_EXTENSIONS, SPLIT_NAMES, Sample, Skipped, Splits,
                                     _stratified_split, discover, list_images)
from graftwork.data.images import ImageDataset, collate_skip, load_image
from graftwork.data.preprocess import Preprocessing
from graftwork.data.transforms import (AUGMENT_POLICIES, AugmentConfig, augment_ops,
                                       eval_transform, train_transform)

__all__ = [
    "IMAGE_EXTENSIONS", "SPLIT_NAMES", "Sample", "Splits", "Skipped", "discover", "list_images",
    "_stratified_split", "load_image", "ImageDataset", "collate_skip", "eval_transform",
    "train_transform", "AugmentConfig", "augment_ops", "AUGMENT_POLICIES", "Preprocessing",
]
