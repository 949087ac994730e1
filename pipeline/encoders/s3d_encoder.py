"""Today's S3D / S3D-G trunk (`pipeline/s3d.py`, methods.md 8) behind the visual-encoder interface.

An adapter only: the trunk, its checkpoint loader and its normalisation are `pipeline.s3d`'s
(unchanged). Legend: N clips, (t, h, w) the Mixed_5c grid, K learned tokens.

pooled = Mixed_5c averaged over (t, h, w): what `feat.npy` holds today.
tokens = Mixed_5c averaged over time, one token per (h, w) cell: what `fmap.npy` holds today
(7 x 7 = 49 tokens at 224 px); with TokenLearner on that map, K tokens and pooled = their mean.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from pipeline.encoders.base import EncoderOutput, VisualEncoder
from pipeline.encoders.settings import S3DSettings
from pipeline.encoders.tokenlearner import build_token_learner
from pipeline.s3d import MIXED_5C_DIM, S3D_VARIANTS, load_s3d


def _scale_255(values: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
    return None if values is None else tuple(255.0 * v for v in values)  # type: ignore[return-value]


class S3DEncoder(VisualEncoder):
    """S3D (variant from the settings or detected from the weights) as a VisualEncoder."""

    feature_dim = MIXED_5C_DIM

    def __init__(self, settings: S3DSettings, name: str = "s3d") -> None:
        trunk, info = load_s3d(settings.weights, settings.variant, settings.seed)
        # Record the detected variant, so a saved encoder rebuilds the same trunk.
        settings = dataclasses.replace(settings, variant=info["variant"])
        cfg = S3D_VARIANTS[info["variant"]]
        # S3D's input ranges are on the 0-1 scale; the base class normalises 0-255 pixels.
        # HowTo100M S3D-G takes [0, 1]: mean 0, std 255 (the base default when None).
        super().__init__(settings, _scale_255(cfg.input_mean), _scale_255(cfg.input_std))
        self.name = name
        self.trunk = trunk
        self.s3d_info = info
        self.weights_sha256 = info["weights"]  # sha256 of the file, or "random-init"
        tl = settings.tokenlearner
        if tl.enabled:
            self.token_learner = build_token_learner(
                tl.version, MIXED_5C_DIM, tl.num_tokens, tl.bottleneck_dim, tl.dropout
            )

    def encode(self, x: Tensor, return_tokens: bool) -> EncoderOutput:
        mixed = self.trunk(x)  # [N, 1024, t, h, w]
        n, c, _, h, w = mixed.shape
        if not self.settings.tokenlearner.enabled:
            pooled = mixed.mean(dim=(2, 3, 4))
            tokens = mixed.mean(dim=2).flatten(2).transpose(1, 2) if return_tokens else None
            return EncoderOutput(pooled, tokens, None)  # tokens [N, h*w, 1024]
        cells = mixed.mean(dim=2).flatten(2).transpose(1, 2)  # [N, h*w, 1024]
        tokens = self.token_learner(cells, (h, w))  # [N, K, 1024]
        return EncoderOutput(tokens.mean(dim=1), tokens if return_tokens else None, None)
