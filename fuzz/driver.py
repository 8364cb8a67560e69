"""Run a fuzz target under atheris (coverage-guided libFuzzer), or a plain mutation loop without it.

A target is ``test_one_input(data: bytes)``; any exception other than
``SeqviError`` propagates and is a crash. Arguments are libFuzzer's, e.g.::

    python fuzz/fuzz_midi.py -max_total_time=60 fuzz/corpus/midi

The corpus folder is created and filled with the target's seeds when it is
empty. Crashing inputs are written to ``fuzz/crashes/`` (libFuzzer's
``-artifact_prefix``); replay one with ``python fuzz/fuzz_midi.py CRASH_FILE``.
The fallback loop (when ``import atheris`` fails) understands
``-max_total_time``, ``-runs`` and ``-seed`` and mutates the corpus at random
(bit flips, byte overwrites with interesting values, inserts, deletes, splices).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

CRASHES = Path(__file__).resolve().parent / "crashes"
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x00, 0x10, 0x20, 0x30, 0x39]


def main(test_one_input: Callable[[bytes], None], seeds: Iterable[bytes]) -> None:
    args = [a for a in sys.argv[1:]]
    paths = [Path(a) for a in args if not a.startswith("-")]
    for folder in paths:
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            folder.mkdir(parents=True, exist_ok=True)
            for seed in seeds:
                (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    CRASHES.mkdir(exist_ok=True)
    if not any(a.startswith("-artifact_prefix=") for a in args):
        args.append(f"-artifact_prefix={CRASHES}/")
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: plain random-mutation fallback (no coverage guidance)", file=sys.stderr)
        _fallback(test_one_input, args, paths)
        return
    atheris.Setup([sys.argv[0], *args], test_one_input)
    atheris.Fuzz()


def _fallback(test_one_input: Callable[[bytes], None], args: list[str], paths: list[Path]) -> None:
    options = dict(a[1:].split("=", 1) for a in args if a.startswith("-") and "=" in a)
    files = [p for folder in paths for p in ([folder] if folder.is_file() else sorted(folder.iterdir()))]
    corpus = [p.read_bytes() for p in files] or [b""]
    if paths and all(p.is_file() for p in paths):  # replay given inputs
        for data in corpus:
            _run(test_one_input, data)
        return
    rng = random.Random(int(options.get("seed", 0)) or None)
    deadline = time.monotonic() + float(options.get("max_total_time", 60))
    runs, limit = 0, int(options.get("runs", -1))
    while time.monotonic() < deadline and runs != limit:
        data = _mutate(rng, rng.choice(corpus), corpus)
        _run(test_one_input, data)
        if rng.random() < 0.01 and len(corpus) < 10_000:
            corpus.append(data)  # keep some mutants to mutate further
        runs += 1
    print(f"fallback: {runs} runs in {float(options.get('max_total_time', 60)):.0f} s, no crash", file=sys.stderr)


def _run(test_one_input: Callable[[bytes], None], data: bytes) -> None:
    try:
        test_one_input(data)
    except Exception:
        path = CRASHES / f"crash-{hashlib.sha1(data).hexdigest()}"
        path.write_bytes(data)
        traceback.print_exc()
        print(f"crash: input written to {path}", file=sys.stderr)
        sys.exit(1)


def _mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if kind == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif kind == 1 and buf:
            buf[pos % len(buf)] = rng.choice(INTERESTING + [rng.randrange(256)])
        elif kind == 2:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3 and buf:
            del buf[pos:pos + rng.randint(1, 16)]
        elif kind == 4:
            other = rng.choice(corpus)
            start = rng.randrange(len(other) + 1)
            buf[pos:pos] = other[start:start + rng.randint(1, 64)]
        elif kind == 5 and len(buf) >= 4:  # an ASCII digit run, for text headers such as SPHERE's
            buf[pos % len(buf)] = ord(rng.choice("0123456789- \n"))
    return bytes(buf)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run a target, e.g. python fuzz/fuzz_midi.py -max_total_time=60 fuzz/corpus/midi")
