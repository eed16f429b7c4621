/*
 * rampart-store — stage G: LMTP delivery into Maildir.
 *
 * One LMTP reply per recipient (RFC 2033): delivered (250 2.1.5), unknown
 * user (550 5.1.1), mailbox full (452 4.2.2), message larger than the
 * quota (552 5.2.2), I/O trouble (451 4.3.0).  Publishes the valid-user
 * list that the MX and submission stages load.
 * It may reach: its LMTP listen socket, the mail root, its user list.
 */
#include "mail/maildir.h"
#include "mail/stage.h"
#include "mail/userlist.h"
#include "util/alloc.h"
#include "util/log.h"

#include <ctype.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct store_config {
	struct server_config srv;
	char *mail_root;
	char *users_file;
	char *valid_users_file;
	long long default_quota;
	char *postmaster;
};

#define P(f) offsetof(struct store_config, f)
static const struct param_def store_params[] = {
	{ "mail_root", PT_STR, "", 0, 0, NULL, P(mail_root), "mailboxes live at MAIL_ROOT/DOMAIN/USER/Maildir (default: state_dir/mail)" },
	{ "users_file", PT_STR, "", 1, 0, NULL, P(users_file), "the site's users: 'address [quota]' per line" },
	{ "valid_users_file", PT_STR, "", 0, 0, NULL, P(valid_users_file), "where to publish the valid addresses for the MX (empty: don't)" },
	{ "default_quota", PT_SIZE, "0", 0, 1LL << 50, NULL, P(default_quota), "mailbox quota for users without one (0: none)" },
	{ "postmaster", PT_STR, "", 0, 0, NULL, P(postmaster), "user that receives mail for postmaster (RFC 5321 4.5.1) when postmaster@ is not a user itself" },
	PARAM_END
};

struct store {
	char *mail_root;
	struct userlist *users;
	long long default_quota;
	char *postmaster;
	char *valid_users_file;
	const struct strlist *local_domains;
};

static void *store_init(const void *config, const struct stage_env *env, char *why, size_t whylen)
{
	const struct global_config *g = env->g;
	const struct store_config *c = config;
	struct userlist *u = userlist_load(c->users_file, why, whylen);
	if (!u)
		return NULL;
	if (*c->valid_users_file && !userlist_publish(u, c->valid_users_file, why, whylen)) {
		userlist_free(u);
		return NULL;
	}
	if (*c->postmaster && !userlist_find(u, c->postmaster, NULL)) {
		snprintf(why, whylen, "postmaster: '%s' is not a user in %s", c->postmaster, c->users_file);
		userlist_free(u);
		return NULL;
	}
	struct store *s = xcalloc(1, sizeof(*s));
	s->users = u;
	s->postmaster = *c->postmaster ? xstrdup(c->postmaster) : NULL;
	s->valid_users_file = *c->valid_users_file ? xstrdup(c->valid_users_file) : NULL;
	s->local_domains = &c->srv.local_domains;
	s->mail_root = *c->mail_root ? xstrdup(c->mail_root) : xasprintf("%s/mail", g->state_dir);
	s->default_quota = c->default_quota;
	log_info(NULL, NULL, "store.users_loaded", "users=%zu file=%s", userlist_count(u), c->users_file);
	return s;
}

static bool store_validate(const void *config, const struct global_config *g, char *why, size_t whylen)
{
	(void)g;
	const struct store_config *c = config;
	struct userlist *u = userlist_load(c->users_file, why, whylen);
	if (!u)
		return false;
	bool ok = true;
	if (*c->postmaster && !userlist_find(u, c->postmaster, NULL)) {
		snprintf(why, whylen, "postmaster: '%s' is not a user in %s", c->postmaster, c->users_file);
		ok = false;
	}
	userlist_free(u);
	return ok;
}

static void store_free(void *state)
{
	struct store *s = state;
	userlist_free(s->users);
	free(s->mail_root);
	free(s->postmaster);
	free(s->valid_users_file);
	free(s);
}

