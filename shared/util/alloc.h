/*
 * alloc.h — allocation that never returns NULL, and per-message pools.
 *
 * Every x*() allocator either succeeds or ends the process with a fatal
 * log line: callers never check for NULL.  A pool is an arena for memory
 * that lives exactly as long as one transaction or message; pool_free()
 * releases all of it at once.
 */
#ifndef RAMPART_ALLOC_H
#define RAMPART_ALLOC_H

#include <stddef.h>
#include <stdarg.h>

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
void *xmemdup(const void *p, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *xvasprintf(const char *fmt, va_list ap);

struct pool;
struct pool *pool_new(size_t chunk_size);      /* 0: default 4 KiB */
void *pool_alloc(struct pool *p, size_t n);    /* 16-byte aligned, zeroed */
char *pool_strdup(struct pool *p, const char *s);
char *pool_strndup(struct pool *p, const char *s, size_t n);
char *pool_asprintf(struct pool *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
size_t pool_used(const struct pool *p);
void pool_free(struct pool *p);                 /* NULL is fine */

#endif
