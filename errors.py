"""The project's exception types.

``UserError``: a problem the user can fix (bad flags, files, data); entry points catch it and print a single
line instead of a traceback. ``ReadError``: a whole video could not be read; the data loaders count it and
move on.
"""


class UserError(Exception):
    """A problem with the user's input: flags, files or data. Its message is shown as is."""


class ReadError(Exception):
    """The whole video could not be opened (e.g. a truncated HDF5 file)."""
