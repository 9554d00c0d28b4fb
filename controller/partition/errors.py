"""The partitioner's one error type (TF-free, so manifest readers can raise it too)."""


class PartitionError(ValueError):
    """A model, cut or split that cannot be handled; the message says what and, for a layer
    problem, which layer."""


class ModelFileError(PartitionError):
    """The file is not a model this partitioner can read (bad bytes, wrong format): the
    caller sent something wrong, not a model that cannot be split."""
