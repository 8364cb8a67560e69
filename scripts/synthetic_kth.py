"""A KTH-shaped synthetic video set: figures that walk, jog, run and box, in KTH's published layout.

    python scripts/synthetic_kth.py OUT [--persons 25] [--scenarios 3] [--frames 60] [--seed 0]
    seqvi preprocess kth --source OUT

KTH itself cannot be downloaded here; this writes what its adapter reads:
``OUT/<action>/personXX_<action>_dY_uncomp.avi`` (160x120 gray, 25 fps,
lossless FFV1) and ``OUT/00sequences.txt`` with two frame ranges per video,
so the official person split applies. Each video is one figure (a head, a
body, two legs, two arms) on a scenario's textured background:

    walking / jogging / running: the figure crosses the frame at 1.5 / 3 / 5 px per frame,
                                 legs swinging at the gait's rate, from a random side and height
    boxing:                      the figure stands, its arms punching at a random rate and phase

The person sets the figure's gray level and size; the scenario the
background. Every random choice comes from ``--seed``, so the set is the
same on every machine. It is a test bed for video models (the README's SVG
row), not a stand-in for KTH's numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np

H, W = 120, 160
ACTIONS = {"walking": 1.5, "jogging": 3.0, "running": 5.0, "boxing": 0.0}   # px per frame


def _disc(img: np.ndarray, cy: float, cx: float, r: float, value: int) -> None:
    y, x = np.ogrid[:H, :W]
    img[(y - cy) ** 2 + (x - cx) ** 2 <= r * r] = value


def _limb(img: np.ndarray, y0: float, x0: float, y1: float, x1: float, width: float, value: int) -> None:
    y, x = np.ogrid[:H, :W]
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((y - y0) * dy + (x - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
    img[(y - y0 - t * dy) ** 2 + (x - x0 - t * dx) ** 2 <= width * width] = value


def figure(img: np.ndarray, cx: float, top: float, size: float, value: int, leg: float, arm: float,
           facing: int) -> None:
    """Draw one figure: ``leg`` in [-1, 1] swings the legs, ``arm`` in [0, 1] extends the front arm."""
    head = 0.12 * size
    _disc(img, top + head, cx, head, value)
    hip = top + 0.6 * size
    _limb(img, top + 2 * head, cx, hip, cx, 0.07 * size, value)                      # body
    for side in (-1, 1):
        _limb(img, hip, cx, top + size, cx + side * leg * 0.25 * size, 0.05 * size, value)
    shoulder = top + 2.4 * head
    _limb(img, shoulder, cx, shoulder + 0.1 * size, cx + facing * (0.12 + 0.3 * arm) * size, 0.04 * size, value)
    _limb(img, shoulder, cx, shoulder + 0.25 * size, cx - facing * 0.1 * size, 0.04 * size, value)


def video(action: str, person: int, scenario: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(frames, 120, 160) uint8."""
    texture = np.random.default_rng(1000 + scenario).normal(0, 6, (H, W))
    background = np.clip(120 + 25 * scenario + texture, 0, 255).astype(np.uint8)
    value = 20 + (37 * person) % 80
    size = 50 + (person % 5) * 5
    top = rng.uniform(10, H - size - 5)
    speed, facing = ACTIONS[action], int(rng.choice([-1, 1]))
    x0 = rng.uniform(20, W - 20) if speed == 0 else (-10 if facing > 0 else W + 10) + facing * rng.uniform(0, 30)
    rate, phase = rng.uniform(0.15, 0.35) * (1 + speed / 3), rng.uniform(0, 2 * np.pi)
    out = np.empty((frames, H, W), np.uint8)
    for t in range(frames):
        img = background.copy()
        cx = x0 + facing * speed * t
        if speed == 0:
            figure(img, cx, top, size, value, 0.3, 0.5 + 0.5 * np.sin(rate * t + phase), facing)
        else:
            figure(img, ((cx + 20) % (W + 40)) - 20, top, size, value, np.sin(rate * t + phase), 0.2, facing)
        out[t] = img
    return out


def write_avi(path: Path, frames: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "gray"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--persons", type=int, default=25)
    parser.add_argument("--scenarios", type=int, default=3)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.persons <= 25 or not 1 <= args.scenarios <= 4 or args.frames < 2:
        parser.error("--persons 1..25, --scenarios 1..4, --frames >= 2")
    rng = np.random.default_rng(args.seed)
    half = args.frames // 2
    lines = []
    for person in range(1, args.persons + 1):
        for action in ACTIONS:
            for scenario in range(1, args.scenarios + 1):
                name = f"person{person:02d}_{action}_d{scenario}"
                write_avi(args.out / action / f"{name}_uncomp.avi", video(action, person, scenario, args.frames, rng))
                lines.append(f"{name}\t\tframes\t1-{half}, {half + 1}-{args.frames}")
    (args.out / "00sequences.txt").write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} videos in {args.out}")


if __name__ == "__main__":
    main()
