"""Shared helpers for chainmail's tests (importable as ``support``)."""
