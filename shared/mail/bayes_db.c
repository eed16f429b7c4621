/*
 * bayes_db.c — token counts in the state store (bayes_db.h).
 */
#include "bayes_db.h"
#include "state.h"
#include "../util/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- lookup ---------------------------------------------------------------- */

struct batch;

struct bayes_db_lookup {
	struct bayes_token *toks;
	size_t n;
	unsigned pending;
	struct batch **batches;         /* the state_mget of each, NULL once answered */
	size_t nbatches;
	bool failed;
	char why[256];
	long long nspam, nham;
	bayes_db_lookup_fn done;
	void *arg;
};

struct batch {
	struct bayes_db_lookup *L;
	size_t index;
	struct state_req *req;
	size_t first, count;            /* tokens toks[first .. first+count) */
	bool totals;                    /* the two message counts follow the tokens */
};

static long long count_of(const struct state_value *v)
{
	if (v->status != STATE_OK || v->vlen == 0 || v->vlen > 20)
		return 0;
	char *end;
	long long c = strtoll(v->value, &end, 10);
	return *end || c < 0 ? 0 : c;
}

static void lookup_finish(struct bayes_db_lookup *L)
{
	bayes_db_lookup_fn done = L->done;
	void *arg = L->arg;
	bool ok = !L->failed;
	long long s = ok ? L->nspam : 0, h = ok ? L->nham : 0;
	char why[256];
	snprintf(why, sizeof(why), "%s", L->why);
	free(L->batches);
	free(L);
	done(arg, ok, s, h, ok ? "" : why);
}

static void got_batch(void *arg, const struct state_result *r)
{
	struct batch *b = arg;
	struct bayes_db_lookup *L = b->L;
	if (r->status != STATE_OK) {
		if (!L->failed)
			snprintf(L->why, sizeof(L->why), "%s", r->reason);
		L->failed = true;
	} else {
		for (size_t i = 0; i < b->count && 2 * i + 1 < r->nvalues; i++) {
			struct bayes_token *t = &L->toks[b->first + i];
			t->spam = count_of(&r->values[2 * i]);
			t->ham = count_of(&r->values[2 * i + 1]);
		}
		if (b->totals && r->nvalues >= 2 * b->count + 2) {
			L->nspam = count_of(&r->values[2 * b->count]);
			L->nham = count_of(&r->values[2 * b->count + 1]);
		}
	}
	L->batches[b->index] = NULL;
	free(b);
	if (--L->pending == 0)
		lookup_finish(L);
}

struct bayes_db_lookup *bayes_db_lookup(struct state *st, struct bayes_token *toks, size_t n,
					bayes_db_lookup_fn done, void *arg)
{
	struct bayes_db_lookup *L = xcalloc(1, sizeof(*L));
	L->toks = toks;
	L->n = n;
	L->done = done;
	L->arg = arg;
	for (size_t i = 0; i < n; i++)
		toks[i].spam = toks[i].ham = 0;
	size_t nbatches = n / BAYES_DB_BATCH + 1;       /* the last one carries the totals */
	L->pending = (unsigned)nbatches;
	L->nbatches = nbatches;
	L->batches = xcalloc(nbatches, sizeof(*L->batches));
	char **keys = xcalloc(2 * BAYES_DB_BATCH + 2, sizeof(*keys));
	for (size_t bi = 0; bi < nbatches; bi++) {
		struct batch *b = xcalloc(1, sizeof(*b));
		b->L = L;
		b->index = bi;
		L->batches[bi] = b;
		b->first = bi * BAYES_DB_BATCH;
		b->count = n - b->first < BAYES_DB_BATCH ? n - b->first : BAYES_DB_BATCH;
		b->totals = bi == nbatches - 1;
		size_t k = 0;
		for (size_t i = 0; i < b->count; i++) {
			const char *tok = toks[b->first + i].tok;
			keys[k++] = xasprintf("bayes:s:%s", tok);
			keys[k++] = xasprintf("bayes:h:%s", tok);
		}
		if (b->totals) {
			keys[k++] = xstrdup("bayes:n:s");
			keys[k++] = xstrdup("bayes:n:h");
		}
		b->req = state_mget(st, (const char *const *)keys, k, got_batch, b);
		for (size_t i = 0; i < k; i++)
			free(keys[i]);
	}
	free(keys);
	return L;
}

