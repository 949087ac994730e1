"""Clip frames kept in the shards (`frames.npy`) so that a model can train its encoder end to end.

Prep writes them from the frames it already decoded for the feature extractor (the source video
is never decoded twice), and the loader reads them back as they are: uint8, no decoding, no
resizing. The one rule that turns decoded clips into stored frames lives here, in the library.

Legend: n clips, F frames per clip as decoded (video.fps x video.clip_seconds), F' frames kept,
S the decoded side (video.size, a centre-cropped square), s the stored side.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.encoders.base import sample_frame_indices

RESIZE = "bilinear, antialiased (torch interpolate, as VisualEncoder.preprocess), rounded to uint8"
SAMPLING = "uniform, segment centres (pipeline.encoders.base.sample_frame_indices)"


def stored_frames(frames: np.ndarray, per_clip: int, size: int) -> np.ndarray:
    """uint8 [n, F, S, S, 3] decoded clips -> uint8 [n, F', s, s, 3] frames to store.

    F' = `per_clip` frames at the centres of F' equal segments of the clip (the rule every encoder
    samples its own input with), 0 keeps all F; s = `size` (bilinear with antialiasing, the
    encoders' own resize), 0 keeps S. Deterministic: the same decoded clip gives the same bytes.
    With per_clip in {0, F} and size in {0, S} the result is exactly the input, so an encoder
    fed the stored frames sees what the prep-time extractor saw.
    """
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [n, F, S, S, 3], got {frames.dtype} {frames.shape}")
    n, num_frames, height, width, _ = frames.shape
    if per_clip and per_clip != num_frames:
        frames = frames[:, sample_frame_indices(num_frames, per_clip).numpy()]
    if not size or (height, width) == (size, size):
        return np.ascontiguousarray(frames)
    kept = frames.shape[1]
    x = torch.from_numpy(np.ascontiguousarray(frames)).reshape(n * kept, height, width, 3)
    x = x.permute(0, 3, 1, 2).float()  # [n*F', 3, S, S]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return x.reshape(n, kept, size, size, 3).contiguous().numpy()
