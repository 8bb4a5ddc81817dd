"""The clip archive on a real disk with a real SQLite index: round trips, similarity, eviction order,
reconciling after crashes (a writer process killed with SIGKILL, several times), damaged clip files
and a damaged index, and the writer thread (never blocks; a full disk is reported, not raised)."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from instrument.archive import Archive, ArchiveWriter, BuiltinEmbedder, embed_prompt
from instrument.archive.files import TEMP_PREFIX
from instrument.clips import Clip, ClipInfo
from instrument.errors import ConfigError
from tests.conftest import ROOT

RATE = 44100


def make_clip(prompt: str = "rain", seconds: float = 1.0, seed: int = 0, amp: float = 0.05) -> Clip:
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal((int(seconds * RATE), 2)) * amp).astype(np.float32)
    return Clip(audio, RATE, ClipInfo("generator", prompt, seed, "tiny", 0.1, steps=8, guidance=3.5))


def files_in(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "clips").iterdir())


def add(archive: Archive, prompt: str, seed: int = 0, seconds: float = 1.0) -> int:
    e = BuiltinEmbedder()
    return archive.add(make_clip(prompt, seconds, seed), embedding=embed_prompt(e, prompt), embedder=e.id).id


def test_a_clip_round_trips_with_its_metadata(tmp_path: Path) -> None:
    clip = make_clip("rain on a roof:0.7 | thunder:0.3", seconds=1.5, seed=42)
    with Archive(tmp_path) as a:
        entry = a.add(clip)
        assert (entry.prompt, entry.blend) == ("rain on a roof | thunder", "rain on a roof:0.7 | thunder:0.3")
        assert (entry.seed, entry.steps, entry.guidance, entry.model) == (42, 8, 3.5, "tiny")
        assert entry.seconds == pytest.approx(1.5) and entry.plays == 0 and entry.last_played is None
        expected = pyloudnorm.Meter(RATE).integrated_loudness(clip.audio.astype(np.float64))
        assert entry.loudness == pytest.approx(expected, abs=1e-6) and -30 < expected < -10
        assert entry.bytes == entry.path.stat().st_size > 0 and a.total_bytes() == entry.bytes
        assert entry.embedder is None and a.vector(entry.id) is None  # no vector given, none stored
        back = a.load(entry, RATE)
        assert back is not None and back.info.prompt == clip.info.prompt and back.info.seed == 42
        np.testing.assert_allclose(back.audio, clip.audio, atol=1e-6)  # 24-bit FLAC
        half = a.load(entry, RATE // 2)
        assert half is not None and half.frames == pytest.approx(clip.frames / 2, abs=2)
        a.played(entry.id)
        got = a.get(entry.id)
        assert got is not None and got.plays == 1 and got.last_played is not None
        assert a.get(entry.id + 100) is None
    assert files_in(tmp_path) == [entry.path.name]  # no temporary file left
    with sf.SoundFile(str(entry.path)) as f:
        assert f.title == "rain on a roof | thunder" and '"seed":42' in f.comment


def test_entries_are_newest_first_and_bad_limits_are_refused(tmp_path: Path) -> None:
    with Archive(tmp_path) as a:
        ids = [add(a, f"clip {i}", i, seconds=0.6) for i in range(5)]
        assert [e.id for e in a.entries()] == ids[::-1]
        assert [e.id for e in a.entries(limit=2, offset=1)] == ids[3:1:-1]
        assert a.count() == 5
    with pytest.raises(ConfigError, match="max_clips 0: must be at least 1"):
        Archive(tmp_path, max_clips=0)


def test_similar_ranks_by_cosine_within_one_embedder(tmp_path: Path) -> None:
    e = BuiltinEmbedder()
    with Archive(tmp_path) as a:
        rain = add(a, "heavy rain on a tin roof", 1)
        drizzle = add(a, "light rain on a roof", 2)
        sax = add(a, "a jazz saxophone solo", 3)
        other = a.add(make_clip("rain on a roof", seed=4), embedding=np.ones(e.dim, np.float32), embedder="st:x")
        q = embed_prompt(e, "rain on a roof")
        hits = a.similar(q, e.id, k=8)
        assert [h.id for h, _ in hits] == [drizzle, rain, sax]  # never the other embedder's vector
        assert hits[0][1] > hits[1][1] > hits[2][1]
        assert [h.id for h, _ in a.similar(q, e.id, k=1, exclude={drizzle})] == [rain]
        assert [h.id for h, _ in a.similar(np.ones(e.dim), "st:x")] == [other.id]
        assert a.similar(q, "st:unknown") == [] and a.similar(q[:10], e.id) == []  # another dim: nothing
        assert a.similar(q, "builtin:none") == []  # an empty search matrix, then one clip added:
        late = a.add(make_clip("roof rain", seed=5), embedding=embed_prompt(e, "rain on a roof"),
                     embedder="builtin:none")
        assert [h.id for h, _ in a.similar(q, "builtin:none")] == [late.id]
        again = add(a, "rain on a roof", 6)  # searched before: the new vector is appended, not missed
        assert a.similar(q, e.id, k=1)[0][0].id == again
        a.remove(again)
        assert again not in [h.id for h, _ in a.similar(q, e.id)] and a.get(again) is None
        vec = a.vector(rain)
        assert vec is not None and vec[1] == e.id and vec[0] @ embed_prompt(e, "heavy rain on a tin roof") > 0.999


def test_eviction_removes_the_least_recently_played_first(tmp_path: Path) -> None:
    with Archive(tmp_path, max_clips=3) as a:
        first, second, third = (add(a, f"clip {i}", i, seconds=0.6) for i in range(3))
        time.sleep(0.01)
        a.played(first)  # now first is fresher than second and third...
        time.sleep(0.01)
        a.played(third)
        fourth = add(a, "clip 3", 3, seconds=0.6)  # ...so second (never played, the oldest) goes
        assert sorted(e.id for e in a.entries()) == [first, third, fourth]
        fifth = add(a, "clip 4", 4, seconds=0.6)  # first was played before third, and fourth is new
        assert sorted(e.id for e in a.entries()) == [third, fourth, fifth]
        names = {e.path.name for e in a.entries()}
    assert set(files_in(tmp_path)) == names  # the evicted clips' files are gone too
    with Archive(tmp_path, max_clips=1) as a:  # a smaller limit applies at open
        assert [e.id for e in a.entries()] == [fifth]


def test_the_byte_limit_evicts_oldest_first(tmp_path: Path) -> None:
    with Archive(tmp_path) as a:
        size = a.add(make_clip(seconds=0.6)).bytes
    with Archive(tmp_path, max_bytes=int(size * 3.5)) as a:
        ids = [add(a, f"clip {i}", i, seconds=0.6) for i in range(5)]
        assert a.total_bytes() <= size * 3.5 and [e.id for e in a.entries()] == ids[:1:-1]
    with Archive(tmp_path, max_bytes=100) as a, pytest.raises(ConfigError, match="max_bytes=100: smaller than one clip"):
        a.add(make_clip(seconds=0.6))


def test_a_damaged_clip_file_is_skipped_reported_and_evicted_first(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    e = BuiltinEmbedder()
    with Archive(tmp_path, max_clips=3) as a:
        good, bad = add(a, "rain on a roof", 1), add(a, "rain on a tin roof", 2)
        entry = a.get(bad)
        assert entry is not None
        entry.path.write_bytes(os.urandom(entry.bytes))  # garbage where the FLAC was
        with caplog.at_level(logging.WARNING, logger="instrument.archive.store"):
            assert a.load(entry, RATE) is None
        [line] = [r.getMessage() for r in caplog.records]
        assert f"clip {bad} skipped" in line and entry.path.name in line
        marked = a.get(bad)
        assert marked is not None and marked.bad
        assert [h.id for h, _ in a.similar(embed_prompt(e, "rain on a tin roof"), e.id)] == [good]
        a.played(bad)  # played last: by play order alone, `good` would be evicted first
        add(a, "wind", 3)
        add(a, "birds", 4)  # one over the limit: the damaged clip goes
        assert a.get(bad) is None and a.get(good) is not None and not entry.path.exists()
        kept = a.get(good)
        assert kept is not None
        kept.path.unlink()  # a file removed by hand: load says so too, never raises
        assert a.load(kept, RATE) is None
        gone = a.get(good)
        assert gone is not None and gone.bad


def test_open_removes_leftovers_and_drops_rows_without_files(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    with Archive(tmp_path) as a:
        keep, lose = add(a, "rain", 1), add(a, "wind", 2)
        lost = a.get(lose)
        kept = a.get(keep)
    assert lost is not None and kept is not None
    lost.path.unlink()
    clips = tmp_path / "clips"
    (clips / f"{TEMP_PREFIX}123-half.flac").write_bytes(b"fLaC half a file")  # killed while writing
    (clips / "999-renamed-no-row.flac").write_bytes(kept.path.read_bytes())  # killed before its row
    with caplog.at_level(logging.WARNING, logger="instrument.archive.store"), Archive(tmp_path) as a:
        assert [e.id for e in a.entries()] == [keep]
    [line] = [r.getMessage() for r in caplog.records]
    assert "removed 1 unfinished and 1 unindexed files, dropped 1 entries" in line
    assert files_in(tmp_path) == [kept.path.name]


def test_an_archive_open_in_another_process_is_not_repaired(tmp_path: Path) -> None:
    """The first opener holds the archive; a second (`endless archive list` beside `endless play`)
    must not delete the file the first has just renamed and is about to index."""
    with Archive(tmp_path) as first:
        leftover = tmp_path / "clips" / f"{TEMP_PREFIX}being-written.flac"
        leftover.write_bytes(b"in progress")
        with Archive(tmp_path) as second:
            assert leftover.exists() and second.count() == 0
        assert first.count() == 0
    with Archive(tmp_path):
        assert not leftover.exists()  # nobody had it open: repaired


def test_an_unreadable_index_is_moved_aside_and_rebuilt_from_the_tags(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    e = BuiltinEmbedder()
    with Archive(tmp_path) as a:
        ids = [add(a, p, i) for i, p in enumerate(["heavy rain on a tin roof", "jazz saxophone", "forest birds"])]
        before = {x.path.name: x for x in a.entries()}
    index = tmp_path / "index.sqlite"
    index.write_bytes(os.urandom(8192))  # garbage named index.sqlite
    (tmp_path / "clips" / "000-foreign.flac").write_bytes(b"not a flac at all")
    with caplog.at_level(logging.WARNING, logger="instrument.archive.store"), Archive(tmp_path) as a:
        after = {x.path.name: x for x in a.entries()}
        assert len(ids) == 3 and set(after) == set(before)
        for name, old in before.items():
            new = after[name]
            assert (new.prompt, new.blend, new.seed, new.steps, new.guidance, new.model, new.embedder) == (
                old.prompt, old.blend, old.seed, old.steps, old.guidance, old.model, old.embedder)
            assert new.loudness == pytest.approx(old.loudness) and new.seconds == pytest.approx(old.seconds)
        hits = a.similar(embed_prompt(e, "rain on a roof"), e.id, k=1)
        assert hits[0][0].prompt == "heavy rain on a tin roof"  # the vectors came back from the tags
    lines = [r.getMessage() for r in caplog.records]
    assert "unreadable" in lines[0] and "rebuilt from the clip files' tags: 3 clips" in lines[0]
    assert "1 files skipped, e.g. 000-foreign.flac" in lines[0]
    assert list(tmp_path.glob("index.sqlite.unreadable-*"))


def test_threads_add_and_search_at_once(tmp_path: Path) -> None:
    e = BuiltinEmbedder()
    errors: list[BaseException] = []
    with Archive(tmp_path, max_clips=12) as a:
        def work(n: int) -> None:
            try:
                for i in range(6):
                    add(a, f"rain number {n} {i}", n * 10 + i, seconds=0.6)
                    for entry, _ in a.similar(embed_prompt(e, "rain"), e.id, k=3):
                        a.played(entry.id)
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and a.count() == 12
        assert set(files_in(tmp_path)) == {x.path.name for x in a.entries()}


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tests.test_archive import add
    from instrument.archive import Archive
    a = Archive(Path(sys.argv[1]), max_clips=15)
    i = 0
    while True:
        add(a, f"prompt {i}", i, seconds=2.0)
        i += 1
        print("added", i, flush=True)
""")


