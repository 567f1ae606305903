"""dplbench: benchmark and ablate prompt learning for CLIP-style vision-language models.

Importing this package is cheap: torch, open_clip, ray and mlflow are imported only when used.
"""

__version__ = "0.1.0"
