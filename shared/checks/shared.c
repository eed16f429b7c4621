/*
 * shared.c — the process's table of long-lived check objects (shared.h).
 * A few entries at most: a list.
 */
#include "shared.h"
#include "../util/alloc.h"

#include <stdlib.h>
#include <string.h>

struct entry {
	struct entry *next;
	char *key;
	void *obj;
	void (*release)(void *obj);
};

struct check_shared {
	struct entry *head;     /* newest first */
};

struct check_shared *check_shared_new(void)
{
	return xcalloc(1, sizeof(struct check_shared));
}

void check_shared_free(struct check_shared *s)
{
	if (!s)
		return;
	while (s->head) {
		struct entry *e = s->head;
		s->head = e->next;
		if (e->release)
			e->release(e->obj);
		free(e->key);
		free(e);
	}
	free(s);
}

void *check_shared_get(struct check_shared *s, const char *key)
{
	for (struct entry *e = s ? s->head : NULL; e; e = e->next)
		if (strcmp(e->key, key) == 0)
			return e->obj;
	return NULL;
}

void check_shared_put(struct check_shared *s, const char *key, void *obj, void (*release)(void *obj))
{
	struct entry *e = xcalloc(1, sizeof(*e));
	e->key = xstrdup(key);
	e->obj = obj;
	e->release = release;
	e->next = s->head;
	s->head = e;
}
