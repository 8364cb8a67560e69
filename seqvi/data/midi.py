"""MIDI files <-> binary piano rolls on a beat grid (mido only, no torch).

A piano roll is a ``np.uint8`` array of shape ``(T, 88)``: row t is a time
step, column k is MIDI pitch ``LOW_PITCH + k`` (21 = A0 ... 108 = C8), and a
1 means that key is sounding during the step.

Grid. Time is measured in beats, not seconds: a beat is the quarter note of
the file's header (``ticks_per_beat``), and a step is
``ticks_per_beat / steps_per_beat`` ticks. Tempo changes therefore never move
the grid (``steps_per_beat=1`` is the quarter-note grid of the chorales,
``2`` the eighth-note grid of the other corpora). A note sounding over the
ticks ``[on, off)`` occupies the steps ``[r(on / step), r(off / step))`` with
``r(x) = floor(x + 0.5)`` (round half up, computed in exact integers). T is
the largest end step over all kept notes; a file with no kept note gives
shape ``(0, 88)``.

Events. Ticks are absolute per track (the sum of delta times). Type 0, 1 and
2 files are read the same way: every track's notes are placed on the one
grid. ``note_on`` with velocity 0 is a ``note_off``. Notes are matched per
(track, channel, pitch).

Re-strike policy. A ``note_on`` for a key that is already sounding closes the
sounding note at that tick and starts a new one, so at most one note per key
is open; the next ``note_off`` closes it, and a ``note_off`` with no open
note is ignored. (On the binary grid a re-strike is thus a continuation: the
two notes are adjacent; a duplicate note_on at the same tick leaves a
zero-length note, counted as such.) A note still open at the end of its track is closed
at the track's last tick and counted as ``unterminated``.

Dropped notes are counted in :class:`RollStats`, never silently: channel
index 9 (General MIDI drums, "channel 10"), pitches outside 21..108, and
notes that round to zero steps.

``roll_to_midi`` writes the inverse: a type-1 file, one note per maximal run
of 1s in a column, so ``midi_to_roll(roll_to_midi(roll), same grid)`` gives
back ``roll`` exactly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

from seqvi.data.atomic import atomic_output
from seqvi.errors import DataError

LOW_PITCH = 21
HIGH_PITCH = 108
NUM_KEYS = 88
DRUM_CHANNEL = 9


@dataclass
class RollStats:
    """What happened to the notes of one file while building its roll."""

    notes: int = 0  # notes placed in the roll
    out_of_range: int = 0  # notes outside 21..108, dropped
    drums: int = 0  # notes on channel index 9, dropped
    unterminated: int = 0  # note-ons never switched off, closed at end of track
    zero_length: int = 0  # notes that round to zero steps, dropped


def _round_step(tick: int, steps_per_beat: int, ticks_per_beat: int) -> int:
    """r(tick / step_ticks) with r(x) = floor(x + 0.5), in exact integers."""
    return (2 * tick * steps_per_beat + ticks_per_beat) // (2 * ticks_per_beat)


def _read_midi(source: str | Path | bytes, name: str) -> mido.MidiFile:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            raise DataError(f"{name}: cannot read the file ({e.strerror or e}); check the path") from e
    try:
        midi = mido.MidiFile(file=io.BytesIO(data))
    except Exception as e:  # mido raises OSError, EOFError, ValueError, KeyError, ...
        if isinstance(e, EOFError):
            reason = "the file ends early: truncated or empty"
        else:
            reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{name}: not a readable MIDI file ({reason})") from e
    if midi.ticks_per_beat <= 0:
        raise DataError(
            f"{name}: not a readable MIDI file (division {midi.ticks_per_beat}: "
            "SMPTE or zero timing is not supported, only ticks per beat)"
        )
    return midi


def _track_notes(track, stats: RollStats) -> list[tuple[int, int, int]]:
    """(pitch, on_tick, off_tick) of one track's melodic, in-range notes."""
    notes = []
    open_notes: dict[tuple[int, int], int] = {}  # (channel, pitch) -> on tick
    tick = 0
    for msg in track:
        tick += msg.time
        if msg.type not in ("note_on", "note_off"):
            continue
        key = (msg.channel, msg.note)
        is_on = msg.type == "note_on" and msg.velocity > 0
        if is_on and msg.channel == DRUM_CHANNEL:
            stats.drums += 1
            continue
        if is_on and not LOW_PITCH <= msg.note <= HIGH_PITCH:
            stats.out_of_range += 1
            continue
        if key in open_notes:  # a note_off, or a re-strike closing the sounding note
            notes.append((msg.note, open_notes.pop(key), tick))
        if is_on:
            open_notes[key] = tick
    for (_, pitch), on in open_notes.items():
        stats.unterminated += 1
        notes.append((pitch, on, tick))
    return notes


