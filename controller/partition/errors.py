"""The partitioner's one error type (TF-free, so manifest readers can raise it too)."""


class PartitionError(ValueError):
    """A model, cut or split that cannot be handled; the message says what and, for a layer
    problem, which layer."""