def test_killing_a_writer_mid_write_leaves_the_archive_consistent(tmp_path: Path) -> None:
    rng = random.Random(1)
    seen = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # one clip written: the writer is in its loop
        assert line.startswith("added"), proc.stderr.read() if proc.stderr else ""
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with Archive(tmp_path, max_clips=15) as a:
            entries = a.entries(limit=1000)
            assert entries and a.count() == len(entries) > seen - 1
            seen = len(entries)
            for entry in entries:
                clip = a.load(entry, RATE)
                assert clip is not None and clip.frames == 2 * RATE, entry
            assert sorted(files_in(tmp_path)) == sorted(e.path.name for e in entries)  # no leftovers


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys, time
    from pathlib import Path
    from instrument.archive import Archive, ArchiveWriter, BuiltinEmbedder
    from tests.test_archive import make_clip
    a = Archive(Path(sys.argv[1]))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG, like ENOSPC
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))
    w = ArchiveWriter(a, BuiltinEmbedder())
    w.start()
    w.put(make_clip("loud noise", seconds=3.0))       # about 700 kB of FLAC: cannot be written
    w.put(make_clip("quiet", seconds=0.6, amp=1e-4))  # a few kB: fits
    w.stop()
    print("counts", w.written, w.failed, a.count(), flush=True)
