"""Shim for editable installs (`pip install -e .`) without a pyproject.toml; metadata is in setup.cfg."""

from __future__ import annotations

from setuptools import setup

setup()
