"""The one exception type for problems the user can fix (bad flags, files, data).

Entry points catch it and print a single line instead of a traceback.
"""


class UserError(Exception):
    """A problem with the user's input: flags, files or data. Its message is shown as is."""
