/*
 * authn.h — SMTP AUTH credentials checked for the submission stage:
 * against the accounts file (passdb.h) on worker threads (crypt(3) is slow
 * by design and must not stall the event loop), behind a brute-force
 * defence kept in the shared state store, so that both servers of a pair
 * count the same failures.
 *
 * Failures are counted per client address ("authfail:ip:ADDR", an IPv6
 * client by its /64) and per
 * account name ("authfail:user:NAME"), each counter living for lockout
 * from its first failure.  From delay_after failures on, a failure is
 * answered only after failure_delay (a guesser gets few tries a minute);
 * from max_failures on, AUTH is refused without looking at the password
 * (454 4.7.0) until the counter expires.  `rampartctl authfail list|reset`
 * shows and clears them.  When the store cannot answer, failure_mode
 * applies: tempfail (454 4.7.0, the default) or continue (the password is
 * checked, the failure not counted); either way it is logged and counted.
 *
 * A password that checked out is remembered for cache_ttl (as an HMAC
 * with a per-process secret of the account's hash and the password, never
 * the password): the next login of that account with that password
 * (applications reconnect all day) costs no crypt(3).  A changed or
 * locked account, a wrong password, an expired entry: crypt again.
 *
 * With dovecot_socket the passwords are Dovecot's (dovecot_auth.h; its
 * own cache applies, not this one); the accounts file is then optional
 * and, when present, still marks applications, locked accounts and the
 * senders each owns.
 */
#ifndef RAMPART_AUTHN_H
#define RAMPART_AUTHN_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct metrics;
struct passdb;
struct state;

struct authn_opts {
	const char *accounts_file;
	unsigned workers;               /* threads checking passwords */
	unsigned delay_after;           /* failures before answers are delayed */
	unsigned max_failures;          /* failures before AUTH is refused */
	long long failure_delay_ms;
	long long lockout_ms;           /* how long failures are remembered */
	bool fail_open;                 /* store down: check anyway (not counted) */
	const char *dovecot_socket;     /* non-empty: Dovecot checks the passwords */
	long long dovecot_timeout_ms;
	long long cache_ttl_ms;         /* 0: no cache */
	size_t cache_size;              /* entries */
	long long busy_wait_ms;         /* how long a check waits for others in flight; 0: 10 s */
};

enum authn_result {
	AUTHN_OK,                       /* 235 */
	AUTHN_BAD,                      /* 535 5.7.8: wrong user or password, or a locked account */
	AUTHN_LOCKED_OUT,               /* 454 4.7.0: too many failures, cooling off */
	AUTHN_TEMPFAIL,                 /* 454 4.7.0: the store or a worker could not answer */
};

struct authn_outcome {
	enum authn_result result;
	bool app;                       /* the account is an application */
	char reason[160];               /* for the log, never shown to the client */
};

typedef void (*authn_done_fn)(void *arg, const struct authn_outcome *o);

struct authn;

/* NULL and why (the accounts file's file:line, threads). st may be NULL
 * (no brute-force defence: then it is logged at start). */
struct authn *authn_new(const struct authn_opts *o, struct event_base *base, struct state *st,
			struct metrics *m, char *why, size_t whylen);
void authn_free(struct authn *a);
/* Re-read the accounts file when it changed (from the stage's tick). */
void authn_tick(struct authn *a);
/* Check user/password from client ip; done runs once, always from the
 * loop and never before this returns.  The password is copied and wiped
 * once checked. */
void authn_check(struct authn *a, const char *sid, const char *ip, const char *user, const char *password,
		 authn_done_fn done, void *arg);
/* The state-store key of a client's failure counter: its address (IPv4),
 * or its /64 (IPv6). */
void authn_client_key(const char *ip, char *out, size_t outlen);
/* The key of the checks in flight beside a failure counter's key. */
void authn_pending_key(const char *failure_key, char *out, size_t outlen);
/* The accounts, for the checks that use them (sender ownership); NULL
 * when there is no accounts file (Dovecot alone). */
const struct passdb *authn_accounts(const struct authn *a);

#endif
