/*
 * user_ctl.c — the submission stage's accounts, without a text editor:
 *
 *   user add NAME [--app] [--senders LIST] [--password-stdin] [--method yescrypt|sha512]
 *   user passwd NAME [--password-stdin]
 *   user set NAME [--app|--no-app] [--senders LIST]
 *   user lock NAME | unlock NAME
 *   user del NAME
 *   user list
 *   user show NAME        the account, its quota buckets, hold and failed logins
 *   user release NAME     lift a quota hold (check quota)
 *   authfail list | reset ADDRESS|ACCOUNT
 *
 * The accounts file is the instance's accounts_file (-n submit by
 * default).  Without --password-stdin a random password is made and
 * printed once.  The file is rewritten atomically; the running stage
 * re-reads it within a second.  authfail works on the state store the
 * stage counts failed authentications in ([state]).
 */
#include "user_ctl.h"
#include "mail/authn.h"
#include "mail/passdb.h"
#include "mail/stage.h"
#include "mail/state.h"
#include "state_ctl.h"
#include "util/alloc.h"
#include "util/config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

extern const struct stage_def submit_stage;

/* The instance's accounts_file, from the configuration. */
struct user_cfg {
	char accounts[4096];
};

static bool load_cfg(const char *path, const char *instance, struct user_cfg *u)
{
	memset(u, 0, sizeof(*u));
	struct config_error err;
	struct config *cfg = config_parse_file(path, &err);
	if (!cfg) {
		fprintf(stderr, "rampartctl: %s\n", err.msg);
		return false;
	}
	const struct param_set *set = stage_param_set(&submit_stage);
	void *target = xcalloc(1, set->size);
	struct global_config g;
	bool ok = config_bind(cfg, "global", &global_param_set, &g, &err);
	if (ok && !(ok = config_bind(cfg, instance, set, target, &err)))
		config_release(&global_param_set, &g);
	if (!ok) {
		fprintf(stderr, "rampartctl: %s\n", err.msg);
	} else {
		const char *a = config_str(set, target, "accounts_file");
		snprintf(u->accounts, sizeof(u->accounts), "%s", a ? a : "");
		config_release(set, target);
		config_release(&global_param_set, &g);
	}
	free(target);
	stage_param_set_free(set);
	config_free(cfg);
	if (ok && !*u->accounts) {
		fprintf(stderr, "rampartctl: %s: [%s] accounts_file is not set\n", path, instance);
		ok = false;
	}
	return ok;
}

static int state_cmd(const char *path, const char *instance, const struct user_cfg *u, const char *op,
		     const char *name);

static int usage(void)
{
	fprintf(stderr, "usage: rampartctl [-c rampart.conf] [-n submit] user add NAME [--app] [--senders LIST] "
		"[--password-stdin] [--method yescrypt|sha512]\n"
		"       ... user passwd NAME [--password-stdin] | set NAME [--app|--no-app] [--senders LIST]\n"
		"       ... user lock NAME | unlock NAME | del NAME | list | show NAME | release NAME\n"
		"       ... authfail list | reset ADDRESS|ACCOUNT\n");
	return 2;
}

/* A password from standard input (one line), or a random one printed. */
static char *get_password(bool from_stdin, bool *generated)
{
	*generated = !from_stdin;
	if (from_stdin) {
		char *line = NULL;
		size_t cap = 0;
		ssize_t n = getline(&line, &cap, stdin);
		if (n <= 0) {
			free(line);
			fprintf(stderr, "rampartctl: no password on standard input\n");
			return NULL;
		}
		while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			line[--n] = '\0';
		if (n == 0) {
			free(line);
			fprintf(stderr, "rampartctl: empty password\n");
			return NULL;
		}
		return line;
	}
	unsigned char raw[15];
	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		fprintf(stderr, "rampartctl: no randomness for a password\n");
		return NULL;
	}
	char *p = xmalloc(4 * sizeof(raw) / 3 + 1);
	EVP_EncodeBlock((unsigned char *)p, raw, sizeof(raw));
	for (char *c = p; *c; c++)          /* easy to type and to pass on a command line */
		if (*c == '+' || *c == '/')
			*c = 'x';
	OPENSSL_cleanse(raw, sizeof(raw));
	return p;
}

struct opts {
	bool app, no_app, pw_stdin;
	const char *senders;
	const char *method;
};

