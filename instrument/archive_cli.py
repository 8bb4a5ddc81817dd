"""`endless archive list | search QUERY | show ID | play ID | export ID FILE | prune | import DIR`.

The archive (`instrument/archive/`) seen from the command line. `--archive DIR` picks it (default the
same as `endless play`: $ENDLESS_ARCHIVE, else the user data folder). Commands that only read never
create an archive: a folder that is not there is one error line. Every error is one line.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from instrument.errors import AudioDeviceError, ClipError, ConfigError

if TYPE_CHECKING:
    from instrument.archive.embed import Embedder
    from instrument.archive.store import Archive, Entry

__all__ = ["add_parser", "cmd_archive"]

PROMPT_WIDTH = 60


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `endless archive ...` on the top-level subparsers."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--archive", type=Path, metavar="DIR", default=argparse.SUPPRESS,
                       help="the archive folder (default: $ENDLESS_ARCHIVE, else the user data folder, as "
                            "`endless play`)")
    a = sub.add_parser("archive", parents=[where], help="the clip archive: list, search, play, export, prune, import")
    acts = a.add_subparsers(dest="archive_command", metavar="ACTION", required=True)
    p = acts.add_parser("list", parents=[where], help="the clips, newest first")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="show at most N (default 50)")
    p = acts.add_parser("search", parents=[where], help="the clips whose prompts are most like QUERY")
    p.add_argument("query", metavar="QUERY", help="a prompt or a blend ('rain:0.7 | thunder:0.3')")
    p.add_argument("-k", type=int, default=10, metavar="N", help="how many (default 10)")
    p.add_argument("--embedder", metavar="MODEL", help="sentence-transformers model (default: the one play uses)")
    p = acts.add_parser("show", parents=[where], help="every field of one clip")
    p.add_argument("id", metavar="ID")
    p = acts.add_parser("play", parents=[where], help="play one clip on an audio output")
    p.add_argument("id", metavar="ID")
    p.add_argument("--device", help="output device: index or part of its name (default: the default output)")
    p = acts.add_parser("export", parents=[where], help="write one clip to a .wav or .flac file")
    p.add_argument("id", metavar="ID")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists (a plain file only)")
    p = acts.add_parser("prune", parents=[where], help="remove the least recently played clips down to limits")
    p.add_argument("--max-clips", type=int, metavar="N", help="keep at most N clips")
    p.add_argument("--max-gb", type=float, metavar="GB", help="keep at most this many gigabytes")
    p = acts.add_parser("import", parents=[where], help="turn a folder of recordings into archive clips")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--max-seconds", type=float, default=600.0, metavar="S",
                   help="skip recordings longer than this (default 600)")


def cmd_archive(args: argparse.Namespace) -> int:
    from instrument.fallback import archive_dir

    root = archive_dir(getattr(args, "archive", None))
    act = args.archive_command
    if act == "import":
        return _import(args, root)
    archive = _open_existing(root)
    try:
        if act == "prune":
            return _prune(archive, args.max_clips, args.max_gb)
        if archive.count() == 0:
            raise ClipError(f"archive {root} is empty: play with the generator to fill it, or "
                            "`endless archive import DIR` to add recordings")
        if act == "list":
            return _list(archive, args.limit)
        if act == "search":
            return _search(archive, args.query, args.k, args.embedder)
        entry = _entry(archive, args.id)
        if act == "show":
            return _show(archive, entry)
        if act == "play":
            return _play(archive, entry, args.device)
        return _export(archive, entry, args.file, args.force)
    finally:
        archive.close()


def _open_existing(root: Path) -> Archive:
    from instrument.archive.store import Archive

    if not root.exists():
        raise ClipError(f"archive {root} does not exist (nothing archived there yet): give --archive DIR, or "
                        "`endless archive import DIR` to start one")
    if not root.is_dir():
        raise ConfigError(f"--archive {root}: not a folder: give the archive folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise ConfigError(f"--archive {root}: cannot read it (permission denied): check its permissions")
    return Archive(root)


def _entry(archive: Archive, text: str) -> Entry:
    try:
        clip_id = int(text)
    except ValueError:
        raise ConfigError(f"clip id {text!r}: expected a number (see `endless archive list`)") from None
    entry = archive.get(clip_id)
    if entry is None:
        raise ClipError(f"archive {archive.root}: no clip {clip_id} ({archive.count()} clips; "
                        "`endless archive list` shows their ids)")
    return entry


def _everything(archive: Archive) -> Iterator[Entry]:
    offset = 0
    while page := archive.entries(limit=1000, offset=offset):
        yield from page
        offset += len(page)


def _cut(text: str, width: int = PROMPT_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _list(archive: Archive, limit: int) -> int:
    if limit < 1:
        raise ConfigError(f"--limit {limit}: must be at least 1")
    print(f"{'id':>6}  {'created':16}  {'seconds':>7}  {'plays':>5}  prompt")
    shown = archive.entries(limit=limit)
    for e in shown:
        print(f"{e.id:>6}  {_when(e.created):16}  {e.seconds:7.1f}  {e.plays:>5}  {_cut(e.blend or e.prompt)}")
    print(f"{len(shown)} of {archive.count()} clips, {archive.total_bytes() / 1e6:.1f} MB in {archive.root}")
    return 0


def _search_embedder(archive: Archive, model: str | None) -> Embedder:
    """The embedder asked for, or the built-in one when the archive's vectors all come from it."""
    from instrument.archive.embed import BUILTIN_ID, BuiltinEmbedder, load_embedder

    stored = {e.embedder for e in _everything(archive) if e.embedder}
    if not stored:
        raise ClipError(f"archive {archive.root}: no clip has a prompt vector to search by")
    if model is None and stored == {BUILTIN_ID}:
        return BuiltinEmbedder()
    embedder = load_embedder(model)
    if embedder.id not in stored:
        raise ClipError(f"archive {archive.root}: its clips were embedded by {', '.join(sorted(stored))}, not "
                        f"{embedder.id}: pass --embedder with that model (downloaded once)")
    return embedder


