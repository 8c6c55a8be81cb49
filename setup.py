"""A setuptools shim for tools and readers that look for setup.py: the whole configuration is in pyproject.toml."""
from setuptools import setup

setup()