static bool parse_opts(int argc, char **argv, struct opts *o)
{
	memset(o, 0, sizeof(*o));
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--app") == 0)
			o->app = true;
		else if (strcmp(argv[i], "--no-app") == 0)
			o->no_app = true;
		else if (strcmp(argv[i], "--password-stdin") == 0)
			o->pw_stdin = true;
		else if (strcmp(argv[i], "--senders") == 0 && i + 1 < argc)
			o->senders = argv[++i];
		else if (strcmp(argv[i], "--method") == 0 && i + 1 < argc)
			o->method = argv[++i];
		else {
			fprintf(stderr, "rampartctl: user: unknown option '%s'\n", argv[i]);
			return false;
		}
	}
	return true;
}

/* The options field of an account: "app senders=..." as set. */
static void options_of(const struct passdb_account *a, const struct opts *o, char *out, size_t outlen)
{
	bool app = o->app || (a && a->app && !o->no_app);
	out[0] = '\0';
	if (app)
		snprintf(out, outlen, "app");
	if (o->senders) {
		if (*o->senders)
			snprintf(out + strlen(out), outlen - strlen(out), "%ssenders=%s", *out ? " " : "", o->senders);
	} else if (a && a->nsenders) {
		snprintf(out + strlen(out), outlen - strlen(out), "%ssenders=", *out ? " " : "");
		for (size_t i = 0; i < a->nsenders; i++)
			snprintf(out + strlen(out), outlen - strlen(out), "%s%s", i ? "," : "", a->senders[i]);
	}
}

static int update(const struct user_cfg *u, const char *name, const char *hash, const char *options, bool remove,
		  bool create, const char *done)
{
	char why[512];
	if (!passdb_update(u->accounts, name, hash, options, remove, create, why, sizeof(why))) {
		fprintf(stderr, "rampartctl: user: %s\n", why);
		return 1;
	}
	/* what was written must load: the stage would refuse it */
	struct passdb *db = passdb_load(u->accounts, why, sizeof(why));
	if (!db) {
		fprintf(stderr, "rampartctl: user: the file no longer loads: %s\n", why);
		return 1;
	}
	passdb_free(db);
	printf("%s: %s\n", name, done);
	return 0;
}

