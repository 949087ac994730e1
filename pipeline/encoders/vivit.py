"""ViViT encoders (Arnab et al., ICCV 2021; scenic `projects/vivit/model.py`): joint space-time
attention (model 1, scenic `ViViT` spacetime / HF `VivitModel`) and the factorised encoder
(model 2, scenic `SpaceTimeViViT`), with TokenLearner, ToMe, SPT and LSA as options.

Legend: N clips, F frames, S x S frame size, (t, h, w) token grid after the tubelet embedding,
D width, L tokens of a sequence, K learned tokens per frame.

Joint: tubelet tokens [N, t*h*w, D] (+ class token, then learned position embeddings over all of
them, as scenic / HF) -> blocks -> LayerNorm. Pooled = class token, or the mean of the tokens
(size-weighted under ToMe, as ToMe's MAE patch pools). Tokens = the sequence without the class token.

Factorised: a spatial encoder runs on each of the t frames (its own class token and position
embeddings, shared across time), pools each frame; a temporal encoder runs over the t frame features.
Its tokens are the t temporal outputs.

TokenLearner (methods.md 4.4, scenic `EncoderMod` / `EncoderModFuser`): before block
round(placement * depth), each frame's h*w tokens become K tokens; with `fuser` every later block
runs on the K tokens and TokenFuser maps them back (plus the residual). In the factorised model it
sits in the spatial encoder. ToMe (5.1): r merges per block, across the clip or within each frame.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor, nn

from pipeline.encoders.attention import ViTBlock
from pipeline.encoders.base import EncoderOutput, VisualEncoder
from pipeline.encoders.settings import ViViTFactorisedSettings, ViViTSettings
from pipeline.encoders.spt import ShiftedPatchEmbed
from pipeline.encoders.tokenlearner import LN_EPS, TokenFuser, build_token_learner
from pipeline.encoders.tome import merge_tokens


def _blocks(s: ViViTSettings, depth: int) -> nn.ModuleList:
    """`depth` blocks with scenic's stochastic-depth schedule lyr / (depth - 1) * rate."""
    return nn.ModuleList(
        ViTBlock(
            s.hidden_dim,
            s.num_heads,
            s.mlp_dim,
            s.qkv_bias,
            s.dropout,
            s.attention_dropout,
            s.drop_path * i / max(depth - 1, 1),
            s.lsa,
        )
        for i in range(depth)
    )


