"""HDF5 store: round trip, atomic replace, lazy reads, deterministic batches."""

import h5py
import numpy as np
import pytest

from seqvi.data.batches import crop_batch, epoch_order, whole_batches
from seqvi.data.store import Store, StoreWriter
from seqvi.errors import DataError


def build(path, seqs, attrs=None):
    writer = StoreWriter(path, (3,), "float32")
    for split, items in seqs.items():
        for i, x in enumerate(items):
            writer.add(split, f"{split}{i}", x)
    return writer.close(attrs or {"adapter": "test", "likelihood": "gaussian"})


@pytest.fixture
def seqs():
    rng = np.random.default_rng(0)
    return {s: [rng.normal(size=(n, 3)).astype(np.float32) for n in lens]
            for s, lens in {"train": [5, 9, 2, 7], "valid": [4], "test": [3, 6]}.items()}


def test_round_trip_and_attrs(tmp_path, seqs):
    path = build(tmp_path / "s.h5", seqs, {"adapter": "test", "sources": {"a.zip": "ff"}})
    with Store(path) as store:
        assert store.frame_shape == (3,)
        assert store.attrs["sources"] == {"a.zip": "ff"}
        train = store.split("train")
        assert list(train.lengths) == [5, 9, 2, 7]
        for i, x in enumerate(seqs["train"]):
            np.testing.assert_array_equal(train.read(i), x)
        np.testing.assert_array_equal(train.read(1, 2, 5), seqs["train"][1][2:5])
        allx = np.concatenate(seqs["train"])
        np.testing.assert_allclose(store.attrs["mean"], allx.mean(0), rtol=1e-5)
        np.testing.assert_allclose(store.attrs["std"], allx.std(0), rtol=1e-4)


def test_reader_does_not_load_frames(tmp_path, seqs):
    path = build(tmp_path / "s.h5", seqs)
    with Store(path) as store:
        assert isinstance(store.split("train").frames, h5py.Dataset)  # sliced on demand, not an array


def test_empty_split_is_an_error_and_previous_store_survives(tmp_path, seqs):
    path = build(tmp_path / "s.h5", seqs)
    before = path.read_bytes()
    writer = StoreWriter(path, (3,), "float32")
    writer.add("train", "x", seqs["train"][0])
    with pytest.raises(DataError, match="split 'valid' is empty"):
        writer.close({})
    assert path.read_bytes() == before
    assert not path.with_name("s.h5.tmp").exists()


def test_missing_and_corrupt_store(tmp_path):
    with pytest.raises(DataError, match="seqvi preprocess"):
        Store(tmp_path / "nope.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(DataError, match="bad.h5: not a readable HDF5"):
        Store(bad)


def test_batches_are_deterministic_crops_with_masks(tmp_path, seqs):
    path = build(tmp_path / "s.h5", seqs)
    with Store(path) as store:
        train = store.split("train")
        order = epoch_order(train, 3, seed=1, epoch=0)
        assert sorted(np.concatenate(order).tolist()) == [0, 1, 2, 3]
        assert [len(o) for o in order] == [4]  # a trailing batch of one joins the batch before it
        assert [len(o) for o in epoch_order(train, 2, 1, 0)] == [2, 2]
        assert [o.tolist() for o in order] == [o.tolist() for o in epoch_order(train, 3, 1, 0)]
        x, mask, *_ = crop_batch(train, np.array([1, 2]), 4, seed=1, epoch=0, batch=0)
        assert x.shape == (2, 4, 3) and mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
        # the crop of sequence 1 is a contiguous window of it
        full = seqs["train"][1]
        starts = [s for s in range(6) if np.allclose(full[s:s + 4], x[0].numpy())]
        assert len(starts) == 1
        x2, *_ = crop_batch(train, np.array([1, 2]), 4, seed=1, epoch=0, batch=0)
        assert np.array_equal(x.numpy(), x2.numpy())
        assert epoch_order(train, 3, 1, 0, min_length=5)[0].tolist() != [] and \
            2 not in np.concatenate(epoch_order(train, 3, 1, 0, min_length=5))
        seen = []
        for xb, mb, _, _, idx in whole_batches(store.split("test"), 1):
            seen.append(int(idx[0]))
            assert mb.sum() == len(seqs["test"][idx[0]])
        assert sorted(seen) == [0, 1]
