"""Control inputs: everything that turns a controller's gesture into a registry change.

Each input runs its own I/O threads and hands work to the control thread (the play loop), which
applies it through `Engine.handle`, so the engine and the mixer's command ring keep one producer.

  osc   the OSC server: UDP and TCP/SLIP, its address space derived from the parameter registry,
        echo and status to subscribers (`OscServer`, `OscConfig`)

Import the modules directly: importing this package imports nothing else.
"""
