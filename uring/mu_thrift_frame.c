/* mu_thrift_frame: one framed Thrift message head (see mu_thrift_frame.h). */
#include "mu_thrift_frame.h"

#include <string.h>

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* an unsigned varint of at most 5 bytes (message.py _read_varint): 0, or MU_TH_HEAD */
static int varint(const unsigned char *p, size_t *pos, size_t end, uint32_t *v)
{
    uint64_t r = 0;
    for (int i = 0; i < 5; i++) {
        if (*pos >= end)
            return MU_TH_HEAD;
        unsigned b = p[(*pos)++];
        r |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            *v = (uint32_t)r;
            return MU_TH_OK;
        }
    }
    return MU_TH_HEAD;
}

static int ascii(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] >= 0x80)
            return 0;
    return 1;
}

int mu_thrift_frame(const char *buf, size_t len, uint32_t max_frame, int names, mu_thrift_msg *m)
{
    const unsigned char *b = (const unsigned char *)buf;
    if (len < 4)
        return MU_TH_INCOMPLETE;
    uint32_t n = be32(b);
    if (n > max_frame)
        return MU_TH_OVERSIZE;
    if (len - 4 < n)
        return MU_TH_INCOMPLETE;
    const unsigned char *msg = b + 4;
    memset(m, 0, sizeof(*m));
    m->total = n + 4;
    if (n < 1)
        return MU_TH_HEAD;
    if (msg[0] == 0x80) {
        if (n < 8 || msg[1] != 0x01)
            return MU_TH_HEAD;
        int32_t nlen = (int32_t)be32(msg + 4);
        if (nlen < 0 || nlen > MU_TH_MAX_NAME || 8 + (uint32_t)nlen + 4 > n)
            return MU_TH_HEAD;
        if (names && !ascii(msg + 8, (size_t)nlen))
            return MU_TH_NAME;
        m->proto = MU_TH_BINARY;
        m->mtype = msg[3];
        m->name_at = 8;
        m->name_len = (uint32_t)nlen;
        m->seqid_at = 8 + (uint32_t)nlen;
        m->seqid_len = 4;
        m->seqid = (int32_t)be32(msg + m->seqid_at);
        return MU_TH_OK;
    }
    if (msg[0] != 0x82)
        return MU_TH_LOOSE;
    if (n < 4 || (msg[1] & 0x1F) != 1)
        return MU_TH_HEAD;
    size_t pos = 2;
    uint32_t seq, nlen;
    if (varint(msg, &pos, n, &seq) != MU_TH_OK)
        return MU_TH_HEAD;
    uint32_t seqlen = (uint32_t)pos - 2;
    if (varint(msg, &pos, n, &nlen) != MU_TH_OK)
        return MU_TH_HEAD;
    if (nlen > MU_TH_MAX_NAME || pos + nlen > n)
        return MU_TH_HEAD;
    /* the compact head's name is always decoded by the Python engine (message.py) */
    if (!ascii(msg + pos, nlen))
        return MU_TH_NAME;
    m->proto = MU_TH_COMPACT;
    m->mtype = msg[1] >> 5;
    m->seqid = (int32_t)seq;
    m->seqid_at = 2;
    m->seqid_len = seqlen;
    m->name_at = (uint32_t)pos;
    m->name_len = nlen;
    return MU_TH_OK;
}

static size_t varint_put(uint32_t v, unsigned char *out)
{
    size_t i = 0;
    while (v > 0x7F) {
        out[i++] = (unsigned char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    out[i++] = (unsigned char)v;
    return i;
}

size_t mu_thrift_encoded_len(const mu_thrift_msg *m, int32_t seqid)
{
    if (m->proto != MU_TH_COMPACT)
        return m->total;
    unsigned char tmp[5];
    return m->total - m->seqid_len + varint_put((uint32_t)seqid, tmp);
}

void mu_thrift_encode(const char *buf, const mu_thrift_msg *m, int32_t seqid, char *out)
{
    unsigned char *o = (unsigned char *)out;
    uint32_t s = (uint32_t)seqid;
    if (m->proto != MU_TH_COMPACT) {
        memcpy(o, buf, m->total);
        unsigned char *p = o + 4 + m->seqid_at;
        p[0] = (unsigned char)(s >> 24);
        p[1] = (unsigned char)(s >> 16);
        p[2] = (unsigned char)(s >> 8);
        p[3] = (unsigned char)s;
        return;
    }
    unsigned char v[5];
    size_t vl = varint_put(s, v);
    uint32_t n = m->total - 4 - m->seqid_len + (uint32_t)vl;
    o[0] = (unsigned char)(n >> 24);
    o[1] = (unsigned char)(n >> 16);
    o[2] = (unsigned char)(n >> 8);
    o[3] = (unsigned char)n;
    size_t at = 4 + m->seqid_at;
    memcpy(o + 4, buf + 4, m->seqid_at);
    memcpy(o + at, v, vl);
    size_t rest = m->total - at - m->seqid_len;
    memcpy(o + at + vl, buf + at + m->seqid_len, rest);
}

const char *mu_thrift_reason(int rc)
{
    switch (rc) {
    case MU_TH_INCOMPLETE:
        return "incomplete";
    case MU_TH_OK:
        return "ok";
    case MU_TH_OVERSIZE:
        return "oversize";
    case MU_TH_HEAD:
        return "head";
    case MU_TH_LOOSE:
        return "loose";
    case MU_TH_NAME:
        return "name";
    default:
        return "unknown";
    }
}
