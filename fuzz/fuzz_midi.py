"""Fuzz target: MIDI bytes -> piano roll (``seqvi.data.midi.midi_to_roll``).

Any exception other than ``SeqviError`` is a crash, and so is a roll that
breaks the contract: shape ``(T, 88)`` uint8 with ``T <= max_steps``.

    python fuzz/fuzz_midi.py -max_total_time=60 fuzz/corpus/midi
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from driver import main  # noqa: E402

try:
    import atheris

    with atheris.instrument_imports():
        import mido
        from seqvi.data import midi
except ImportError:
    import mido
    from seqvi.data import midi

from seqvi.errors import SeqviError  # noqa: E402

MAX_STEPS = 20_000


def test_one_input(data: bytes) -> None:
    steps_per_beat = 1 + (data[0] % 4 if data else 0)
    try:
        roll, stats = midi.midi_to_roll(data, steps_per_beat, max_steps=MAX_STEPS, name="fuzz.mid")
    except SeqviError:
        return
    assert roll.ndim == 2 and roll.shape[1] == midi.NUM_KEYS and roll.dtype.name == "uint8", roll.shape
    assert len(roll) <= MAX_STEPS and stats.notes >= 0


def seeds() -> list[bytes]:
    """Small valid files: type 0 and 1, running status, drums, out-of-range, tempo, unterminated notes."""
    out = []
    for kind, tpb in ((0, 96), (1, 480), (1, 1)):
        midi_file = mido.MidiFile(type=kind, ticks_per_beat=tpb)
        track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000, time=0)])
        for i, pitch in enumerate((60, 64, 67, 12, 120)):
            track.append(mido.Message("note_on", note=pitch, velocity=70, channel=i % 10, time=tpb * i))
            track.append(mido.Message("note_off", note=pitch, channel=i % 10, time=tpb))
        track.append(mido.Message("note_on", note=72, velocity=70, time=0))  # never switched off
        midi_file.tracks.append(track)
        if kind == 1:
            midi_file.tracks.append(mido.MidiTrack([mido.Message("note_on", note=48, velocity=0, time=5)]))
        buf = io.BytesIO()
        midi_file.save(file=buf)
        out.append(buf.getvalue())
    return out


if __name__ == "__main__":
    main(test_one_input, seeds())
