"""agentvault.Vault: a running libagentvault context."""
import collections.abc
import ctypes
import logging
import os
import socket
import threading
import weakref

from . import _lib
from ._errors import Error

logger = logging.getLogger("agentvault")
logger.addHandler(logging.NullHandler())

AV_ERR_INVALID = -2
AV_ERR_STATE = -17

_PY_LEVEL = {_lib.LOG_ERROR: logging.ERROR, _lib.LOG_WARN: logging.WARNING,
             _lib.LOG_INFO: logging.INFO, _lib.LOG_DEBUG: logging.DEBUG}
_LEVEL_NAMES = {"error": _lib.LOG_ERROR, "warn": _lib.LOG_WARN, "warning": _lib.LOG_WARN,
                "info": _lib.LOG_INFO, "debug": _lib.LOG_DEBUG}
_LEVEL_STR = {v: k for k, v in _LEVEL_NAMES.items() if k != "warning"}

DEFAULT_DRAIN_SECONDS = 5.0


def _enc(value, what):
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"{what} must be a str, not {type(value).__name__}")


def _value_text(key, value):
    """A Python value as the text of a configuration value."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ", ".join(_value_text(key, v) for v in value)
    raise TypeError(f"value of {key!r} must be a str, number, bool or list, "
                    f"not {type(value).__name__}")


def _keyvals(keys, what):
    if not isinstance(keys, collections.abc.Mapping):
        raise TypeError(f"{what} must be a mapping of configuration keys")
    items = []
    for k, v in keys.items():
        if not isinstance(k, str):
            raise TypeError(f"{what}: keys must be str, not {type(k).__name__}")
        if v is None:
            continue
        items.append((k, _value_text(k, v)))
    arr = (ctypes.c_char_p * (2 * len(items) + 1))()
    for i, (k, v) in enumerate(items):
        arr[2 * i] = k.encode("utf-8")
        arr[2 * i + 1] = v.encode("utf-8")
    arr[2 * len(items)] = None
    return arr


def _named_sections(spec, what):
    """services / tokens / gateways: {name: {key: value}} or [{"name": ..., key: value}]."""
    if spec is None:
        return []
    if isinstance(spec, collections.abc.Mapping):
        return [(name, keys) for name, keys in spec.items()]
    out = []
    for entry in spec:
        if not isinstance(entry, collections.abc.Mapping) or "name" not in entry:
            raise TypeError(f"each entry of {what} must be a mapping with a \"name\" key")
        keys = dict(entry)
        out.append((keys.pop("name"), keys))
    return out


def _default_state_dir():
    """The daemon's default: $XDG_STATE_HOME/agentvault or ~/.local/state/agentvault."""
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and xdg.startswith("/"):
        return os.path.join(xdg, "agentvault")
    home = os.environ.get("HOME")
    if home and home.startswith("/"):
        return os.path.join(home, ".local", "state", "agentvault")
    raise Error("cannot determine a state directory: pass state_dir=, or set HOME or "
                "XDG_STATE_HOME", code=None)


def _listen_url(spec, port):
    host = spec.rsplit(":", 1)[0]
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif host == "[::]":
        host = "[::1]"
    return f"http://{host}:{port}"


def _secret_bytes(value):
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a secret must be str or bytes, not {type(value).__name__}")


