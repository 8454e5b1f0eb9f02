"""The one exception type of the data layer.

Every problem a user can cause with data (a missing folder, image or text file, a corrupt image,
an unknown word, an empty caption, metadata that does not match the images) raises `DataError`
whose message names the file or word and says how to fix it. It subclasses `ValueError` so
callers that only know the standard library still catch it.
"""


class DataError(ValueError):
    """Bad input data; the message names the file or word and the fix."""
