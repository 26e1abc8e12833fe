/* chains.bitcoin._blockwalk: the C build of chains/bitcoin/blockwalk.py (walk, merkle_root).
 *
 * blockwalk.py is the reference: this file does exactly what it does, read by read, so that
 * both give the same results and the same errors on any bytes (tests/unit/test_btc_walk.py
 * runs the two side by side on random and mutated blocks). What C changes is the cost: the
 * reference spends most of a block in ~14,000 hashlib calls (~1 us each: OpenSSL's per-call
 * set-up), this file hashes with its own SHA-256 and builds its lists without bytecode.
 *
 * Offsets follow Python's semantics without Python's big integers: an offset that a size
 * pushes past the end is clamped to OFF_BEYOND (still past the end, so the next read fails
 * as the reference's does, and slices are clamped as Python clamps them). Every read is
 * bounds-checked and raises IndexError, never reads outside the buffer.
 *
 * No I/O, no global state but the constants and the imported exception class.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define OFF_BEYOND ((int64_t)1 << 62)
#define KEY_SIZE 34
#define HASHED 0xFF

/* ------------------------------------------------------------------ SHA-256 (FIPS 180-4) */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t H256[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

typedef struct {
    uint32_t h[8];
    uint64_t total; /* bytes fed so far */
    uint8_t block[64];
    size_t used; /* bytes waiting in block */
} Sha256;

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static inline uint32_t load_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline void store_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static void compress_portable(uint32_t *state, const uint8_t *data, size_t blocks) {
    uint32_t w[64];
    while (blocks--) {
        for (int i = 0; i < 16; i++) w[i] = load_be32(data + 4 * i);
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
        uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
            uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        state[0] += a; state[1] += b; state[2] += c; state[3] += d;
        state[4] += e; state[5] += f; state[6] += g; state[7] += h;
        data += 64;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_SHA_NI_CODE 1
#include <cpuid.h>
#include <immintrin.h>

/* CPUID, not __builtin_cpu_supports("sha") (which older gcc and clang do not know):
 * leaf 7 EBX bit 29 = SHA, leaf 1 ECX bits 9 and 19 = SSSE3 and SSE4.1. */
static int cpu_has_sha_ni(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 9)) || !(c & (1u << 19))) return 0;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1;
}

/* The SHA extensions (Intel SHA-NI, AMD Zen and later): four rounds per sha256rnds2 pair.
 * The state is kept as ABEF / CDGH, the layout the instructions use. */
__attribute__((target("sha,sse4.1")))
static void compress_sha_ni(uint32_t *state, const uint8_t *data, size_t blocks) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_loadu_si128((const __m128i *)&state[0]);   /* A B C D (lanes 0..3) */
    __m128i st1 = _mm_loadu_si128((const __m128i *)&state[4]);   /* E F G H */
    tmp = _mm_shuffle_epi32(tmp, 0xB1);                          /* B A D C */
    st1 = _mm_shuffle_epi32(st1, 0x1B);                          /* H G F E */
    __m128i st0 = _mm_alignr_epi8(tmp, st1, 8);                  /* ABEF */
    st1 = _mm_blend_epi16(st1, tmp, 0xF0);                       /* CDGH */
    while (blocks--) {
        const __m128i save0 = st0, save1 = st1;
        __m128i w0, w1, w2, w3, msg;
        w0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 0)), bswap);
        w1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16)), bswap);
        w2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 32)), bswap);
        w3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 48)), bswap);
        for (int r = 0; r < 16; r++) {
            /* rounds 4r..4r+3 on w0, then the schedule's next four words:
             * W[i] = sigma1(W[i-2]) + W[i-7] + sigma0(W[i-15]) + W[i-16] */
            msg = _mm_add_epi32(w0, _mm_loadu_si128((const __m128i *)&K256[4 * r]));
            st1 = _mm_sha256rnds2_epu32(st1, st0, msg);
            msg = _mm_shuffle_epi32(msg, 0x0E);
            st0 = _mm_sha256rnds2_epu32(st0, st1, msg);
            if (r < 12) {
                __m128i nxt = _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8(w3, w2, 4));
                nxt = _mm_sha256msg2_epu32(nxt, w3);
                w0 = w1; w1 = w2; w2 = w3; w3 = nxt;
            } else {
                w0 = w1; w1 = w2; w2 = w3;
            }
        }
        st0 = _mm_add_epi32(st0, save0);
        st1 = _mm_add_epi32(st1, save1);
        data += 64;
    }
    tmp = _mm_shuffle_epi32(st0, 0x1B);                          /* FEBA */
    st1 = _mm_shuffle_epi32(st1, 0xB1);                          /* DCHG */
    st0 = _mm_blend_epi16(tmp, st1, 0xF0);                       /* DCBA */
    st1 = _mm_alignr_epi8(st1, tmp, 8);                          /* HGFE */
    _mm_storeu_si128((__m128i *)&state[0], st0);
    _mm_storeu_si128((__m128i *)&state[4], st1);
}
#endif

