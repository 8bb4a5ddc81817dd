"""Actions (instrument/control/actions.py): what store, recall, arm, next and previous answer (the
preset's name, never a repr), and the one-line ParamError a bad argument gets before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from instrument.control.actions import Actions, Done
from instrument.control.arming import ArmingScheduler
from instrument.control.presets import PresetStore
from instrument.engine import Engine
from instrument.errors import ConfigError, ParamError
from instrument.generator.worker import GeneratorClient, WorkerSpec
from instrument.rt import MixerConfig

ROOT = Path(__file__).resolve().parents[1]
SR = 44100


def engine(slots: int = 4, **kw: object) -> Engine:
    return Engine(MixerConfig(slots=slots, sample_rate=SR, **kw))  # type: ignore[arg-type]


def examples(tmp_path: Path) -> PresetStore:
    return PresetStore(tmp_path / "user", [ROOT / "presets"])  # night-city, rain-at-dawn, storm-front


def gen_engine() -> Engine:
    gen = ArmingScheduler(GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR)), 4)  # never started
    return Engine(MixerConfig(slots=4, sample_rate=SR), gen)


def test_recall_next_and_previous_answer_the_preset_name(tmp_path: Path) -> None:
    e = gen_engine()
    a = Actions(e, examples(tmp_path))
    assert a.run("preset/recall", ("rain-at-dawn",)) == Done("preset/recall", "Rain at dawn")
    assert a.current == "rain-at-dawn" and e.values[("xfade", None)] == 8.0
    assert a.run("preset/recall", (3.0,)).text == "Storm front"  # type: ignore[union-attr]  # Pd's float
    assert a.run("preset/next", ()) == Done("preset/next", "Night city")  # wraps
    assert a.run("preset/previous", (0.5,)) == Done("preset/previous", "Storm front")
    a.current = None
    assert a.run("preset/previous", ()).text == "Storm front"  # type: ignore[union-attr]  # from none: the last


def test_store_answers_the_name_and_recall_of_a_file_without_one_the_slug(tmp_path: Path) -> None:
    e = engine(slots=1)
    st = PresetStore(tmp_path / "user", ())
    a = Actions(e, st)
    assert a.run("preset/store", ("Rain at Dawn!",)) == Done("preset/store", "Rain at Dawn!")
    assert a.current == "rain-at-dawn" and st.names() == ["rain-at-dawn"]
    assert a.run("preset/recall", ("Rain at Dawn!",)) == Done("preset/recall", "Rain at Dawn!")
    (tmp_path / "user" / "bare.toml").write_text("version = 1\n[[slot]]\ngain = -3.0\n")
    assert a.run("preset/recall", ("bare",)) == Done("preset/recall", "bare")


def test_a_recall_that_skips_says_what_after_the_name(tmp_path: Path) -> None:
    a = Actions(engine(slots=1), examples(tmp_path))  # no generator: the prompts are skipped
    text = a.run("preset/recall", ("night-city",)).text  # type: ignore[union-attr]
    assert text.startswith("Night city (skipped: slot 1 prompt (no generator)")
    assert "Preset(" not in text and "'" not in text


def test_arm_answers_the_name_and_the_clips_armed(tmp_path: Path) -> None:
    a = Actions(gen_engine(), examples(tmp_path))
    assert a.run("preset/arm", ("storm-front",)) == Done("preset/arm", "Storm front (4 clips)")
    assert a.run("preset/arm", (3,)) == Done("preset/arm", "Storm front (0 clips)")  # on their way already
    assert a.current is None  # arming recalls nothing


@pytest.mark.parametrize("path, args, needle", [
    ("preset/recall", (), "/endless/preset/recall: expected an argument, got none"),
    ("preset/recall", ("storm-front", 1.0, 2.0), "takes at most 2 arguments, got 3"),
    ("preset/recall", ("storm-front", -1.0), "glide = -1.0: allowed seconds 0..600"),
    ("preset/recall", ("storm-front", True), "glide = True: allowed seconds 0..600"),
    ("preset/recall", ("nowhere",), "preset 'nowhere': not found"),
    ("preset/recall", (9,), "preset 9: out of range"),
    ("preset/recall", (1.5,), "1.5: give a preset name, or its number in the list"),
    ("preset/recall", (0,), "0: give a preset name, or its number in the list"),
    ("preset/recall", (True,), "True: give a preset name"),
    ("preset/arm", ("storm-front", 1.0), "/endless/preset/arm: takes at most 1 argument, got 2"),
    ("preset/store", (), "/endless/preset/store: expected an argument, got none"),
    ("preset/store", (5,), "/endless/preset/store: 5: expected a name in text"),
    ("preset/store", ("  ",), "expected a name in text"),
    ("preset/next", (1.0, 2.0), "/endless/preset/next: takes at most 1 argument, got 2"),
    ("preset/previous", ("slow",), "glide = 'slow': allowed seconds 0..600"),
    ("learn", ("/endless/xfade",), "MIDI learn needs MIDI input: start with --midi-in"),
    ("record", (), "recording is not available here"),
    ("preset/nope", (), "/endless/preset/nope: not an action: allowed preset/store, preset/recall"),
])
def test_bad_arguments_are_one_line_and_change_nothing(tmp_path: Path, path: str, args: tuple[object, ...],
                                                       needle: str) -> None:
    e = engine()
    st = examples(tmp_path)
    a = Actions(e, st)
    before = dict(e.values)
    with pytest.raises(ParamError) as err:
        a.plan(path, args)
    assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ParamError):
        a.run(path, args)
    assert e.values == before and a.current is None and not (tmp_path / "user").exists()


def test_next_with_no_presets_says_how_to_store_one(tmp_path: Path) -> None:
    a = Actions(engine(), PresetStore(tmp_path / "user", ()))
    with pytest.raises(ParamError, match=r"^/endless/preset/next: no presets stored yet: send /endless/preset/store NAME$"):
        a.run("preset/next", ())


# -- plan() refuses what run() would refuse: a bundle with it must not half-apply --------------------

def test_plan_refuses_a_store_name_that_store_refuses(tmp_path: Path) -> None:
    a = Actions(engine(), PresetStore(tmp_path / "user", ()))
    with pytest.raises(ParamError, match="not allowed"):
        a.plan("preset/store", ("../evil",))


def test_plan_refuses_a_preset_file_that_does_not_parse(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("version = 1\n[[slot]]\ngain = 'loud'\n")
    a = Actions(engine(), PresetStore(tmp_path, ()))
    with pytest.raises(ParamError, match="broken"):
        a.plan("preset/recall", ("broken",))


def test_plan_refuses_arming_without_a_generator(tmp_path: Path) -> None:
    a = Actions(engine(), examples(tmp_path))
    with pytest.raises(ParamError, match="arming needs the generator"):
        a.plan("preset/arm", ("storm-front",))


class _FullDisk:
    """A record switch whose take ended on a full disk: stopping it answers the error."""

    def __init__(self) -> None:
        self.rec: str | None = "/recordings/take.wav"

    @property
    def active(self) -> bool:
        return self.rec is not None

    def __call__(self, start: bool, name: str | None) -> str:
        self.rec = None
        raise ConfigError("recording stopped: disk full after 5.9 s")


def test_a_take_that_ended_on_a_full_disk_is_announced_as_stopped(tmp_path: Path) -> None:
    a = Actions(engine(), PresetStore(tmp_path / "user", ()), recording=_FullDisk())
    told: list[Done] = []
    a.listeners.append(told.append)  # as OSC's feedback listens: subscribers must not think it records
    with pytest.raises(ConfigError, match="disk full"):
        a.run("record", (0,))
    assert told == [Done("record", "", recording=False)]
