"""The error every dataset reader raises for a missing or malformed file."""


class DatasetError(ValueError):
    """A dataset file is missing or does not have the structure its format requires."""
