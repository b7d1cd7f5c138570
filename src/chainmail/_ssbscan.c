/* chainmail._ssbscan: the common SSB message, recognised in one pass.
 *
 * scan(raw) answers for a message received as JSON text that is already in
 * the exact form JavaScript writes: JSON.stringify(msg) (compact, as NDJSON
 * lines carry it) or JSON.stringify(msg, null, 2). For such a message it
 * returns the 2-space text that is signed, hashed and stored, and the fields
 * the SSB rules read, after checking those rules' shapes; for anything else
 * it returns None, and ssb.py's Python path decides (and names the error).
 *
 * "Exact form" is deliberately narrow, so that the 2-space text written here
 * is JSON.stringify's for the parsed value without a serialiser:
 *   - no whitespace but the layout of the form itself;
 *   - strings as JSON.stringify escapes them: \" \\ \b \f \n \r \t, \u00xx
 *     (lowercase) for the other control characters, everything else as
 *     strict UTF-8 (no surrogates, no overlong forms);
 *   - integers only, within +-(2^53-1), no "-0" and no leading zeros
 *     (a fraction or exponent goes to the Python path);
 *   - no key made only of digits (JavaScript moves array-index keys first),
 *     no duplicate key, nesting at most MAX_DEPTH deep.
 * ssb.py holds the two paths equal with property tests.
 *
 * scan_many(raws, open_address, sha256_address, max_units) is the verify
 * threads' call: the scan of every raw, then the sha256 id and the ed25519
 * signature of each message found, all with the GIL released (libsodium's
 * crypto_sign_open and crypto_hash_sha256, found by keys.sodium_address, so
 * this module links against nothing). Only the Python objects of the answer
 * are made with the GIL held.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 32
#define MAX_KEYS 64
#define MAX_SAFE 9007199254740991LL
#define MAX_SEQUENCE 2147483647LL

typedef struct {
    const unsigned char *p;   /* next input byte */
    const unsigned char *end; /* one past the input */
    int indented;             /* input is the 2-space form (else compact) */
    unsigned char *out;       /* the 2-space text being written */
    Py_ssize_t len, cap;
    int failed;               /* out of memory: raise, not None */
    int type_ok;              /* an object at depth 1 had a plain "type" of 3..52 chars */
} Scan;

typedef enum { V_NONE, V_OBJECT, V_ARRAY, V_STRING, V_NUMBER, V_LITERAL } Kind;

typedef struct {
    Kind kind;
    const unsigned char *start; /* the value's text in the input */
    Py_ssize_t size;
    long long number;           /* V_NUMBER */
    int escaped;                /* V_STRING: contains an escape or non-ASCII */
} Value;

static int reserve(Scan *s, Py_ssize_t more) {
    if (s->len + more <= s->cap) return 1;
    Py_ssize_t cap = s->cap * 2;
    while (cap < s->len + more) cap *= 2;
    unsigned char *grown = PyMem_RawRealloc(s->out, (size_t)cap);
    if (grown == NULL) {
        s->failed = 1;
        return 0;
    }
    s->out = grown;
    s->cap = cap;
    return 1;
}

static int emit(Scan *s, const unsigned char *bytes, Py_ssize_t n) {
    if (!reserve(s, n)) return 0;
    memcpy(s->out + s->len, bytes, (size_t)n);
    s->len += n;
    return 1;
}

/* A newline and the indentation of `depth` levels. */
static int emit_break(Scan *s, int depth) {
    if (!reserve(s, 1 + 2 * depth)) return 0;
    s->out[s->len++] = '\n';
    memset(s->out + s->len, ' ', (size_t)(2 * depth));
    s->len += 2 * depth;
    return 1;
}

/* In the indented form, the same break must be in the input. */
static int expect_break(Scan *s, int depth) {
    if (!s->indented) return 1;
    Py_ssize_t n = 1 + 2 * depth;
    if (s->end - s->p < n || s->p[0] != '\n') return 0;
    for (Py_ssize_t i = 1; i < n; i++)
        if (s->p[i] != ' ') return 0;
    s->p += n;
    return 1;
}

