"""Python binding of libagentvault (ctypes).

    import agentvault
    with agentvault.Vault(state_dir="/tmp/av", services=[{
            "name": "openai", "host": "api.openai.com", "auth": "bearer",
            "secret": "callback:openai"}],
            secrets={"openai": os.environ["OPENAI_API_KEY"]}) as v:
        base = v.gateway_url("https://api.openai.com")   # http://127.0.0.1:PORT
        sock = v.open_stream("https://api.openai.com")   # plaintext HTTP/1.1

The shared library is found through $AGENTVAULT_LIB (a path to
libagentvault.so.0), else ctypes.util.find_library("agentvault"), else
"libagentvault.so.0".
"""
from collections import namedtuple

from . import _lib
from ._errors import Error
from ._vault import Vault

__all__ = ["Error", "Vault", "TLSLibrary", "tls_library", "version", "strerror",
           "library_path"]

# Error codes (agentvault.h), e.g. agentvault.ERR_CONFIG.
for _code, _name in _lib.ERROR_NAMES.items():
    globals()[_name[3:]] = _code  # AV_ERR_CONFIG -> ERR_CONFIG
del _code, _name

TLSLibrary = namedtuple("TLSLibrary", "path backend")


def tls_library():
    """av_tls_library: the shared object that provides the TLS functions the
    library calls (as the dynamic linker bound them; "?" when unknown) and
    the backend it was built for ("boringssl" or "openssl")."""
    backend = _lib.ctypes.c_char_p()
    path = _lib.lib().av_tls_library(_lib.ctypes.byref(backend))
    return TLSLibrary(path.decode("utf-8", "surrogateescape") if path else "?",
                      backend.value.decode() if backend.value else "?")


def version():
    """av_version_string, e.g. "0.1.0"."""
    return _lib.lib().av_version_string().decode()


def strerror(code):
    """av_strerror: the library's description of an AV_ERR_* code."""
    return _lib.strerror(code)


def library_path():
    """The file the binding loaded (resolved through /proc/self/maps when
    possible), loading it if needed."""
    handle = _lib.lib()
    addr = _lib.ctypes.cast(handle.av_version_string, _lib.ctypes.c_void_p).value
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= addr < hi and len(parts) >= 6:
                    return parts[5]
    except OSError:
        pass
    return handle._name