typedef void (*CompressFn)(uint32_t *, const uint8_t *, size_t);
static CompressFn compress = compress_portable;

static inline void sha_init(Sha256 *s) {
    memcpy(s->h, H256, sizeof H256);
    s->total = 0;
    s->used = 0;
}

static void sha_update(Sha256 *s, const uint8_t *p, size_t n) {
    s->total += n;
    if (s->used) {
        size_t take = 64 - s->used < n ? 64 - s->used : n;
        memcpy(s->block + s->used, p, take);
        s->used += take; p += take; n -= take;
        if (s->used < 64) return;
        compress(s->h, s->block, 1);
        s->used = 0;
    }
    if (n >= 64) {
        compress(s->h, p, n / 64);
        p += n & ~(size_t)63;
        n &= 63;
    }
    if (n) {
        memcpy(s->block, p, n);
        s->used = n;
    }
}

static void sha_final(Sha256 *s, uint8_t out[32]) {
    uint64_t bits = s->total * 8;
    uint8_t pad[72];
    size_t padlen = (s->used < 56 ? 56 : 120) - s->used;
    memset(pad, 0, sizeof pad);
    pad[0] = 0x80;
    for (int i = 0; i < 8; i++) pad[padlen + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha_update(s, pad, padlen + 8);
    for (int i = 0; i < 8; i++) store_be32(out + 4 * i, s->h[i]);
}

/* SHA-256 of a 32-byte digest, in place: one block, its padding fixed. */
static void sha_of_digest(uint8_t d[32]) {
    uint8_t block[64];
    uint32_t h[8];
    memcpy(block, d, 32);
    memset(block + 32, 0, 32);
    block[32] = 0x80;
    block[62] = 0x01; /* 256 bits, big-endian */
    memcpy(h, H256, sizeof H256);
    compress(h, block, 1);
    for (int i = 0; i < 8; i++) store_be32(d + 4 * i, h[i]);
}

/* ------------------------------------------------------------------ the walk */

static PyObject *NodeAnswerInvalid; /* watcher.errors.NodeAnswerInvalid */
static PyObject *empty_bytes;

typedef struct {
    const uint8_t *p;
    int64_t n;
} Buf;

/* a + b for offsets, clamped past the end (b is a size read from the bytes, up to 2^64-1) */
static inline int64_t off_add(int64_t a, uint64_t b) {
    if (a >= OFF_BEYOND || b >= (uint64_t)OFF_BEYOND || (uint64_t)a + b >= (uint64_t)OFF_BEYOND)
        return OFF_BEYOND;
    return a + (int64_t)b;
}

static int index_error(void) {
    PyErr_SetString(PyExc_IndexError, "index out of range");
    return -1;
}

/* buf[at] as Python reads it, or IndexError and `goto fail` past the end (a GNU statement
 * expression: gcc and clang; the build is optional elsewhere, and the reference runs). */
#define AT(at) ({ int64_t at_ = (at); if (at_ >= B.n) { index_error(); goto fail; } B.p[at_]; })
#define RD(var, at) ((var) = AT(at))

/* Clamped [a, b) as Python slices it (both non-negative). */
static inline void clamp(const Buf *B, int64_t a, int64_t b, int64_t *lo, int64_t *len) {
    if (a > B->n) a = B->n;
    if (b > B->n) b = B->n;
    *lo = a;
    *len = b > a ? b - a : 0;
}

/* CompactSize at off (first byte >= 0xfd): the value and the offset after it. */
static int varint(const Buf *B, int64_t off, uint64_t *value, int64_t *after) {
    if (off >= B->n) return index_error();
    uint8_t b = B->p[off];
    int64_t end = off + (b == 0xFD ? 3 : b == 0xFE ? 5 : 9);
    if (end > B->n) return index_error();
    uint64_t v = 0;
    for (int64_t i = end - 1; i > off; i--) v = (v << 8) | B->p[i];
    *value = v;
    *after = end;
    return 0;
}

/* buf[s:e] + zero padding to `width` bytes in total (the slice may be clamped short) */
static PyObject *key_padded(const Buf *B, int64_t s, int64_t e, Py_ssize_t pad) {
    int64_t lo, len;
    clamp(B, s, e, &lo, &len);
    PyObject *k = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len + pad);
    if (k == NULL) return NULL;
    char *dst = PyBytes_AS_STRING(k);
    memcpy(dst, B->p + lo, (size_t)len);
    memset(dst + len, 0, (size_t)pad);
    return k;
}

