/*
 * bayes_db.h — the Bayesian classifier's token counts in the state store
 * (LMDB on one host, Redis for the servers of a pair).
 *
 * Keys (under the store's key_prefix):
 *   bayes:s:TOKEN   spam messages the token was in
 *   bayes:h:TOKEN   ham messages the token was in
 *   bayes:n:s       spam messages trained
 *   bayes:n:h       ham messages trained
 * all plain counters: training a message is one state_mincr of all its
 * counters (per STATE_MGET_MAX: one LMDB write transaction, one Redis
 * script), atomic whichever process (or server of a pair) learns, and
 * untraining takes the counts back.
 * A lookup is one state_mget per BAYES_DB_BATCH tokens: one LMDB read
 * transaction, one Redis round trip.
 */
#ifndef RAMPART_BAYES_DB_H
#define RAMPART_BAYES_DB_H

#include <stdbool.h>
#include <stddef.h>

#include "bayes.h"

struct state;

/* Tokens per state_mget (two keys each). */
#define BAYES_DB_BATCH 2000

/* ok false: the store could not answer (why); the counts are then 0. */
typedef void (*bayes_db_lookup_fn)(void *arg, bool ok, long long nspam, long long nham, const char *why);
struct bayes_db_lookup;
/* Fills toks[i].spam and .ham (negative counts read as 0), then done with
 * the messages trained, from the event loop, once, unless cancelled
 * first: the handle lives until then. */
struct bayes_db_lookup *bayes_db_lookup(struct state *st, struct bayes_token *toks, size_t n,
					bayes_db_lookup_fn done, void *arg);
/* done will not run (and toks are not written any more). */
void bayes_db_lookup_cancel(struct bayes_db_lookup *l);

typedef void (*bayes_db_done_fn)(void *arg, bool ok, const char *why);
/* One message's tokens learned as spam or ham (by = 1), or unlearned
 * (by = -1); done once, from the event loop, when every count has
 * changed (ok false: some did not). */
void bayes_db_learn(struct state *st, char *const *toks, size_t n, bool spam, int by, bayes_db_done_fn done,
		    void *arg);

#endif
