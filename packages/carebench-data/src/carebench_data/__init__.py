"""Benchmark cohorts from raw MIMIC-IV + MIMIC-CXR-JPG files, and a synthetic MIMIC-shaped generator."""

__version__ = "0.1.0"
