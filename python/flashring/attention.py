"""Attention: block attention, the lse merge, sequence-parallel attention, the cost model."""

__all__: list = []
