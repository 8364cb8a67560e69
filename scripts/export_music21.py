"""Export a corpus that ships with music21 to MIDI in the published zip layout, for seqvi preprocess --source.

    python scripts/export_music21.py palestrina OUT [--limit 400]        # Renaissance polyphony
    python scripts/export_music21.py ryansMammoth OUT --steps-per-beat 2 [--limit 600]   # folk tunes (ABC)

writes ``OUT/<Name>.zip`` holding ``<Name>/{train,valid,test}/*.mid`` (a fixed
split by a stable hash of each piece's name, about 60/20/20, as the Bach
chorales' export) and ``OUT/manifests/<name>.yaml`` (adapter midi, quarter-note
grid), so that

    SEQVI_MANIFESTS=OUT/manifests seqvi preprocess <name> --source OUT/<Name>.zip

makes a store of real music that none of seqvi's recipes was tuned on
(``--steps-per-beat`` 2 is an eighth-note grid, as for Nottingham). Each
file of the corpus (an ABC file may hold many tunes, an Opus) gives one MIDI
file per piece; pieces music21 cannot parse or write are skipped and counted.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import zipfile
from pathlib import Path


def split_of(name: str) -> str:
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 6 else "valid" if bucket < 8 else "test"


def pieces(corpus_name: str):
    """(name, music21 score) for every piece of the corpus, in a stable order."""
    from music21 import corpus, stream

    for path in sorted(corpus.corpora.CoreCorpus().getPaths(), key=str):
        if f"/corpus/{corpus_name}/" not in str(path):
            continue
        try:
            parsed = corpus.parse(path)
        except Exception:   # noqa: BLE001 - music21 raises many types for files it cannot read
            yield path.stem, None
            continue
        scores = parsed.scores if isinstance(parsed, stream.Opus) else [parsed]
        for i, score in enumerate(scores):
            yield (f"{path.stem}_{i:03d}" if len(scores) > 1 else path.stem), score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", help="a folder of music21's corpus, e.g. palestrina, ryansMammoth, monteverdi")
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=0, help="at most this many pieces")
    parser.add_argument("--steps-per-beat", type=int, default=1, help="grid steps per quarter note")
    args = parser.parse_args()
    name = args.corpus[0].upper() + args.corpus[1:]
    args.out.mkdir(parents=True, exist_ok=True)
    written, skipped = 0, 0
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(args.out / f"{name}.zip", "w") as archive:
        for stem, score in pieces(args.corpus):
            if args.limit and written >= args.limit:
                break
            if score is None:
                skipped += 1
                continue
            try:
                path = Path(score.write("midi", fp=str(Path(tmp) / f"{stem}.mid")))
            except Exception:   # noqa: BLE001
                skipped += 1
                continue
            archive.write(path, f"{name}/{split_of(stem)}/{stem}.mid")
            written += 1
    manifests = args.out / "manifests"
    manifests.mkdir(exist_ok=True)
    slug = args.corpus.lower()
    (manifests / f"{slug}.yaml").write_text(
        f"name: {slug}\ntitle: {name} from music21's corpus (scripts/export_music21.py)\nadapter: midi\n"
        f"download: manual\nsteps_per_beat: {args.steps_per_beat}\n"
        f"resolution: {'quarter' if args.steps_per_beat == 1 else f'1/{args.steps_per_beat} quarter'} note\n"
        "licence: >-\n  Encodings shipped with music21 (BSD licence); the music is in the public domain.\n"
        "  Export it with scripts/export_music21.py, then preprocess with --source.\nfiles: []\n")
    print(f"{written} pieces written to {args.out / (name + '.zip')} ({skipped} skipped); "
          f"manifest {manifests / (slug + '.yaml')}")


if __name__ == "__main__":
    main()
