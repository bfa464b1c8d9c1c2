/*
 * walrelay._speedups: the innermost loops of the hot path, in C.
 *
 * The pure-Python code stays the reference: every function here returns None
 * for anything outside its narrow fast case, and the caller then takes the
 * Python path, which produces the same result or the right error. The unit
 * tests (tests/unit/test_speedups.py) check byte-for-byte equality of both
 * paths on generated inputs.
 *
 * decode_tuple(buf, pos, ncols) -> (values, next_pos) | None
 *     pgoutput TupleData at buf[pos]: values are bytes ('t' and 'b'), None
 *     ('n') or the UNCHANGED marker ('u').
 *
 * encode_object(names, kinds, encoders, row, indexes) -> bytes | None
 *     The JSON object {name: value, ...} for row[indexes[i]] (or row[i]),
 *     each raw text value written according to its kind byte (see below),
 *     exactly as orjson writes the value psycopg's loader returns for it.
 *
 * encode_insert_events(frames, start, limit, spec, head, seq, tail, ...) -> [Event]
 *     decode_tuple, encode_object for the key and the row, the scheduling key
 *     and the Event of each Insert frame of a run, in one call: events
 *     straight from the wire.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

static PyObject *unchanged_marker = NULL;
static PyObject *op_insert = NULL; /* "insert", interned: the op of encode_insert_events' events */

/* -------------------------------------------------------------- out buffer */

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char small[512];
} Out;

static void out_init(Out *o) {
    o->data = o->small;
    o->len = 0;
    o->cap = (Py_ssize_t)sizeof(o->small);
}

static void out_free(Out *o) {
    if (o->data != o->small) PyMem_Free(o->data);
}

static int out_reserve(Out *o, Py_ssize_t extra) {
    Py_ssize_t need = o->len + extra;
    if (need <= o->cap) return 0;
    Py_ssize_t cap = o->cap * 2;
    while (cap < need) cap *= 2;
    char *p;
    if (o->data == o->small) {
        p = PyMem_Malloc((size_t)cap);
        if (p != NULL) memcpy(p, o->data, (size_t)o->len);
    } else {
        p = PyMem_Realloc(o->data, (size_t)cap);
    }
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->data = p;
    o->cap = cap;
    return 0;
}

static int out_put(Out *o, const char *s, Py_ssize_t n) {
    if (out_reserve(o, n) < 0) return -1;
    memcpy(o->data + o->len, s, (size_t)n);
    o->len += n;
    return 0;
}

static int out_ch(Out *o, char c) {
    if (out_reserve(o, 1) < 0) return -1;
    o->data[o->len++] = c;
    return 0;
}

/* Digit writers for the envelope's fixed parts (snprintf cost ~5x these, once
 * per event for the seq and five times per transaction). Each writes at p and
 * returns the number of chars written. */
static int put_dec_width(char *p, unsigned long long v, int width) {
    for (int i = width - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return width;
}

static int put_dec(char *p, long long value) {
    char tmp[24];
    int n = 0, len = 0;
    unsigned long long v = value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (value < 0) p[len++] = '-';
    while (n) p[len++] = tmp[--n];
    return len;
}

static const char HEX_DIGITS[] = "0123456789ABCDEF";

static int put_hex_width(char *p, unsigned long long v, int width) {
    for (int i = width - 1; i >= 0; i--) {
        p[i] = HEX_DIGITS[v & 0xF];
        v >>= 4;
    }
    return width;
}

static int put_hex(char *p, unsigned long long v) {
    int n = 1;
    for (unsigned long long rest = v >> 4; rest; rest >>= 4) n++;
    return put_hex_width(p, v, n);
}

/* ---------------------------------------------------------- value writers */

/* Each writer returns 0 when written, 1 when the value is not for the fast
 * path (the caller returns None), -1 on a Python error. */

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* int2/int4/int8/oid: PostgreSQL prints -?(0|[1-9][0-9]*), the JSON number
 * orjson writes for the int. */
static int write_integer(Out *o, const char *s, Py_ssize_t n) {
    Py_ssize_t i = (n > 0 && s[0] == '-') ? 1 : 0;
    if (n - i < 1 || n - i > 19 || (s[i] == '0' && n - i > 1) || (i == 1 && s[1] == '0'))
        return 1;
    for (; i < n; i++)
        if (!is_digit(s[i])) return 1;
    return out_put(o, s, n);
}

static int write_quoted(Out *o, const char *s, Py_ssize_t n) {
    if (out_reserve(o, n + 2) < 0) return -1;
    o->data[o->len++] = '"';
    memcpy(o->data + o->len, s, (size_t)n);
    o->len += n;
    o->data[o->len++] = '"';
    return 0;
}

/* numeric: a JSON string with every digit. Decimal(text) formatted with 'f'
 * gives the text back for everything PostgreSQL prints: -?digits[.digits],
 * NaN, Infinity, -Infinity. */
static int write_numeric(Out *o, const char *s, Py_ssize_t n) {
    if ((n == 3 && memcmp(s, "NaN", 3) == 0) || (n == 8 && memcmp(s, "Infinity", 8) == 0) ||
        (n == 9 && memcmp(s, "-Infinity", 9) == 0))
        return write_quoted(o, s, n);
    Py_ssize_t i = (n > 0 && s[0] == '-') ? 1 : 0;
    Py_ssize_t start = i;
    while (i < n && is_digit(s[i])) i++;
    Py_ssize_t int_digits = i - start;
    if (int_digits < 1 || (int_digits > 1 && s[start] == '0')) return 1;
    if (i < n) {
        if (s[i] != '.' || i + 1 == n) return 1;
        for (i++; i < n; i++)
            if (!is_digit(s[i])) return 1;
    }
    return write_quoted(o, s, n);
}

static int is_hex_lower(char c) { return is_digit(c) || (c >= 'a' && c <= 'f'); }

/* uuid: PostgreSQL's canonical form is also what orjson writes for a UUID. */
static int write_uuid(Out *o, const char *s, Py_ssize_t n) {
    if (n != 36) return 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return 1;
        } else if (!is_hex_lower(s[i])) {
            return 1;
        }
    }
    return write_quoted(o, s, n);
}