void bayes_db_lookup_cancel(struct bayes_db_lookup *L)
{
	if (!L)
		return;
	for (size_t i = 0; i < L->nbatches; i++)
		if (L->batches[i]) {
			state_cancel(L->batches[i]->req);
			free(L->batches[i]);
		}
	free(L->batches);
	free(L);
}

/* ---- learning ---------------------------------------------------------------- */

/* A message's counters move in state_mincr batches: one LMDB write
 * transaction, one Redis script each.  bayes_tokens gives at most 3000
 * tokens, so a message is one batch, learned all or none. */
struct learn;
struct learn_batch {
	struct learn *L;
	size_t off;                     /* of its first key in keys */
};

struct learn {
	struct state *st;
	char **keys;                    /* every counter to move; the last is the message count */
	size_t nkeys;
	struct learn_batch *batches;
	unsigned pending;
	bool failed;
	char why[256];
	bayes_db_done_fn done;
	void *arg;
};

static void counted(void *arg, const struct state_result *r)
{
	struct learn_batch *b = arg;
	struct learn *L = b->L;
	if (r->status == STATE_ERROR && !L->failed) {
		L->failed = true;
		/* "[backend: ]key I: why" names the counter, I in its batch */
		const char *k = strstr(r->reason, "key ");
		size_t i;
		int skip = 0;
		if (k && sscanf(k, "key %zu: %n", &i, &skip) == 1 && skip > 0 && i < L->nkeys - b->off)
			snprintf(L->why, sizeof(L->why), "%.*s%s: %s", (int)(k - r->reason), r->reason,
				 L->keys[b->off + i], k + skip);
		else
			snprintf(L->why, sizeof(L->why), "%s", r->reason);
	}
	if (--L->pending > 0)
		return;
	bayes_db_done_fn done = L->done;
	void *darg = L->arg;
	bool ok = !L->failed;
	char why[256];
	snprintf(why, sizeof(why), "%s", L->why);
	for (size_t k = 0; k < L->nkeys; k++)
		free(L->keys[k]);
	free(L->keys);
	free(L->batches);
	free(L);
	done(darg, ok, ok ? "" : why);
}

void bayes_db_learn(struct state *st, char *const *toks, size_t n, bool spam, int by, bayes_db_done_fn done,
		    void *arg)
{
	struct learn *L = xcalloc(1, sizeof(*L));
	L->st = st;
	L->done = done;
	L->arg = arg;
	L->nkeys = n + 1;
	L->keys = xcalloc(L->nkeys, sizeof(*L->keys));
	for (size_t i = 0; i < n; i++)
		L->keys[i] = xasprintf("bayes:%c:%s", spam ? 's' : 'h', toks[i]);
	L->keys[n] = xstrdup(spam ? "bayes:n:s" : "bayes:n:h");
	size_t nb = (L->nkeys + STATE_MGET_MAX - 1) / STATE_MGET_MAX;
	L->batches = xcalloc(nb, sizeof(*L->batches));
	L->pending = (unsigned)nb;
	for (size_t j = 0; j < nb; j++) {
		struct learn_batch *b = &L->batches[j];
		b->L = L;
		b->off = j * STATE_MGET_MAX;
		size_t k = L->nkeys - b->off < STATE_MGET_MAX ? L->nkeys - b->off : STATE_MGET_MAX;
		state_mincr(st, (const char *const *)L->keys + b->off, k, by, 0, counted, b);
	}
}