static inline int slice_equals(const Buf *B, int64_t s, int64_t e, const char *want, int64_t wlen) {
    int64_t lo, len;
    clamp(B, s, e, &lo, &len);
    return len == wlen && memcmp(B->p + lo, want, (size_t)wlen) == 0;
}

static inline void sha_range(Sha256 *h, const Buf *B, int64_t a, int64_t b) {
    int64_t lo, len;
    clamp(B, a, b, &lo, &len);
    sha_update(h, B->p + lo, (size_t)len);
}

static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL) return -1;
    int r = PyList_Append(list, item);
    Py_DECREF(item);
    return r;
}

static PyObject *raise_tx(PyObject *what, Py_ssize_t tx, const char *fmt_tail, int flag) {
    PyObject *msg = flag >= 0
        ? PyUnicode_FromFormat("%U: transaction %zd has witness flag %d, not 1", what, tx, flag)
        : PyUnicode_FromFormat("%U: transaction %zd has %s", what, tx, fmt_tail);
    if (msg == NULL) return NULL;
    PyObject *exc = PyObject_CallOneArg(NodeAnswerInvalid, msg);
    Py_DECREF(msg);
    if (exc == NULL) return NULL;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *walk(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "walk(buf, off, count, what) takes 4 arguments");
        return NULL;
    }
    PyObject *bufobj = args[0], *what = args[3];
    if (!PyBytes_Check(bufobj)) {
        PyErr_SetString(PyExc_TypeError, "walk: buf must be bytes");
        return NULL;
    }
    if (!PyUnicode_Check(what)) {
        PyErr_SetString(PyExc_TypeError, "walk: what must be str");
        return NULL;
    }
    long long off0 = PyLong_AsLongLong(args[1]);
    if (off0 == -1 && PyErr_Occurred()) return NULL;
    if (off0 < 0) {
        PyErr_SetString(PyExc_ValueError, "walk: negative offset");
        return NULL;
    }
    unsigned long long count = PyLong_AsUnsignedLongLong(args[2]);
    if (count == (unsigned long long)-1 && PyErr_Occurred()) return NULL;

    const Buf B = {(const uint8_t *)PyBytes_AS_STRING(bufobj), (int64_t)PyBytes_GET_SIZE(bufobj)};
    int64_t off = off0 < OFF_BEYOND ? (int64_t)off0 : OFF_BEYOND;
    PyObject *tx_starts = PyList_New(0), *txids = PyList_New(0), *witness = PyList_New(0);
    PyObject *out_first = PyList_New(0), *keys = PyList_New(0);
    if (!tx_starts || !txids || !witness || !out_first || !keys) goto fail;

    for (unsigned long long t = 0; t < count; t++) {
        const int64_t start = off;
        uint8_t b;
        if (append_new(tx_starts, PyLong_FromLongLong(start)) < 0) goto fail;
        if (append_new(out_first, PyLong_FromSsize_t(PyList_GET_SIZE(keys))) < 0) goto fail;
        off = off_add(off, 4);
        RD(b, off);
        const int segwit = b == 0;
        if (segwit) {
            uint8_t flag;
            RD(flag, off_add(off, 1));
            if (flag != 1) {
                raise_tx(what, PyList_GET_SIZE(txids), NULL, flag);
                goto fail;
            }
            off = off_add(off, 2);
            RD(b, off);
        }
        const int64_t body = off;
        uint64_t n_in, n_out, size;
        int64_t p;
        if (b < 0xFD) {
            n_in = b;
            off = off_add(off, 1);
        } else if (varint(&B, off, &n_in, &off) < 0) {
            goto fail;
        }
        if (n_in == 0) {
            raise_tx(what, PyList_GET_SIZE(txids), "no input", -1);
            goto fail;
        }
        for (uint64_t i = 0; i < n_in; i++) {
            RD(b, off_add(off, 36));
            if (b < 0xFD) {
                off = off_add(off, 41 + (uint64_t)b);
            } else {
                if (varint(&B, off_add(off, 36), &size, &p) < 0) goto fail;
                off = off_add(off_add(p, size), 4);
            }
        }
        RD(b, off);
        if (b < 0xFD) {
            n_out = b;
            off = off_add(off, 1);
        } else if (varint(&B, off, &n_out, &off) < 0) {
            goto fail;
        }
        if (n_out == 0) {
            raise_tx(what, PyList_GET_SIZE(txids), "no output", -1);
            goto fail;
        }
        for (uint64_t i = 0; i < n_out; i++) {
            uint64_t len;
            int64_t s;
            RD(b, off_add(off, 8));
            if (b < 0xFD) {
                len = b;
                s = off_add(off, 9);
            } else if (varint(&B, off_add(off, 8), &len, &s) < 0) {
                goto fail;
            }
            const int64_t e = off_add(s, len);
            PyObject *key = NULL;
            /* the reference's chain of templates, each read in its order */
            if (len == 22 && AT(s) == 0 && AT(off_add(s, 1)) == 20) {
                key = key_padded(&B, s, e, KEY_SIZE - 22);
            } else if (len == 34 && AT(off_add(s, 1)) == 32 && (AT(s) == 0x51 || AT(s) == 0)) {
                key = key_padded(&B, s, e, 0);
            } else if (len == 25 && slice_equals(&B, s, off_add(s, 3), "\x76\xa9\x14", 3)
                       && slice_equals(&B, off_add(s, 23), e, "\x88\xac", 2)) {
                key = key_padded(&B, s, e, KEY_SIZE - 25);
            } else if (len == 23 && AT(s) == 0xA9 && AT(off_add(s, 1)) == 20
                       && AT(off_add(s, 22)) == 0x87) {
                key = key_padded(&B, s, e, KEY_SIZE - 23);
            } else if (4 <= len && len <= 42 && 0x51 <= AT(s) && AT(s) <= 0x60
                       && (uint64_t)AT(off_add(s, 1)) == len - 2) {
                if (len <= 34) {
                    key = key_padded(&B, s, e, KEY_SIZE - (Py_ssize_t)len);
                } else {
                    Sha256 h;
                    uint8_t d[32];
                    sha_init(&h);
                    sha_range(&h, &B, s, e);
                    sha_final(&h, d);
                    key = PyBytes_FromStringAndSize(NULL, KEY_SIZE);
                    if (key != NULL) {
                        char *k = PyBytes_AS_STRING(key);
                        k[0] = (char)HASHED;
                        memcpy(k + 1, d, 32);
                        k[33] = 0;
                    }
                }
            } else {
                key = Py_NewRef(empty_bytes);
            }
            if (append_new(keys, key) < 0) goto fail;
            off = e;
        }
        const int64_t body_end = off;
        if (segwit) {
            for (uint64_t i = 0; i < n_in; i++) {
                uint8_t items8;
                uint64_t items;
                RD(items8, off);
                /* P2WPKH's two items and P2TR's one, as the reference unrolls them */
                if (items8 == 2) {
                    RD(b, off_add(off, 1));
                    if (b < 0xFD) {
                        p = off_add(off, 2 + (uint64_t)b);
                        RD(b, p);
                        if (b < 0xFD) {
                            off = off_add(p, 1 + (uint64_t)b);
                            continue;
                        }
                    }
                } else if (items8 == 1) {
                    RD(b, off_add(off, 1));
                    if (b < 0xFD) {
                        off = off_add(off, 2 + (uint64_t)b);
                        continue;
                    }
                }
                if (items8 < 0xFD) {
                    items = items8;
                    off = off_add(off, 1);
                } else if (varint(&B, off, &items, &off) < 0) {
                    goto fail;
                }
                for (uint64_t j = 0; j < items; j++) {
                    RD(b, off);
                    if (b < 0xFD) {
                        off = off_add(off, 1 + (uint64_t)b);
                    } else {
                        if (varint(&B, off, &size, &p) < 0) goto fail;
                        off = off_add(p, size);
                    }
                }
            }
        }
        Sha256 h;
        uint8_t d[32];
        sha_init(&h);
        if (segwit) {
            sha_range(&h, &B, start, off_add(start, 4));
            sha_range(&h, &B, body, body_end);
            sha_range(&h, &B, off, off_add(off, 4));
        } else {
            sha_range(&h, &B, start, off_add(off, 4));
        }
        sha_final(&h, d);
        sha_of_digest(d);
        off = off_add(off, 4);
        if (append_new(txids, PyBytes_FromStringAndSize((const char *)d, 32)) < 0) goto fail;
        if (PyList_Append(witness, segwit ? Py_True : Py_False) < 0) goto fail;
    }
    if (append_new(tx_starts, PyLong_FromLongLong(off)) < 0) goto fail;
    if (append_new(out_first, PyLong_FromSsize_t(PyList_GET_SIZE(keys))) < 0) goto fail;
    {
        PyObject *end = PyLong_FromLongLong(off);
        if (end == NULL) goto fail;
        PyObject *out = PyTuple_Pack(6, end, tx_starts, txids, witness, out_first, keys);
        Py_DECREF(end);
        Py_DECREF(tx_starts); Py_DECREF(txids); Py_DECREF(witness);
        Py_DECREF(out_first); Py_DECREF(keys);
        return out;
    }
