"""MIDI <-> piano roll: real MIDI files built with mido, rolls checked by hand."""

import io

import mido
import numpy as np
import pytest

from seqvi.data.midi import LOW_PITCH, NUM_KEYS, RollStats, midi_to_roll, notes_to_roll, roll_to_midi
from seqvi.errors import DataError


def on(tick, pitch, channel=0, velocity=64):
    return tick, mido.Message("note_on", note=pitch, channel=channel, velocity=velocity)


def off(tick, pitch, channel=0):
    return tick, mido.Message("note_off", note=pitch, channel=channel)


def tempo(tick, bpm):
    return tick, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))


def end(tick):
    return tick, mido.MetaMessage("end_of_track")


def midi_bytes(*tracks, tpb=480, type=1):
    """A standard MIDI file from tracks of (absolute tick, message); same-tick order kept."""
    midi = mido.MidiFile(type=type, ticks_per_beat=tpb)
    for events in tracks:
        track, last = mido.MidiTrack(), 0
        for tick, msg in sorted(events, key=lambda e: e[0]):
            track.append(msg.copy(time=tick - last))
            last = tick
        midi.tracks.append(track)
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue()


def roll_of(num_steps, notes):
    """Expected roll from {pitch: [(start, end), ...]} in steps."""
    roll = np.zeros((num_steps, NUM_KEYS), dtype=np.uint8)
    for pitch, spans in notes.items():
        for start, stop in spans:
            roll[start:stop, pitch - LOW_PITCH] = 1
    return roll


def assert_roll(actual, expected):
    assert actual.dtype == np.uint8
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


def test_tempo_change_does_not_move_the_beat_grid():
    notes = [on(0, 60), off(480, 60), on(960, 62), off(1920, 62)]
    steady = midi_bytes([tempo(0, 120)], notes)
    changing = midi_bytes([tempo(0, 120), tempo(480, 40), tempo(1200, 200)], notes)
    expected = roll_of(4, {60: [(0, 1)], 62: [(2, 4)]})
    for data in (steady, changing):
        roll, stats = midi_to_roll(data, steps_per_beat=1)
        assert_roll(roll, expected)
        assert stats == RollStats(notes=2)


def test_restrike_closes_the_sounding_note_and_a_stray_off_is_ignored():
    # 60: struck at 0, re-struck at beat 1, released at beat 2; the second off is stray.
    # 64 on channels 0 and 1 overlap: matched per channel, so the roll is their union.
    data = midi_bytes([
        on(0, 60), on(480, 60), off(960, 60), off(1440, 60),
        on(0, 64, channel=0), on(480, 64, channel=1), off(960, 64, channel=0), off(1440, 64, channel=1),
    ])
    roll, stats = midi_to_roll(data, steps_per_beat=1)
    assert_roll(roll, roll_of(3, {60: [(0, 2)], 64: [(0, 3)]}))
    assert stats == RollStats(notes=4)


def test_velocity_zero_note_on_is_a_note_off():
    data = midi_bytes([on(0, 60), on(960, 60, velocity=0), on(1440, 60), on(1920, 60, velocity=0)])
    roll, stats = midi_to_roll(data, steps_per_beat=1)
    assert_roll(roll, roll_of(4, {60: [(0, 2), (3, 4)]}))  # step 2 silent
    assert stats == RollStats(notes=2)


def test_ticks_per_beat_100_rounds_half_up_on_the_eighth_note_grid():
    # step = 50 ticks; r(x) = floor(x + 0.5)
    data = midi_bytes([
        on(0, 60), off(100, 60),   # [0, 2)
        on(124, 62), off(176, 62),  # r(2.48)=2, r(3.52)=4 -> [2, 4)
        on(25, 64), off(75, 64),    # r(0.5)=1, r(1.5)=2 -> [1, 2)
        on(20, 67), off(24, 67),    # r(0.4)=0, r(0.48)=0 -> zero length, dropped
    ], tpb=100)
    roll, stats = midi_to_roll(data, steps_per_beat=2)
    assert_roll(roll, roll_of(4, {60: [(0, 2)], 62: [(2, 4)], 64: [(1, 2)]}))
    assert stats == RollStats(notes=3, zero_length=1)


def test_eighth_note_grid_versus_quarter_note_grid():
    data = midi_bytes([on(240, 60), off(720, 60), on(720, 72), off(1200, 72)])
    eighths, _ = midi_to_roll(data, steps_per_beat=2)
    assert_roll(eighths, roll_of(5, {60: [(1, 3)], 72: [(3, 5)]}))
    quarters, _ = midi_to_roll(data, steps_per_beat=1)  # r(0.5)=1, r(1.5)=2, r(2.5)=3
    assert_roll(quarters, roll_of(3, {60: [(1, 2)], 72: [(2, 3)]}))


