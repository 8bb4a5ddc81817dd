"""The generator: TangoFlux text-to-audio, run in its own process.

The model path: `model` (TangoFlux's modules and config.json), `pipeline` (the denoising loop and
decode), `conditioning` (T5 text encoding, its cache, prompt blends), `loading` (the official
checkpoint layout, the Hugging Face cache), `tiny` (a tiny random-weight checkpoint for tests and
offline demos), `post` (each clip's fades, loudness and resampling), `errors`. The process:
`worker` (the instrument's side), `child` (the process that owns the model), `protocol` (what
passes between them), `backends` (which device and model to use). Import modules directly:
importing this package does not import torch.
"""
