/*
 * authn.c — SMTP AUTH credentials for the submission stage (authn.h):
 * the brute-force counters in the state store, then crypt(3) on a worker
 * thread, then the answer on the loop (delayed after repeated failures).
 *
 * Two kinds of counters in the state store, per client address (an IPv6
 * client by its /64) and per account: failures (authfail:, remembered
 * for auth_lockout from the first) and checks in flight (authpend:).  An
 * attempt that needs a password check counts itself in flight first,
 * then reads the failures: failures plus checks in flight (itself
 * included) may not pass auth_max_failures, so guesses made in parallel,
 * on any server of a pair, each see the ones before them and no
 * connection gets a guess past the limit.  An attempt that finds no room
 * only because of checks still in flight waits for their outcome
 * (retrying, BUSY_WAIT_MAX_MS at most, then a tempfail) instead of being
 * locked out: an application that opens many connections at once logs in
 * on all of them, while failures among those checks lock the rest out.
 * A failure is counted before its check leaves the in-flight count, so a
 * reader never sees less than the truth; a count the store could not
 * change is owed, and sent again every tick until it is.  A password the
 * cache knows is good costs no check and is not counted.
 */
#include "authn.h"
#include "dovecot_auth.h"
#include "passdb.h"
#include "state.h"
#include "../util/alloc.h"
#include "../util/log.h"
#include "../util/metrics.h"
#include "../util/net.h"
#include "../util/workers.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

/* Waiting for checks in flight: retried after 20 ms, doubling to 200,
 * for busy_wait_ms (10 s unless told). */
#define BUSY_RETRY_MIN_MS 20
#define BUSY_RETRY_MAX_MS 200
#define BUSY_WAIT_MAX_MS 10000
/* The in-flight counters expire this long after they were created: longer
 * than any check (dovecot_auth_timeout is at most 10 minutes), so checks
 * in flight never lose their count; and a count left behind by a process
 * that stopped during a check is gone after it. */
#define PEND_TTL_MS (15 * 60 * 1000)
/* Counter changes owed to the store, at most. */
#define OWED_MAX 10000

/* A password that checked out recently, as HMAC(secret, hash NUL
 * password): the password itself is never kept, a changed hash
 * (rampartctl user passwd) no longer matches, and a lookup costs a
 * microsecond instead of a crypt(3). */
struct cache_entry {
	char user[256];
	unsigned char mac[32];
	long long expires_ms;
};

/* A change of counters that failed, sent again every tick while it
 * still matters: until the counters it would change have expired. */
struct owed {
	struct authn *a;
	char keys[2][320];
	size_t nkeys;
	long long by, ttl_ms;
	long long until;                /* mono ms */
	struct state_req *req;          /* in flight; NULL: waiting for the next tick */
	struct owed *next;
};

struct authn {
	struct authn_opts o;
	unsigned char secret[32];
	struct cache_entry *cache;      /* open addressing, cache_size slots */
	size_t cache_size;
	char *accounts_file;
	struct event_base *base;
	struct state *st;
	struct passdb *db;              /* NULL: none (Dovecot checks the passwords) */
	struct workers *w;
	struct dovecot_auth *dv;        /* passwords checked by Dovecot instead of crypt */
	struct metric *m_total, *m_store_errors, *m_waits;
	struct owed *owed;              /* counter changes the store has yet to take */
	size_t nowed;
};

struct areq {
	struct workers_job job;         /* first: the pool hands this back */
	struct authn *a;
	char sid[40];
	char ip[64];
	char user[256];
	char key_ip[320], key_user[320];        /* failures */
	char key_pip[320], key_puser[320];      /* checks in flight */
	char *pass;
	char *hash;                     /* copy of the account's hash; NULL: none */
	char *decoy;                    /* no account: a real hash to spend the same time on */
	bool account_locked;
	bool verified;
	bool cached;                    /* verified from the cache, not by crypt */
	bool refused;                   /* the pool was full: not checked */
	long long fails_ip, fails_user;
	long long pend_ip, pend_user;   /* checks in flight, this one included */
	bool counted;                   /* the failure counters could be read */
	int precounted;                 /* in-flight counters this attempt is in (ip, then user) */
	long long busy_since;           /* mono ms: waiting for checks in flight since */
	int busy_delay;                 /* ms before the next try */
	struct event *retry;
	struct authn_outcome out;
	struct event *timer;
	authn_done_fn done;
	void *arg;
};

