"""Endless: a live instrument that turns text prompts into an endless, evolving soundscape."""

__version__ = "0.1.0"