static int hex_lower(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* One UTF-8 sequence starting at p (first byte >= 0x80), strictly: no
 * overlong forms, no surrogates, nothing beyond U+10FFFF. Its length or 0. */
static int utf8_length(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    Py_ssize_t left = end - p;
    if (c >= 0xC2 && c <= 0xDF) {
        return left >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0; /* overlong */
        if (c == 0xED && p[1] >= 0xA0) return 0; /* a surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 ||
            (p[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0; /* overlong */
        if (c == 0xF4 && p[1] >= 0x90) return 0; /* beyond U+10FFFF */
        return 4;
    }
    return 0;
}

static int scan_string(Scan *s, Value *v) {
    const unsigned char *start = s->p;
    if (s->p >= s->end || *s->p != '"') return 0;
    s->p++;
    int escaped = 0;
    for (;;) {
        if (s->p >= s->end) return 0;
        unsigned char c = *s->p;
        if (c == '"') {
            s->p++;
            break;
        }
        if (c < 0x20) return 0;
        if (c == '\\') {
            escaped = 1;
            if (s->end - s->p < 2) return 0;
            unsigned char e = s->p[1];
            if (e == '"' || e == '\\' || e == 'b' || e == 'f' || e == 'n' || e == 'r' ||
                e == 't') {
                s->p += 2;
                continue;
            }
            if (e != 'u' || s->end - s->p < 6 || s->p[2] != '0' || s->p[3] != '0') return 0;
            int hi = hex_lower(s->p[4]), lo = hex_lower(s->p[5]);
            if (hi < 0 || lo < 0) return 0;
            int code = hi * 16 + lo;
            /* Only control characters without a short escape are written so. */
            if (code >= 0x20 || code == 0x08 || code == 0x09 || code == 0x0A || code == 0x0C ||
                code == 0x0D)
                return 0;
            s->p += 6;
            continue;
        }
        if (c >= 0x80) {
            int n = utf8_length(s->p, s->end);
            if (n == 0) return 0;
            escaped = 1;
            s->p += n;
            continue;
        }
        s->p++;
    }
    v->kind = V_STRING;
    v->start = start;
    v->size = s->p - start;
    v->escaped = escaped;
    return emit(s, start, v->size);
}

static int scan_number(Scan *s, Value *v) {
    const unsigned char *start = s->p;
    int negative = 0;
    if (s->p < s->end && *s->p == '-') {
        negative = 1;
        s->p++;
    }
    if (s->p >= s->end || *s->p < '0' || *s->p > '9') return 0;
    long long value = 0;
    if (*s->p == '0') {
        s->p++;
        if (negative) return 0; /* "-0": JavaScript writes 0 */
    } else {
        int digits = 0;
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
            if (++digits > 16) return 0;
            value = value * 10 + (*s->p - '0');
            s->p++;
        }
        if (value > MAX_SAFE) return 0;
    }
    if (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E' ||
                          (*s->p >= '0' && *s->p <= '9')))
        return 0;
    v->kind = V_NUMBER;
    v->start = start;
    v->size = s->p - start;
    v->number = negative ? -value : value;
    return emit(s, start, v->size);
}

static int scan_literal(Scan *s, Value *v, const char *word) {
    Py_ssize_t n = (Py_ssize_t)strlen(word);
    if (s->end - s->p < n || memcmp(s->p, word, (size_t)n) != 0) return 0;
    v->kind = V_LITERAL;
    v->start = s->p;
    v->size = n;
    s->p += n;
    return emit(s, (const unsigned char *)word, n);
}

static int scan_value(Scan *s, Value *v, int depth);

/* A key: a string not made only of digits. */
static int scan_key(Scan *s, Value *key) {
    if (!scan_string(s, key)) return 0;
    Py_ssize_t n = key->size - 2;
    if (n == 0) return 1;
    for (Py_ssize_t i = 1; i <= n; i++)
        if (key->start[i] < '0' || key->start[i] > '9') return 1;
    return 0;
}

typedef struct {
    const unsigned char *start;
    Py_ssize_t size;
} Span;

