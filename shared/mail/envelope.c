/*
 * envelope.c — envelope construction.
 */
#include "envelope.h"
#include "../util/alloc.h"

#include <stdlib.h>
#include <string.h>

struct envelope *envelope_new(void)
{
	struct pool *p = pool_new(2048);
	struct envelope *e = pool_alloc(p, sizeof(*e));
	e->pool = p;
	e->sender = pool_strdup(p, "");
	e->client.addr = pool_strdup(p, "");
	e->client.name = pool_strdup(p, "unknown");
	e->client.helo = pool_strdup(p, "");
	e->client.proto = pool_strdup(p, "SMTP");
	e->arrival = time(NULL);
	return e;
}

void envelope_free(struct envelope *e)
{
	if (!e)
		return;
	struct env_rcpt *r = e->rcpts;
	pool_free(e->pool);  /* e itself lives in the pool */
	free(r);
}

struct env_rcpt *envelope_add_rcpt(struct envelope *e, const char *addr)
{
	if (e->nrcpt == e->rcpt_cap) {
		e->rcpt_cap = e->rcpt_cap ? e->rcpt_cap * 2 : 4;
		e->rcpts = xrealloc(e->rcpts, e->rcpt_cap * sizeof(*e->rcpts));
	}
	struct env_rcpt *r = &e->rcpts[e->nrcpt++];
	memset(r, 0, sizeof(*r));
	r->addr = pool_strdup(e->pool, addr);
	r->state = RCPT_PENDING;
	return r;
}

size_t envelope_pending(const struct envelope *e)
{
	size_t n = 0;
	for (size_t i = 0; i < e->nrcpt; i++)
		if (e->rcpts[i].state == RCPT_PENDING)
			n++;
	return n;
}