static int write_bool(Out *o, const char *s, Py_ssize_t n) {
    if (n != 1) return 1;
    if (s[0] == 't') return out_put(o, "true", 4);
    if (s[0] == 'f') return out_put(o, "false", 5);
    return 1;
}

static const char HEX[] = "0123456789abcdef";

/* text/varchar/bpchar/name: a JSON string escaped the way orjson escapes one. */
static int write_string(Out *o, const char *s, Py_ssize_t n) {
    int ascii = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] >= 0x80) {
            ascii = 0;
            break;
        }
    }
    if (!ascii) {
        /* Strict UTF-8, as the text loader decodes it: anything it rejects
         * goes the slow way, which reports it. */
        PyObject *u = PyUnicode_DecodeUTF8(s, n, "strict");
        if (u == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
            PyErr_Clear();
            return 1;
        }
        Py_DECREF(u);
    }
    if (out_reserve(o, n + 2) < 0) return -1;
    o->data[o->len++] = '"';
    Py_ssize_t run = 0; /* start of the current run of characters needing no escape */
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (out_put(o, s + run, i - run) < 0) return -1;
        run = i + 1;
        char esc = 0;
        switch (c) {
            case '"': esc = '"'; break;
            case '\\': esc = '\\'; break;
            case '\b': esc = 'b'; break;
            case '\t': esc = 't'; break;
            case '\n': esc = 'n'; break;
            case '\f': esc = 'f'; break;
            case '\r': esc = 'r'; break;
            default: break;
        }
        if (esc) {
            char pair[2] = {'\\', esc};
            if (out_put(o, pair, 2) < 0) return -1;
        } else {
            char u[6] = {'\\', 'u', '0', '0', HEX[c >> 4], HEX[c & 15]};
            if (out_put(o, u, 6) < 0) return -1;
        }
    }
    if (out_put(o, s + run, n - run) < 0) return -1;
    return out_ch(o, '"');
}

/* "YYYY-MM-DD" with a year from 1000 (Python's date holds 1-9999; the rare
 * years below 1000 and BC dates take the slow path). */
static int is_date(const char *s) {
    return s[0] >= '1' && s[0] <= '9' && is_digit(s[1]) && is_digit(s[2]) && is_digit(s[3]) &&
           s[4] == '-' && is_digit(s[5]) && is_digit(s[6]) && s[7] == '-' && is_digit(s[8]) &&
           is_digit(s[9]);
}

static int write_date(Out *o, const char *s, Py_ssize_t n) {
    if (n != 10 || !is_date(s)) return 1;
    return write_quoted(o, s, n);
}

/* timestamp ("YYYY-MM-DD HH:MM:SS[.f{1,6}]") and timestamptz (the same plus
 * "+00": the replication session runs with TimeZone=UTC) as orjson writes
 * the datetime psycopg loads: 'T' separator, microseconds padded to six
 * digits and left out when zero, "+00:00" for UTC. */
static int write_timestamp(Out *o, const char *s, Py_ssize_t n, int with_tz) {
    if (with_tz) {
        if (n < 22 || s[n - 3] != '+' || s[n - 2] != '0' || s[n - 1] != '0') return 1;
        n -= 3;
    }
    if (n < 19 || !is_date(s) || s[10] != ' ' || !is_digit(s[11]) || !is_digit(s[12]) ||
        s[13] != ':' || !is_digit(s[14]) || !is_digit(s[15]) || s[16] != ':' ||
        !is_digit(s[17]) || !is_digit(s[18]))
        return 1;
    if (s[11] > '2' || (s[11] == '2' && s[12] > '3')) return 1; /* 24:00:00 */
    Py_ssize_t frac = n - 20; /* digits after the point */
    int nonzero = 0;
    if (n > 19) {
        if (s[19] != '.' || frac < 1 || frac > 6) return 1;
        for (Py_ssize_t i = 20; i < n; i++) {
            if (!is_digit(s[i])) return 1;
            if (s[i] != '0') nonzero = 1;
        }
    }
    if (out_reserve(o, 40) < 0) return -1;
    char *p = o->data + o->len;
    *p++ = '"';
    memcpy(p, s, 10);
    p += 10;
    *p++ = 'T';
    memcpy(p, s + 11, 8);
    p += 8;
    if (nonzero) {
        *p++ = '.';
        memcpy(p, s + 20, (size_t)frac);
        p += frac;
        for (Py_ssize_t i = frac; i < 6; i++) *p++ = '0';
    }
    if (with_tz) {
        memcpy(p, "+00:00", 6);
        p += 6;
    }
    *p++ = '"';
    o->len = p - o->data;
    return 0;
}

/* json/jsonb: the document's text spliced in as JSON (PostgreSQL checked it),
 * CR/LF (only ever whitespace between tokens) written as spaces, like
 * walrelay.source.types.json_value. Invalid UTF-8, and documents that may be
 * nested deeper than MAX_JSON_DEPTH (more brackets than that), take the slow
 * path, which counts the real depth. */