fail:
    Py_XDECREF(tx_starts); Py_XDECREF(txids); Py_XDECREF(witness);
    Py_XDECREF(out_first); Py_XDECREF(keys);
    return NULL;
}

/* ------------------------------------------------------------------ merkle root */

static PyObject *merkle_root(PyObject *self, PyObject *txids) {
    (void)self;
    if (!PyList_Check(txids)) {
        PyErr_SetString(PyExc_TypeError, "merkle_root: txids must be a list");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(txids);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "no txids");
        return NULL;
    }
    if (n == 1) return Py_NewRef(PyList_GET_ITEM(txids, 0));
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(PyList_GET_ITEM(txids, i))) {
            PyErr_SetString(PyExc_TypeError, "merkle_root: txids must be bytes");
            return NULL;
        }
    }
    Py_ssize_t pairs = (n + 1) / 2;
    uint8_t *level = PyMem_Malloc((size_t)pairs * 32);
    if (level == NULL) return PyErr_NoMemory();
    /* first level from the list (items of any length, as a + b hashes them) */
    for (Py_ssize_t i = 0; i < pairs; i++) {
        PyObject *a = PyList_GET_ITEM(txids, 2 * i);
        PyObject *b = PyList_GET_ITEM(txids, 2 * i + 1 < n ? 2 * i + 1 : 2 * i);
        Sha256 h;
        sha_init(&h);
        sha_update(&h, (const uint8_t *)PyBytes_AS_STRING(a), (size_t)PyBytes_GET_SIZE(a));
        sha_update(&h, (const uint8_t *)PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
        sha_final(&h, level + 32 * i);
        sha_of_digest(level + 32 * i);
    }
    n = pairs;
    while (n > 1) {
        pairs = (n + 1) / 2;
        for (Py_ssize_t i = 0; i < pairs; i++) {
            uint8_t pair[64];
            uint8_t *d = level + 32 * i;
            memcpy(pair, level + 64 * i, 32);
            memcpy(pair + 32, level + (2 * i + 1 < n ? 64 * i + 32 : 64 * i), 32);
            Sha256 h;
            sha_init(&h);
            sha_update(&h, pair, 64);
            sha_final(&h, d);
            sha_of_digest(d);
        }
        n = pairs;
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)level, 32);
    PyMem_Free(level);
    return out;
}

