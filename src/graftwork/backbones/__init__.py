"""Backbones: pretrained networks with their classifier removed.

- :mod:`.spec` — the facts (``BackboneSpec``, ``WeightsInfo``): a leaf (but for
  ``data.preprocess``, the ``Preprocessing`` it returns), imported by the rest
- :mod:`.catalog` — registered backbones by name, ``create_backbone``
- :mod:`.network` — the ``Backbone`` module (trunk + pooling), its blocks
- :mod:`.weights` — where pretrained weights come from (one ``WeightSource`` per place)
- :mod:`.split` — a frozen prefix and a trainable suffix sharing the backbone's parameters
"""
from __future__ import annotations

from graftwork.backbones.catalog import (create_backbone, get_spec, is_registered,
                                         list_backbones, register_backbone)
from graftwork.backbones.network import Backbone
from graftwork.backbones.spec import BackboneSpec, WeightsInfo

__all__ = ["Backbone", "BackboneSpec", "WeightsInfo", "create_backbone", "get_spec",
           "is_registered", "list_backbones", "register_backbone"]
