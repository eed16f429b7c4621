/*
 * check.h — a defence as a check: hooks for the SMTP phases returning a
 * verdict (DESIGN.md §2).
 *
 * A check sees a struct check_ctx — the client, the envelope so far, the
 * message when it is complete — and nothing of the front-end that calls it
 * (native SMTP server, milter, policy delegation).  Hooks are
 * asynchronous: a hook ends by calling check_done() exactly once, before
 * or after it returns.  Each check declares its own parameters (section
 * [check.NAME] of rampart.conf) and keeps its per-process state in the
 * instance its init() returns: no global mutable state.
 */
#ifndef RAMPART_CHECK_H
#define RAMPART_CHECK_H

#include <stdbool.h>
#include <stddef.h>

#include "../util/config.h"
#include "../mail/envelope.h"

struct dns;
struct event_base;
struct metrics;
struct state;
struct pool;
struct check_shared;

enum check_phase {
	PHASE_CONNECT,
	PHASE_HELO,
	PHASE_MAIL,
	PHASE_RCPT,         /* the candidate is env->rcpts[env->nrcpt - 1] */
	PHASE_DATA,         /* before the message is read */
	PHASE_HEADERS,      /* the header section is complete: header checks (over SMTP
			     * it runs at the end of the message, just before
			     * PHASE_MESSAGE; a milter gets it at end of headers) */
	PHASE_MESSAGE,      /* end of message: headers and body available */
	PHASE_COUNT
};

enum verdict_kind {
	V_CONTINUE,         /* no objection; next check */
	V_ACCEPT,           /* accept now; skip the remaining checks of this phase */
	V_TEMPFAIL,         /* 4xx */
	V_REJECT,           /* 5xx */
	V_DISCARD,          /* accept and drop (logged) */
	V_QUARANTINE,       /* accept into quarantine */
};

struct verdict {
	enum verdict_kind kind;
	int code;           /* SMTP code for TEMPFAIL/REJECT (default 451/550) */
	char enh[16];       /* enhanced status code, e.g. "5.7.1" */
	char reason[256];   /* reply text and log reason */
	const char *check;  /* name of the deciding check (set by the chain) */
};

/* What the stage tells every check at start-up. */
struct check_env {
	const char *stage;
	const char *instance;
	const char *hostname;
	const struct strlist *local_domains;     /* domains this site receives mail for */
	long long max_message_size;
	unsigned max_recipients;
	struct metrics *metrics;
	struct dns *dns;                         /* the process's resolver */
	struct event_base *base;                 /* the event loop, for timers (NULL in
						  * offline checks: no timers then) */
	const char *accounts_file;               /* the stage's accounts (submission), or NULL */
	struct check_shared *shared;             /* the process's long-lived objects (shared.h);
						  * NULL when only checking a configuration */
	struct state *state;                     /* the process's state store ([state]),
						  * opened when a check needs_state; NULL
						  * when only checking a configuration */
};

/* A header a check wants added to the message.  The value may be folded
 * (CRLF followed by a tab, RFC 5322 2.2.3); it never ends with CRLF. */
struct check_header {
	char *name;
	char *value;
};

/* A header a check wants removed from the message: the index-th field
 * (from 1, in header order) named name, as the message arrived.  (A
 * milter front-end passes it to smfi_chgheader unchanged.) */
struct check_header_del {
	char *name;
	unsigned index;
};

/* How the sender authenticated, for the checks that come later: the spf
 * check fills it at MAIL (greylisting keys on the SPF-authorised domain),
 * the dkim check at end of message (it writes one Authentication-Results
 * header, RFC 8601, with SPF and DKIM).  Zero: not evaluated.  At MAIL
 * (a new transaction) the spf check clears it and the chain clears the
 * DKIM results. */
enum auth_spf {
	AUTH_SPF_UNCHECKED,         /* no spf check, or the client is exempt */
	AUTH_SPF_NONE, AUTH_SPF_NEUTRAL, AUTH_SPF_PASS, AUTH_SPF_FAIL, AUTH_SPF_SOFTFAIL,
	AUTH_SPF_TEMPERROR, AUTH_SPF_PERMERROR,
};
/* DKIM results (check "dkim", at end of message; RFC 8601 2.7.1 names).
 * Per signature: pass, fail (the signature or body hash did not verify),
 * neutral (a syntax error in the signature, or not verified: body over
 * the check's bound), temperror (the key could not be fetched now),
 * permerror (no key, a broken or revoked key, expired, rsa-sha1).
 * none: the message is not signed (the summary only). */
