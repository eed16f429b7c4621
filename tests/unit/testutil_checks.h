/*
 * testutil_checks.h — the fixtures of the unit tests of checks run
 * through the chain (shared/checks): the check environment, building and
 * running a chain, metrics, the resolver and a DNS server that never
 * answers, and, for the stateful checks, the state store with a private
 * redis-server.
 */
#ifndef RAMPART_TESTUTIL_CHECKS_H
#define RAMPART_TESTUTIL_CHECKS_H

#include <stdbool.h>
#include <stddef.h>

#include "testutil.h"
#include "checks/check.h"
#include "mail/state.h"

struct chain;
struct config;
struct dns;
struct envelope;
struct event_base;
struct metrics;

/* env as the tests' MX sees it: stage and instance "mx", host name
 * mx.example.test, with metrics and the event loop base (either may be
 * NULL); the other fields are left as they are. */
void tu_check_env_init(struct check_env *env, struct metrics *metrics, struct event_base *base);
/* A session, on a new envelope (returned, to free): ctx's sid "S1", qid
 * "Q1", client the envelope's, env the envelope (a transaction),
 * declared_size -1 (no SIZE) and pool the envelope's; the client's
 * address, the sender and the HELO name unless NULL. */
struct envelope *tu_session_new(struct check_ctx *ctx, const char *client, const char *sender, const char *helo);

/* *cfg (freed) replaced by the rampart.conf text conf, parsed; a syntax
 * error fails the test. */
void tu_config_set(struct config **cfg, const char *conf);
/* chain_new over the checks named in names (separated by spaces or
 * commas, 16 at most); NULL and why when chain_new refuses. */
struct chain *tu_chain_new(const struct config *cfg, const char *names, const struct check_env *env, char *why,
			   size_t whylen);
/* Run phase, then the event loop base until the verdict has come (30 s at
 * most; base NULL: the checks answer before chain_run returns); the test
 * fails unless exactly one verdict came.  The verdict. */
struct verdict tu_chain_verdict(struct chain *chain, enum check_phase phase, struct check_ctx *ctx,
				struct event_base *base);

/* The value of the header named name the checks asked to add to ctx; NULL
 * if none.  Asking for one that was added twice fails the test. */
const char *tu_added_header(const struct check_ctx *ctx, const char *name);

/* The metrics' text has line (the text is printed when it does not). */
bool tu_metric_has(struct metrics *m, const char *line);
/* The value of the first series of a name (with any labels), or of one
 * series ("name{labels}", exactly as rendered); -1 when absent. */
double tu_metric_value(struct metrics *m, const char *series);

/* A chain and what it runs in: the event loop, metrics, the check
 * environment (env.dns the resolver), the chain's configuration. */
struct tu_chain_fx {
	struct event_base *base;
	struct metrics *metrics;
	struct check_env env;           /* tu_check_env_init's */
	struct dns *dns;                /* tu_chain_fx_dns's */
	int dead_dns;                   /* a DNS server that never answers: a UDP socket on 127.0.0.1 */
	char dead_fwd[64];              /* it as a forwarder, "127.0.0.1@PORT" */
	struct config *cfg;
	struct chain *chain;
};

/* The loop, metrics and env and, when dead_dns, the DNS server that never
 * answers (else dead_dns is -1); false on failure. */
bool tu_chain_fx_init(struct tu_chain_fx *c, bool dead_dns);
/* The resolver (replacing the one before): local data from the file zone
 * only, or (slow) forwarding the rest to the DNS server that never
 * answers; its timeout timeout_ms.  A failure fails the test. */
void tu_chain_fx_dns(struct tu_chain_fx *c, const char *zone, bool slow, int timeout_ms);
/* The DNS server that never answers, for a fixture made without it. */
void tu_chain_fx_dead_dns(struct tu_chain_fx *c);
/* Free the chain, its configuration, the headers the checks asked to add
 * to ctx or remove from it (check_ctx_clear_headers, unless ctx is NULL),
 * the resolver, metrics and the loop. */
void tu_chain_fx_free(struct tu_chain_fx *c, struct check_ctx *ctx);
/* c->chain (freed) replaced by the chain of names under conf (parsed into
 * c->cfg as by tu_config_set); false and why when chain_new refuses, and
 * c->chain is NULL then. */
