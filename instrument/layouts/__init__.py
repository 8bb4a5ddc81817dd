"""Controller layouts (Max/MSP, TouchOSC, Pure Data), generated from the parameter registry.

`python -m instrument.layouts` (`make layouts`) writes every layout file and its PNG preview;
`--check` says which committed file differs from what the registry makes now. What a layout holds
is decided once, in `common.sections()`; each format module only places it.
"""
