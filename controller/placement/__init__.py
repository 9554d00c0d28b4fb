"""Placement engine: pure functions from a cost model to a placement."""