static int is_span(const Span *k, const char *quoted) {
    Py_ssize_t n = (Py_ssize_t)strlen(quoted);
    return k->size == n && memcmp(k->start, quoted, (size_t)n) == 0;
}

/* An object's members; their keys go to `keys` (MAX_KEYS), and their values
 * to `values` when it is not NULL (the message itself). At depth 1 (a member
 * of the message: only content may be an object) a "type" member is judged. */
static int scan_object(Scan *s, int depth, Span *keys, Value *values, int *count) {
    s->p++; /* '{' */
    if (!emit(s, (const unsigned char *)"{", 1)) return 0;
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        *count = 0;
        return emit(s, (const unsigned char *)"}", 1);
    }
    int n = 0;
    for (;;) {
        if (n == MAX_KEYS) return 0;
        if (!expect_break(s, depth + 1) || !emit_break(s, depth + 1)) return 0;
        Value key, item;
        if (!scan_key(s, &key)) return 0;
        for (int i = 0; i < n; i++)
            if (keys[i].size == key.size && memcmp(keys[i].start, key.start, (size_t)key.size) == 0)
                return 0; /* a duplicate: JSON.parse keeps the last */
        keys[n].start = key.start;
        keys[n].size = key.size;
        if (s->p >= s->end || *s->p != ':') return 0;
        s->p++;
        if (s->indented) {
            if (s->p >= s->end || *s->p != ' ') return 0;
            s->p++;
        }
        if (!emit(s, (const unsigned char *)": ", 2)) return 0;
        Value *v = values != NULL ? &values[n] : &item;
        if (!scan_value(s, v, depth + 1)) return 0;
        if (depth == 1 && is_span(&keys[n], "\"type\""))
            s->type_ok = v->kind == V_STRING && !v->escaped && v->size - 2 >= 3 &&
                         v->size - 2 <= 52;
        n++;
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            if (!emit(s, (const unsigned char *)",", 1)) return 0;
            continue;
        }
        if (!expect_break(s, depth) || s->p >= s->end || *s->p != '}') return 0;
        s->p++;
        *count = n;
        return emit_break(s, depth) && emit(s, (const unsigned char *)"}", 1);
    }
}

static int scan_nested_object(Scan *s, int depth) {
    Span keys[MAX_KEYS];
    int count;
    return scan_object(s, depth, keys, NULL, &count);
}

static int scan_array(Scan *s, int depth) {
    s->p++; /* '[' */
    if (!emit(s, (const unsigned char *)"[", 1)) return 0;
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return emit(s, (const unsigned char *)"]", 1);
    }
    for (;;) {
        Value item;
        if (!expect_break(s, depth + 1) || !emit_break(s, depth + 1)) return 0;
        if (!scan_value(s, &item, depth + 1)) return 0;
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            if (!emit(s, (const unsigned char *)",", 1)) return 0;
            continue;
        }
        if (!expect_break(s, depth) || s->p >= s->end || *s->p != ']') return 0;
        s->p++;
        return emit_break(s, depth) && emit(s, (const unsigned char *)"]", 1);
    }
}

static int scan_value(Scan *s, Value *v, int depth) {
    if (s->p >= s->end) return 0;
    v->start = s->p;
    switch (*s->p) {
    case '{':
        if (depth >= MAX_DEPTH || !scan_nested_object(s, depth)) return 0;
        v->kind = V_OBJECT;
        break;
    case '[':
        if (depth >= MAX_DEPTH || !scan_array(s, depth)) return 0;
        v->kind = V_ARRAY;
        break;
    case '"':
        return scan_string(s, v);
    case 't':
        return scan_literal(s, v, "true");
    case 'f':
        return scan_literal(s, v, "false");
    case 'n':
        return scan_literal(s, v, "null");
    default:
        return scan_number(s, v);
    }
    v->size = s->p - v->start;
    return 1;
}

