"""The one exception type of the data layer, and its message for a file that cannot be read.

Every problem a user can cause with data (a missing folder, image or text file, a corrupt image,
an unknown word, an empty caption, metadata that does not match the images) raises `DataError`
whose message names the file or word and says how to fix it. It subclasses `ValueError` so
callers that only know the standard library still catch it.
"""


class DataError(ValueError):
    """Bad input data; the message names the file or word and the fix."""


def unreadable(path, error: OSError, what: str = "") -> DataError:
    """The DataError for `path` that exists but cannot be read (no permission, a folder): not a
    damaged file, so the fix is access, not a new copy. `what` names it ("image ")."""
    return DataError(
        f"{what}{path} cannot be read ({error.strerror or error}); make it a readable file"
    )
