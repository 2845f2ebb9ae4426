"""The exception type of the binding."""


class Error(Exception):
    """An error reported by libagentvault (or by the binding itself).

    ``message`` is the library's one-line reason (av_config_error, the error
    buffer of av_ctx_new, or av_strerror); ``code`` the negative AV_ERR_*
    code, or None when the error is not from a library call (for example
    the library cannot be loaded); ``code_name`` its symbolic name."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def code_name(self):
        from ._lib import ERROR_NAMES
        return ERROR_NAMES.get(self.code) if self.code is not None else None

    def __str__(self):
        name = self.code_name
        return f"{self.message} ({name})" if name else self.message

    def __repr__(self):
        return f"agentvault.Error({self.message!r}, code={self.code!r})"