int user_ctl_main(const char *path, const char *instance, int argc, char **argv)
{
	if (argc < 1)
		return usage();
	struct user_cfg u;
	if (!load_cfg(path, strcmp(instance, "mx") == 0 ? "submit" : instance, &u))
		return 1;
	int rc = 2;
	const char *op = argv[0];
	char why[512];
	if (strcmp(op, "list") == 0 && argc == 1) {
		struct passdb *db = passdb_load(u.accounts, why, sizeof(why));
		if (!db) {
			fprintf(stderr, "rampartctl: %s\n", why);
			rc = 1;
			goto out;
		}
		FILE *f = fopen(u.accounts, "r");
		/* in file order, as the administrator wrote them */
		char *line = NULL;
		size_t cap = 0;
		while (f && getline(&line, &cap, f) > 0) {
			char *colon = strchr(line, ':');
			char *p = line;
			while (*p == ' ' || *p == '\t')
				p++;
			if (*p == '#' || !colon)
				continue;
			*colon = '\0';
			const struct passdb_account *a = passdb_find(db, p);
			if (!a)
				continue;
			printf("%-32s %-8s %s", a->name, a->locked ? "locked" : a->app ? "app" : "user",
			       a->nsenders ? "senders=" : "senders=(its own address)");
			for (size_t i = 0; i < a->nsenders; i++)
				printf("%s%s", i ? "," : "", a->senders[i]);
			printf("\n");
		}
		if (line)
			OPENSSL_cleanse(line, cap);
		free(line);
		if (f)
			fclose(f);
		printf("%zu account%s\n", passdb_count(db), passdb_count(db) == 1 ? "" : "s");
		passdb_free(db);
		rc = 0;
		goto out;
	}
	if (argc < 2)
		goto out;
	const char *name = argv[1];
	if ((strcmp(op, "show") == 0 || strcmp(op, "release") == 0) && argc == 2) {
		rc = state_cmd(path, instance, &u, op, name);
		goto out;
	}
	struct opts o;
	if (!parse_opts(argc - 2, argv + 2, &o))
		goto out;
	struct passdb *db = access(u.accounts, F_OK) == 0 ? passdb_load(u.accounts, why, sizeof(why)) : NULL;
	if (!db && access(u.accounts, F_OK) == 0) {
		fprintf(stderr, "rampartctl: %s\n", why);
		rc = 1;
		goto out;
	}
	const struct passdb_account *a = db ? passdb_find(db, name) : NULL;
	char options[2048];
	if (strcmp(op, "add") == 0 || strcmp(op, "passwd") == 0) {
		bool add = strcmp(op, "add") == 0;
		if (add && a) {
			fprintf(stderr, "rampartctl: user: account %s exists (rampartctl user passwd changes its password)\n",
				name);
			rc = 1;
		} else if (!add && !a) {
			fprintf(stderr, "rampartctl: user: no account %s in %s\n", name, u.accounts);
			rc = 1;
		} else {
			bool generated;
			char *pw = get_password(o.pw_stdin, &generated);
			char *hash = pw ? passdb_hash(pw, o.method, why, sizeof(why)) : NULL;
			if (hash && a && a->locked) {        /* a new password does not unlock */
				char *locked = xasprintf("!%s", hash);
				free(hash);
				hash = locked;
			}
			if (pw && !hash)
				fprintf(stderr, "rampartctl: user: %s\n", why);
			options_of(a, &o, options, sizeof(options));
			rc = hash ? update(&u, name, hash, add || o.app || o.no_app || o.senders ? options : NULL, false, add,
					   add ? "added" : "password changed") : 1;
			if (rc == 0 && generated)
				printf("password: %s\n", pw);
			if (pw) {
				OPENSSL_cleanse(pw, strlen(pw));
				free(pw);
			}
			free(hash);
		}
	} else if (strcmp(op, "set") == 0 && a) {
		options_of(a, &o, options, sizeof(options));
		rc = update(&u, name, NULL, options, false, false, "updated");
	} else if ((strcmp(op, "lock") == 0 || strcmp(op, "unlock") == 0) && a) {
		bool lock = strcmp(op, "lock") == 0;
		if (a->locked == lock) {
			printf("%s: already %s\n", name, lock ? "locked" : "unlocked");
			rc = 0;
		} else {
			char *h = xasprintf("%s%s", lock ? "!" : "", a->hash);
			rc = update(&u, name, h, NULL, false, false, lock ? "locked" : "unlocked");
			free(h);
		}
	} else if (strcmp(op, "del") == 0) {
		rc = update(&u, name, NULL, NULL, true, false, "deleted");
	} else if (!a && (strcmp(op, "set") == 0 || strcmp(op, "lock") == 0 || strcmp(op, "unlock") == 0)) {
		fprintf(stderr, "rampartctl: user: no account %s in %s\n", name, u.accounts);
		rc = 1;
	}
	passdb_free(db);
out:
	return rc == 2 ? usage() : rc;
}

/* ---- user show | release: the account's state in the store ------------ */

static void lower_into(const char *in, char *out, size_t outlen)
{
	size_t i = 0;
	for (; in[i] && i < outlen - 1; i++)
		out[i] = (char)tolower((unsigned char)in[i]);
	out[i] = '\0';
}