/* ------------------------------------------------------------------ for the tests */

static PyObject *sha256_digest(PyObject *self, PyObject *data) {
    (void)self;
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "sha256: bytes expected");
        return NULL;
    }
    Sha256 h;
    uint8_t d[32];
    sha_init(&h);
    sha_update(&h, (const uint8_t *)PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
    sha_final(&h, d);
    return PyBytes_FromStringAndSize((const char *)d, 32);
}

static PyObject *set_sha_extensions(PyObject *self, PyObject *on) {
    (void)self;
    int want = PyObject_IsTrue(on);
    if (want < 0) return NULL;
#ifdef HAVE_SHA_NI_CODE
    if (want && cpu_has_sha_ni()) {
        compress = compress_sha_ni;
        Py_RETURN_TRUE;
    }
#endif
    compress = compress_portable;
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL,
     "walk(buf, off, count, what) -> (end, tx_starts, txids, witness, out_first, keys)"},
    {"merkle_root", merkle_root, METH_O, "merkle_root(txids) -> bytes"},
    {"sha256", sha256_digest, METH_O, "SHA-256 of bytes with this module's code (tests)"},
    {"set_sha_extensions", set_sha_extensions, METH_O,
     "Use the CPU's SHA instructions if it has them (True: the default) or the portable code; "
     "returns whether the instructions are now used."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "chains.bitcoin._blockwalk",
    "C build of chains.bitcoin.blockwalk (see that module).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__blockwalk(void) {
    PyObject *errors = PyImport_ImportModule("watcher.errors");
    if (errors == NULL) return NULL;
    NodeAnswerInvalid = PyObject_GetAttrString(errors, "NodeAnswerInvalid");
    Py_DECREF(errors);
    if (NodeAnswerInvalid == NULL) return NULL;
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    if (empty_bytes == NULL) return NULL;
#ifdef HAVE_SHA_NI_CODE
    if (cpu_has_sha_ni()) compress = compress_sha_ni;
#endif
    return PyModule_Create(&module);
}
