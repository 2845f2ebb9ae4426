"""Loading libagentvault and declaring the C prototypes (ctypes)."""
import ctypes
import ctypes.util
import os
import threading

from ._errors import Error

# Error codes of agentvault.h (0 is success, every error is negative).
ERROR_NAMES = {
    -1: "AV_ERR_NOMEM", -2: "AV_ERR_INVALID", -3: "AV_ERR_IO", -4: "AV_ERR_TLS",
    -5: "AV_ERR_PARSE", -6: "AV_ERR_LIMIT", -7: "AV_ERR_NOTFOUND", -8: "AV_ERR_CONFIG",
    -9: "AV_ERR_DEFERRED", -10: "AV_ERR_AGAIN", -11: "AV_ERR_CA", -12: "AV_ERR_VERIFY",
    -13: "AV_ERR_DENIED", -14: "AV_ERR_SSRF", -15: "AV_ERR_TIMEOUT", -16: "AV_ERR_CLOSED",
    -17: "AV_ERR_STATE", -18: "AV_ERR_SECRET", -19: "AV_ERR_AUTH", -20: "AV_ERR_CORRUPT",
}

LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG = 0, 1, 2, 3

# void (*av_secret_fn)(void *user_data, const char *name, av_secret_request *req)
SECRET_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
# void (*av_log_fn)(void *user_data, int level, const char *message)
LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)

_c_int, _c_size, _vp, _cp = ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_char_p

# name: (restype, argtypes)
_PROTOTYPES = {
    "av_strerror": (_cp, [_c_int]),
    "av_version_string": (_cp, []),
    "av_free": (None, [_vp]),
    "av_config_new": (_c_int, [ctypes.POINTER(_vp)]),
    "av_config_free": (None, [_vp]),
    "av_config_load_file": (_c_int, [_vp, _cp]),
    "av_config_load_string": (_c_int, [_vp, _cp, _c_size, _cp]),
    "av_config_error": (_cp, [_vp]),
    "av_config_add_listen": (_c_int, [_vp, _cp]),
    "av_config_clear_listen": (_c_int, [_vp]),
    "av_config_set_state_dir": (_c_int, [_vp, _cp]),
    "av_config_add_resolve": (_c_int, [_vp, _cp]),
    "av_config_set_upstream_cafile": (_c_int, [_vp, _cp]),
    "av_config_validate": (_c_int, [_vp]),
    "av_config_listen_count": (_c_size, [_vp]),
    "av_config_listen_get": (_cp, [_vp, _c_size]),
    "av_config_state_dir": (_cp, [_vp]),
    "av_config_service_count": (_c_size, [_vp]),
    "av_config_service_name": (_cp, [_vp, _c_size]),
    "av_config_gateway_count": (_c_size, [_vp]),
    "av_config_gateway_name": (_cp, [_vp, _c_size]),
    "av_config_add_section": (_c_int, [_vp, _cp, _cp, ctypes.POINTER(_cp)]),
    "av_config_set_secret_fn": (_c_int, [_vp, SECRET_FN, _vp]),
    "av_secret_request_answer": (None, [_vp, _vp, _c_size]),
    "av_secret_request_fail": (None, [_vp, _cp]),
    "av_ca_root_pem_from_dir": (_c_int, [_cp, ctypes.POINTER(_vp), _cp, _c_size]),
    "av_ctx_new": (_c_int, [ctypes.POINTER(_vp), _vp, _cp, _c_size]),
    "av_ctx_free": (None, [_vp]),
    "av_ctx_set_log": (None, [_vp, LOG_FN, _vp, _c_int]),
    "av_ctx_listen_port": (_c_int, [_vp, _c_size]),
    "av_ctx_gateway_port": (_c_int, [_vp, _c_size]),
    "av_ctx_start": (_c_int, [_vp]),
    "av_ctx_stop": (_c_int, [_vp, ctypes.c_double]),
    "av_ctx_reload": (None, [_vp]),
    "av_gateway_open": (_c_int, [_vp, _cp, _cp, _c_size]),
    "av_open_stream": (_c_int, [_vp, _cp, ctypes.POINTER(_c_int)]),
    "av_tls_library": (_cp, [ctypes.POINTER(_cp)]),
}

_lock = threading.Lock()
_lib = None


def _candidates():
    env = os.environ.get("AGENTVAULT_LIB")
    if env:
        return [env], True
    found = ctypes.util.find_library("agentvault")
    names = [found] if found else []
    if "libagentvault.so.0" not in names:
        names.append("libagentvault.so.0")
    return names, False


def lib():
    """The loaded library (CDLL) with every prototype declared. Loaded on
    first use: $AGENTVAULT_LIB (a path to libagentvault.so.0), else
    ctypes.util.find_library("agentvault"), else "libagentvault.so.0"."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        names, from_env = _candidates()
        errors = []
        handle = None
        for name in names:
            try:
                # ctypes.CDLL releases the GIL around every call, so the
                # library's loop thread can run Python callbacks while the
                # caller blocks in av_ctx_stop.
                handle = ctypes.CDLL(name)
                break
            except OSError as e:
                errors.append(f"{name}: {e}")
        if handle is None:
            hint = ("AGENTVAULT_LIB is set but cannot be loaded" if from_env else
                    "set AGENTVAULT_LIB to the path of libagentvault.so.0")
            raise Error(f"cannot load libagentvault ({'; '.join(errors)}); {hint}",
                        code=None)
        for fname, (restype, argtypes) in _PROTOTYPES.items():
            try:
                f = getattr(handle, fname)
            except AttributeError:
                raise Error(f"{names[0]} has no symbol {fname}: the library is too old",
                            code=None) from None
            f.restype = restype
            f.argtypes = argtypes
        _lib = handle
        return _lib


def strerror(code):
    """av_strerror: the library's English description of an error code."""
    s = lib().av_strerror(int(code))
    return s.decode("utf-8", "replace") if s else "unknown error"


def check(rc, message=None):
    """Raises Error for a negative return code; returns rc otherwise."""
    if rc < 0:
        raise Error(message or strerror(rc), code=rc)
    return rc
