"""Build a TIMIT-shaped stand-in of real recorded speech from Debian's Asterisk prompts.

Debian's ``asterisk-core-sounds-{es,fr,it,ru}-g722`` packages hold studio recordings of one
professional speaker per language (16 kHz G.722, a few hundred prompts each) under
``/usr/share/asterisk/sounds/<lang>_<REGION>_<sex>_<Name>/``. This script decodes every prompt
with ffmpeg (the ``imageio-ffmpeg`` wheel's binary, else ``ffmpeg`` on PATH) into 16 kHz, 16-bit,
mono RIFF WAV and lays them out as TIMIT does::

    OUT/TIMIT/TRAIN/DR1/<speaker>/<prompt>.WAV
    OUT/TIMIT/TEST/DR1/<speaker>/<prompt>.WAV

Each voice is one speaker folder (``F``/``M`` + 4 letters, TIMIT's naming, e.g. ``FALLI0``). The
split is **by speaker**, as TIMIT's is: the test speakers are never heard in training
(``--test-speakers``, default 1 of the 4; ``seqvi preprocess timit`` then carves validation out
of TRAIN). Prompts shorter than ``--min-seconds`` (beeps, single digits) are left out. Pure tones
(``beep``, ``*-tone*``) are left out by name. The output is the same for the same input: files
are visited in sorted order and ffmpeg is asked for bit-exact PCM.

    python scripts/asterisk_timit.py OUT [--sounds /usr/share/asterisk/sounds] [--test-speakers 1]
    seqvi preprocess timit --source OUT
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

SOUNDS = Path("/usr/share/asterisk/sounds")
VOICE = re.compile(r"^[a-z]{2}_[A-Z]{2}_([fm])_([A-Za-z]+)$")     # es_MX_f_Allison
TONES = re.compile(r"(beep|tone|silence)", re.IGNORECASE)


def ffmpeg() -> str:
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        found = shutil.which("ffmpeg")
        if not found:
            raise SystemExit("asterisk_timit: no ffmpeg: pip install imageio-ffmpeg (or install ffmpeg)")
        return found


def voices(sounds: Path) -> list[tuple[str, Path]]:
    """(TIMIT speaker id, folder) for each voice folder, sorted by folder name."""
    found = []
    for folder in sorted(p for p in sounds.iterdir() if p.is_dir() and not p.is_symlink()):
        m = VOICE.match(folder.name)
        if m and any(folder.rglob("*.g722")):
            found.append((f"{m.group(1).upper()}{m.group(2)[:4].upper()}0", folder))
    return found


def decode(exe: str, source: Path, target: Path) -> float:
    """One G.722 prompt to 16 kHz 16-bit mono WAV, written whole or not at all; its seconds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part.wav")
    os.close(fd)
    try:
        subprocess.run([exe, "-nostdin", "-loglevel", "error", "-y", "-f", "g722", "-i", str(source),
                        "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", "-bitexact", "-f", "wav", tmp],
                       check=True, capture_output=True)
        with wave.open(tmp) as w:
            seconds = w.getnframes() / w.getframerate()
        os.replace(tmp, target)
        return seconds
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(out: Path, sounds: Path = SOUNDS, test_speakers: int = 1, min_seconds: float = 1.0) -> dict[str, list[str]]:
    """Write the stand-in under ``out/TIMIT``; the speakers of each split."""
    found = voices(sounds)
    if len(found) <= test_speakers:
        raise SystemExit(f"asterisk_timit: {len(found)} voice folders in {sounds}; need more than "
                         f"{test_speakers} (install asterisk-core-sounds-{{es,fr,it,ru}}-g722)")
    exe = ffmpeg()
    split = {"TRAIN": [s for s, _ in found[:-test_speakers]], "TEST": [s for s, _ in found[-test_speakers:]]}
    for name, speakers in split.items():
        for speaker, folder in ((s, f) for s, f in found if s in speakers):
            kept = 0
            for prompt in sorted(folder.rglob("*.g722")):
                if TONES.search(prompt.stem):
                    continue
                stem = "_".join(prompt.relative_to(folder).with_suffix("").parts).upper()
                target = out / "TIMIT" / name / "DR1" / speaker / f"{stem}.WAV"
                if decode(exe, prompt, target) < min_seconds:
                    target.unlink()
                    continue
                kept += 1
            print(f"{name:5s} {speaker}: {kept} prompts from {folder}")
    return split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sounds", type=Path, default=SOUNDS)
    parser.add_argument("--test-speakers", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    if not args.sounds.is_dir():
        print(f"asterisk_timit: {args.sounds}: not a folder (install asterisk-core-sounds-{{es,fr,it,ru}}-g722)",
              file=sys.stderr)
        return 2
    split = build(args.out, args.sounds, args.test_speakers, args.min_seconds)
    print(f"wrote {args.out / 'TIMIT'}: train speakers {', '.join(split['TRAIN'])}; test {', '.join(split['TEST'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
