"""Only the mixer's compiled core lives here (cffi); all other metadata is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["instrument/_mixcore_build.py:ffibuilder"])
