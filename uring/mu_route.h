/*
 * mu_route: the HTTP route decision in C (issue 13 §2), the twin of conf/routes.py's
 * Router.match. Python decides what the routes are: the Router built from the config is
 * compiled at build time into one flat, position-independent table (the "blob", see
 * worker/http/native_route.py compile_routes, and the layout below); C only reads it. Params
 * are never materialised here: a match reports spans of the path (name index, offset, length)
 * that Python turns into a dict only when it asks.
 *
 * Blob layout: native-endian uint32 words, 4-byte aligned. A header of MU_ROUTE_HEADER_WORDS
 * words (magic, version, total size, then count and offset of each record array, the string
 * pool's offset and length, the number of routes), then the arrays:
 *   table  (8 words): host_off host_len static_first static_count root dynamic
 *                      prefix_first prefix_count; table 0 is the default (no host), the host
 *                      tables follow sorted by (length, bytes), keys lower-case latin-1
 *   static (3): str_off str_len route       sorted by (length, bytes) within a table
 *   node   (7): edge_first edge_count param_node param_name catch_route catch_name route
 *   edge   (3): str_off str_len node        a static child, sorted by (length, bytes)
 *   prefix (3): str_off str_len route       longest first, as the Router tries them
 *   name   (2): str_off str_len             parameter names
 * MU_ROUTE_NONE marks an absent node or route. mu_route_check validates every offset, count,
 * order and index, and that the nodes form trees (each node one parent, children after their
 * parent, depth at most MU_ROUTE_MAX_DEPTH), so the match is bounded by the table's size.
 */
#ifndef MU_ROUTE_H
#define MU_ROUTE_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
#define MU_ROUTE_MAGIC 0x5452554d /* "MURT" */
#define MU_ROUTE_VERSION 1
#define MU_ROUTE_HEADER_WORDS 18
#define MU_ROUTE_NONE 0xffffffff
#define MU_ROUTE_MAX_DEPTH 128
/* a match captures at most one span per level */
#define MU_ROUTE_MAX_CAPTURES 129

typedef struct {
    uint32_t name; /* index into the blob's names */
    uint32_t off;  /* the value: path[off:off + len] */
    uint32_t len;
} mu_route_capture;

/* 0 when `blob` (len bytes) is a table mu_route_match may read, else a negative code
 * (mu_route_error says which check failed). */
int mu_route_check(const void *blob, size_t len);
const char *mu_route_error(int code);

/* The route index for a request, or -1: `host` is the Host header's raw value (the request
 * target's authority for an absolute-form one; NULL/0 when absent), `path` the target's path
 * (the target up to its first '?'). With `caps` (MU_ROUTE_MAX_CAPTURES entries), the params
 * of the match and their number in *ncaps. The blob must have passed mu_route_check. */
int mu_route_match(const void *blob, const char *host, size_t host_len, const char *path,
                   size_t path_len, mu_route_capture *caps, int *ncaps);

/* The name of parameter `index` (not NUL-terminated), its length in *len; NULL if none. */
const char *mu_route_name(const void *blob, uint32_t index, uint32_t *len);
/* cdef-end */

#endif /* MU_ROUTE_H */
