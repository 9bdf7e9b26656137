"""Sequence encoders (no training logic)."""
