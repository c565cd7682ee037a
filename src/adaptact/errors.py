"""The errors that are the user's to fix (a bad file, path, option or missing extra): the CLI
prints them as one line, ``adaptact: error: ...``, and exits with 2. Everything else is a bug."""

__all__ = ["InfrastructureError", "MissingExtra", "UserError", "described", "require"]


class UserError(Exception):
    """Input that adaptact cannot use; the message says why and, where it can, what to do."""


class InfrastructureError(UserError):
    """A run could not run for a reason outside it (its data file changed, a cache is damaged): it
    is not stored as a result, so the next invocation runs it again."""


class MissingExtra(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str):
    """Import ``module`` or raise MissingExtra naming ``pip install 'adaptact[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(f"{module} is needed for this: pip install 'adaptact[{extra}]' ({err})") from None


def described(err: BaseException) -> str:
    """``err`` in one line for an error message: its type and the first line of its text."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