static void wipe_free(char *p)
{
	if (p) {
		OPENSSL_cleanse(p, strlen(p));
		free(p);
	}
}

static void areq_free(struct areq *r)
{
	wipe_free(r->pass);
	wipe_free(r->hash);
	free(r->decoy);
	if (r->timer)
		event_free(r->timer);
	if (r->retry)
		event_free(r->retry);
	free(r);
}

static const char *result_name(enum authn_result x)
{
	static const char *n[] = { "ok", "bad", "locked_out", "tempfail" };
	return n[x];
}

static void finish(struct areq *r)
{
	log_info(r->sid, NULL, "auth.checked", "user=%s result=%s reason=%s client=%s", r->user,
		 result_name(r->out.result), r->out.reason, r->ip);
	if (r->a->m_total) {
		char l[64];
		snprintf(l, sizeof(l), "result=\"%s\"", result_name(r->out.result));
		metric_inc(r->a->m_total, l);
	}
	authn_done_fn done = r->done;
	void *arg = r->arg;
	struct authn_outcome o = r->out;
	areq_free(r);
	done(arg, &o);
}

static void delayed(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	finish(arg);
}

/* Answer now, or after failure_delay when this source keeps failing. */
static void answer(struct areq *r, bool slow)
{
	if (!slow || r->a->o.failure_delay_ms <= 0) {
		finish(r);
		return;
	}
	r->timer = evtimer_new(r->a->base, delayed, r);
	struct timeval tv = { r->a->o.failure_delay_ms / 1000, (r->a->o.failure_delay_ms % 1000) * 1000 };
	evtimer_add(r->timer, &tv);
}

static void store_error(struct areq *r, const struct state_result *res)
{
	if (r->a->m_store_errors)
		metric_inc(r->a->m_store_errors, NULL);
	log_warn(r->sid, NULL, "auth.store_error", "op=%s key=%s reason=%s failure_mode=%s client=%s",
		 state_op_name(res->op), res->key, res->reason, r->a->o.fail_open ? "continue" : "tempfail", r->ip);
}

/* ---- the cache of good passwords ---------------------------------------- */

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void cache_mac(const struct authn *a, const char *hash, const char *password, unsigned char out[32])
{
	size_t hl = strlen(hash), pl = strlen(password);
	unsigned char *data = xmalloc(hl + 1 + pl);
	memcpy(data, hash, hl);
	data[hl] = '\0';
	memcpy(data + hl + 1, password, pl);
	unsigned int n = 32;
	if (!HMAC(EVP_sha256(), a->secret, sizeof(a->secret), data, hl + 1 + pl, out, &n))
		memset(out, 0, 32);
	OPENSSL_cleanse(data, hl + 1 + pl);
	free(data);
}