bool tu_chain_try(struct tu_chain_fx *c, const char *conf, const char *names, char *why, size_t whylen);
/* The same; a refusal fails the test. */
void tu_chain_use(struct tu_chain_fx *c, const char *conf, const char *names);

/* ---- the stateful checks: the state store and a redis-server ------------- */

/* The suite of a stateful check's tests: a temporary directory, the
 * process's log in it (logpath, tu_log_open) and a private redis-server
 * with a password (also in the file pwfile). */
struct tu_state_suite {
	char dir[256];
	char pwfile[300];
	char logpath[300];
	int logfd;
	struct tu_redis r;
	bool redis_up;
	int seq;                        /* fixtures opened: each has its own LMDB file and key prefix */
};

/* cmocka's group setup and teardown of the suite (*state); tag names the
 * directory. */
int tu_state_suite_setup(void **state, const char *tag, const char *redis_password);
int tu_state_suite_teardown(void **state);
/* Stop the suite's redis-server; start it again on the same port (a
 * failure fails the test). */
void tu_state_redis_stop(struct tu_state_suite *s);
void tu_state_redis_restart(struct tu_state_suite *s);

/* A test of a stateful check run once per backend: name(suite, backend)
 * makes the cmocka tests name_lmdb and name_redis (the suite in *state),
 * which TU_STATE_TESTS(name) lists. */
#define TU_STATE_BACKENDS(name) \
	static void name##_lmdb(void **state) { name(*state, STATE_BACKEND_LMDB); } \
	static void name##_redis(void **state) { name(*state, STATE_BACKEND_REDIS); }
#define TU_STATE_TESTS(name) cmocka_unit_test(name##_lmdb), cmocka_unit_test(name##_redis)

/* One store, one chain, one session (e, ctx). */
struct tu_state_fx {
	struct tu_state_suite *s;
	struct tu_chain_fx c;           /* no resolver */
	struct state_config scfg;
	bool bound;
	struct state *st;
	struct envelope *e;
	struct check_ctx ctx;
	struct verdict v;               /* the last verdict of tu_state_run */
};

/* Open a store of backend (STATE_BACKEND_LMDB: a new file in the suite's
 * directory; STATE_BACKEND_REDIS: the suite's server, a new key prefix),
 * extra added to its [state] section, and wait until it is up; then c
 * (tu_chain_fx_init, c.env.state the store) and a session. */
void tu_state_fx_open(struct tu_state_fx *f, struct tu_state_suite *s, int backend, const char *extra);
void tu_state_fx_close(struct tu_state_fx *f);
/* The chain run for phase (tu_chain_verdict); the verdict, also in f->v. */
struct verdict tu_state_run(struct tu_state_fx *f, enum check_phase phase);
/* RCPT addr; a refused recipient (reject, tempfail) is taken off the
 * envelope again, as the server does. */
struct verdict tu_state_rcpt(struct tu_state_fx *f, const char *addr);
/* Run the event loop for ms. */
void tu_state_run_for(struct tu_state_fx *f, int ms);
/* Run the event loop until the store is up (a restarted redis-server),
 * for ms at most. */
void tu_state_wait_up(struct tu_state_fx *f, int ms);
/* The store's entry for key: STATE_OK and its value into value (unless
 * NULL), or STATE_NOTFOUND. */
enum state_status tu_state_get(struct tu_state_fx *f, const char *key, char *value, size_t vlen);
/* Store value under key (no expiry); a failure fails the test. */
void tu_state_set(struct tu_state_fx *f, const char *key, const char *value);
/* The tokens in a bucket now (a take of nothing). */
double tu_state_tokens(struct tu_state_fx *f, const char *key, double rate, double burst);

/* The Bayesian classifier's tokens of a message (bayes_tokens), copied:
 * the first TU_TOKS_MAX. */
#define TU_TOKS_MAX 400
struct tu_toks {
	char *t[TU_TOKS_MAX];
	size_t n;
};
void tu_toks_of(struct tu_toks *l, const char *msg, size_t len);
void tu_toks_free(struct tu_toks *l);
/* bayes_db_learn run to its end (its callback never inside the call):
 * true, or false and why. */
bool tu_bayes_learn(struct tu_state_fx *f, char *const *toks, size_t n, bool spam, int by, char *why, size_t whylen);

#endif