static int state_cmd(const char *path, const char *instance, const struct user_cfg *u, const char *op, const char *name)
{
	char login[256], key[320], why[512];
	lower_into(name, login, sizeof(login));
	struct state_ctl sc;
	int rc = 1;
	if (!state_ctl_open(&sc, path, strcmp(instance, "mx") == 0 ? "submit" : instance, "quota", NULL, NULL, NULL, NULL,
			    false))
		goto out;
	snprintf(key, sizeof(key), "hold:%s", login);
	if (strcmp(op, "release") == 0) {
		/* the hold goes, and the buckets start full again */
		bool was_held = false;
		const char *kinds[] = { "", "quota:messages:", "quota:recipients:", "quota:bytes:" };
		for (size_t i = 0; sc.st && i < 4; i++) {
			char k[320];
			snprintf(k, sizeof(k), "%s%s", kinds[i], i ? login : key);
			struct state_ctl_op o = { 0 };
			state_del(sc.st, k, state_ctl_done, &o);
			if (!state_ctl_wait(&sc, &o, "release"))
				goto out;
			if (i == 0)
				was_held = o.status == STATE_OK;
		}
		printf("%s: %s\n", name, was_held ? "released (quotas start over)" : "was not on hold");
		rc = 0;
		goto out;
	}
	struct passdb *db = passdb_load(u->accounts, why, sizeof(why));
	const struct passdb_account *a = db ? passdb_find(db, name) : NULL;
	printf("account   %s%s\n", a ? a->name : name, !db ? " (accounts file unreadable)" : !a ? " (no such account)"
	       : a->locked ? " (locked)" : a->app ? " (application)" : "");
	passdb_free(db);
	const char *keys[] = { key, "quota:messages:", "quota:recipients:", "quota:bytes:", "authfail:user:" };
	const char *label[] = { "hold", "messages", "recipients", "bytes", "failures" };
	for (size_t i = 0; i < 5; i++) {
		char k[320];
		if (i == 0)
			snprintf(k, sizeof(k), "%s", keys[0]);
		else
			snprintf(k, sizeof(k), "%s%s", keys[i], login);
		struct state_ctl_op o = { 0 };
		if (sc.st) {
			state_get(sc.st, k, state_ctl_done, &o);
			if (!state_ctl_wait(&sc, &o, "show"))
				goto out;
		}
		if (!sc.st || o.status != STATE_OK)
			printf("%-9s %s\n", label[i], i == 0 ? "not on hold" : i == 4 ? "0" : "bucket full (unused)");
		else if (i == 0)
			printf("%-9s ON HOLD: %s (rampartctl user release %s)\n", label[i], o.value, name);
		else if (i == 4)
			printf("%-9s %s failed logins counted\n", label[i], o.value);
		else
			printf("%-9s %.0f left at its last use\n", label[i], strtod(o.value, NULL));
	}
	rc = 0;
out:
	state_ctl_close(&sc);
	return rc;
}

/* ---- authfail --------------------------------------------------------- */

static void print_counter(void *arg, const struct state_entry *e)
{
	int *n = arg;
	const char *what = strncmp(e->key, "authfail:ip:", 12) == 0 ? "client" : "account";
	const char *who = strchr(e->key + 9, ':') + 1;
	char left[64];
	state_ctl_duration(e->ttl_ms < 0 ? 0 : (e->ttl_ms + 999) / 1000, left, sizeof(left));
	printf("%-8s %-40s failures=%s  forgotten in %s\n", what, who, e->value, left);
	(*n)++;
}

int authfail_ctl_main(const char *path, const char *instance, int argc, char **argv)
{
	if (argc < 1 || (strcmp(argv[0], "list") == 0 && argc != 1) || (strcmp(argv[0], "reset") == 0 && argc != 2) ||
	    (strcmp(argv[0], "list") && strcmp(argv[0], "reset")))
		return usage();
	struct state_ctl sc;
	int rc = 1;
	if (!state_ctl_open(&sc, path, strcmp(instance, "mx") == 0 ? "submit" : instance, "authfail", NULL, NULL, NULL,
			    NULL, false))
		goto out;
	if (strcmp(argv[0], "list") == 0) {
		int n = 0;
		if (sc.st && !state_ctl_scan(&sc, "authfail:", print_counter, NULL, &n))
			goto out;
		printf("%d counter%s\n", n, n == 1 ? "" : "s");
		rc = 0;
		goto out;
	}
	char lower[256];
	lower_into(argv[1], lower, sizeof(lower));
	char key_ip[320], key_user[320];
	authn_client_key(argv[1], key_ip, sizeof(key_ip));
	snprintf(key_user, sizeof(key_user), "authfail:user:%s", lower);
	/* and the checks in flight, should a count have been left behind */
	char pend_ip[330], pend_user[330];
	authn_pending_key(key_ip, pend_ip, sizeof(pend_ip));
	authn_pending_key(key_user, pend_user, sizeof(pend_user));
	const char *keys[] = { key_ip, key_user, pend_ip, pend_user };
	int cleared = 0;
	for (size_t k = 0; sc.st && k < 4; k++) {
		struct state_ctl_op op = { 0 };
		state_del(sc.st, keys[k], state_ctl_done, &op);
		if (!state_ctl_wait(&sc, &op, "reset"))
			goto out;
		cleared += k < 2 && op.status == STATE_OK;
	}
	printf("%s: %s\n", argv[1], cleared ? "failures cleared" : "no failures counted");
	rc = 0;
out:
	state_ctl_close(&sc);
	return rc;
}