static const signed char B64[256] = {
    ['A'] = 1,  ['B'] = 2,  ['C'] = 3,  ['D'] = 4,  ['E'] = 5,  ['F'] = 6,  ['G'] = 7,
    ['H'] = 8,  ['I'] = 9,  ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14,
    ['O'] = 15, ['P'] = 16, ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21,
    ['V'] = 22, ['W'] = 23, ['X'] = 24, ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28,
    ['c'] = 29, ['d'] = 30, ['e'] = 31, ['f'] = 32, ['g'] = 33, ['h'] = 34, ['i'] = 35,
    ['j'] = 36, ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41, ['p'] = 42,
    ['q'] = 43, ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] = 49,
    ['x'] = 50, ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56,
    ['4'] = 57, ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['+'] = 63,
    ['/'] = 64,
}; /* value + 1; 0 for anything else */

/* Canonical base64 of `nbytes` (32 or 64) bytes, `text` without the quotes:
 * decoded into `out`, or 0 when not canonical (the unused low bits of the
 * last character must be zero, as is-canonical-base64 demands). */
static int b64_decode(const unsigned char *text, Py_ssize_t size, int nbytes, unsigned char *out) {
    int chars = (nbytes + 2) / 3 * 4, pad = (3 - nbytes % 3) % 3;
    if (size != chars) return 0;
    for (int i = chars - pad; i < chars; i++)
        if (text[i] != '=') return 0;
    uint32_t acc = 0;
    int bits = 0, o = 0;
    for (int i = 0; i < chars - pad; i++) {
        int d = B64[text[i]] - 1;
        if (d < 0) return 0;
        acc = (acc << 6) | (uint32_t)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o < nbytes) out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return o == nbytes && acc == 0;
}

/* A string value `"<prefix><base64 of nbytes><suffix>"` (no escapes possible). */
static int sigil_id(const Value *v, char prefix, int nbytes, const char *suffix,
                    unsigned char *out) {
    Py_ssize_t tail = (Py_ssize_t)strlen(suffix), chars = (nbytes + 2) / 3 * 4;
    Py_ssize_t plen = prefix ? 1 : 0;
    if (v->kind != V_STRING || v->size != 2 + plen + chars + tail) return 0;
    const unsigned char *text = v->start + 1;
    if (prefix && text[0] != (unsigned char)prefix) return 0;
    if (memcmp(text + plen + chars, suffix, (size_t)tail) != 0) return 0;
    return b64_decode(text + plen, chars, nbytes, out);
}

static int is_word(const Value *v, const char *quoted) {
    Py_ssize_t n = (Py_ssize_t)strlen(quoted);
    return v->size == n && memcmp(v->start, quoted, (size_t)n) == 0;
}

/* UTF-16 code units of UTF-8 text: one a character, two beyond U+FFFF. */
static Py_ssize_t utf16_units(const unsigned char *p, Py_ssize_t n, int *ascii) {
    Py_ssize_t units = 0;
    int plain = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c < 0x80) {
            units++;
        } else {
            plain = 0;
            if (c >= 0xF0) units += 2;
            else if (c >= 0xC0) units++;
        }
    }
    *ascii = plain;
    return units;
}

static const char *const ORDER_A[7] = {"\"previous\"", "\"author\"",  "\"sequence\"",
                                       "\"timestamp\"", "\"hash\"", "\"content\"",
                                       "\"signature\""};
static const char *const ORDER_B[7] = {"\"previous\"", "\"sequence\"", "\"author\"",
                                       "\"timestamp\"", "\"hash\"", "\"content\"",
                                       "\"signature\""};

static int key_order(const Span *keys, const char *const *order) {
    for (int i = 0; i < 7; i++)
        if (!is_span(&keys[i], order[i])) return 0;
    return 1;
}

/* What the scan of one message found. The spans point into the input. */
typedef struct {
    unsigned char *text; /* the 2-space UTF-8, PyMem_RawMalloc'd (the caller frees it) */
    Py_ssize_t len;
    const unsigned char *author; /* without the quotes */
    Py_ssize_t author_size;
    const unsigned char *previous; /* without the quotes; NULL for the first message */
    Py_ssize_t previous_size;
    long long sequence, timestamp;
    Py_ssize_t content_start, content_end; /* the content object, offsets into the input */
    Py_ssize_t signed_end;                 /* text[:signed_end] + "\n}" is signed */
    Py_ssize_t units;                      /* UTF-16 code units of the text */
    int ascii;
    unsigned char public_[32], signature[64];
} Found;