def test_type_0_and_type_1_multi_track_give_the_same_roll():
    melody = [on(0, 72, channel=0), off(960, 72, channel=0)]
    bass = [on(480, 48, channel=1), off(1440, 48, channel=1)]
    type0 = midi_bytes(melody + bass, type=0)
    type1 = midi_bytes([tempo(0, 90)], melody, bass, type=1)
    expected = roll_of(3, {72: [(0, 2)], 48: [(1, 3)]})
    for data in (type0, type1):
        assert mido.MidiFile(file=io.BytesIO(data)).type in (0, 1)
        roll, stats = midi_to_roll(data, steps_per_beat=1)
        assert_roll(roll, expected)
        assert stats.notes == 2


def test_drums_out_of_range_and_unterminated_are_counted():
    data = midi_bytes([
        on(0, 60), off(480, 60),
        on(0, 38, channel=9), off(480, 38, channel=9), on(480, 42, channel=9),
        on(0, 20), off(480, 20), on(0, 109), off(480, 109),
        on(480, 65), end(1440),  # never switched off: closed at the end of its track
    ])
    roll, stats = midi_to_roll(data, steps_per_beat=1)
    assert_roll(roll, roll_of(3, {60: [(0, 1)], 65: [(1, 3)]}))
    assert stats == RollStats(notes=2, out_of_range=2, drums=2, unterminated=1)


def test_empty_file_gives_zero_steps(tmp_path):
    path = tmp_path / "silence.mid"
    path.write_bytes(midi_bytes([tempo(0, 100), end(960)]))
    roll, stats = midi_to_roll(path, steps_per_beat=2)
    assert roll.shape == (0, NUM_KEYS) and roll.dtype == np.uint8
    assert stats == RollStats()


def test_max_steps_cap_names_file_length_and_option(tmp_path):
    path = tmp_path / "long.mid"
    path.write_bytes(midi_bytes([on(0, 60), off(480 * 1000, 60)]))
    assert midi_to_roll(path, steps_per_beat=1, max_steps=1000)[0].shape == (1000, NUM_KEYS)
    with pytest.raises(DataError) as err:
        midi_to_roll(path, steps_per_beat=1, max_steps=999)
    message = str(err.value)
    assert "long.mid" in message and "1000" in message and "999" in message and "max_steps" in message
    assert "\n" not in message


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "smpte"])
def test_unreadable_files_raise_data_error_naming_the_file(tmp_path, kind):
    good = midi_bytes([on(0, 60), off(480, 60)])
    data = {
        "garbage": b"this is not a MIDI file at all" * 10,
        "truncated": good[: len(good) - 6],
        "empty": b"",
        "smpte": good[:12] + bytes([0xE7, 0x28]) + good[14:],  # division: -25 fps, 40 ticks/frame
    }[kind]
    path = tmp_path / f"{kind}.mid"
    path.write_bytes(data)
    with pytest.raises(DataError, match=rf"^{kind}\.mid: not a readable MIDI file \(") as err:
        midi_to_roll(path, steps_per_beat=1)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=r"^<bytes>: not a readable MIDI file"):
        midi_to_roll(data, steps_per_beat=1)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="nothere.mid: cannot read"):
        midi_to_roll(tmp_path / "nothere.mid", steps_per_beat=1)


@pytest.mark.parametrize("steps_per_beat", [1, 2, 3])
def test_roll_to_midi_round_trips_a_random_roll(tmp_path, steps_per_beat):
    rng = np.random.default_rng(steps_per_beat)
    roll = (rng.random((64, NUM_KEYS)) < 0.15).astype(np.uint8)
    roll[-1, 0] = 1  # the last step sounds, so T survives the trip
    path = tmp_path / "sample.mid"
    roll_to_midi(roll, path, steps_per_beat, tempo_bpm=123.0)
    back, stats = midi_to_roll(path, steps_per_beat)
    assert_roll(back, roll)
    runs = int(np.sum(np.diff(np.pad(roll.astype(np.int8), ((1, 0), (0, 0))), axis=0) == 1))
    assert stats == RollStats(notes=runs)
    written = mido.MidiFile(path)
    assert written.type == 1
    assert [m.tempo for m in written.tracks[0] if m.type == "set_tempo"] == [mido.bpm2tempo(123.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.mid"]  # no temp file left


def test_roll_to_midi_refuses_a_wrong_shape(tmp_path):
    with pytest.raises(DataError, match="expected \\(T, 88\\)"):
        roll_to_midi(np.zeros((4, 12), dtype=np.uint8), tmp_path / "x.mid", 2)
    assert not (tmp_path / "x.mid").exists()


def test_notes_to_roll_places_notes_and_refuses_out_of_range():
    roll = notes_to_roll([[60, 64.0], [], (21, 108)])
    assert_roll(roll, roll_of(3, {60: [(0, 1)], 64: [(0, 1)], 21: [(2, 3)], 108: [(2, 3)]}))
    assert notes_to_roll([]).shape == (0, NUM_KEYS)
    with pytest.raises(DataError, match=r"^JSB/train\[4\]: step 1 holds note 110"):
        notes_to_roll([[60], [110]], name="JSB/train[4]")
    with pytest.raises(DataError, match="step 0 holds 60.5"):
        notes_to_roll([[60.5]])
