/*
 * sender_login.c — sender ownership for authenticated mail (the
 * "forging" fault): a client that authenticated as an account may use as
 * envelope sender (at MAIL) and in the From header field (once the header
 * section is complete) only addresses the account owns, as the accounts
 * file says (shared/mail/passdb.h: the login's own address, or its
 * senders= list of addresses, @domains, @.subdomains or *).  Anything
 * else is refused 553 5.7.1 naming the address and the account.  The
 * null sender (bounces) is anyone's.
 *
 * A login the accounts file does not list (Dovecot checked its password,
 * or there is no accounts file at all) owns its own address, when it is
 * one, and nothing else.
 *
 * Mail without a login (another stage's clients) is not this check's
 * business unless unauthenticated = reject (a submission port that must
 * never take unauthenticated mail: 553 5.7.1 as well).  The accounts
 * file is re-read when it changes; if it cannot be read at start-up the
 * stage does not start.
 */
#include "check.h"
#include "../mail/header.h"
#include "../mail/passdb.h"
#include "../util/alloc.h"
#include "../util/log.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sender_login_params {
	char *accounts_file;
	bool check_from;
	int unauthenticated;            /* 0 ignore, 1 reject */
};

static const struct param_def sender_login_param_defs[] = {
	{ "accounts_file", PT_STR, "", 0, 0, NULL, offsetof(struct sender_login_params, accounts_file),
	  "the accounts and the senders each owns (empty: the stage's own accounts_file)" },
	{ "check_from", PT_BOOL, "yes", 0, 0, NULL, offsetof(struct sender_login_params, check_from),
	  "also the addresses of the From header field" },
	{ "unauthenticated", PT_ENUM, "ignore", 0, 0, "ignore|reject", offsetof(struct sender_login_params, unauthenticated),
	  "mail without a login: ignore (not this check's business) or reject (553 5.7.1)" },
	PARAM_END
};

static const struct param_set sender_login_params_set = {
	"check.sender_login", "sender ownership: authenticated users send only as addresses they own",
	sender_login_param_defs, sizeof(struct sender_login_params)
};

struct sender_login {
	const struct sender_login_params *p;
	struct passdb *db;                      /* NULL: no accounts file */
	struct passdb_account unlisted;         /* a login not in the file (name set per call) */
};

static void *sender_login_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	struct sender_login *s = xcalloc(1, sizeof(*s));
	s->p = params;
	const char *path = *s->p->accounts_file ? s->p->accounts_file : env->accounts_file;
	if (!path || !*path)
		return s;               /* no accounts file: every login owns its own address */
	char w[512];
	s->db = passdb_load(path, w, sizeof(w));
	if (!s->db) {
		snprintf(why, whylen, "accounts_file: %s", w);
		free(s);
		return NULL;
	}
	return s;
}

static void sender_login_free(void *inst)
{
	struct sender_login *s = inst;
	passdb_free(s->db);
	free(s);
}

/* The account of an authenticated client; NULL (after refusing) when the
 * call is answered here. */
static const struct passdb_account *account_of(struct sender_login *s, struct check_ctx *ctx,
					       struct check_call *call, bool *answered)
{
	char why[512];
	*answered = false;
	if (s->db && !passdb_refresh(&s->db, why, sizeof(why)))
		log_error(ctx->sid, ctx->qid, "sender_login.reload_failed", "error=%s", why);
	const char *login = ctx->client ? ctx->client->login : NULL;
	if (!login || !*login) {
		*answered = true;
		if (s->p->unauthenticated == 1)
			check_reject(call, 553, "5.7.1", "Sender address rejected: authentication required");
		else
			check_continue(call);
		return NULL;
	}
	const struct passdb_account *a = s->db ? passdb_find(s->db, login) : NULL;
	if (a)
		return a;
	if (strchr(login, '@')) {
		/* not listed: its own address only */
		s->unlisted.name = (char *)login;
		return &s->unlisted;
	}
	*answered = true;
	check_reject(call, 553, "5.7.1", "Sender address rejected: %s owns no sender addresses here", login);
	return NULL;
}

static void sender_login_mail(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct sender_login *s = inst;
	const char *sender = ctx->env ? ctx->env->sender : "";
	if (!*sender && ctx->client && ctx->client->login && *ctx->client->login) {
		check_continue(call);           /* the null sender (a bounce) is anyone's */
		return;
	}
	bool answered;
	const struct passdb_account *a = account_of(s, ctx, call, &answered);
	if (answered)
		return;
	if (!passdb_owns(a, sender)) {
		check_reject(call, 553, "5.7.1", "<%s>: Sender address rejected: not owned by user %s", sender, a->name);
		return;
	}
	check_continue(call);
}

struct from_walk {
	const struct passdb_account *a;
	char bad[HDR_ADDR_MAX + 1];
	unsigned n;
};

static bool from_owned(void *arg, const char *addr)
{
	struct from_walk *w = arg;
	w->n++;
	if (passdb_owns(w->a, addr))
		return true;
	snprintf(w->bad, sizeof(w->bad), "%s", addr);
	return false;
}

static void sender_login_headers(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct sender_login *s = inst;
	if (!s->p->check_from || !ctx->data) {
		check_continue(call);
		return;
	}
	bool answered;
	const struct passdb_account *a = account_of(s, ctx, call, &answered);
	if (answered)
		return;
	struct from_walk w = { .a = a };
	struct hdr_field f;
	unsigned fields = 0;
	for (size_t pos = 0; !*w.bad && hdr_next(ctx->data, ctx->header_bytes, &pos, &f); ) {
		if (!hdr_is(&f, "From"))
			continue;
		fields++;
		if (!hdr_addresses(f.value, f.value_len, from_owned, &w)) {
			check_reject(call, 553, "5.7.1", "Message rejected: malformed From header field");
			return;
		}
	}
	if (fields && w.n == 0) {          /* "From: group:;" would hide whose it is */
		check_reject(call, 553, "5.7.1", "Message rejected: the From header field has no address");
		return;
	}
	if (*w.bad) {
		for (char *c = w.bad; *c; c++)
			if ((unsigned char)*c < 0x20 || (unsigned char)*c == 0x7f)
				*c = '?';
		check_reject(call, 553, "5.7.1", "From: <%s>: header address not owned by user %s", w.bad, a->name);
		return;
	}
	check_continue(call);
}

const struct check_def check_sender_login = {
	.name = "sender_login",
	.doc = "sender ownership: an authenticated user sends only as the addresses the account owns",
	.params = &sender_login_params_set,
	.init = sender_login_init,
	.free = sender_login_free,
	.hooks = { [PHASE_MAIL] = sender_login_mail, [PHASE_HEADERS] = sender_login_headers },
};
