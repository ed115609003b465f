"""User-facing errors: one line naming the problem and the fix; the CLI exits with status 2."""


class UserError(Exception):
    """A problem with what the user asked for (config flag, file, option)."""


class ConfigError(UserError):
    """An invalid enlightenment configuration (unknown flag, bad value, missing dependency)."""
