"""Only the audio thread's compiled core (instrument/rt) lives here (cffi); all other metadata is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["instrument/rt/_build.py:ffibuilder"])