typedef enum { SCAN_NONE = 0, SCAN_FOUND = 1, SCAN_NOMEM = -1 } ScanResult;

/* The scan itself, without the Python API, so it may run without the GIL. On
 * SCAN_FOUND, f->text holds the 2-space text for the caller to free. */
static ScanResult scan_core(const unsigned char *raw, Py_ssize_t size, Found *f) {
    if (size < 2 || raw[0] != '{') return SCAN_NONE;
    Scan s = {raw, raw + size, raw[1] == '\n', NULL, 0, 0, 0, 0};
    s.cap = size + size / 4 + 256;
    s.out = PyMem_RawMalloc((size_t)s.cap);
    if (s.out == NULL) return SCAN_NOMEM;

    Span keys[MAX_KEYS];
    Value values[MAX_KEYS];
    int count = 0;
    unsigned char previous_digest[32];

    if (!scan_object(&s, 0, keys, values, &count) || s.p != s.end || count != 7) goto none;
    if (!key_order(keys, ORDER_A) && !key_order(keys, ORDER_B)) goto none;
    const Value *previous = &values[0];
    const Value *author = is_span(&keys[1], "\"author\"") ? &values[1] : &values[2];
    const Value *sequence = is_span(&keys[1], "\"author\"") ? &values[2] : &values[1];
    const Value *timestamp = &values[3], *hash = &values[4], *content = &values[5];
    const Value *sig = &values[6];
    if (!sigil_id(author, '@', 32, ".ed25519", f->public_)) goto none;
    if (sequence->kind != V_NUMBER || sequence->number < 1 || sequence->number > MAX_SEQUENCE)
        goto none;
    int first = sequence->number == 1;
    if (first ? !(previous->kind == V_LITERAL && is_word(previous, "null"))
              : !sigil_id(previous, '%', 32, ".sha256", previous_digest))
        goto none;
    if (timestamp->kind != V_NUMBER) goto none;
    if (!is_word(hash, "\"sha256\"")) goto none;
    if (content->kind != V_OBJECT) goto none; /* a private box: the Python path */
    if (!s.type_ok) goto none;
    if (!sigil_id(sig, 0, 64, ".sig.ed25519", f->signature)) goto none;
    /* The 2-space text ends with  ,\n  "signature": "…"\n}  (19 bytes and the value). */
    f->signed_end = s.len - (19 + sig->size);
    if (f->signed_end <= 0 || s.out[f->signed_end] != ',') goto none;

    f->units = utf16_units(s.out, s.len, &f->ascii);
    f->text = s.out;
    f->len = s.len;
    f->author = author->start + 1;
    f->author_size = author->size - 2;
    f->previous = first ? NULL : previous->start + 1;
    f->previous_size = first ? 0 : previous->size - 2;
    f->sequence = sequence->number;
    f->timestamp = timestamp->number;
    f->content_start = content->start - raw;
    f->content_end = content->start + content->size - raw;
    return SCAN_FOUND;
none:
    PyMem_RawFree(s.out);
    return s.failed ? SCAN_NOMEM : SCAN_NONE;
}

PyDoc_STRVAR(scan_doc,
             "scan(raw: bytes) -> tuple | None\n\n"
             "For an SSB message in JSON.stringify's exact compact or 2-space form:\n"
             "(text, author, public_key, sequence, previous, timestamp, signed_end,\n"
             "signature, utf16_length, ascii), where text is the 2-space UTF-8 and\n"
             "text[:signed_end] + b'\\n}' is what the signature covers. None otherwise.");