""")


def test_a_full_disk_is_reported_never_raised(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["counts", "1", "1", "1"], out.stdout + out.stderr
    [line] = [x for x in out.stderr.splitlines() if "cannot write" in x]
    assert "File too large" in line and "1 failed so far" in line and "free disk space" in line
    assert not [n for n in files_in(tmp_path) if n.startswith(TEMP_PREFIX)]  # nothing half-written left


def test_the_writer_never_blocks_and_drains_on_stop(tmp_path: Path) -> None:
    with Archive(tmp_path) as a:
        w = ArchiveWriter(a, BuiltinEmbedder(), max_waiting=2)  # not started: nothing leaves the queue
        clips = [make_clip(f"rain {i}", seconds=0.6, seed=i) for i in range(3)]
        t0 = time.perf_counter()
        accepted = [w.put(c) for c in clips]
        assert time.perf_counter() - t0 < 0.5
        assert accepted == [True, True, False] and w.dropped == 1 and w.waiting == 2
        w.start()
        w.stop(timeout=30)
        assert (w.written, w.failed, w.waiting) == (2, 0, 0) and a.count() == 2
        assert not w.put(clips[2]) and w.dropped == 2  # stopped: refused at once
        e = BuiltinEmbedder()
        hits = a.similar(embed_prompt(e, "rain 1"), e.id, k=1)
        assert hits and hits[0][0].embedder == e.id and hits[0][0].blend == "rain 1"
        with pytest.raises(ValueError, match="max_waiting must be at least 1"):
            ArchiveWriter(a, e, max_waiting=0)