#define MAX_JSON_DEPTH 500

static int write_json(Out *o, const char *s, Py_ssize_t n) {
    int ascii = 1;
    Py_ssize_t brackets = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if ((unsigned char)c >= 0x80) ascii = 0;
        else if (c == '[' || c == '{') brackets++;
    }
    if (brackets > MAX_JSON_DEPTH) return 1;
    if (!ascii) {
        PyObject *u = PyUnicode_DecodeUTF8(s, n, "strict");
        if (u == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
            PyErr_Clear();
            return 1;
        }
        Py_DECREF(u);
    }
    if (out_reserve(o, n) < 0) return -1;
    char *p = o->data + o->len;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        p[i] = (c == '\n' || c == '\r') ? ' ' : c;
    }
    o->len += n;
    return 0;
}

/* Kind bytes (chosen per column type by walrelay.pipeline.envelope). */
#define K_INTEGER 'i'
#define K_NUMERIC 'n'
#define K_UUID 'u'
#define K_BOOL 'b'
#define K_STRING 's'
#define K_DATE 'd'
#define K_TIMESTAMP 't'
#define K_TIMESTAMPTZ 'z'
#define K_JSON 'j'
#define K_CALL 'c' /* encoders[i](raw) -> bytes: the JSON text of the value */

/* One non-NULL raw text value s[0:n] as JSON; 0 done, 1 the slow path must do
 * it, -1 a Python error is set. */
static int write_raw(Out *o, char kind, const char *s, Py_ssize_t n, PyObject *raw,
                     PyObject *encoder) {
    switch (kind) {
        case K_INTEGER: return write_integer(o, s, n);
        case K_NUMERIC: return write_numeric(o, s, n);
        case K_UUID: return write_uuid(o, s, n);
        case K_BOOL: return write_bool(o, s, n);
        case K_STRING: return write_string(o, s, n);
        case K_DATE: return write_date(o, s, n);
        case K_TIMESTAMP: return write_timestamp(o, s, n, 0);
        case K_TIMESTAMPTZ: return write_timestamp(o, s, n, 1);
        case K_JSON: return write_json(o, s, n);
        case K_CALL: {
            /* raw: the value as a bytes object when the caller has one */
            PyObject *arg = raw != NULL ? Py_NewRef(raw) : PyBytes_FromStringAndSize(s, n);
            if (arg == NULL) return -1;
            PyObject *r = PyObject_CallOneArg(encoder, arg);
            Py_DECREF(arg);
            if (r == NULL) {
                /* The slow path redoes the row and raises the right error. */
                if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
                PyErr_Clear();
                return 1;
            }
            int rc = PyBytes_Check(r) ? out_put(o, PyBytes_AS_STRING(r), PyBytes_GET_SIZE(r)) : 1;
            Py_DECREF(r);
            return rc;
        }
        default: return 1;
    }
}

static int write_value(Out *o, char kind, PyObject *raw, PyObject *encoder) {
    if (raw == Py_None) return out_put(o, "null", 4);
    if (!PyBytes_CheckExact(raw)) return 1; /* the UNCHANGED marker, or a bug */
    return write_raw(o, kind, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), raw, encoder);
}

/* ------------------------------------------------------------ encode_object */

/* Writes the value at position `at` of a row (a tuple, or decoded cells). */
typedef int (*WriteAt)(Out *o, char kind, Py_ssize_t at, PyObject *encoder, const void *row);

/* The JSON object {names[i]: the row's value at indexes[i] (or i)} into o: 0
 * done, 1 the slow path must do it, -1 a Python error is set. nrow: the row's
 * length. Shared by encode_into (a tuple of bytes) and encode_cells (values
 * read in place). */
static int encode_fields(Out *o, PyObject *names, PyObject *kinds, PyObject *encoders,
                         PyObject *indexes, Py_ssize_t nrow, WriteAt write_at, const void *row) {
    Py_ssize_t m = PyTuple_GET_SIZE(names);
    if (PyBytes_GET_SIZE(kinds) != m || PyTuple_GET_SIZE(encoders) != m ||
        (indexes != Py_None && PyTuple_GET_SIZE(indexes) != m) ||
        (indexes == Py_None && nrow != m))
        return 1;
    const char *kind = PyBytes_AS_STRING(kinds);
    int rc = out_ch(o, '{');
    for (Py_ssize_t i = 0; i < m && rc == 0; i++) {
        Py_ssize_t at = i;
        if (indexes != Py_None) {
            at = PyLong_AsSsize_t(PyTuple_GET_ITEM(indexes, i));
            if (at == -1 && PyErr_Occurred()) return -1;
            if (at < 0 || at >= nrow) return 1;
        }
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyBytes_CheckExact(name)) return 1;
        if (i > 0) rc = out_ch(o, ',');
        if (rc == 0) rc = out_put(o, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name));
        if (rc == 0) rc = write_at(o, kind[i], at, PyTuple_GET_ITEM(encoders, i), row);
    }
    if (rc == 0) rc = out_ch(o, '}');
    return rc;
}

static int write_item_at(Out *o, char kind, Py_ssize_t at, PyObject *encoder, const void *row) {
    return write_value(o, kind, PyTuple_GET_ITEM((PyObject *)row, at), encoder);
}

/* The JSON object of row[indexes[i]] (or row[i]) into o (see encode_fields).
 * The caller checked the types. */
