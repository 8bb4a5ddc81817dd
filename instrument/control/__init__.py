"""Control inputs: everything that turns a controller's gesture into a registry change.

Each input reads on its own threads and hands work to the control thread (the play loop), or
applies plain value changes itself when the engine's lock is free (`immediate`); whoever applies
holds `engine.lock`, so the engine and the mixer's command ring keep one producer;
they share one wake event, so the loop sleeps until any of them has work.

  osc       the OSC server: UDP and TCP/SLIP, its address space derived from the parameter
            registry, echo and status to subscribers (`OscServer`, `OscConfig`)
  midi      MIDI input and feedback through mido (`MidiControl`)
  mapkeys   the mapping file format as one table of keys; mapfile reads, checks and writes mapping files
            by it, mapdoc makes docs/mappings.md from it
  decode    MIDI bytes (through mido) to control events: 14-bit CC and NRPN pairing, encoders
  surface   a mapping on an engine: curves, soft takeover, buttons, actions, feedback (`Surface`)
  presets   scenes: store, recall with a glide, arm (`PresetStore`); actions.py runs them (`Actions`)
  arming    pre-generating an armed preset's clips (`ArmingScheduler`)

Import the modules directly: importing this package imports nothing else.
"""
