"""Video decoding for the frame corpora: any container FFmpeg reads -> grayscale uint8 frames.

    decode_gray(source, name, size=(64, 64))   -> (T, h, w) uint8
    resize_area(frames (T, H, W), (h, w))      -> (T, h, w) uint8

Decoding uses PyAV (FFmpeg). Each frame is converted to 8-bit gray by
FFmpeg's scaler (luma, expanded to the full 0-255 range, as the usual
``ffmpeg -> PNG -> grayscale`` pipelines of SVG and AVF do), then resized by
area averaging: output pixel ``(i, j)`` is the mean of the input over the
rectangle it covers, ``[i*H/h, (i+1)*H/h) x [j*W/w, (j+1)*W/w)``, partly covered
input pixels weighted by the covered fraction. The resize is separable::

    out = A_h @ frame @ A_w^T,   A (n_out, n_in),  A[i, k] = |[k, k+1) ∩ [i*s, (i+1)*s)| / s,  s = n_in / n_out

which is exact for non-integer factors such as KTH's 160x120 -> 64x64
(s = 2.5 across, 1.875 down) and equals block averaging for integer ones.
Values are rounded half up to uint8. Frames are resized as they are decoded,
so memory holds one video at the output size only.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

from seqvi.errors import DataError

Source = Union[str, Path, bytes, BinaryIO]
CHUNK = 64  # frames resized together


@lru_cache(maxsize=16)
def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """A (n_out, n_in) with rows summing to 1: the area-averaging weights of a 1-D resize."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    scale = n_in / n_out
    lo = np.arange(n_out)[:, None] * scale            # (n_out, 1) start of each output cell
    k = np.arange(n_in)[None, :]                       # (1, n_in) input pixel [k, k+1)
    overlap = np.clip(np.minimum(k + 1, lo + scale) - np.maximum(k, lo), 0.0, None)
    weights = overlap / scale
    weights.setflags(write=False)
    return weights


def resize_area(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, H, W) gray frames -> (T, h, w) uint8 by area averaging."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"expected (T, H, W) frames, got shape {frames.shape}")
    t, height, width = frames.shape
    rows = area_weights(height, size[0])               # (h, H)
    cols = area_weights(width, size[1])                # (w, W)
    across = frames.reshape(t * height, width).astype(np.float64) @ cols.T     # one BLAS call: (T*H, w)
    out = rows @ across.reshape(t, height, size[1])    # (T, h, w)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def decode_gray(source: Source, name: str, size: tuple[int, int] | None = (64, 64),
                max_frames: int | None = None) -> np.ndarray:
    """Decode every frame of the first video stream of ``source`` to (T, h, w) uint8.

    ``size=None`` keeps the native resolution. Raises DataError naming
    ``name`` when the file cannot be opened or decoded, holds no video
    stream or no frame, or has more than ``max_frames`` frames.
    """
    import av  # heavy; only the data commands need it
    from av.video.reformatter import VideoReformatter

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif isinstance(source, Path):
        source = str(source)
    chunks: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    count = 0
    to_gray = VideoReformatter()  # reused: one scaler context per video, not per frame

    def flush() -> None:
        if pending:
            stack = np.stack(pending)
            chunks.append(stack if size is None else resize_area(stack, size))
            pending.clear()

    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise DataError(f"{name}: no video stream")
            for frame in container.decode(video=0):
                count += 1
                if max_frames is not None and count > max_frames:
                    raise DataError(f"{name}: more than {max_frames} frames (raise --max-steps to allow it)")
                pending.append(to_gray.reformat(frame, format="gray").to_ndarray())
                if len(pending) == CHUNK:
                    flush()
            flush()
    except DataError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{name}: not a decodable video ({first})") from None
    if count == 0:
        raise DataError(f"{name}: no video frames")
    return np.concatenate(chunks)