class ViViTEncoder(VisualEncoder):
    """Joint space-time ViViT (settings: ViViTSettings) or factorised (ViViTFactorisedSettings)."""

    def __init__(self, settings: ViViTSettings, name: str = "vivit") -> None:
        super().__init__(settings, settings.mean, settings.std)
        s = settings
        self.name = name
        self.factorised = isinstance(s, ViViTFactorisedSettings)
        self.feature_dim = s.hidden_dim
        self.grid = s.grid
        t, h, w = self.grid
        dim = s.hidden_dim
        if s.spt:
            self.embed: nn.Module = ShiftedPatchEmbed(3, dim, s.tubelet)
        else:
            self.embed = nn.Conv3d(3, dim, kernel_size=s.tubelet, stride=s.tubelet)
            fan_in = 3 * math.prod(s.tubelet)  # Flax Conv default init: lecun_normal
            std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
            nn.init.trunc_normal_(self.embed.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(self.embed.bias)
        self.has_cls = s.pool == "cls"
        c = int(self.has_cls)
        spatial_len = h * w if self.factorised else t * h * w
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if self.has_cls else None
        self.pos = nn.Parameter(torch.randn(1, c + spatial_len, dim) * 0.02)  # BERT-style init
        self.dropout = nn.Dropout(s.dropout)
        self.blocks = _blocks(s, s.num_layers)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        if self.factorised:
            assert isinstance(s, ViViTFactorisedSettings)
            self.temporal_cls = nn.Parameter(torch.zeros(1, 1, dim)) if self.has_cls else None
            self.temporal_pos = nn.Parameter(torch.randn(1, c + t, dim) * 0.02)
            self.temporal_blocks = _blocks(s, s.temporal_layers)
            self.temporal_norm = nn.LayerNorm(dim, eps=LN_EPS)
        tl = s.tokenlearner
        self.tl_at = round(tl.placement * s.num_layers) if tl.enabled else -1
        learner = partial(build_token_learner, tl.version, dim, tl.num_tokens, tl.bottleneck_dim)
        if tl.enabled and not tl.fuser:  # scenic EncoderMod: one TokenLearner
            self.token_learner = learner(tl.dropout)
        elif tl.enabled:  # scenic EncoderModFuser: a TokenLearner + TokenFuser per later block
            later = s.num_layers - self.tl_at
            self.token_learners = nn.ModuleList(learner(tl.dropout) for _ in range(later))
            self.fusers = nn.ModuleList(
                TokenFuser(dim, tl.num_tokens, tl.bottleneck_dim, tl.dropout) for _ in range(later)
            )

    # --- pieces ------------------------------------------------------------------------------

    def embed_tubelets(self, x: Tensor) -> Tensor:
        """Normalised clips [N, 3, F, S, S] -> tubelet tokens [N, t, h*w, D]."""
        if tuple(x.shape[2:]) != (self.settings.frames, self.settings.size, self.settings.size):
            raise ValueError(
                f"{self.name}: expects clips of {self.settings.frames} x {self.settings.size} x "
                f"{self.settings.size} (settings frames, size), got {tuple(x.shape[2:])}"
            )
        if self.settings.spt:
            tokens = self.embed(x)  # [N, t, h, w, D]
        else:
            tokens = self.embed(x).permute(0, 2, 3, 4, 1)  # [N, D, t, h, w] -> [N, t, h, w, D]
        n, t, h, w, d = tokens.shape
        return tokens.reshape(n, t, h * w, d)

    def _with_cls(self, x: Tensor, cls: Tensor | None, pos: Tensor) -> Tensor:
        """[N, L, D] -> [N, c + L, D]: class token first (if any), then position embeddings."""
        if cls is not None:
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + pos)

    def _merge_fn(self, frames: int):
        """ToMe's merge between attention and MLP (None when ToMe is off)."""
        tome = self.settings.tome
        if not tome.enabled:
            return None

        def merge(x: Tensor, sizes: Tensor | None, metric: Tensor) -> tuple[Tensor, Tensor]:
            assert sizes is not None
            return merge_tokens(x, sizes, metric, tome.r, self.has_cls, frames)

        return merge

    def run_blocks(
        self, x: Tensor, frames: int, grid: tuple[int, int]
    ) -> tuple[Tensor, Tensor | None]:
        """The (spatial or joint) encoder body on x [N, c + frames*h*w, D] -> (x normed, sizes).

        `frames` time slices share the sequence (t for joint, 1 for the factorised spatial
        encoder); TokenLearner and frame-scoped ToMe work per slice.
        """
        tome = self.settings.tome
        sizes = None
        if tome.enabled:
            sizes = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        merge = self._merge_fn(frames if tome.scope == "frame" else 1)
        block = partial(_run_block, merge=merge, proportional=tome.proportional_attention)
        fuse = self.settings.tokenlearner.fuser
        for i, blk in enumerate(self.blocks):
            if i == self.tl_at and not fuse:
                x = self._learn_tokens(self.token_learner, x, frames, grid)
            if fuse and i >= self.tl_at >= 0:
                j = i - self.tl_at
                n, length, d = x.shape
                residual = x.reshape(n * frames, length // frames, d)  # [N*frames, hw, D]
                y = self._learn_tokens(self.token_learners[j], x, frames, grid)  # [N, frames*K, D]
                y, _ = blk(y)
                y = y.reshape(n * frames, -1, d)
                x = (self.fusers[j](y, residual) + residual).reshape(n, length, d)
            else:
                x, sizes = block(blk, x, sizes)
        if self.tl_at == len(self.blocks):  # placement 1.0: on the output of the last block
            x = self._learn_tokens(self.token_learner, x, frames, grid)
        return self.norm(x), sizes

    @staticmethod
    def _learn_tokens(module: nn.Module, x: Tensor, frames: int, grid: tuple[int, int]) -> Tensor:
        """x [N, frames*h*w, D] -> [N, frames*K, D]: K tokens learned from each frame's map."""
        n, length, d = x.shape
        learned = module(x.reshape(n * frames, length // frames, d), grid)  # [N*frames, K, D]
        return learned.reshape(n, -1, d)

    def _pool(self, x: Tensor, sizes: Tensor | None) -> Tensor:
        """[N, L, D] -> [N, D]: class token, or the (size-weighted) mean of the tokens."""
        if self.has_cls:
            return x[:, 0]
        if sizes is None:
            return x.mean(dim=1)
        weights = sizes.to(x.dtype)[..., None]
        return (x * weights).sum(1) / weights.sum(1)

    # --- the interface -------------------------------------------------------------------------

    def encode(self, x: Tensor, return_tokens: bool) -> EncoderOutput:
        tokens = self.embed_tubelets(x)  # [N, t, hw, D]
        n, t, hw, d = tokens.shape
        grid = self.grid[1:]
        c = int(self.has_cls)
        if not self.factorised:
            seq = self._with_cls(tokens.reshape(n, t * hw, d), self.cls, self.pos)
            seq, sizes = self.run_blocks(seq, t, grid)  # [N, c + L, D]
            out_tokens = seq[:, c:]
            out_sizes = None if sizes is None else sizes[:, c:]
            return EncoderOutput(self._pool(seq, sizes), out_tokens, out_sizes)
        seq = self._with_cls(tokens.reshape(n * t, hw, d), self.cls, self.pos)
        seq, sizes = self.run_blocks(seq, 1, grid)  # [N*t, c + L', D]
        frame_features = self._pool(seq, sizes).reshape(n, t, d)  # [N, t, D]
        seq = self._with_cls(frame_features, self.temporal_cls, self.temporal_pos)
        for blk in self.temporal_blocks:
            seq, _ = blk(seq)
        seq = self.temporal_norm(seq)  # [N, c + t, D]
        return EncoderOutput(self._pool(seq, None), seq[:, c:], None)


def _run_block(
    blk: ViTBlock, x: Tensor, sizes: Tensor | None, merge, proportional: bool
) -> tuple[Tensor, Tensor | None]:
    return blk(x, sizes, merge=merge, proportional=proportional and sizes is not None)