enum auth_dkim {
	AUTH_DKIM_UNCHECKED,        /* no dkim check ran on this message */
	AUTH_DKIM_NONE, AUTH_DKIM_PASS, AUTH_DKIM_FAIL, AUTH_DKIM_NEUTRAL,
	AUTH_DKIM_TEMPERROR, AUTH_DKIM_PERMERROR,
};
#define AUTH_DKIM_MAX 10            /* signatures verified per message, at most */
struct auth_dkim_sig {
	enum auth_dkim result;      /* never UNCHECKED or NONE */
	char domain[254];           /* d= (header.d); "" if the signature has none */
	char selector[254];         /* s= (header.s) */
	char algorithm[24];         /* a= (header.a): rsa-sha256, ed25519-sha256 */
	char b[9];                  /* the first 8 characters of b= (header.b, RFC 6008) */
	char reason[128];           /* why not pass (RFC 6376 6.1 wording); "" for pass */
};
struct check_auth {
	enum auth_spf spf;          /* the SPF result (RFC 7208 2.6) */
	char spf_domain[256];       /* the domain checked: authorised when spf is pass */
	char spf_identity[16];      /* "mailfrom" or "helo" (smtp.mailfrom / smtp.helo) */
	/* dkim: the message's DKIM summary: none when unsigned, pass when
	 * a signature passed, else the first of temperror, fail, permerror
	 * and neutral (in that order) that some signature has.  dkim_sigs:
	 * the signatures verified, in header order (those past
	 * AUTH_DKIM_MAX are not verified). */
	enum auth_dkim dkim;
	unsigned ndkim;
	struct auth_dkim_sig dkim_sigs[AUTH_DKIM_MAX];
};

struct check_ctx {
	const char *sid;            /* session id */
	const char *qid;            /* queue id, NULL before MAIL */
	const struct env_client *client;
	bool tls;
	/* Session facts checks leave for later checks.  client_allowed: the
	 * client is on a local allow list (check "lists"): checks against
	 * spam from unknown clients (greylisting, DNSBL, rate limits) let it
	 * through. */
	bool client_allowed;
	/* The client's reverse DNS (check "hygiene", at CONNECT): its PTR
	 * name and whether that name resolves back to the address
	 * (forward-confirmed reverse DNS). */
	enum { RDNS_UNCHECKED, RDNS_NONE, RDNS_MISMATCH, RDNS_CONFIRMED, RDNS_TEMPFAIL } rdns;
	char client_ptr[256];
	/* Recipients refused for good (5xx) so far in this session (the
	 * chain counts them; 4xx such as greylisting do not count): check
	 * "badrcpt" slows and ends dictionary attacks with it. */
	unsigned rcpt_refused;
	/* dnsbl_score: the client's DNSBL score (check "dnsbl": the sum of
	 * the weights of the lists that list it, allow lists negative);
	 * dnswl: an allow list (negative weight) lists it. */
	int dnsbl_score;
	bool dnswl;
	char dnsbl_listed[200];     /* "list(weight) ..." for the logs and the header */
	struct check_auth auth;     /* sender authentication so far (checks "spf", "dkim") */
	const char *helo;
	const struct envelope *env; /* NULL before MAIL */
	long long declared_size;    /* MAIL SIZE=, -1 if not given */
	const char *data;           /* PHASE_HEADERS, PHASE_MESSAGE: the message so far */
	size_t len;
	size_t header_bytes;        /* length of the header section within data */
	struct pool *pool;          /* lives as long as the transaction */
	/* Headers to add, and headers to remove, collected across checks
	 * (chain-owned; the front-end applies them when it accepts). */
	struct check_header *add;
	size_t nadd, add_cap;
	struct check_header_del *del;
	size_t ndel, del_cap;
};

void check_ctx_add_header(struct check_ctx *ctx, const char *name, const char *value);
void check_ctx_remove_header(struct check_ctx *ctx, const char *name, unsigned index);
/* Every field named name the message arrived with (its header section in
 * ctx->data), removed: a check whose own field replaces the sender's. */
void check_ctx_remove_all(struct check_ctx *ctx, const char *name);
/* Forget what the checks asked to add and remove (a new transaction). */
void check_ctx_clear_headers(struct check_ctx *ctx);

struct check_call;      /* one hook invocation */
void check_done(struct check_call *call, const struct verdict *v);
/* Shorthands. */
void check_continue(struct check_call *call);
void check_reject(struct check_call *call, int code, const char *enh, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

typedef void (*check_hook_fn)(void *inst, struct check_ctx *ctx, struct check_call *call);

struct check_def {
	const char *name;
	const char *doc;
	const struct param_set *params;     /* may be NULL: no parameters */
	/* Build the instance from its bound parameters; NULL + why on error. */
	void *(*init)(const void *params, const struct check_env *env, char *why, size_t whylen);
	void (*free)(void *inst);
	/* Optional: the process is going down and its sessions are about to
	 * be torn down: end the work running beside the loop that reads a
	 * session's data (join worker threads).  Only free follows. */
	void (*stop)(void *inst);
	check_hook_fn hooks[PHASE_COUNT];   /* NULL: the check does nothing then */
	bool needs_state;                   /* uses the state store (check_env.state) */
};

/* Every check the project has (checks/registry.c). */
const struct check_def *check_find(const char *name);
extern const struct check_def *const check_registry[];

const char *verdict_name(enum verdict_kind k);
const char *phase_name(enum check_phase p);

#endif
