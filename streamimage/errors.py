"""The whole exception hierarchy of streamimage.

Rule: every error a user can cause or meet carries a one-line message that names the
culprit (a file, a conf key, a store path) and what is wrong with it.  ``cli.py`` prints
that line and maps the class to an exit status; nothing else formats errors.
"""

from __future__ import annotations


class StreamImageError(Exception):
    """Base class: the message is the one line shown to the user."""

    exit_status = 1


class UsageError(StreamImageError):
    """The command line or the conf is wrong (exit status 2)."""

    exit_status = 2


class ConfError(UsageError, ValueError):
    """The conf file is missing, unreadable, not JSON, or a key is missing or malformed."""


class StoreError(StreamImageError, OSError):
    """A store path cannot be archived: missing, unreadable, or of a kind tar can't carry."""


class BaseImageError(StreamImageError, ValueError):
    """The from_image archive is missing or is not a usable image archive, or a layer of
    it is not what it says (exit status 2: the conf named a bad input; running again
    won't help)."""

    exit_status = 2


class CustomisationError(StreamImageError, ValueError):
    """The customisation layer is missing, or its checksum is malformed or wrong."""


class ChangedError(StreamImageError, RuntimeError):
    """A file changed between the hash pass and the stream pass."""


class OutputError(StreamImageError, OSError):
    """Writing the image failed: the reader went away, the disk is full, ..."""


class ChildError(StreamImageError, RuntimeError):
    """A worker process died without an answer."""


class CredentialsError(StreamImageError, ValueError):
    """An auth file is unreadable or malformed, or a credential helper failed; the message
    names the file or helper, never a secret."""


class AuthError(StreamImageError):
    """A registry or its token server refused us (401, 403): the message names the registry
    and repository, never a secret."""


class ImageReferenceError(UsageError, ValueError):
    """A ``docker://`` image reference (``-o``, ``--mount-from``) that is not one."""


class RegistryError(StreamImageError, RuntimeError):
    """The registry refused a request, or could not be reached (after the retries)."""