class _State:
    """Everything the C side may call back into, and the context pointer.
    Holds no reference to the Vault, so a forgotten Vault can be collected
    (its finalizer then stops the context)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ctx = None
        self.started = False
        self.loop_ident = None
        self.keepalive = []            # CFUNCTYPE objects the library holds
        # (name, "Type: message") of failed callbacks, the latest 100
        self.secret_errors = collections.deque(maxlen=100)

    def note_loop_thread(self):
        if self.loop_ident is None:
            self.loop_ident = threading.get_ident()

    def close(self, drain):
        with self.lock:
            ctx, self.ctx = self.ctx, None
        if ctx is None:
            return
        if self.loop_ident is not None and threading.get_ident() == self.loop_ident:
            # Called from a callback on the loop thread (directly or through
            # garbage collection): stopping would join this very thread.
            threading.Thread(target=self._destroy, args=(ctx, drain),
                             name="agentvault-close", daemon=True).start()
            return
        self._destroy(ctx, drain)

    def _destroy(self, ctx, drain):
        lib = _lib.lib()
        if self.started:
            lib.av_ctx_stop(ctx, float(drain))
        lib.av_ctx_free(ctx)
        # The library no longer holds the callbacks.
        self.keepalive = []


class Vault:
    """A running agentvault context: credential-injecting gateways, streams
    and (optionally) a forward proxy, served by the library's own loop
    thread.

    Vault(config=None, *, state_dir=None, services=None, secrets=None,
          secret_fn=None, listen=None, resolve=None, upstream_cacert=None,
          proxy=None, tokens=None, gateways=None, log=None, log_level=None,
          drain_seconds=5.0)

    config: an agentvault.conf path (str or os.PathLike), or configuration
        text (bytes, or a str that contains a newline or starts with "[").
    state_dir: where the CA lives; default the config's, else the daemon's
        ($XDG_STATE_HOME/agentvault or ~/.local/state/agentvault).
    services: {name: {key: value}} or [{"name": name, key: value, ...}];
        keys as in a [service "NAME"] section. Lists become "a, b", bools
        "on"/"off", numbers their decimal text.
    secrets / secret_fn: answers for "secret = callback:NAME" references:
        a mapping NAME -> str|bytes, and/or a function NAME -> str|bytes
        (None means "no such secret"). secret_fn runs on the library's loop
        thread, so it must be quick and must not block on this Vault.
        An exception fails the request (502); the agent sees only the
        exception's type, the host's log gets the traceback.
    listen: proxy listener(s), "ADDR:PORT" or a list; True means
        "127.0.0.1:0", False none. Replaces the config's listen addresses.
        Default: the config's (none: no proxy, only gateways and streams).
    resolve: ["HOST:PORT:ADDR[:DIALPORT]", ...] pins (curl syntax).
    upstream_cacert: a PEM file of CAs for upstream verification.
    proxy: {key: value} of further [proxy] keys (unmatched, timeouts, ...).
    tokens, gateways: [token "NAME"] / [gateway "NAME"] sections, like
        services.
    log: None forwards the library's log to logging.getLogger("agentvault")
        (at the levels that logger has enabled when the Vault starts);
        False discards it; a callable gets (level_name, message).
    log_level: "error", "warn", "info" or "debug": the most verbose level
        passed on (default: from the logger; "info" for a callable).
    drain_seconds: how long close() lets in-flight exchanges finish.
    """

    def __init__(self, config=None, *, state_dir=None, services=None, secrets=None,
                 secret_fn=None, listen=None, resolve=None, upstream_cacert=None,
                 proxy=None, tokens=None, gateways=None, log=None, log_level=None,
                 drain_seconds=DEFAULT_DRAIN_SECONDS):
        lib = _lib.lib()
        self._lib = lib
        self._drain = float(drain_seconds)
        self._gateway_urls = {}
        self._state = state = _State()
        self._finalizer = None
        if secrets is not None and not isinstance(secrets, collections.abc.Mapping):
            raise TypeError("secrets must be a mapping of NAME -> str or bytes")
        if secret_fn is not None and not callable(secret_fn):
            raise TypeError("secret_fn must be callable")
        if log is not None and log is not False and not callable(log):
            raise TypeError("log must be None, False or a callable(level_name, message)")

        cfg = ctypes.c_void_p()
        _lib.check(lib.av_config_new(ctypes.byref(cfg)))
        try:
            self._configure(cfg, config, state_dir, services, listen, resolve,
                            upstream_cacert, proxy, tokens, gateways)
            if secrets is not None or secret_fn is not None:
                fn = self._make_secret_fn(state, secrets, secret_fn)
                state.keepalive.append(fn)
                self._cfg_check(cfg, lib.av_config_set_secret_fn(cfg, fn, None))
            self._cfg_check(cfg, lib.av_config_validate(cfg))
            self._state_dir = lib.av_config_state_dir(cfg).decode("utf-8", "surrogateescape")
            self._listen = [lib.av_config_listen_get(cfg, i).decode()
                            for i in range(lib.av_config_listen_count(cfg))]
            self._gateway_names = [lib.av_config_gateway_name(cfg, i).decode()
                                   for i in range(lib.av_config_gateway_count(cfg))]
            self._service_names = [lib.av_config_service_name(cfg, i).decode()
                                   for i in range(lib.av_config_service_count(cfg))]
            ctx = ctypes.c_void_p()
            err = ctypes.create_string_buffer(512)
            rc = lib.av_ctx_new(ctypes.byref(ctx), cfg, err, len(err))
            if rc < 0:
                msg = err.value.decode("utf-8", "replace") or _lib.strerror(rc)
                raise Error(msg, code=rc)
        finally:
            lib.av_config_free(cfg)

        state.ctx = ctx.value
        # From here on the context is ours: a forgotten Vault is stopped when
        # it is collected, or at interpreter exit (no drain then).
        self._finalizer = weakref.finalize(self, state.close, 0.0)
        try:
            self._setup_log(state, log, log_level)
            self._listen_ports = [lib.av_ctx_listen_port(state.ctx, i)
                                  for i in range(len(self._listen))]
            self._gateway_ports = [lib.av_ctx_gateway_port(state.ctx, i)
                                   for i in range(len(self._gateway_names))]
            _lib.check(lib.av_ctx_start(state.ctx))
            state.started = True
        except BaseException:
            self.close(0)
            raise

    # -- construction helpers ----------------------------------------------
    def _cfg_check(self, cfg, rc):
        if rc < 0:
            msg = self._lib.av_config_error(cfg)
            msg = msg.decode("utf-8", "replace") if msg else ""
            raise Error(msg or _lib.strerror(rc), code=rc)
        return rc

    def _configure(self, cfg, config, state_dir, services, listen, resolve,
                   upstream_cacert, proxy, tokens, gateways):
        lib = self._lib
        if config is not None:
            if isinstance(config, bytes) or (isinstance(config, str) and (
                    "\n" in config or config.lstrip().startswith("["))):
                text = _enc(config, "config")
                self._cfg_check(cfg, lib.av_config_load_string(cfg, text, len(text), b"<config>"))
            elif isinstance(config, (str, os.PathLike)):
                self._cfg_check(cfg, lib.av_config_load_file(cfg, _enc(config, "config")))
            else:
                raise TypeError("config must be a path or configuration text")
        if proxy:
            self._cfg_check(cfg, lib.av_config_add_section(cfg, b"proxy", None,
                                                           _keyvals(proxy, "proxy")))
        if listen is not None:
            if listen is True:
                listen = ["127.0.0.1:0"]
            elif listen is False:
                listen = []
            elif isinstance(listen, (str, os.PathLike)):
                listen = [listen]
            self._cfg_check(cfg, lib.av_config_clear_listen(cfg))
            for spec in listen:
                self._cfg_check(cfg, lib.av_config_add_listen(cfg, _enc(spec, "listen")))
        if state_dir is not None:
            self._cfg_check(cfg, lib.av_config_set_state_dir(cfg, _enc(state_dir, "state_dir")))
        elif not lib.av_config_state_dir(cfg):
            self._cfg_check(cfg, lib.av_config_set_state_dir(cfg, _enc(_default_state_dir(),
                                                                       "state_dir")))
        if isinstance(resolve, (str, bytes)):
            resolve = [resolve]
        for spec in resolve or ():
            self._cfg_check(cfg, lib.av_config_add_resolve(cfg, _enc(spec, "resolve")))
        if upstream_cacert is not None:
            self._cfg_check(cfg, lib.av_config_set_upstream_cafile(
                cfg, _enc(upstream_cacert, "upstream_cacert")))
        for kind, spec in ((b"service", services), (b"token", tokens), (b"gateway", gateways)):
            for name, keys in _named_sections(spec, kind.decode() + "s"):
                self._cfg_check(cfg, lib.av_config_add_section(
                    cfg, kind, _enc(name, "a section name"),
                    _keyvals(keys, f"{kind.decode()} {name!r}")))

    @staticmethod
    def _make_secret_fn(state, secrets, secret_fn):
        lib = _lib.lib()

        def answer(req, data):
            n = len(data)
            buf = ctypes.create_string_buffer(data, n)
            try:
                lib.av_secret_request_answer(req, buf, n)
            finally:
                ctypes.memset(buf, 0, n)

        def on_secret(_user_data, name_p, req):
            # Runs on the loop thread. Every path answers exactly once.
            state.note_loop_thread()
            name = name_p.decode("utf-8", "replace") if name_p else ""
            try:
                value = None
                if secrets is not None and name in secrets:
                    value = secrets[name]
                elif secret_fn is not None:
                    value = secret_fn(name)
                if value is None:
                    lib.av_secret_request_fail(req, f"no secret named {name}".encode())
                    return
                data = _secret_bytes(value)
                if not data:
                    lib.av_secret_request_fail(req, f"the secret {name} is empty".encode())
                    return
                answer(req, data)
            except BaseException as e:  # noqa: BLE001 - must never escape into C
                summary = f"{type(e).__name__}: {e}"
                state.secret_errors.append((name, summary))
                logger.error("secret callback for %r raised %s", name, type(e).__name__,
                             exc_info=(type(e), e, e.__traceback__))
                # The reason reaches the agent: the exception's type only.
                lib.av_secret_request_fail(
                    req, f"the secret callback raised {type(e).__name__}".encode())

        return _lib.SECRET_FN(on_secret)

    def _setup_log(self, state, log, log_level):
        if log is False:
            return
        if log_level is not None:
            try:
                max_level = _LEVEL_NAMES[str(log_level).lower()]
            except KeyError:
                raise ValueError(f"log_level must be one of error, warn, info, debug, "
                                 f"not {log_level!r}") from None
        elif callable(log):
            max_level = _lib.LOG_INFO
        else:
            max_level = _lib.LOG_ERROR
            for lvl in (_lib.LOG_DEBUG, _lib.LOG_INFO, _lib.LOG_WARN):
                if logger.isEnabledFor(_PY_LEVEL[lvl]):
                    max_level = lvl
                    break

        def on_log(_user_data, level, message):
            state.note_loop_thread()
            try:
                text = message.decode("utf-8", "replace") if message else ""
                if callable(log):
                    log(_LEVEL_STR.get(level, "debug"), text)
                else:
                    logger.log(_PY_LEVEL.get(level, logging.DEBUG), "%s", text)
            except BaseException:  # noqa: BLE001 - a log handler must not break the loop
                pass

        fn = _lib.LOG_FN(on_log)
        state.keepalive.append(fn)
        self._lib.av_ctx_set_log(state.ctx, fn, None, max_level)

    # -- use -----------------------------------------------------------------
    def _ctx_call(self, fn):
        """Runs fn(ctx) while the context cannot be freed; raises when closed."""
        st = self._state
        with st.lock:
            if st.ctx is None:
                raise Error("the vault is closed", code=AV_ERR_STATE)
            return fn(st.ctx)

    def _check_open(self):
        if self._state.ctx is None:
            raise Error("the vault is closed", code=AV_ERR_STATE)

    @staticmethod
    def _origin_error(rc, upstream, what):
        if rc == AV_ERR_INVALID:
            return Error(f"{what}: invalid upstream origin {upstream!r}: expected "
                         "https://host, https://host:port or http://host:port (no path)",
                         code=rc)
        return Error(f"{what} to {upstream}: {_lib.strerror(rc)}", code=rc)

    def gateway_url(self, upstream):
        """The base URL ("http://127.0.0.1:PORT") of a gateway to the origin
        |upstream| ("https://api.openai.com", "https://host:port" or
        "http://host:port"): send it plain HTTP/1.1 (WebSocket upgrades
        included) or HTTP/2 with prior knowledge; the request is matched to
        the origin's service, injected and sent over verified TLS. One
        gateway per origin, opened on first use, kept until close()."""
        if not isinstance(upstream, str):
            raise TypeError("upstream must be a str such as 'https://api.openai.com'")
        key = upstream.rstrip("/")

        def op(ctx):
            url = self._gateway_urls.get(key)
            if url is None:
                buf = ctypes.create_string_buffer(64)
                rc = self._lib.av_gateway_open(ctx, upstream.encode("utf-8"), buf, len(buf))
                if rc < 0:
                    raise self._origin_error(rc, upstream, "av_gateway_open")
                url = buf.value.decode()
                self._gateway_urls[key] = url
            return url
        return self._ctx_call(op)

    def open_stream(self, upstream, timeout=None):
        """A connected socket.socket (AF_UNIX) speaking plaintext HTTP/1.1
        to |upstream| through the vault (keep-alive and WebSocket upgrades
        included). The caller owns it and closes it."""
        if not isinstance(upstream, str):
            raise TypeError("upstream must be a str such as 'https://api.openai.com'")

        def op(ctx):
            fd = ctypes.c_int(-1)
            rc = self._lib.av_open_stream(ctx, upstream.encode("utf-8"), ctypes.byref(fd))
            if rc < 0:
                raise self._origin_error(rc, upstream, "av_open_stream")
            return fd.value
        fd = self._ctx_call(op)
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
        except BaseException:
            os.close(fd)
            raise
        if timeout is not None:
            sock.settimeout(timeout)
        return sock

    @property
    def proxy_url(self):
        """http://HOST:PORT of the first proxy listener, or None."""
        urls = self.proxy_urls
        return urls[0] if urls else None

    @property
    def proxy_urls(self):
        """http://HOST:PORT of every proxy listener (empty without listen)."""
        self._check_open()
        return [_listen_url(spec, port) for spec, port in zip(self._listen, self._listen_ports)]

    @property
    def proxy_port(self):
        """The bound port of the first proxy listener, or None."""
        self._check_open()
        return self._listen_ports[0] if self._listen_ports else None

    @property
    def gateways(self):
        """{name: "http://HOST:PORT"} of the configured [gateway] sections."""
        self._check_open()
        return {n: f"http://127.0.0.1:{p}" for n, p in zip(self._gateway_names, self._gateway_ports)}

    @property
    def services(self):
        """The names of the configured services, in order."""
        return list(self._service_names)

    @property
    def state_dir(self):
        return self._state_dir

    @property
    def ca_path(self):
        """The proxy's root certificate file (<state_dir>/ca.pem): what
        clients of proxy_url trust."""
        return os.path.join(self._state_dir, "ca.pem")

    @property
    def ca_pem(self):
        """The proxy's root certificate (PEM text)."""
        lib = self._lib
        out = ctypes.c_void_p()
        err = ctypes.create_string_buffer(512)
        rc = lib.av_ca_root_pem_from_dir(self._state_dir.encode("utf-8", "surrogateescape"),
                                         ctypes.byref(out), err, len(err))
        if rc < 0:
            raise Error(err.value.decode("utf-8", "replace") or _lib.strerror(rc), code=rc)
        try:
            return ctypes.string_at(out.value).decode("ascii")
        finally:
            lib.av_free(out)

    @property
    def secret_errors(self):
        """(name, "Type: message") for each secret callback that raised
        (the latest 100)."""
        return list(self._state.secret_errors)

    @property
    def closed(self):
        return self._state.ctx is None

    def close(self, drain_seconds=None):
        """Stops the context (in-flight exchanges get |drain_seconds|,
        default the constructor's) and frees it. Idempotent. Sockets from
        open_stream stay the caller's to close."""
        if self._finalizer is not None:
            self._finalizer.detach()
        self._state.close(self._drain if drain_seconds is None else drain_seconds)

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if self.closed:
            return "<agentvault.Vault closed>"
        return (f"<agentvault.Vault services={self._service_names!r} "
                f"proxy={self.proxy_url!r} gateways={len(self._gateway_urls)}>")
