/*
 * buf.h — growable, binary-safe byte buffers (protocol data, messages).
 *
 * The data is always followed by a NUL byte that is not counted in len,
 * so buf_cstr() is free; embedded NULs are kept.  A buffer may carry a
 * bound: appends beyond it set the overflow flag and are dropped, so a
 * caller can read a whole over-long input and answer once.
 */
#ifndef RAMPART_BUF_H
#define RAMPART_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

struct buf {
	char *data;
	size_t len;
	size_t cap;
	size_t limit;    /* 0: unbounded */
	bool overflow;   /* an append was refused because of limit */
};

#define BUF_INIT { NULL, 0, 0, 0, false }

void buf_init(struct buf *b);
void buf_set_limit(struct buf *b, size_t limit);
void buf_free(struct buf *b);
void buf_reset(struct buf *b);                     /* len = 0, overflow cleared */
void buf_reserve(struct buf *b, size_t extra);
bool buf_append(struct buf *b, const void *p, size_t n); /* false on overflow */
bool buf_puts(struct buf *b, const char *s);
bool buf_putc(struct buf *b, char c);
bool buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool buf_vprintf(struct buf *b, const char *fmt, va_list ap);
void buf_consume(struct buf *b, size_t n);         /* drop n bytes from the front */
void buf_truncate(struct buf *b, size_t len);
const char *buf_cstr(const struct buf *b);         /* never NULL */
char *buf_steal(struct buf *b, size_t *len);       /* caller frees; b is reset */
/* JSON string body (no quotes) of p[0..n): escapes ", \, control bytes,
 * and bytes that are not valid UTF-8 as \u00XX. */
void buf_json_escape(struct buf *b, const char *p, size_t n);

#endif