static PyObject *scan(PyObject *module, PyObject *arg) {
    (void)module;
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "scan() takes bytes");
        return NULL;
    }
    const unsigned char *raw = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t size = PyBytes_GET_SIZE(arg);
    Found f;
    ScanResult r = scan_core(raw, size, &f);
    if (r == SCAN_NOMEM) return PyErr_NoMemory();
    if (r == SCAN_NONE) Py_RETURN_NONE;

    PyObject *result = NULL;
    int indented = raw[1] == '\n';
    PyObject *text = indented && f.len == size && memcmp(f.text, raw, (size_t)size) == 0
                         ? (Py_INCREF(arg), arg)
                         : PyBytes_FromStringAndSize((const char *)f.text, f.len);
    if (text == NULL) goto done;
    PyObject *previous_obj =
        f.previous == NULL
            ? (Py_INCREF(Py_None), Py_None)
            : PyUnicode_FromStringAndSize((const char *)f.previous, f.previous_size);
    if (previous_obj == NULL) {
        Py_DECREF(text);
        goto done;
    }
    result = Py_BuildValue("(Ns#y#LNLny#nO)", text, (const char *)f.author, f.author_size,
                           (const char *)f.public_, (Py_ssize_t)32, f.sequence, previous_obj,
                           f.timestamp, f.signed_end, (const char *)f.signature, (Py_ssize_t)64,
                           f.units, f.ascii ? Py_True : Py_False);
done:
    PyMem_RawFree(f.text);
    return result;
}

typedef int (*sign_open_fn)(unsigned char *m, unsigned long long *mlen_p, const unsigned char *sm,
                            unsigned long long smlen, const unsigned char *pk);
typedef int (*sha256_fn)(unsigned char *out, const unsigned char *in, unsigned long long inlen);
/* OpenSSL's one-shot SHA256 (SHA-NI where the CPU has it: ~3x libsodium's portable C). */
typedef unsigned char *(*openssl_sha256_fn)(const unsigned char *d, size_t n, unsigned char *md);

typedef struct {
    sha256_fn sodium;
    openssl_sha256_fn openssl; /* NULL: libsodium's */
} Sha256;

static void sha256_of(const Sha256 *h, const unsigned char *in, Py_ssize_t n,
                      unsigned char out[32]) {
    /* OpenSSL 3 answers NULL, writing nothing, when it cannot fetch the digest
     * (a provider configuration without SHA-256, out of memory): never an id
     * from uninitialised bytes, libsodium's hash then. */
    if (h->openssl == NULL || h->openssl(in, (size_t)n, out) == NULL)
        h->sodium(out, in, (unsigned long long)n);
}

/* One item of scan_many: the scan, then (without the GIL) its id and its signature. */
typedef struct {
    ScanResult scanned;
    Found f;
    char id[52]; /* "%" + base64 of the sha256 + ".sha256" */
    int verified;
} Verdict;

