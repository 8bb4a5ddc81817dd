"""The live stream: PortAudio calls the C core's `rt_callback` directly (python-rtmixer's shape).

`Stream` subclasses sounddevice's stream base with a C function pointer as its callback and the
mixer's `rt_state` as its userdata, so on every host API (CoreAudio, JACK, ALSA, WASAPI) the audio
thread runs only C: no Python, and never the GIL.
"""

from __future__ import annotations

from typing import Any

from instrument.rt._load import ffi, lib
from instrument.rt.mixer import Mixer


def sounddevice() -> Any:
    """The sounddevice module (raises OSError when the PortAudio library is missing)."""
    import sounddevice as sd

    return sd


class Stream:
    """An output stream of 2 float32 channels at the mixer's rate, rendered by rt_callback.
    Raises what sounddevice raises when the device cannot be opened."""

    def __init__(self, mixer: Mixer, device: int | None = None, blocksize: int = 0,
                 latency: str | float = "low") -> None:
        sd = sounddevice()
        self.mixer = mixer  # keeps the state alive as long as the stream
        callback = sd._ffi.cast("PaStreamCallback *", int(ffi.cast("uintptr_t", ffi.addressof(lib, "rt_callback"))))
        userdata = sd._ffi.cast("void *", int(ffi.cast("uintptr_t", mixer.state)))

        class _Out(sd._StreamBase):  # type: ignore[misc, name-defined]
            pass

        self._stream = _Out(kind="output", samplerate=mixer.sr, blocksize=blocksize, device=device, channels=2,
                            dtype="float32", latency=latency, callback=callback, userdata=userdata,
                            wrap_callback=None)

    def start(self) -> None:
        self._stream.start()

    def stop(self) -> None:
        self._stream.stop()

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> Stream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()
