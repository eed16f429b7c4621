/*
 * alloc.c — allocators that never return NULL; arena pools.
 */
#include "alloc.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(size_t n)
{
	log_fatal(NULL, NULL, "out_of_memory", "bytes=%zu", n);
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom(n);
	return p;
}

void *xcalloc(size_t nmemb, size_t size)
{
	void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
	if (!p)
		oom(nmemb * size);
	return p;
}

void *xrealloc(void *old, size_t n)
{
	void *p = realloc(old, n ? n : 1);
	if (!p)
		oom(n);
	return p;
}

char *xstrdup(const char *s)
{
	return xmemdup(s, strlen(s) + 1);
}

char *xstrndup(const char *s, size_t n)
{
	size_t len = strnlen(s, n);
	char *p = xmalloc(len + 1);
	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

void *xmemdup(const void *src, size_t n)
{
	void *p = xmalloc(n);
	memcpy(p, src, n);
	return p;
}

char *xvasprintf(const char *fmt, va_list ap)
{
	va_list cp;
	va_copy(cp, ap);
	int n = vsnprintf(NULL, 0, fmt, cp);
	va_end(cp);
	if (n < 0)
		log_panic(NULL, NULL, "bad_format", "format=%s", fmt);
	char *p = xmalloc((size_t)n + 1);
	vsnprintf(p, (size_t)n + 1, fmt, ap);
	return p;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *p = xvasprintf(fmt, ap);
	va_end(ap);
	return p;
}

/* ---- pools ---------------------------------------------------------- */

struct chunk {
	struct chunk *next;
	size_t size, used;
	max_align_t data[];
};

struct pool {
	struct chunk *head;
	size_t chunk_size;
	size_t total;
};

struct pool *pool_new(size_t chunk_size)
{
	struct pool *p = xcalloc(1, sizeof(*p));
	p->chunk_size = chunk_size ? chunk_size : 4096;
	return p;
}

void *pool_alloc(struct pool *p, size_t n)
{
	n = (n + 15) & ~(size_t)15;
	struct chunk *c = p->head;
	if (!c || c->size - c->used < n) {
		size_t sz = n > p->chunk_size ? n : p->chunk_size;
		c = xmalloc(sizeof(*c) + sz);
		c->size = sz;
		c->used = 0;
		/* A large one-off allocation goes behind the current chunk so
		 * the current chunk's free space is not wasted. */
		if (p->head && n > p->chunk_size) {
			c->next = p->head->next;
			p->head->next = c;
		} else {
			c->next = p->head;
			p->head = c;
		}
	}
	void *r = (char *)c->data + c->used;
	c->used += n;
	p->total += n;
	memset(r, 0, n);
	return r;
}

char *pool_strndup(struct pool *p, const char *s, size_t n)
{
	size_t len = strnlen(s, n);
	char *r = pool_alloc(p, len + 1);
	memcpy(r, s, len);
	r[len] = '\0';
	return r;
}

char *pool_strdup(struct pool *p, const char *s)
{
	return pool_strndup(p, s, strlen(s));
}

char *pool_asprintf(struct pool *p, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *tmp = xvasprintf(fmt, ap);
	va_end(ap);
	char *r = pool_strdup(p, tmp);
	free(tmp);
	return r;
}

size_t pool_used(const struct pool *p)
{
	return p->total;
}

void pool_free(struct pool *p)
{
	if (!p)
		return;
	struct chunk *c = p->head;
	while (c) {
		struct chunk *n = c->next;
		free(c);
		c = n;
	}
	free(p);
}