def _search(archive: Archive, query: str, k: int, model: str | None) -> int:
    from instrument.archive.embed import embed_prompt

    if k < 1:
        raise ConfigError(f"-k {k}: must be at least 1")
    embedder = _search_embedder(archive, model)
    try:
        vector = embed_prompt(embedder, query)
    except ValueError as e:
        raise ConfigError(f"search {query!r}: {e}") from None
    print(f"{'score':>6}  {'id':>6}  {'seconds':>7}  prompt")
    for hit, score in archive.similar(vector, embedder.id, k=k):
        print(f"{score:6.3f}  {hit.id:>6}  {hit.seconds:7.1f}  {_cut(hit.blend or hit.prompt)}")
    return 0


def _show(archive: Archive, entry: Entry) -> int:
    for f in fields(entry):
        value = getattr(entry, f.name)
        if f.name in ("created", "last_played") and value is not None:
            value = f"{_when(value)} ({value:.0f})"
        elif f.name == "loudness" and value is not None:
            value = f"{value:.1f} LUFS"
        print(f"{f.name + ':':13} {value}")
    vec = archive.vector(entry.id)
    print(f"{'embedding:':13} {f'{len(vec[0])} dims ({vec[1]})' if vec else 'none'}")
    return 0


def _play(archive: Archive, entry: Entry, device: str | None) -> int:
    from instrument.audio import device_rate, find_device

    index = find_device(device)
    rate = device_rate(index)  # one line when there is no output device
    clip = archive.load(entry, rate)
    if clip is None:
        raise ClipError(f"clip {entry.id}: its file {entry.path} is damaged or missing (it will be evicted first)")
    import sounddevice as sd

    print(f"playing clip {entry.id} ({entry.seconds:.1f} s at {rate} Hz): {_cut(entry.blend or entry.prompt)}")
    try:
        sd.play(clip.audio, rate, device=index)
        sd.wait()
    except sd.PortAudioError as e:
        raise AudioDeviceError(f"cannot play on output device {device or '(default)'} ({e}): see "
                               "`endless devices`") from None
    except KeyboardInterrupt:
        sd.stop()
        raise
    archive.played(entry.id)
    return 0