static size_t cache_slot(const struct authn *a, const char *user)
{
	size_t h = 1469598103934665603ULL;
	for (const char *p = user; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	return h % a->cache_size;
}

static bool cache_hit(const struct authn *a, const char *user, const char *hash, const char *password)
{
	if (!a->cache || !hash)
		return false;
	const struct cache_entry *e = &a->cache[cache_slot(a, user)];
	if (strcmp(e->user, user) != 0 || e->expires_ms <= mono_ms())
		return false;
	unsigned char mac[32];
	cache_mac(a, hash, password, mac);
	bool hit = CRYPTO_memcmp(mac, e->mac, 32) == 0;
	OPENSSL_cleanse(mac, sizeof(mac));
	return hit;
}

/* One entry per slot: a newer login takes the slot of an older one. */
static void cache_put(struct authn *a, const char *user, const char *hash, const char *password)
{
	if (!a->cache || !hash)
		return;
	struct cache_entry *e = &a->cache[cache_slot(a, user)];
	snprintf(e->user, sizeof(e->user), "%s", user);
	cache_mac(a, hash, password, e->mac);
	e->expires_ms = mono_ms() + a->o.cache_ttl_ms;
}

/* ---- the password, on a worker ------------------------------------------- */

static void owed_send(struct owed *o);

static void owed_done(void *arg, const struct state_result *res)
{
	struct owed *o = arg;
	o->req = NULL;
	if (res->status == STATE_ERROR && mono_ms() < o->until)
		return;                 /* the next tick sends it again */
	struct authn *a = o->a;
	if (res->status == STATE_ERROR)
		log_warn(NULL, NULL, "auth.counter_lost", "key=%s by=%lld reason=%s", o->keys[0], o->by, res->reason);
	for (struct owed **pp = &a->owed; *pp; pp = &(*pp)->next)
		if (*pp == o) {
			*pp = o->next;
			break;
		}
	a->nowed--;
	free(o);
}

static void owed_send(struct owed *o)
{
	const char *keys[2] = { o->keys[0], o->keys[1] };
	o->req = state_mincr(o->a->st, keys, o->nkeys, o->by, o->ttl_ms, owed_done, o);
}

/* Move two counters; when the store cannot, the change is owed and sent
 * again every tick (a lost decrement would hold a slot of the in-flight
 * count, a lost failure would be a free guess). */
static void change_counters(struct areq *r, const char *k0, const char *k1, long long by, long long ttl_ms,
			    long long keep_ms)
{
	struct authn *a = r->a;
	const char *keys[2] = { k0, k1 };
	size_t n = k1 ? 2 : 1;
	if (a->nowed >= OWED_MAX) {
		log_error(r->sid, NULL, "auth.counter_lost", "key=%s by=%lld reason=%s", k0, by,
			  "too many counter changes owed to the state store");
		state_mincr(a->st, keys, n, by, ttl_ms, NULL, NULL);
		return;
	}
	struct owed *o = xcalloc(1, sizeof(*o));
	o->a = a;
	o->nkeys = n;
	for (size_t i = 0; i < n; i++)
		snprintf(o->keys[i], sizeof(o->keys[i]), "%s", keys[i]);
	o->by = by;
	o->ttl_ms = ttl_ms;
	o->until = mono_ms() + keep_ms;
	o->next = a->owed;
	a->owed = o;
	a->nowed++;
	owed_send(o);
}

/* Take this attempt out of the in-flight counters (both, or the client's
 * alone when the account's could not be counted).  A key gone meanwhile
 * comes back as -1 for a millisecond only. */
static void uncount(struct areq *r)
{
	if (!r->precounted)
		return;
	change_counters(r, r->key_pip, r->precounted == 2 ? r->key_puser : NULL, -1, 1, PEND_TTL_MS);
	r->precounted = 0;
}

static void run(void *owner, void *state, struct workers_job *job)
{
	(void)owner; (void)state;
	struct areq *r = (struct areq *)job;
	if (r->hash)
		r->verified = passdb_verify(r->hash, r->pass);
	else
		(void)passdb_verify(r->decoy, r->pass);    /* the time, never the answer */
}

/* The failure is in the counters (then the attempt leaves the in-flight
 * ones): answered, slowly once the source keeps failing. */
static void failure_counted(void *arg, const struct state_result *res)
{
	struct areq *r = arg;
	if (res->status == STATE_ERROR) {
		/* counted later, but counted: never a free guess */
		store_error(r, res);
		change_counters(r, r->key_ip, r->key_user, 1, r->a->o.lockout_ms, r->a->o.lockout_ms);
	}
	uncount(r);
	long long worst = (r->fails_ip > r->fails_user ? r->fails_ip : r->fails_user) + 1;
	if (res->status != STATE_ERROR && worst == (long long)r->a->o.max_failures)
		log_warn(r->sid, NULL, "auth.lockout", "user=%s client=%s failures_client=%lld failures_user=%lld "
			 "lockout_ms=%lld", r->user, r->ip, r->fails_ip + 1, r->fails_user + 1, r->a->o.lockout_ms);
	answer(r, worst >= (long long)r->a->o.delay_after);
}

static void job_done(struct workers_job *job)
{
	struct areq *r = (struct areq *)job;
	if (r->verified && !r->cached && !r->account_locked && r->pass && !r->a->dv)
		cache_put(r->a, r->user, r->hash, r->pass);
	wipe_free(r->pass);
	r->pass = NULL;
	if (r->refused) {
		uncount(r);
		r->out.result = AUTHN_TEMPFAIL;
		snprintf(r->out.reason, sizeof(r->out.reason), "too many authentications waiting");
		finish(r);
		return;
	}
	if (r->verified && !r->account_locked) {
		r->out.result = AUTHN_OK;
		snprintf(r->out.reason, sizeof(r->out.reason), "password matches%s", r->cached ? " (cached)" : "");
		uncount(r);
		finish(r);
		return;
	}
	r->out.result = AUTHN_BAD;
	snprintf(r->out.reason, sizeof(r->out.reason), "%s",
		 !r->hash ? "no such account" : r->account_locked ? "account locked"
		 : r->a->dv ? "refused by dovecot" : "wrong password");
	if (!r->precounted) {
		answer(r, false);
		return;
	}
	const char *keys[2] = { r->key_ip, r->key_user };
	state_mincr(r->a->st, keys, 2, 1, r->a->o.lockout_ms, failure_counted, r);
}

static void job_discard(struct workers_job *job)
{
	areq_free((struct areq *)job);
}

static const struct workers_def authn_workers = {
	.name = "auth",
	.max_waiting = 1000,
	.run = run,
	.done = job_done,
	.discard = job_discard,
};

static void dovecot_answered(void *arg, enum dovecot_result res, const char *reason)
{
	struct areq *r = arg;
	if (res == DOVECOT_TEMPFAIL) {
		uncount(r);
		wipe_free(r->pass);
		r->pass = NULL;
		r->out.result = AUTHN_TEMPFAIL;
		snprintf(r->out.reason, sizeof(r->out.reason), "%s", reason);
		finish(r);
		return;
	}
	r->verified = res == DOVECOT_OK;
	job_done(&r->job);
}

/* The password check itself: Dovecot, or crypt on a worker. */
static void check_password(struct areq *r)
{
	if (r->a->dv) {
		dovecot_auth_check(r->a->dv, r->user, r->pass, r->ip, dovecot_answered, r);
		return;
	}
	if (!workers_submit(r->a->w, &r->job)) {
		r->refused = true;
		workers_return(r->a->w, &r->job);
	}
}

static void precount(struct areq *r);

static void verify(struct areq *r)
{
	const struct passdb_account *acc = r->a->db ? passdb_find(r->a->db, r->user) : NULL;
	if (r->a->dv) {
		/* Dovecot knows the password; the accounts file, when there is
		 * one, still says who is an application and who is locked */
		r->hash = xstrdup("dovecot");
		if (acc) {
			r->account_locked = acc->locked;
			r->out.app = acc->app;
		}
	} else if (acc) {
		r->hash = xstrdup(acc->hash);
		r->account_locked = acc->locked;
		r->out.app = acc->app;
	} else if (r->a->db && passdb_decoy(r->a->db)) {
		r->decoy = xstrdup(passdb_decoy(r->a->db));
	}
	if (!r->a->dv && acc && !acc->locked && cache_hit(r->a, r->user, r->hash, r->pass)) {
		/* answered through the loop all the same */
		r->verified = r->cached = true;
		workers_return(r->a->w, &r->job);
		return;
	}
	if (r->counted) {
		precount(r);
		return;
	}
	check_password(r);
}

/* ---- counted before the check ------------------------------------------- */

static void read_failures(struct areq *r);

/* The store could not read or count: tempfail, or (auth_failure_mode
 * continue) go on uncounted. */
static void store_failed(struct areq *r, const struct state_result *res, void (*go_on)(struct areq *))
{
	store_error(r, res);
	uncount(r);
	if (r->a->o.fail_open) {
		r->counted = false;
		go_on(r);
		return;
	}
	wipe_free(r->pass);
	r->pass = NULL;
	r->out.result = AUTHN_TEMPFAIL;
	snprintf(r->out.reason, sizeof(r->out.reason), "state store: %s", res->reason);
	finish(r);
}

static void busy_retry(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	read_failures(arg);
}

/* No room for this check while others are in flight: try again soon. */
static void busy_wait(struct areq *r)
{
	long long now = mono_ms();
	if (!r->busy_since)
		r->busy_since = now;
	long long limit = r->a->o.busy_wait_ms > 0 ? r->a->o.busy_wait_ms : BUSY_WAIT_MAX_MS;
	if (now - r->busy_since >= limit) {
		wipe_free(r->pass);
		r->pass = NULL;
		r->out.result = AUTHN_TEMPFAIL;
		snprintf(r->out.reason, sizeof(r->out.reason), "other authentications from %s or for %s still in progress",
			 r->ip, r->user);
		finish(r);
		return;
	}
	/* verify() looks the account up again */
	wipe_free(r->hash);
	r->hash = NULL;
	free(r->decoy);
	r->decoy = NULL;
	r->account_locked = false;
	if (!r->busy_delay && r->a->m_waits)
		metric_inc(r->a->m_waits, NULL);
	r->busy_delay = r->busy_delay ? r->busy_delay * 2 : BUSY_RETRY_MIN_MS;
	if (r->busy_delay > BUSY_RETRY_MAX_MS)
		r->busy_delay = BUSY_RETRY_MAX_MS;
	if (!r->retry)
		r->retry = evtimer_new(r->a->base, busy_retry, r);
	struct timeval tv = { r->busy_delay / 1000, (r->busy_delay % 1000) * 1000 };
	evtimer_add(r->retry, &tv);
}

static void locked_out(struct areq *r)
{
	uncount(r);
	r->out.result = AUTHN_LOCKED_OUT;
	snprintf(r->out.reason, sizeof(r->out.reason), "%lld failures from %s, %lld for %s", r->fails_ip, r->ip,
		 r->fails_user, r->user);
	wipe_free(r->pass);
	r->pass = NULL;
	answer(r, true);
}

static long long value_count(const struct state_value *v)
{
	return v->status == STATE_OK && v->value ? strtoll(v->value, NULL, 10) : 0;
}

/* The failures, as read (an mget of key_ip, key_user): true when this
 * source is cooling off, and the attempt answered so. */
static bool cooling_off(struct areq *r, const struct state_result *res)
{
	r->fails_ip = value_count(&res->values[0]);
	r->fails_user = value_count(&res->values[1]);
	long long max = (long long)r->a->o.max_failures;
	if (r->fails_ip < max && r->fails_user < max)
		return false;
	locked_out(r);
	return true;
}

/* In flight, then the failures read: room for this check? */
static void recounted(void *arg, const struct state_result *res)
{
	struct areq *r = arg;
	if (res->status == STATE_ERROR) {
		store_failed(r, res, check_password);
		return;
	}
	if (cooling_off(r, res))
		return;
	long long max = (long long)r->a->o.max_failures;
	/* below 1 (this attempt is in it): a count that was lost, so unknown */
	if (r->pend_ip < 1 || r->pend_user < 1 || r->fails_ip + r->pend_ip > max || r->fails_user + r->pend_user > max) {
		uncount(r);
		busy_wait(r);
		return;
	}
	check_password(r);
}

static void precounted_user(void *arg, const struct state_result *res)
{
	struct areq *r = arg;
	if (res->status == STATE_ERROR) {
		store_failed(r, res, check_password);
		return;
	}
	r->pend_user = res->counter;
	r->precounted = 2;
	const char *keys[2] = { r->key_ip, r->key_user };
	state_mget(r->a->st, keys, 2, recounted, r);
}

static void precounted_ip(void *arg, const struct state_result *res)
{
	struct areq *r = arg;
	if (res->status == STATE_ERROR) {
		store_failed(r, res, check_password);
		return;
	}
	r->pend_ip = res->counter;
	r->precounted = 1;
	state_incr(r->a->st, r->key_puser, 1, PEND_TTL_MS, precounted_user, r);
}

static void precount(struct areq *r)
{
	state_incr(r->a->st, r->key_pip, 1, PEND_TTL_MS, precounted_ip, r);
}

/* ---- before anything: is this source cooling off? ------------------------ */

static void failures_read(void *arg, const struct state_result *res)
{
	struct areq *r = arg;
	if (res->status == STATE_ERROR)
		store_failed(r, res, verify);
	else if (!cooling_off(r, res))
		verify(r);
}

static void read_failures(struct areq *r)
{
	const char *keys[2] = { r->key_ip, r->key_user };
	state_mget(r->a->st, keys, 2, failures_read, r);
}

void authn_client_key(const char *ip, char *out, size_t outlen)
{
	/* an IPv6 client has a /64 to roam in: counted by network */
	char net[80];
	if (!strchr(ip, ':') || !net_prefix(ip, 32, 64, net, sizeof(net)))
		snprintf(net, sizeof(net), "%s", ip);
	snprintf(out, outlen, "authfail:ip:%s", net);
}

void authn_pending_key(const char *failure_key, char *out, size_t outlen)
{
	size_t n = strlen("authfail:");
	snprintf(out, outlen, "authpend:%s", strncmp(failure_key, "authfail:", n) == 0 ? failure_key + n : failure_key);
}

void authn_check(struct authn *a, const char *sid, const char *ip, const char *user, const char *password,
		 authn_done_fn done, void *arg)
{
	struct areq *r = xcalloc(1, sizeof(*r));
	r->a = a;
	r->done = done;
	r->arg = arg;
	snprintf(r->sid, sizeof(r->sid), "%s", sid ? sid : "");
	snprintf(r->ip, sizeof(r->ip), "%s", ip && *ip ? ip : "unknown");
	snprintf(r->user, sizeof(r->user), "%s", user);
	r->pass = xstrdup(password);
	char lower[256];
	size_t i = 0;
	for (; user[i] && i < sizeof(lower) - 1; i++)
		lower[i] = (char)tolower((unsigned char)user[i]);
	lower[i] = '\0';
	authn_client_key(r->ip, r->key_ip, sizeof(r->key_ip));
	snprintf(r->key_user, sizeof(r->key_user), "authfail:user:%s", lower);
	authn_pending_key(r->key_ip, r->key_pip, sizeof(r->key_pip));
	authn_pending_key(r->key_user, r->key_puser, sizeof(r->key_puser));
	if (!a->st) {
		verify(r);
		return;
	}
	r->counted = true;
	read_failures(r);
}

struct authn *authn_new(const struct authn_opts *o, struct event_base *base, struct state *st,
			struct metrics *m, char *why, size_t whylen)
{
	struct authn *a = xcalloc(1, sizeof(*a));
	a->o = *o;
	a->accounts_file = xstrdup(o->accounts_file ? o->accounts_file : "");
	a->o.accounts_file = a->accounts_file;
	a->base = base;
	a->st = st;
	if (o->cache_ttl_ms > 0 && o->cache_size > 0 && base) {
		if (RAND_bytes(a->secret, sizeof(a->secret)) != 1) {
			snprintf(why, whylen, "no randomness for the authentication cache");
			authn_free(a);
			return NULL;
		}
		a->cache_size = o->cache_size;
		a->cache = xcalloc(a->cache_size, sizeof(*a->cache));
	}
	bool dovecot = o->dovecot_socket && *o->dovecot_socket;
	if (!*a->accounts_file && !dovecot) {
		snprintf(why, whylen, "no accounts file (rampartctl user add makes one) and no dovecot_auth_socket");
		authn_free(a);
		return NULL;
	}
	if (*a->accounts_file) {
		a->db = passdb_load(a->accounts_file, why, whylen);
		if (!a->db) {
			authn_free(a);
			return NULL;
		}
	}
	if (dovecot && base) {
		a->dv = dovecot_auth_new(base, o->dovecot_socket, o->dovecot_timeout_ms);
	} else if (base) {
		a->w = workers_new(base, o->workers ? o->workers : 1, &authn_workers, a, why, whylen);
		if (!a->w) {
			authn_free(a);
			return NULL;
		}
	}
	if (m) {
		a->m_total = metrics_counter(m, "rampart_auth_total", "SMTP AUTH attempts, by result.");
		a->m_store_errors = metrics_counter(m, "rampart_auth_store_errors_total",
						    "Brute-force counters the state store could not read or write.");
		a->m_waits = metrics_counter(m, "rampart_auth_waits_total",
					     "Password checks that waited for others in flight from the same client or "
					     "for the same account.");
	}
	if (!st && base)
		log_warn(NULL, NULL, "auth.no_state_store", "reason=%s", "failed authentications are not counted");
	return a;
}

void authn_free(struct authn *a)
{
	if (!a)
		return;
	workers_free(a->w);
	dovecot_auth_free(a->dv);
	while (a->owed) {
		struct owed *o = a->owed;
		a->owed = o->next;
		state_cancel(o->req);
		free(o);
	}
	if (a->cache) {
		OPENSSL_cleanse(a->cache, a->cache_size * sizeof(*a->cache));
		free(a->cache);
	}
	OPENSSL_cleanse(a->secret, sizeof(a->secret));
	passdb_free(a->db);
	free(a->accounts_file);
	free(a);
}

void authn_tick(struct authn *a)
{
	for (struct owed *o = a->owed; o; o = o->next)
		if (!o->req)
			owed_send(o);
	char why[512];
	if (a->db && !passdb_refresh(&a->db, why, sizeof(why)))
		log_error(NULL, NULL, "auth.accounts_reload_failed", "error=%s", why);
}

const struct passdb *authn_accounts(const struct authn *a)
{
	return a->db;
}
