"""The engine's batch check: a bundle or a recall is refused whole, and weights are checked against the
prompt the batch sets for their slot."""

from __future__ import annotations

from instrument.engine import Engine
from instrument.generator.worker import GeneratorClient, WorkerSpec
from instrument.params import Ref, Value
from instrument.rt import MixerConfig
from instrument.scheduler import Scheduler

SR = 44100


def gen_engine(slots: int = 2) -> Engine:
    client = GeneratorClient(WorkerSpec(model="tiny", sample_rate=SR))  # never started: no clips needed
    return Engine(MixerConfig(slots=slots, sample_rate=SR), Scheduler(client, slots))


def ref(e: Engine, key: str, slot: int | None) -> Ref:
    return Ref(e.registry[key], slot, False)


def test_batch_weights_fit_the_prompt_the_batch_sets() -> None:
    e = gen_engine()
    e.handle("/endless/slot/1/prompt", ["rain"])  # one part now
    changes: list[tuple[Ref, Value]] = [(ref(e, "slot/prompt", 0), "rain | thunder"),
                                        (ref(e, "slot/weights", 0), (0.2, 0.8))]
    assert e.check_batch(changes) == {}  # the batch's own prompt has two parts
    alone = e.check_batch(changes[1:])  # without it, the playing prompt has one part
    assert list(alone) == [0] and "2 given for a prompt of 1 part" in alone[0]
    bad = e.check_batch([(ref(e, "slot/prompt", 0), "rain | thunder | wind"), (ref(e, "slot/weights", 0), (1.0, 1.0)),
                         (ref(e, "slot/weights", 1), (1.0,)), (ref(e, "master/gain", None), -6.0)])
    assert set(bad) == {1, 2}  # slot 2 plays no prompt: its weights fit nothing
    assert "2 given for a prompt of 3 part" in bad[1] and "slot 2 weights" in bad[2]
    assert e.values[("slot/prompt", 0)] == "rain" and e.generator.plans[0].prompt == "rain"  # type: ignore[union-attr]


def test_batch_order_and_bad_blends() -> None:
    e = gen_engine()
    e.handle("/endless/slot/1/prompt", ["rain | thunder"])
    # weights before the prompt that would change the count are checked against the playing prompt
    assert e.check_batch([(ref(e, "slot/weights", 0), (1.0, 3.0)), (ref(e, "slot/prompt", 0), "rain")]) == {}
    bad = e.check_batch([(ref(e, "slot/prompt", 0), "rain:x | :2"), (ref(e, "slot/weights", 0), (1.0, 3.0))])
    assert list(bad) == [0] and "slot 1 prompt" in bad[0]  # a refused prompt is not the batch's prompt


def test_batch_without_a_generator() -> None:
    e = Engine(MixerConfig(slots=1, sample_rate=SR))
    bad = e.check_batch([(ref(e, "slot/gain", 0), -3.0), (ref(e, "slot/prompt", 0), "rain")])
    assert list(bad) == [1] and "no generator" in bad[1]
