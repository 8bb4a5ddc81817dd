"""The audio thread's room: everything that runs on or for it, and the only door to it.

  rt.h       the command, clip and telemetry structs and the C API (also cffi's declarations)
  core.c     the device callback, command rings, mixer, gain law, limiter and recorder tap
  _build.py  the cffi build (setup.py runs it at install)
  mixer.py   `Mixer`: send commands and clips, take clips back, read telemetry, render offline
  stream.py  `Stream`: a PortAudio output whose callback is core.c's rt_callback

This package imports nothing from the rest of `instrument`; the rest talks to the audio thread
only through `Mixer` and `Stream`. The core must be built: importing it says how when it is not.
"""

from instrument.rt.mixer import (
    CURVES,
    LOOKAHEAD_S,
    MAX_SLOTS,
    MORPH_MODES,
    OP_AUTOLEVEL,
    OP_CURVE,
    OP_FLUSH,
    OP_GAIN,
    OP_MASTER,
    OP_MORPH_MODE,
    OP_MORPH_POS,
    OP_MORPH_X,
    OP_MORPH_Y,
    OP_MUTE,
    OP_NEXT,
    OP_PAN,
    OP_PUSH,
    OP_SOLO,
    OP_TAP,
    OP_XFADE,
    Command,
    Mixer,
    MixerConfig,
    lookahead_samples,
)
from instrument.rt.stream import Stream

__all__ = ["CURVES", "LOOKAHEAD_S", "MAX_SLOTS", "MORPH_MODES", "OP_AUTOLEVEL", "OP_CURVE", "OP_FLUSH", "OP_GAIN",
           "OP_MASTER", "OP_MORPH_MODE", "OP_MORPH_POS", "OP_MORPH_X", "OP_MORPH_Y", "OP_MUTE", "OP_NEXT", "OP_PAN",
           "OP_PUSH", "OP_SOLO", "OP_TAP", "OP_XFADE", "Command", "Mixer", "MixerConfig", "Stream",
           "lookahead_samples"]