static int encode_into(Out *o, PyObject *names, PyObject *kinds, PyObject *encoders,
                       PyObject *row, PyObject *indexes) {
    return encode_fields(o, names, kinds, encoders, indexes, PyTuple_GET_SIZE(row), write_item_at,
                         row);
}

static PyObject *encode_object(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "encode_object() takes 5 arguments");
        return NULL;
    }
    PyObject *names = args[0], *kinds = args[1], *encoders = args[2], *row = args[3],
             *indexes = args[4];
    if (!PyTuple_CheckExact(names) || !PyBytes_CheckExact(kinds) ||
        !PyTuple_CheckExact(encoders) || !PyTuple_CheckExact(row) ||
        (indexes != Py_None && !PyTuple_CheckExact(indexes))) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_object(names: tuple, kinds: bytes, encoders: tuple, row: tuple, "
                        "indexes: tuple | None)");
        return NULL;
    }
    Out o;
    out_init(&o);
    int rc = encode_into(&o, names, kinds, encoders, row, indexes);
    PyObject *result = NULL;
    if (rc == 0) {
        result = PyBytes_FromStringAndSize(o.data, o.len);
    } else if (rc == 1) {
        result = Py_NewRef(Py_None);
    }
    out_free(&o);
    return result;
}

/* ------------------------------------------------------------ decode_tuple */

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* TupleData of ncols columns at buf[*pos]: a new tuple of values, *pos moved
 * past it; NULL with no error set when malformed (the slow path says what is
 * wrong), NULL with an error set on a Python error. */
static PyObject *parse_tuple(const unsigned char *buf, Py_ssize_t size, Py_ssize_t *at,
                             Py_ssize_t ncols) {
    Py_ssize_t pos = *at;
    if (pos < 0 || pos + 2 > size) return NULL;
    Py_ssize_t n = ((Py_ssize_t)buf[pos] << 8) | buf[pos + 1];
    if (n != ncols) return NULL;
    pos += 2;
    PyObject *values = PyTuple_New(n);
    if (values == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (pos >= size) goto fallback;
        unsigned char kind = buf[pos];
        PyObject *v;
        if (kind == 't' || kind == 'b') {
            if (pos + 5 > size) goto fallback;
            Py_ssize_t len = (Py_ssize_t)be32(buf + pos + 1);
            if (len > size - pos - 5) goto fallback;
            v = PyBytes_FromStringAndSize((const char *)buf + pos + 5, len);
            if (v == NULL) {
                Py_DECREF(values);
                return NULL;
            }
            pos += 5 + len;
        } else if (kind == 'n') {
            v = Py_NewRef(Py_None);
            pos += 1;
        } else if (kind == 'u' && unchanged_marker != NULL) {
            v = Py_NewRef(unchanged_marker);
            pos += 1;
        } else {
            goto fallback;
        }
        PyTuple_SET_ITEM(values, i, v);
    }
    *at = pos;
    return values;
fallback:
    Py_DECREF(values);
    return NULL;
}

static PyObject *decode_tuple(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "decode_tuple(buf: bytes, pos: int, ncols: int)");
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t ncols = PyLong_AsSsize_t(args[2]);
    if (ncols == -1 && PyErr_Occurred()) return NULL;
    PyObject *values = parse_tuple(buf, size, &pos, ncols);
    if (values == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    PyObject *next = PyLong_FromSsize_t(pos);
    if (next == NULL) {
        Py_DECREF(values);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, values, next);
    Py_DECREF(values);
    Py_DECREF(next);
    return result;
}

/* ----------------------------------------------------- encode_insert_events */

/* One column of a tuple read in place: its text at s[0:n]; n < 0 for NULL. */
typedef struct {
    const char *s;
    Py_ssize_t n;
} Cell;

/* TupleData of ncols 't'/'n' columns at buf[pos] ending the message into
 * cells: 0, or 1 for anything else (unchanged TOAST, binary, malformed:
 * the general path). */
static int read_cells(const unsigned char *buf, Py_ssize_t size, Py_ssize_t pos,
                      Py_ssize_t ncols, Cell *cells) {
    if (pos < 0 || pos + 2 > size) return 1;
    Py_ssize_t n = ((Py_ssize_t)buf[pos] << 8) | buf[pos + 1];
    if (n != ncols) return 1;
    pos += 2;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (pos >= size) return 1;
        unsigned char kind = buf[pos];
        if (kind == 't') {
            if (pos + 5 > size) return 1;
            Py_ssize_t len = (Py_ssize_t)be32(buf + pos + 1);
            if (len > size - pos - 5) return 1;
            cells[i].s = (const char *)buf + pos + 5;
            cells[i].n = len;
            pos += 5 + len;
        } else if (kind == 'n') {
            cells[i].s = NULL;
            cells[i].n = -1;
            pos += 1;
        } else {
            return 1;
        }
    }
    return pos == size ? 0 : 1; /* trailing bytes: the decoder reports them */
}

static int write_cell_at(Out *o, char kind, Py_ssize_t at, PyObject *encoder, const void *row) {
    const Cell *c = &((const Cell *)row)[at];
    if (c->n < 0) return out_put(o, "null", 4);
    return write_raw(o, kind, c->s, c->n, NULL, encoder);
}

/* encode_object over cells (indexes: None, or which cell each name takes). */
static int encode_cells(Out *o, PyObject *names, PyObject *kinds, PyObject *encoders,
                        const Cell *cells, Py_ssize_t ncells, PyObject *indexes) {
    return encode_fields(o, names, kinds, encoders, indexes, ncells, write_cell_at, cells);
}

