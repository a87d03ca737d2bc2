"""Unimodal baselines and EHR + CXR fusion models in plain PyTorch, with a shared trainer."""

__version__ = "0.1.0"
