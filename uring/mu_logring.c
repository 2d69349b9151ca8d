/* mu_logring: the per-worker access-log ring; see mu_logring.h for the layout and policy. */
#include "mu_logring.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(mu_log_record) == 80, "mu_log_record is 80 bytes (the Python twin reads it)");
_Static_assert(sizeof(mu_log_record) <= MU_LOG_SLOT, "a header fits in one slot");

#define MAX_TEXT ((size_t)MU_LOG_SLOT * MU_LOG_MAX_SLOTS)

mu_logring *mu_log_new(uint32_t nslots) {
    if (nslots == 0 || nslots > MU_LOG_MAX_SLOTS)
        return NULL;
    mu_logring *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->slots = malloc((size_t)nslots * MU_LOG_SLOT);
    if (!r->slots) {
        free(r);
        return NULL;
    }
    r->nslots = nslots;
    return r;
}

void mu_log_free(mu_logring *r) {
    if (!r)
        return;
    free(r->slots);
    free(r);
}

uint32_t mu_log_slots(size_t text) {
    if (text > MAX_TEXT)
        return MU_LOG_MAX_SLOTS + 1;
    return (uint32_t)((sizeof(mu_log_record) + text + MU_LOG_SLOT - 1) / MU_LOG_SLOT);
}

static mu_log_record *slot(mu_logring *r, uint32_t i) {
    return (mu_log_record *)(void *)(r->slots + (size_t)i * MU_LOG_SLOT);
}

/* Room for a record of k slots at the head (a pad first if it would run past the end), or
 * NULL: dropped and counted. */
static mu_log_record *place(mu_logring *r, uint32_t k) {
    if (r->used == 0) /* empty: start over at slot 0 (no pad needed) */
        r->head = r->tail = 0;
    uint32_t pad = r->head + (uint64_t)k > r->nslots ? r->nslots - r->head : 0;
    if (k > r->nslots || (uint64_t)pad + k > r->nslots - r->used) {
        r->dropped++;
        return NULL;
    }
    if (pad) {
        mu_log_record *p = slot(r, r->head);
        memset(p, 0, sizeof *p);
        p->nslots = pad;
        p->server = MU_LOG_PAD;
        r->used += pad;
        r->head = 0;
    }
    mu_log_record *rec = slot(r, r->head);
    r->head = (r->head + k) % r->nslots;
    r->used += k;
    r->appended++;
    return rec;
}

int mu_log_append(mu_logring *r, uint32_t server, uint32_t status, uint64_t bytes_in,
                  uint64_t bytes_out, double duration, const mu_log_str *f) {
    size_t text = 0;
    for (int i = 0; i < MU_LOG_FIELDS; i++)
        if (f[i].ptr)
            text += f[i].len;
    uint32_t k = mu_log_slots(text);
    mu_log_record *rec = place(r, k);
    if (!rec)
        return -1;
    memset(rec, 0, sizeof *rec);
    rec->nslots = k;
    rec->server = server;
    rec->status = status;
    rec->bytes_in = bytes_in;
    rec->bytes_out = bytes_out;
    rec->duration = duration;
    rec->size = (uint32_t)(sizeof *rec + text);
    unsigned char *out = (unsigned char *)(rec + 1);
    for (int i = 0; i < MU_LOG_FIELDS; i++) {
        if (!f[i].ptr)
            continue;
        rec->present |= 1u << i;
        if (f[i].utf8)
            rec->utf8 |= 1u << i;
        rec->len[i] = f[i].len;
        if (f[i].len)
            memcpy(out, f[i].ptr, f[i].len);
        out += f[i].len;
    }
    return 0;
}

int mu_log_append_raw(mu_logring *r, const void *data, size_t size) {
    mu_log_record h;
    if (size < sizeof h || size > sizeof h + MAX_TEXT)
        return -2;
    memcpy(&h, data, sizeof h);
    const uint32_t all = (1u << MU_LOG_FIELDS) - 1;
    if (h.size != size || h.server == MU_LOG_PAD || (h.present & ~all) || (h.utf8 & ~h.present))
        return -2;
    size_t text = 0;
    for (int i = 0; i < MU_LOG_FIELDS; i++) {
        if (!(h.present & (1u << i)) && h.len[i])
            return -2;
        text += h.len[i];
    }
    if (text != size - sizeof h)
        return -2;
    uint32_t k = mu_log_slots(text);
    mu_log_record *rec = place(r, k);
    if (!rec)
        return -1;
    memcpy(rec, data, size);
    rec->nslots = k;
    rec->reserved = 0;
    return 0;
}

size_t mu_log_take(mu_logring *r, void *out, size_t cap, uint32_t *nrecords) {
    unsigned char *dst = out;
    size_t pos = 0;
    uint32_t count = 0;
    while (r->used) {
        mu_log_record *rec = slot(r, r->tail);
        if (rec->server != MU_LOG_PAD) {
            size_t off = (pos + 7) & ~(size_t)7;
            if (off > cap || rec->size > cap - off)
                break;
            memcpy(dst + off, rec, rec->size);
            pos = off + rec->size;
            count++;
        }
        r->tail = (r->tail + rec->nslots) % r->nslots;
        r->used -= rec->nslots;
    }
    if (nrecords)
        *nrecords = count;
    return pos;
}