/* The scheduling key of a row (walrelay.pipeline.envelope._group_key):
 * prefix, then each key column's text joined by 0x1f (NULL: 0x00, a 0x1f
 * inside a value: 0x00 'E'), read as UTF-8 with surrogateescape. No key
 * columns: the prefix alone (the table). NULL with no error: decline. */
static PyObject *group_key(PyObject *prefix, PyObject *indexes, const Cell *cells,
                           Py_ssize_t ncells) {
    Py_ssize_t m = PyTuple_GET_SIZE(indexes);
    if (m == 0) return Py_NewRef(prefix);
    /* The prefix's UTF-8 goes first, so that one decoding makes the whole
     * key: a prefix that is not plain UTF-8 (a surrogate) is concatenated. */
    Py_ssize_t plen;
    const char *ptext = PyUnicode_AsUTF8AndSize(prefix, &plen);
    if (ptext == NULL) PyErr_Clear();
    Out k;
    out_init(&k);
    PyObject *result = NULL;
    if (ptext != NULL && out_put(&k, ptext, plen) < 0) goto done;
    for (Py_ssize_t i = 0; i < m; i++) {
        Py_ssize_t at = PyLong_AsSsize_t(PyTuple_GET_ITEM(indexes, i));
        if (at == -1 && PyErr_Occurred()) goto done;
        if (at < 0 || at >= ncells) goto done;
        if (i > 0 && out_ch(&k, '\x1f') < 0) goto done;
        const Cell *c = &cells[at];
        if (c->n < 0) {
            if (out_ch(&k, '\0') < 0) goto done;
            continue;
        }
        const char *sep = memchr(c->s, '\x1f', (size_t)c->n);
        if (sep == NULL) {
            if (out_put(&k, c->s, c->n) < 0) goto done;
            continue;
        }
        for (Py_ssize_t j = 0; j < c->n; j++) {
            int rc = c->s[j] == '\x1f' ? out_put(&k, "\0E", 2) : out_ch(&k, c->s[j]);
            if (rc < 0) goto done;
        }
    }
    PyObject *text = PyUnicode_DecodeUTF8(k.data, k.len, "surrogateescape");
    if (text != NULL && ptext == NULL) {
        result = PyUnicode_Concat(prefix, text);
        Py_DECREF(text);
    } else {
        result = text;
    }
done:
    out_free(&k);
    return result;
}

static int put_bytes(Out *o, PyObject *b) {
    return out_put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
}

/* A relation's spec (see encode_insert_events), its parts borrowed. */
typedef struct {
    PyObject *row_names, *row_kinds, *row_enc, *key_names, *key_kinds, *key_enc, *key_idx, *op,
        *gprefix, *gidx;
    Py_ssize_t ncols;
    uint32_t oid;
} Spec;