static const char B64_CHARS[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* %<base64 of the 32 bytes>.sha256, 52 characters. */
static void message_id(const unsigned char digest[32], char out[52]) {
    char *o = out;
    *o++ = '%';
    int i = 0;
    for (; i + 3 <= 32; i += 3) {
        uint32_t v = (uint32_t)digest[i] << 16 | (uint32_t)digest[i + 1] << 8 | digest[i + 2];
        *o++ = B64_CHARS[v >> 18 & 63];
        *o++ = B64_CHARS[v >> 12 & 63];
        *o++ = B64_CHARS[v >> 6 & 63];
        *o++ = B64_CHARS[v & 63];
    }
    uint32_t v = (uint32_t)digest[30] << 16 | (uint32_t)digest[31] << 8; /* i == 30 */
    *o++ = B64_CHARS[v >> 18 & 63];
    *o++ = B64_CHARS[v >> 12 & 63];
    *o++ = B64_CHARS[v >> 6 & 63];
    *o++ = '=';
    memcpy(o, ".sha256", 7);
}

/* What Node hashes for the id: the low byte of each UTF-16 unit of the text
 * (the text is strict UTF-8: the scan checked it). Writes at most n bytes. */
static Py_ssize_t low_bytes(const unsigned char *p, Py_ssize_t n, unsigned char *out) {
    Py_ssize_t o = 0;
    for (Py_ssize_t i = 0; i < n;) {
        unsigned char c = p[i];
        uint32_t cp;
        if (c < 0x80) {
            out[o++] = c;
            i++;
            continue;
        }
        if (c < 0xE0) {
            cp = (uint32_t)(c & 0x1F) << 6 | (p[i + 1] & 0x3F);
            i += 2;
        } else if (c < 0xF0) {
            cp = (uint32_t)(c & 0x0F) << 12 | (uint32_t)(p[i + 1] & 0x3F) << 6 | (p[i + 2] & 0x3F);
            i += 3;
        } else {
            cp = (uint32_t)(c & 0x07) << 18 | (uint32_t)(p[i + 1] & 0x3F) << 12 |
                 (uint32_t)(p[i + 2] & 0x3F) << 6 | (p[i + 3] & 0x3F);
            i += 4;
            cp -= 0x10000;
            out[o++] = (unsigned char)((0xD800 | cp >> 10) & 0xFF);
            cp = 0xDC00 | (cp & 0x3FF);
        }
        out[o++] = (unsigned char)(cp & 0xFF);
    }
    return o;
}

/* The id and the signature of a found message; 0 when out of memory. */
static int check_found(Verdict *c, sign_open_fn sign_open, const Sha256 *sha256,
                       unsigned char **scratch, Py_ssize_t *scratch_cap) {
    Found *f = &c->f;
    Py_ssize_t need = 64 + f->len + 2;
    if (need > *scratch_cap) {
        unsigned char *grown = PyMem_RawRealloc(*scratch, (size_t)need);
        if (grown == NULL) return 0;
        *scratch = grown;
        *scratch_cap = need;
    }
    unsigned char digest[32];
    if (f->ascii) {
        sha256_of(sha256, f->text, f->len, digest);
    } else {
        Py_ssize_t n = low_bytes(f->text, f->len, *scratch);
        sha256_of(sha256, *scratch, n, digest);
    }
    message_id(digest, c->id);
    /* signature || text[:signed_end] || "\n}": what crypto_sign_open takes. */
    unsigned char *sm = *scratch;
    memcpy(sm, f->signature, 64);
    memcpy(sm + 64, f->text, (size_t)f->signed_end);
    sm[64 + f->signed_end] = '\n';
    sm[64 + f->signed_end + 1] = '}';
    c->verified =
        sign_open(NULL, NULL, sm, (unsigned long long)(64 + f->signed_end + 2), f->public_) == 0;
    return 1;
}

static PyObject *found_tuple(const Verdict *c) {
    const Found *f = &c->f;
    if (f->text == NULL) /* beyond max_units: only its length is answered */
        return Py_BuildValue("(sOLOLOnnnO)", "", Py_None, f->sequence, Py_None, f->timestamp,
                             Py_None, f->content_start, f->content_end, f->units, Py_False);
    /* The ids are base64 and sigils: ASCII, so one byte a character. */
    PyObject *id = PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, c->id, 52);
    PyObject *author =
        id == NULL ? NULL
                   : PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, f->author, f->author_size);
    PyObject *previous = NULL, *text = NULL;
    if (author != NULL)
        previous = f->previous == NULL ? (Py_INCREF(Py_None), Py_None)
                                       : PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND,
                                                                   f->previous, f->previous_size);
    if (previous != NULL) {
        text = f->ascii ? PyUnicode_New(f->len, 127)
                        : PyUnicode_DecodeUTF8((const char *)f->text, f->len, "strict");
        if (text != NULL && f->ascii) memcpy(PyUnicode_DATA(text), f->text, (size_t)f->len);
    }
    if (text == NULL) {
        Py_XDECREF(id);
        Py_XDECREF(author);
        Py_XDECREF(previous);
        return NULL;
    }
    return Py_BuildValue("(NNLNLNnnnO)", id, author, f->sequence, previous, f->timestamp, text,
                         f->content_start, f->content_end, f->units,
                         c->verified ? Py_True : Py_False);
}

PyDoc_STRVAR(scan_many_doc,
             "scan_many(raws, open_address, sha256_address, openssl_sha256_address,\n"
             "          max_units, /) -> list\n\n"
             "scan() of each bytes in raws, then for each message found its id and its\n"
             "signature, all with the GIL released: open_address and sha256_address are\n"
             "libsodium's crypto_sign_open and crypto_hash_sha256; openssl_sha256_address,\n"
             "when not 0, OpenSSL's SHA256, used instead of libsodium's. One item a raw: None\n"
             "where scan() is None, else (id, author, sequence, previous, timestamp, text,\n"
             "content_start, content_end, utf16_length, verified), text the 2-space form\n"
             "as str and raw[content_start:content_end] the content object. A message of\n"
             "more than max_units UTF-16 units is neither hashed nor verified nor kept:\n"
             "its id is empty, its author, previous and text None, verified False.");

