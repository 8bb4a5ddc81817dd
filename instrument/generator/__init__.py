"""The generator: TangoFlux text-to-audio, run in its own process.

The model path: `pipeline` (the denoising loop and decode), `conditioning` (T5 text encoding, its
cache, prompt blends), `loading` (the official checkpoint layout, the Hugging Face cache), `tiny` (a
tiny random-weight checkpoint for tests and offline demos), `errors`. Import modules directly:
importing this package does not import torch.
"""