static int read_spec(PyObject *spec, Spec *sp) {
    if (!PyTuple_CheckExact(spec) || PyTuple_GET_SIZE(spec) != 12) goto bad;
    PyObject *const *it = &PyTuple_GET_ITEM(spec, 0);
    sp->row_names = it[0];
    sp->row_kinds = it[1];
    sp->row_enc = it[2];
    sp->key_names = it[3];
    sp->key_kinds = it[4];
    sp->key_enc = it[5];
    sp->key_idx = it[6];
    sp->op = it[7];
    sp->gprefix = it[8];
    sp->gidx = it[9];
    if (!PyTuple_CheckExact(sp->row_names) || !PyBytes_CheckExact(sp->row_kinds) ||
        !PyTuple_CheckExact(sp->row_enc) ||
        (sp->key_names != Py_None &&
         (!PyTuple_CheckExact(sp->key_names) || !PyBytes_CheckExact(sp->key_kinds) ||
          !PyTuple_CheckExact(sp->key_enc) || !PyTuple_CheckExact(sp->key_idx))) ||
        !PyBytes_CheckExact(sp->op) || !PyUnicode_CheckExact(sp->gprefix) ||
        !PyTuple_CheckExact(sp->gidx))
        goto bad;
    sp->ncols = PyLong_AsSsize_t(it[10]);
    if (sp->ncols == -1 && PyErr_Occurred()) return -1;
    unsigned long oid = PyLong_AsUnsignedLong(it[11]);
    if (oid == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (sp->ncols < 0 || oid > 0xFFFFFFFFUL) goto bad;
    sp->oid = (uint32_t)oid;
    return 0;
bad:
    PyErr_SetString(PyExc_TypeError, "encode_insert_events: malformed spec");
    return -1;
}

/* One Insert's tuple at buf[pos] -> new references in *body, *key_json and
 * *gkey (the group key): 0; 1: decline (nothing set, no error); -1: error.
 * cells has room for sp->ncols. */
static int encode_one(const Spec *sp, const unsigned char *buf, Py_ssize_t size, Py_ssize_t pos,
                      Cell *cells, const Out *head, long long seq, const Out *tail,
                      PyObject **body, PyObject **key_json, PyObject **gkey) {
    Py_ssize_t ncols = sp->ncols;
    Out o, k;
    out_init(&o);
    out_init(&k);
    *body = *key_json = *gkey = NULL;
    int rc = read_cells(buf, size, pos, ncols, cells);
    if (rc == 0) {
        if (sp->key_names == Py_None)
            rc = out_put(&k, "null", 4);
        else
            rc = encode_cells(&k, sp->key_names, sp->key_kinds, sp->key_enc, cells, ncols,
                              sp->key_idx);
    }
    if (rc == 0) {
        char digits[16];
        put_dec_width(digits, (unsigned long long)seq, 10); /* 0 <= seq <= 9999999999 */
        rc = out_put(&o, head->data, head->len);
        if (rc == 0) rc = out_put(&o, digits, 10);
        if (rc == 0) rc = put_bytes(&o, sp->op);
        if (rc == 0) rc = out_put(&o, k.data, k.len);
        if (rc == 0) rc = out_put(&o, ",\"record\":", 10);
        if (rc == 0)
            rc = encode_cells(&o, sp->row_names, sp->row_kinds, sp->row_enc, cells, ncols,
                              Py_None);
        if (rc == 0) rc = out_put(&o, tail->data, tail->len);
    }
    if (rc == 0) {
        *gkey = group_key(sp->gprefix, sp->gidx, cells, ncols);
        if (*gkey == NULL) rc = PyErr_Occurred() ? -1 : 1;
    }
    if (rc == 0) {
        *key_json = PyBytes_FromStringAndSize(k.data, k.len);
        if (*key_json != NULL) *body = PyBytes_FromStringAndSize(o.data, o.len);
        if (*body == NULL) rc = -1;
    }
    if (rc != 0) {
        Py_CLEAR(*body);
        Py_CLEAR(*key_json);
        Py_CLEAR(*gkey);
    }
    out_free(&o);
    out_free(&k);
    return rc;
}

/* orjson.dumps of a datetime in UTC (tzinfo UTC, or None as
 * EnvelopeBuilder._start reads it): "YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00".
 * 1: decline (another zone, a year before 1000, a subclass). */
static int write_utc_datetime(Out *o, PyObject *dt) {
    if (!PyDateTime_CheckExact(dt)) return 1;
    PyObject *tz = PyDateTime_DATE_GET_TZINFO(dt);
    if (tz != Py_None && tz != PyDateTime_TimeZone_UTC) return 1;
    int year = PyDateTime_GET_YEAR(dt);
    if (year < 1000 || year > 9999) return 1;
    char text[48];
    char *p = text;
    *p++ = '"';
    p += put_dec_width(p, (unsigned long long)year, 4);
    *p++ = '-';
    p += put_dec_width(p, (unsigned long long)PyDateTime_GET_MONTH(dt), 2);
    *p++ = '-';
    p += put_dec_width(p, (unsigned long long)PyDateTime_GET_DAY(dt), 2);
    *p++ = 'T';
    p += put_dec_width(p, (unsigned long long)PyDateTime_DATE_GET_HOUR(dt), 2);
    *p++ = ':';
    p += put_dec_width(p, (unsigned long long)PyDateTime_DATE_GET_MINUTE(dt), 2);
    *p++ = ':';
    p += put_dec_width(p, (unsigned long long)PyDateTime_DATE_GET_SECOND(dt), 2);
    int us = PyDateTime_DATE_GET_MICROSECOND(dt);
    if (us) {
        *p++ = '.';
        p += put_dec_width(p, (unsigned long long)us, 6);
    }
    memcpy(p, "+00:00\"", 7);
    p += 7;
    return out_put(o, text, p - text);
}

/* The envelope's bytes before the seq and an insert's from "old" on, as
 * EnvelopeBuilder._start makes them: 0, 1 (decline: the commit time), -1. */
static int write_head_tail(Out *head, Out *tail, PyObject *lsn_obj, PyObject *xid_obj,
                           PyObject *at) {
    unsigned long long lsn = PyLong_AsUnsignedLongLong(lsn_obj);
    if (lsn == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    long long xid = PyLong_AsLongLong(xid_obj);
    if (xid == -1 && PyErr_Occurred()) return -1;
    char text[96];
    char *p = text;
    memcpy(p, "{\"id\":\"", 7);
    p += 7;
    p += put_hex_width(p, lsn, 16);
    *p++ = '/';
    if (out_put(head, text, p - text) < 0) return -1;
    static const char OLD_LSN[] = ",\"old\":null,\"commit_lsn\":\"";
    static const char XID[] = "\",\"xid\":";
    static const char AT[] = ",\"committed_at\":";
    p = text;
    memcpy(p, OLD_LSN, sizeof(OLD_LSN) - 1);
    p += sizeof(OLD_LSN) - 1;
    p += put_hex(p, lsn >> 32);
    *p++ = '/';
    p += put_hex(p, lsn & 0xFFFFFFFFULL);
    memcpy(p, XID, sizeof(XID) - 1);
    p += sizeof(XID) - 1;
    p += put_dec(p, xid);
    memcpy(p, AT, sizeof(AT) - 1);
    p += sizeof(AT) - 1;
    if (out_put(tail, text, p - text) < 0) return -1;
    int rc = write_utc_datetime(tail, at);
    if (rc == 0) rc = out_ch(tail, '}');
    return rc;
}

#define CELLS_ON_STACK 64
#define XLOGDATA_HEADER 25

/* walrelay.model.Event, made here without its __init__ (set_event_type): the
 * offset of each slot, in EVENT_FIELDS order. A slots dataclass's __init__ only
 * stores its arguments, so filling the slots is the same object, minus a
 * Python call per event. */
#define EVENT_NFIELDS 12
static const char *const EVENT_FIELDS[EVENT_NFIELDS] = {
    "commit_lsn", "seq",      "op",    "table",          "keys",    "body",
    "xid",        "committed_at", "route", "key_json", "failure", "rendering",
};
enum { EV_COMMIT_LSN, EV_SEQ, EV_OP, EV_TABLE, EV_KEYS, EV_BODY, EV_XID, EV_AT, EV_ROUTE,
       EV_KEY_JSON, EV_FAILURE, EV_RENDERING };
static PyTypeObject *event_type = NULL;
static Py_ssize_t event_offsets[EVENT_NFIELDS];

/* set_event_type(cls): cls must be a class whose instances are exactly the
 * EVENT_FIELDS object slots (a dataclass(slots=True) of those fields). */
static PyObject *set_event_type(PyObject *self, PyObject *cls) {
    if (!PyType_Check(cls)) goto bad;
    PyTypeObject *t = (PyTypeObject *)cls;
    if (t->tp_base != &PyBaseObject_Type || t->tp_dictoffset != 0 ||
        t->tp_weaklistoffset != 0 || t->tp_members == NULL ||
        t->tp_basicsize != (Py_ssize_t)(sizeof(PyObject) + EVENT_NFIELDS * sizeof(PyObject *)))
        goto bad;
    Py_ssize_t found = 0, members = 0;
    for (PyMemberDef *m = t->tp_members; m->name != NULL; m++, members++) {
        if (m->type != T_OBJECT_EX) goto bad;
        for (Py_ssize_t i = 0; i < EVENT_NFIELDS; i++) {
            if (strcmp(m->name, EVENT_FIELDS[i]) == 0) {
                event_offsets[i] = m->offset;
                found++;
            }
        }
    }
    if (found != EVENT_NFIELDS || members != EVENT_NFIELDS) goto bad;
    Py_XSETREF(event_type, (PyTypeObject *)Py_NewRef(cls));
    Py_RETURN_NONE;
bad:
    PyErr_SetString(PyExc_TypeError, "set_event_type: not a slots class of the Event fields");
    return NULL;
}

/* A new Event of the values (new references stolen; NULL: error, all released). */
static PyObject *new_event(PyObject *values[EVENT_NFIELDS]) {
    PyObject *ev = event_type->tp_alloc(event_type, 0);
    for (Py_ssize_t i = 0; i < EVENT_NFIELDS; i++) {
        if (ev == NULL)
            Py_DECREF(values[i]);
        else
            *(PyObject **)((char *)ev + event_offsets[i]) = values[i];
    }
    return ev;
}

/* encode_insert_events(frames, start, limit, spec, head, seq, tail, commit_lsn, table,
 *                      xid, committed_at) -> [Event, ...]
 *
 * The run of XLogData frames from frames[start] (at most limit) that are
 * Inserts into spec's relation, each straight to its Event with the values
 * read in place: the body is head, the seq (seq, seq + 1, ...) as 10 digits,
 * spec's op bytes, the key's JSON, ',"record":', the row's JSON and tail --
 * what EnvelopeBuilder makes of the decoded change; key_json the key's JSON;
 * keys the scheduling key. The run ends at the first other frame or one the
 * general path must decode (unchanged TOAST, a value written differently, a
 * malformed message). head and tail None: made here from commit_lsn, xid and
 * committed_at as EnvelopeBuilder._start makes them; None is returned when
 * the commit time is not one written here (another zone: the caller then
 * passes its own). spec (per relation,
 * walrelay.pipeline.envelope._Plan.c_insert): (row names, row kinds, row
 * encoders, key names | None, key kinds, key encoders, key indexes, op bytes,
 * group key prefix, group key indexes, ncols, relation OID).
 */
static PyObject *encode_insert_events(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11 || !PyList_CheckExact(args[0]) ||
        (args[4] != Py_None && !PyBytes_CheckExact(args[4])) ||
        (args[6] != Py_None && !PyBytes_CheckExact(args[6])) || !PyUnicode_CheckExact(args[8])) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_insert_events(frames: list, start: int, limit: int, spec: tuple, "
                        "head: bytes | None, seq: int, tail: bytes | None, commit_lsn: int, "
                        "table: str, "
                        "xid: int, committed_at: datetime)");
        return NULL;
    }
    if (event_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "encode_insert_events: set_event_type() first");
        return NULL;
    }
    Spec sp;
    if (read_spec(args[3], &sp) < 0) return NULL;
    PyObject *frames = args[0];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    long long seq = PyLong_AsLongLong(args[5]);
    if (seq == -1 && PyErr_Occurred()) return NULL;
    Out head, tail;
    out_init(&head);
    out_init(&tail);
    if (args[4] == Py_None || args[6] == Py_None) {
        int rc = write_head_tail(&head, &tail, args[7], args[9], args[10]);
        if (rc != 0) {
            out_free(&head);
            out_free(&tail);
            if (rc < 0) return NULL;
            Py_RETURN_NONE;
        }
    } else if (out_put(&head, PyBytes_AS_STRING(args[4]), PyBytes_GET_SIZE(args[4])) < 0 ||
               out_put(&tail, PyBytes_AS_STRING(args[6]), PyBytes_GET_SIZE(args[6])) < 0) {
        out_free(&head);
        out_free(&tail);
        return NULL;
    }
    PyObject *out = PyList_New(0);
    Cell stack_cells[CELLS_ON_STACK];
    Cell *cells = stack_cells;
    if (out != NULL && sp.ncols > CELLS_ON_STACK) {
        cells = PyMem_Malloc(sizeof(Cell) * (size_t)sp.ncols);
        if (cells == NULL) {
            Py_CLEAR(out);
            PyErr_NoMemory();
        }
    }
    if (out == NULL) {
        out_free(&head);
        out_free(&tail);
        return NULL;
    }
    Py_ssize_t end = PyList_GET_SIZE(frames);
    if (start < 0) start = end;
    if (limit < end - start) end = start + (limit > 0 ? limit : 0);
    for (Py_ssize_t i = start; i < end; i++, seq++) {
        PyObject *frame = PyList_GET_ITEM(frames, i);
        if (!PyBytes_CheckExact(frame) || seq < 0 || seq > 9999999999LL) break;
        const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(frame);
        Py_ssize_t size = PyBytes_GET_SIZE(frame);
        const unsigned char *msg = buf + XLOGDATA_HEADER;
        if (size < XLOGDATA_HEADER + 6 || buf[0] != 'w' || msg[0] != 'I' ||
            be32(msg + 1) != sp.oid || msg[5] != 'N')
            break;
        PyObject *body, *key_json, *gkey;
        int declined = encode_one(&sp, buf, size, XLOGDATA_HEADER + 6, cells, &head, seq, &tail,
                                  &body, &key_json, &gkey);
        if (declined) {
            if (declined < 0) Py_CLEAR(out);
            break;
        }
        PyObject *values[EVENT_NFIELDS];
        values[EV_COMMIT_LSN] = Py_NewRef(args[7]);
        values[EV_SEQ] = PyLong_FromLongLong(seq);
        values[EV_OP] = Py_NewRef(op_insert);
        values[EV_TABLE] = Py_NewRef(args[8]);
        values[EV_KEYS] = PyTuple_Pack(1, gkey);
        values[EV_BODY] = body;
        values[EV_XID] = Py_NewRef(args[9]);
        values[EV_AT] = Py_NewRef(args[10]);
        values[EV_ROUTE] = Py_NewRef(Py_None);
        values[EV_KEY_JSON] = key_json;
        values[EV_FAILURE] = Py_NewRef(Py_None);
        values[EV_RENDERING] = Py_NewRef(Py_None);
        Py_DECREF(gkey);
        PyObject *event = NULL;
        if (values[EV_SEQ] == NULL || values[EV_KEYS] == NULL) {
            for (Py_ssize_t f = 0; f < EVENT_NFIELDS; f++) Py_XDECREF(values[f]);
        } else {
            event = new_event(values);
        }
        int rc = event == NULL ? -1 : PyList_Append(out, event);
        Py_XDECREF(event);
        if (rc < 0) {
            Py_CLEAR(out);
            break;
        }
    }
    if (cells != stack_cells) PyMem_Free(cells);
    out_free(&head);
    out_free(&tail);
    return out;
}

