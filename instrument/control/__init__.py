"""Control inputs: everything that turns a controller's gesture into a registry change.

Every input reads on its own threads and submits one `Job` per message to the control bus
(`bus.py`); the bus runs it on the arriving thread when the engine is free and the job may run
there (parameter changes, clock), else the control loop runs it at its next tick. Whoever runs a
job holds `engine.lock` (taken only by the bus and the control loop), so the engine and the
mixer's command ring keep one producer. No input module takes the lock itself.

  bus        the control bus: one queue, the apply-now-if-free rule, the wake-up (`ControlBus`, `Job`)
  actions    what a performer triggers (presets, learn, record): declared once, reached from OSC and MIDI
  osc/       the OSC server in three rooms: transport (sockets), routes (the address space from the
             registry, one all-or-nothing job per packet), feedback (replies, echo, sync, status)
  midi       MIDI input on the bus and feedback from its own sender thread (`MidiControl`);
             midi_ports finds, opens and watches ports; learn is MIDI learn
  mapkeys    the mapping file format as one table of keys; mapfile reads, checks and writes mapping
             files by it, mapdoc makes docs/mappings.md from it
  decode     MIDI bytes (through mido) to control events: 14-bit CC and NRPN pairing, encoders
  surface    a mapping on an engine: curves, soft takeover, buttons, actions, feedback (`Surface`)
  presets    scenes: store, recall with a glide, arm (`PresetStore`)
  arming     pre-generating an armed preset's clips (`ArmingScheduler`)

Import the modules directly: importing this package imports nothing else.
"""