static void result(struct stage_delivery *d, size_t i, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void result(struct stage_delivery *d, size_t i, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	d->codes[i] = code;
	vsnprintf(d->texts[i], sizeof(d->texts[i]), fmt, ap);
	va_end(ap);
}

/* Re-read the users file when it changed, and publish the new list at
 * once: the MX refuses recipients by it. */
static void refresh_users(struct store *s, const char *sid, const char *qid)
{
	char why[512];
	struct userlist *before = s->users;
	if (!userlist_refresh(&s->users, why, sizeof(why))) {
		log_warn(sid, qid, "store.users_reload_failed", "error=%s", why);
		return;
	}
	if (s->users == before)
		return;
	log_info(sid, qid, "store.users_loaded", "users=%zu", userlist_count(s->users));
	if (s->valid_users_file && !userlist_publish(s->users, s->valid_users_file, why, sizeof(why)))
		log_error(sid, qid, "store.publish_failed", "error=%s", why);
}

static void store_tick(void *state)
{
	refresh_users(state, NULL, NULL);
}

/* postmaster (bare, or at a local domain) goes to the configured user
 * unless it is a user itself (RFC 5321 4.5.1: it must be accepted). */
static const char *resolve(const struct store *s, const char *rcpt)
{
	if (userlist_find(s->users, rcpt, NULL))
		return rcpt;
	const char *at = strrchr(rcpt, '@');
	bool pm = at ? (size_t)(at - rcpt) == 10 && strncasecmp(rcpt, "postmaster", 10) == 0 &&
			       strlist_contains(s->local_domains, at + 1)
		     : strcasecmp(rcpt, "postmaster") == 0;
	return pm && s->postmaster ? s->postmaster : rcpt;
}

static void store_deliver(void *state, struct stage_delivery *d)
{
	struct store *s = state;
	char why[512];
	refresh_users(s, d->sid, d->qid);
	for (size_t i = 0; i < d->env->nrcpt; i++) {
		const char *rcpt = resolve(s, d->env->rcpts[i].addr);
		long long quota = 0;
		if (!userlist_find(s->users, rcpt, &quota)) {
			result(d, i, 550, "5.1.1 <%s>: User unknown", rcpt);
			log_info(d->sid, d->qid, "store.unknown_user", "rcpt=%s", rcpt);
			continue;
		}
		if (!quota)
			quota = s->default_quota;
		const char *at = strrchr(rcpt, '@');
		char local[256], domain[256];
		if (!at || !maildir_component(rcpt, (size_t)(at - rcpt), local, sizeof(local)) ||
		    !maildir_component(at + 1, strlen(at + 1), domain, sizeof(domain))) {
			result(d, i, 550, "5.1.3 <%s>: address not usable as a mailbox", rcpt);
			continue;
		}
		char dir[4096], prefix[1200], name[512];
		snprintf(dir, sizeof(dir), "%s/%s/%s/Maildir", s->mail_root, domain, local);
		snprintf(prefix, sizeof(prefix), "Return-Path: <%s>\nDelivered-To: %s\n", d->env->sender, rcpt);
		enum maildir_result r = maildir_deliver(dir, prefix, d->data, d->len, quota, name, sizeof(name), why,
							sizeof(why));
		switch (r) {
		case MAILDIR_OK:
			result(d, i, 250, "2.1.5 <%s> delivered", rcpt);
			log_info(d->sid, d->qid, "store.delivered", "rcpt=%s file=%s size=%zu correlation=%s", rcpt, name,
				 d->len, d->env->correlation_id ? d->env->correlation_id : "");
			break;
		case MAILDIR_OVER_QUOTA:
			result(d, i, 452, "4.2.2 <%s>: Mailbox full", rcpt);
			log_info(d->sid, d->qid, "store.over_quota", "rcpt=%s reason=%s", rcpt, why);
			break;
		case MAILDIR_TOO_BIG:
			result(d, i, 552, "5.2.2 <%s>: Message exceeds mailbox quota", rcpt);
			log_info(d->sid, d->qid, "store.too_big", "rcpt=%s reason=%s", rcpt, why);
			break;
		case MAILDIR_TEMPFAIL:
			result(d, i, 451, "4.3.0 <%s>: Temporary local delivery failure", rcpt);
			log_error(d->sid, d->qid, "store.delivery_failed", "rcpt=%s reason=%s", rcpt, why);
			break;
		}
	}
}

const struct stage_def store_stage = {
	.name = "store",
	.doc = "stage G: LMTP delivery into Maildir, with quotas",
	.params = store_params,
	.config_size = sizeof(struct store_config),
	.lmtp = true,
	.init = store_init,
	.free = store_free,
	.deliver = store_deliver,
	.tick = store_tick,
	.validate = store_validate,
};