def midi_to_roll(
    source: str | Path | bytes,
    steps_per_beat: int,
    *,
    max_steps: int = 100_000,
    name: str | None = None,
) -> tuple[np.ndarray, RollStats]:
    """Read a MIDI file (path or bytes) into a ``(T, 88)`` uint8 piano roll.

    Raises DataError for an unreadable file or a roll longer than ``max_steps``.
    """
    if steps_per_beat <= 0:
        raise ValueError(f"steps_per_beat must be positive, got {steps_per_beat}")
    if name is None:
        name = "<bytes>" if isinstance(source, (bytes, bytearray)) else Path(source).name
    midi = _read_midi(source, name)
    tpb = midi.ticks_per_beat

    stats = RollStats()
    spans = []  # (column, start step, end step)
    for track in midi.tracks:
        for pitch, on, off in _track_notes(track, stats):
            start = _round_step(on, steps_per_beat, tpb)
            end = _round_step(off, steps_per_beat, tpb)
            if end <= start:
                stats.zero_length += 1
                continue
            spans.append((pitch - LOW_PITCH, start, end))
    stats.notes = len(spans)

    num_steps = max((end for _, _, end in spans), default=0)
    if num_steps > max_steps:
        raise DataError(
            f"{name}: piano roll would have {num_steps} steps, more than the cap of "
            f"{max_steps}; raise option max_steps to keep this file"
        )
    roll = np.zeros((num_steps, NUM_KEYS), dtype=np.uint8)  # (T, 88)
    for column, start, end in spans:
        roll[start:end, column] = 1
    return roll, stats


def _is_integral(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, (float, np.floating)) and float(value).is_integer()


def notes_to_roll(sequence, *, name: str = "<sequence>") -> np.ndarray:
    """Turn the pickle format (each step a list of MIDI note numbers) into a roll.

    Returns ``(T, 88)`` uint8 with T = len(sequence); a note outside 21..108
    raises DataError naming ``name`` and the step.
    """
    roll = np.zeros((len(sequence), NUM_KEYS), dtype=np.uint8)  # (T, 88)
    for t, step in enumerate(sequence):
        for note in step:
            if not _is_integral(note):
                raise DataError(f"{name}: step {t} holds {note!r}, not a MIDI note number")
            note = int(note)
            if not LOW_PITCH <= note <= HIGH_PITCH:
                raise DataError(
                    f"{name}: step {t} holds note {note}, outside the piano range "
                    f"{LOW_PITCH}..{HIGH_PITCH}; the source file is not a piano corpus"
                )
            roll[t, note - LOW_PITCH] = 1
    return roll


def roll_to_midi(
    roll: np.ndarray,
    path: str | Path,
    steps_per_beat: int,
    *,
    tempo_bpm: float = 100.0,
    ticks_per_beat: int = 480,
    velocity: int = 80,
) -> None:
    """Write a ``(T, 88)`` binary roll as a type-1 MIDI file, atomically.

    Track 0 holds the tempo, track 1 the notes on channel 0: one note per
    maximal run of consecutive 1s of a key. Any nonzero entry counts as 1.
    """
    path = Path(path)
    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[1] != NUM_KEYS:
        raise DataError(f"{path}: cannot write a roll of shape {roll.shape}; expected (T, {NUM_KEYS})")
    if not 0 < steps_per_beat <= ticks_per_beat:
        raise ValueError(f"steps_per_beat must be in 1..ticks_per_beat={ticks_per_beat}, got {steps_per_beat}")
    if not 1 <= velocity <= 127 or tempo_bpm <= 0:
        raise ValueError(f"need velocity in 1..127 and tempo_bpm > 0, got {velocity} and {tempo_bpm}")

    on = (roll != 0).astype(np.int8)
    edges = np.diff(np.pad(on, ((1, 1), (0, 0))), axis=0)  # (T+1, 88): +1 onset, -1 offset
    events = []  # (tick, 0 = off before 1 = on, pitch)
    for step, column in zip(*np.nonzero(edges)):
        tick = (2 * int(step) * ticks_per_beat + steps_per_beat) // (2 * steps_per_beat)
        events.append((tick, int(edges[step, column] > 0), LOW_PITCH + int(column)))
    events.sort()

    tempo_track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm), time=0)])
    note_track = mido.MidiTrack()
    last = 0
    for tick, is_on, pitch in events:
        kind = "note_on" if is_on else "note_off"
        note_track.append(mido.Message(kind, channel=0, note=pitch, velocity=velocity if is_on else 0, time=tick - last))
        last = tick
    midi = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat, tracks=[tempo_track, note_track])

    with atomic_output(path) as f:
        midi.save(file=f)