static PyObject *scan_many(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "scan_many expects (raws, open_address, sha256_address, "
                                         "openssl_sha256_address, max_units)");
        return NULL;
    }
    uintptr_t open_address = (uintptr_t)PyLong_AsUnsignedLongLong(args[1]);
    if (open_address == (uintptr_t)-1 && PyErr_Occurred()) return NULL;
    uintptr_t sha_address = (uintptr_t)PyLong_AsUnsignedLongLong(args[2]);
    if (sha_address == (uintptr_t)-1 && PyErr_Occurred()) return NULL;
    uintptr_t openssl_address = (uintptr_t)PyLong_AsUnsignedLongLong(args[3]);
    if (openssl_address == (uintptr_t)-1 && PyErr_Occurred()) return NULL;
    Py_ssize_t max_units = PyLong_AsSsize_t(args[4]);
    if (max_units == -1 && PyErr_Occurred()) return NULL;
    if (open_address == 0 || sha_address == 0) {
        PyErr_SetString(PyExc_ValueError, "a libsodium address is null");
        return NULL;
    }
    sign_open_fn sign_open = (sign_open_fn)open_address;
    Sha256 sha256 = {(sha256_fn)sha_address, (openssl_sha256_fn)openssl_address};
    /* This call's own tuple: nothing can change it while the GIL is released,
     * and it keeps every bytes object the spans point into alive. */
    PyObject *items = PySequence_Tuple(args[0]);
    if (items == NULL) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(items, i))) {
            Py_DECREF(items);
            PyErr_SetString(PyExc_TypeError, "scan_many() takes bytes");
            return NULL;
        }
    }
    Verdict *work = PyMem_RawCalloc((size_t)(n > 0 ? n : 1), sizeof(Verdict));
    if (work == NULL) {
        Py_DECREF(items);
        return PyErr_NoMemory();
    }
    unsigned char *scratch = NULL;
    Py_ssize_t scratch_cap = 0;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && !nomem; i++) {
        PyObject *raw = PyTuple_GET_ITEM(items, i);
        Verdict *c = &work[i];
        c->scanned = scan_core((const unsigned char *)PyBytes_AS_STRING(raw),
                               PyBytes_GET_SIZE(raw), &c->f);
        if (c->scanned == SCAN_NOMEM) {
            nomem = 1;
        } else if (c->scanned == SCAN_FOUND && c->f.units <= max_units) {
            nomem = !check_found(c, sign_open, &sha256, &scratch, &scratch_cap);
        } else if (c->scanned == SCAN_FOUND) {
            /* Refused for its size: its text (up to ~33 times its raw bytes when
             * deeply nested) is not kept while the rest of the chunk is checked. */
            PyMem_RawFree(c->f.text);
            c->f.text = NULL;
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
    PyObject *out = nomem ? NULL : PyList_New(n);
    for (Py_ssize_t i = 0; i < n; i++) {
        Verdict *c = &work[i];
        if (out != NULL) {
            PyObject *item = c->scanned == SCAN_FOUND ? found_tuple(c) : (Py_INCREF(Py_None), Py_None);
            if (item == NULL) {
                Py_CLEAR(out);
            } else {
                PyList_SET_ITEM(out, i, item);
            }
        }
        if (c->scanned == SCAN_FOUND) PyMem_RawFree(c->f.text);
    }
    PyMem_RawFree(work);
    Py_DECREF(items);
    if (nomem) return PyErr_NoMemory();
    return out;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_O, scan_doc},
    {"scan_many", (PyCFunction)(void (*)(void))scan_many, METH_FASTCALL, scan_many_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "chainmail._ssbscan",
    .m_doc = "The common SSB message recognised in one pass (see ssb.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__ssbscan(void) { return PyModule_Create(&module_def); }
