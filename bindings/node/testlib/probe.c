/* testlib/probe.c - a test-only addon that links libagentvault the ordinary way
 * (DT_NEEDED, no dlopen flags of its own). The tests load it with and
 * without RTLD_DEEPBIND to show the symbol-binding problem the real addon
 * (src/addon.c) avoids: see README.md, "Node's OpenSSL and ours". */
#define NAPI_VERSION 8
#include <node_api.h>

#include <agentvault/agentvault.h>

#include <stdlib.h>
#include <string.h>

static napi_value probe_tls_library(napi_env env, napi_callback_info info)
{
    const char *backend = "?";
    const char *path = av_tls_library(&backend);
    napi_value obj, b, p;
    napi_create_object(env, &obj);
    napi_create_string_utf8(env, backend, NAPI_AUTO_LENGTH, &b);
    napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &p);
    napi_set_named_property(env, obj, "backend", b);
    napi_set_named_property(env, obj, "path", p);
    return obj;
}

/* Exercises the TLS library for real: creates (or loads) a CA in the
 * directory given, which generates a key and signs a certificate. */
static napi_value probe_make_ca(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
    char dir[4096];
    size_t n = 0;
    if (argc < 1 || napi_get_value_string_utf8(env, argv[0], dir, sizeof(dir), &n) != napi_ok) {
        napi_throw_type_error(env, NULL, "makeCa(dir)");
        return NULL;
    }
    char *pem = NULL, err[256] = "";
    int rc = av_ca_root_pem_from_dir(dir, &pem, err, sizeof(err));
    if (rc) {
        napi_throw_error(env, NULL, err[0] ? err : av_strerror(rc));
        return NULL;
    }
    napi_value out;
    napi_create_string_utf8(env, pem, NAPI_AUTO_LENGTH, &out);
    av_free(pem);
    return out;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */)
{
    napi_property_descriptor d[] = {
        {"tlsLibrary", NULL, probe_tls_library, NULL, NULL, NULL, napi_enumerable, NULL},
        {"makeCa", NULL, probe_make_ca, NULL, NULL, NULL, napi_enumerable, NULL},
    };
    napi_define_properties(env, exports, sizeof(d) / sizeof(d[0]), d);
    return exports;
}
