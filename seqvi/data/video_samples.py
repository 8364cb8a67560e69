"""Write generated video (N, T, C, H, W) in [0, 1] as MP4 and GIF files, with PyAV (FFmpeg).

One ``sample_XX.mp4`` (H.264 when the FFmpeg build has an encoder for it,
else MPEG-4 part 2; yuv420p) and one ``sample_XX.gif`` per sequence, frames
upscaled ``UPSCALE`` times (nearest) so 64x64 frames are visible, at the
data's frame rate (``spec.fps`` if present, else 25). With ``truth`` (N, T',
C, H, W), the real frames are shown to the left of the generated ones (the
shorter sequence holds its last frame). Channels are averaged to gray.

``write_rgb_mp4`` writes one colour episode (T, H, W, 3) uint8, e.g. the
frames of a planner's episode in a simulator, atomically (temporary name,
then rename).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from seqvi.data.atomic import atomic_output
from seqvi.errors import SeqviError

UPSCALE = 2
DEFAULT_FPS = 25
MP4_CODECS = ("libx264", "h264", "libopenh264", "mpeg4")


def to_gray_uint8(x: np.ndarray) -> np.ndarray:
    """(N, T, C, H, W) floats in [0, 1] (clipped) -> (N, T, H, W) uint8."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 5:
        raise SeqviError(f"video samples must be (N, T, C, H, W), got shape {x.shape}")
    return np.floor(np.clip(x.mean(2), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def side_by_side(frames: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """(T, H, W) [+ (T', H, W) real] -> (max T, H, W or 2W + 2) with a white 2-pixel divider."""
    if truth is None:
        return frames
    steps = max(len(frames), len(truth))
    hold = lambda a: np.concatenate([a, np.repeat(a[-1:], steps - len(a), 0)]) if len(a) < steps else a
    divider = np.full((steps, frames.shape[1], 2), 255, np.uint8)
    return np.concatenate([hold(truth), divider, hold(frames)], axis=2)


def mp4_codec() -> str:
    import av

    for name in MP4_CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # not in this FFmpeg build
            continue
    raise SeqviError("no MP4 video encoder (H.264 or MPEG-4) in this FFmpeg build of PyAV")


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> Path:
    """(T, H, W) uint8 -> H.264/MPEG-4 MP4 (even sizes, yuv420p)."""
    import av

    frames = _even(frames)
    with atomic_output(path) as handle, av.open(handle, "w", format="mp4") as container:
        stream = container.add_stream(mp4_codec(), rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode())
    return path


def write_rgb_mp4(frames: np.ndarray, path: Path, fps: float, upscale: int = 4) -> Path:
    """(T, H, W, 3) uint8 RGB -> MP4 (H.264 or MPEG-4, yuv420p), ``upscale`` times larger (nearest)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise SeqviError(f"{path}: RGB video frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    frames = frames.repeat(upscale, 1).repeat(upscale, 2)
    frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    path = Path(path)
    with atomic_output(path) as handle, av.open(handle, "w", format="mp4") as container:
        stream = container.add_stream(mp4_codec(), rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return path


def write_gif(frames: np.ndarray, path: Path, fps: int) -> Path:
    """(T, H, W) uint8 -> looping GIF (FFmpeg's gif encoder, 8-bit gray palette)."""
    import av

    with atomic_output(path) as handle, av.open(handle, "w", format="gif", options={"loop": "0"}) as container:
        stream = container.add_stream("gif", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "gray"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="gray")))
        container.mux(stream.encode())
    return path


def write_video(x: np.ndarray, out_dir: Path, spec: Any, truth: np.ndarray | None = None,
                before: Callable[[Path], None] | None = None) -> list[Path]:
    """One MP4 and one GIF per sample of ``x`` (N, T, C, H, W); ``truth`` shown beside it if given."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fps = int(getattr(spec, "fps", DEFAULT_FPS) or DEFAULT_FPS)
    frames = to_gray_uint8(x)
    real = to_gray_uint8(truth) if truth is not None else None
    paths = []
    for i, video in enumerate(frames):
        video = side_by_side(video, real[i] if real is not None else None)
        video = video.repeat(UPSCALE, 1).repeat(UPSCALE, 2)
        for suffix, write in ((".mp4", write_mp4), (".gif", write_gif)):
            path = out_dir / f"sample_{i + 1:02d}{suffix}"
            if before:
                before(path)
            paths.append(write(video, path, fps))
    return paths


def _even(frames: np.ndarray) -> np.ndarray:
    t, h, w = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
