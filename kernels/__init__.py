"""Fused and reference losses for sequential recommendation over large catalogues."""