def _export(archive: Archive, entry: Entry, dest: Path, force: bool) -> int:
    """Write the clip to `dest` through a new temporary file in its folder, then a link (no --force:
    never replaces anything) or a rename (--force: replaces a plain file). The name's last part is
    never followed: a link there is refused, or with --force replaced, never written through."""
    import soundfile as sf

    from instrument.render import check_output_path

    fmt, subtype = check_output_path(dest)
    folder = dest.parent.resolve()
    target = folder / dest.name
    if folder == archive.root.resolve() or archive.root.resolve() in folder.parents:
        raise ConfigError(f"{dest}: inside the archive folder {archive.root}: export it somewhere else")
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a plain file"
        raise ConfigError(f"{dest} exists and is {kind}: give the name of a new or plain file")
    if mode is not None and not force:
        raise ConfigError(f"{dest} exists: pass --force to replace it, or give another name")
    try:
        rate = sf.info(str(entry.path)).samplerate
    except (sf.LibsndfileError, RuntimeError, OSError):
        rate = 44100  # load() below reports the damaged file
    clip = archive.load(entry, rate)
    if clip is None:
        raise ClipError(f"clip {entry.id}: its file {entry.path} is damaged or missing (it will be evicted first)")
    tmp = folder / f".{dest.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            sf.write(f, clip.audio, rate, subtype=subtype, format=fmt)
        _place(tmp, target, force)
    except OSError as e:
        raise ConfigError(f"{dest}: cannot write ({e.strerror or e}): check the folder, or export elsewhere") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {dest}: clip {entry.id}, {clip.seconds:.1f} s, {rate} Hz stereo {fmt}")
    return 0


def _place(tmp: Path, target: Path, force: bool) -> None:
    if force:
        os.replace(tmp, target)  # replaces a plain file, or a link that appeared since (the link, not its target)
        return
    try:
        os.link(tmp, target)  # fails if anything is there now: never replaces
    except FileExistsError:
        raise ConfigError(f"{target} exists: pass --force to replace it, or give another name") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(target):  # a file system without hard links
            raise ConfigError(f"{target} exists: pass --force to replace it, or give another name") from None
        os.rename(tmp, target)


def _prune(archive: Archive, max_clips: int | None, max_gb: float | None) -> int:
    if max_clips is None and max_gb is None:
        raise ConfigError("archive prune: give --max-clips N and/or --max-gb GB (the limits to prune to)")
    if max_clips is not None and max_clips < 1:
        raise ConfigError(f"--max-clips {max_clips}: must be at least 1")
    if max_gb is not None and not 0.001 <= max_gb <= 100_000:
        raise ConfigError(f"--max-gb {max_gb}: allowed 0.001..100000")
    before = {e.id: e for e in _everything(archive)}
    archive.max_clips = max_clips
    archive.max_bytes = None if max_gb is None else int(max_gb * 1e9)
    archive.prune()
    after = {e.id for e in _everything(archive)}
    gone = [e for i, e in before.items() if i not in after]
    for e in gone:
        print(f"removed {e.id:>6}  {e.plays:>3} plays  {_cut(e.blend or e.prompt)}")
    freed = sum(e.bytes for e in gone) / 1e6
    print(f"removed {len(gone)} clips ({freed:.1f} MB); {len(after)} left, "
          f"{archive.total_bytes() / 1e6:.1f} MB in {archive.root}")
    return 0


def _import(args: argparse.Namespace, root: Path) -> int:
    import sys

    from instrument.archive.embed import load_embedder
    from instrument.archive.store import Archive
    from instrument.archive_import import check_folder, import_folder

    check_folder(args.dir)
    if not 0.5 <= args.max_seconds <= 86400:
        raise ConfigError(f"--max-seconds {args.max_seconds}: allowed 0.5..86400")
    with Archive(root) as archive:
        report = import_folder(archive, args.dir, load_embedder(), args.max_seconds)
        for path, why in report.skipped:
            print(f"endless: skipped {path}: {why}", file=sys.stderr)
        seconds = sum(e.seconds for e in report.added)
        print(f"imported {len(report.added)} of {report.files} files ({seconds / 60:.1f} min) into {root}; "
              f"{len(report.skipped)} skipped")
    if not report.files and not report.skipped:
        raise ClipError(f"archive import {args.dir}: no files in it: give the folder that holds the recordings")
    return 0 if report.added else 1