/* ------------------------------------------------------------ pg_timestamp */

/* pg_timestamp(us) -> datetime: microseconds since 2000-01-01 UTC as an aware
 * datetime in UTC, what walrelay.source.pgoutput.pg_timestamp computes with
 * timedelta arithmetic (once per transaction: a third of that cost here);
 * None outside datetime's years 1-9999 (the Python function then says why). */
static PyObject *pg_timestamp(PyObject *self, PyObject *arg) {
    long long us = PyLong_AsLongLong(arg);
    if (us == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    const long long day_us = 86400000000LL;
    long long days = us / day_us, rest = us % day_us;
    if (rest < 0) {
        rest += day_us;
        days -= 1;
    }
    /* Days since 1970-01-01, then the civil date (H. Hinnant's days_from_civil
     * inverse, exact over the proleptic Gregorian calendar). */
    long long z = days + 10957 + 719468;
    if (z < 0 || z > 4000000) Py_RETURN_NONE; /* far outside years 1-9999 */
    long long era = z / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long year = yoe + era * 400;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    int day = (int)(doy - (153 * mp + 2) / 5 + 1);
    int month = (int)(mp < 10 ? mp + 3 : mp - 9);
    if (month <= 2) year += 1;
    if (year < 1 || year > 9999) Py_RETURN_NONE;
    long long secs = rest / 1000000;
    return PyDateTimeAPI->DateTime_FromDateAndTime(
        (int)year, month, day, (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60),
        (int)(rest % 1000000), PyDateTime_TimeZone_UTC, PyDateTimeAPI->DateTimeType);
}

/* --------------------------------------------------------------- configure */

static PyObject *configure(PyObject *self, PyObject *marker) {
    Py_XSETREF(unchanged_marker, Py_NewRef(marker));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"encode_object", (PyCFunction)(void (*)(void))encode_object, METH_FASTCALL,
     "JSON object of a row's raw text values, or None for the slow path."},
    {"decode_tuple", (PyCFunction)(void (*)(void))decode_tuple, METH_FASTCALL,
     "pgoutput TupleData -> (values, next position), or None for the slow path."},
    {"encode_insert_events", (PyCFunction)(void (*)(void))encode_insert_events, METH_FASTCALL,
     "A run of Insert frames -> [Event, ...]."},
    {"set_event_type", set_event_type, METH_O, "The Event class encode_insert_events makes."},
    {"configure", configure, METH_O, "Set the marker object for unchanged TOAST values."},
    {"pg_timestamp", pg_timestamp, METH_O,
     "Microseconds since 2000-01-01 UTC -> aware datetime, or None out of range."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "walrelay._speedups", "C fast paths for the decoder and the envelope.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    if (op_insert == NULL) {
        op_insert = PyUnicode_InternFromString("insert");
        if (op_insert == NULL) return NULL;
    }
    return PyModule_Create(&module);
}
