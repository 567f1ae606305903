"""Prompt-capable frozen CLIP backbones on open_clip (see docs/architecture.md, "Backbone").

``create_backbone(cfg, device)`` builds a :class:`Backbone` from a backbone config; ``Backbone.from_model`` wraps an
open_clip CLIP instance directly. This package imports torch and open_clip: import it lazily.
"""

from __future__ import annotations

from dplbench.backbone.core import Backbone
from dplbench.backbone.loading import BackboneConfig, create_backbone
from dplbench.backbone.precision import PRECISION_MODES, Precision
from dplbench.backbone.towers import TowerOutput, splice_context

__all__ = ["PRECISION_MODES", "Backbone", "BackboneConfig", "Precision", "TowerOutput", "create_backbone",
           "splice_context"]
