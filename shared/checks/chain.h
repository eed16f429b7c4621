/*
 * chain.h — runs a stage's checks, in their configured order, for a phase.
 *
 * The first verdict other than continue ends the phase (accept ends it
 * with success).  Every decision is one JSON log line naming the check,
 * the verdict and the reason, and is counted on /metrics
 * (rampart_check_evaluations_total, rampart_check_verdicts_total).
 */
#ifndef RAMPART_CHAIN_H
#define RAMPART_CHAIN_H

#include "check.h"

struct chain;
struct config;

/* Build the chain from names (a config list); each check's parameters are
 * bound from [check.NAME].  NULL + why on error (unknown check, bad
 * parameter, init failure). */
struct chain *chain_new(const struct config *cfg, const struct strlist *names,
			const struct check_env *env, char *why, size_t whylen);
/* The same from check definitions (chain_new looks the names up and calls
 * this; tests use it to run checks of their own). */
struct chain *chain_new_defs(const struct config *cfg, const struct check_def *const *defs, size_t n,
			     const struct check_env *env, char *why, size_t whylen);
void chain_free(struct chain *c);
/* Shutdown, before the sessions go: every check's stop (check_def). */
void chain_stop(struct chain *c);

/* The section a check's parameters come from: [check.NAME.INSTANCE] (the
 * instance's own settings) when cfg has it, else [check.NAME]. */
void chain_check_section(const struct config *cfg, const char *name, const char *instance, char *out,
			 size_t outlen);

typedef void (*chain_done_fn)(void *arg, const struct verdict *v);
/* Run phase; done() gets the deciding verdict (kind V_CONTINUE when no
 * check objected).  done may run before chain_run returns.  PHASE_CONNECT
 * first clears the session facts of ctx (client_allowed, the DNSBL
 * score): a new client starts from nothing; PHASE_MAIL clears the DKIM
 * results of ctx->auth (a new transaction). */
void chain_run(struct chain *c, enum check_phase phase, struct check_ctx *ctx, chain_done_fn done,
	       void *arg);

#endif
