"""Geometry shared by quality checks: distances between surfaces (``distance``)."""
