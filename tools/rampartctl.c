/*
 * rampartctl — the administrator's tool.
 *
 *   rampartctl [-c rampart.conf] config check [--doc]
 *   rampartctl [-c rampart.conf] [-n instance] queue list|show ID|flush [ID]|delete ID|hold ID|release ID
 *   rampartctl [-c rampart.conf] [-n instance] quarantine list|show ID|release ID|delete ID
 *   rampartctl [-c rampart.conf] [-n instance] ratelimit show|reset KIND:VALUE | list [KIND]
 *   rampartctl [-c rampart.conf] [-n instance] greylist list [FILTER] | allow CLIENT | purge [FILTER]
 *   rampartctl [-c rampart.conf] [-n instance] bayes train spam|ham PATH... | stats
 *   rampartctl [-c rampart.conf] [-n instance] spam score [--db FILE] [FILE...]
 *
 * config check validates every section of the file with the same
 * parameter tables the programs use, and prints the effective values with
 * where each came from (default, file:line, environment).
 * It may reach: the configuration file, the spool directories, the state
 * store, the mail files it is given to learn or score, and the stage processes (a signal to make them act on a flush).
 */
#include "dkim_keygen.h"
#include "ratelimit_ctl.h"
#include "greylist_ctl.h"
#include "bayes_ctl.h"
#include "user_ctl.h"
#include "checks/check.h"
#include "mail/ledger.h"
#include "mail/queue.h"
#include "mail/stage.h"
#include "mail/state.h"
#include "util/alloc.h"
#include "util/config.h"
#include "util/id.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern const struct stage_def mx_stage;
extern const struct stage_def store_stage;
extern const struct stage_def out_stage;
extern const struct stage_def submit_stage;
extern const struct stage_def av_stage;
extern const struct stage_def spam_stage;

static const struct stage_def *const stages[] = { &mx_stage, &store_stage, &out_stage, &submit_stage, &av_stage, &spam_stage, NULL };

static const struct stage_def *find_stage(const char *name)
{
	for (size_t i = 0; stages[i]; i++)
		if (strcmp(stages[i]->name, name) == 0)
			return stages[i];
	return NULL;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: rampartctl [-c rampart.conf] [-n instance] COMMAND\n"
		"  config check [--doc]      validate the file and print the effective configuration\n"
		"  queue list                list the instance's queue\n"
		"  queue show ID             one message: envelope, recipients, retries, last error\n"
		"  queue flush [ID]          retry deferred messages now\n"
		"  queue delete ID           remove a message\n"
		"  queue hold ID | release ID\n"
		"  queue requeue ID          failed recipients are tried again (from failed/ too)\n"
		"  quarantine list           messages a check quarantined, with the check and its reason\n"
		"  quarantine show ID | release ID | delete ID\n"
		"                            release: delivered as if never quarantined\n"
		"  stats senders [sender|domain|login] [--top N]\n"
		"                            per-sender accounting of an outgoing instance (-n out)\n"
		"  stats users [--top N]     per-account accounting of the submission stage (-n submit)\n"
		"  dkim keygen DOMAIN SELECTOR [--ed25519] [--bits N] [--dir DIR] [--txt-only]\n"
		"                            write a DKIM key (mode 0600) and print the DNS TXT record\n"
		"  ratelimit show KIND:VALUE | show ADDRESS\n"
		"                            a rate-limit bucket (client:192.0.2.7, sender:a@example.org ...): tokens\n"
		"                            left, rule, when full, whether the next message is limited\n"
		"  ratelimit reset KIND:VALUE  delete a bucket (full again)\n"
		"  ratelimit reset trap:ADDRESS  lift a client's spam-trap block (check traps)\n"
		"  ratelimit list [KIND]     every bucket in the state store\n"
		"  greylist list [FILTER]    greylisting triplets, auto-allow counters and manual allows (FILTER: an\n"
		"                            address or network, a domain, a sender or recipient, a key prefix gl:...)\n"
		"  greylist allow CLIENT     never greylist an address, a network or an SPF-authorised domain\n"
		"  greylist purge [FILTER]   forget greylisting entries (without FILTER: all but manual allows)\n"
		"  user add NAME [--app] [--senders LIST] [--password-stdin]   a submission account (-n submit)\n"
		"  user passwd NAME [--password-stdin] | set NAME [--app|--no-app] [--senders LIST]\n"
		"  user lock NAME | unlock NAME | del NAME | list\n"
		"  authfail list | reset ADDRESS|ACCOUNT   failed-authentication counters of the submission stage\n"
		"  bayes train spam|ham [--untrain] [--db FILE] PATH...\n"
		"                            learn messages (files, mbox files, Maildirs, directories of files)\n"
		"  bayes stats [--db FILE]   messages trained and tokens known\n"
		"  spam score [--db FILE] [--config FILE] [--top N] [FILE...]\n"
		"                            score, verdict and strongest clues of a message on standard input\n"
		"                            (with FILEs: one line each, \"SCORE VERDICT FILE\")\n");
	return 2;
}

/* ---- config check ------------------------------------------------------ */

static int config_check(const char *path, bool doc)
{
	if (doc) {
		config_doc(stdout, &global_param_set);
		for (size_t i = 0; stages[i]; i++) {
			const struct param_set *set = stage_param_set(stages[i]);
			config_doc(stdout, set);
			stage_param_set_free(set);
		}
		config_doc(stdout, &state_param_set);
		for (size_t i = 0; check_registry[i]; i++)
			if (check_registry[i]->params)
				config_doc(stdout, check_registry[i]->params);
		return 0;
	}
	struct config_error err;
	struct config *cfg = config_parse_file(path, &err);
	if (!cfg) {
		fprintf(stderr, "rampartctl: %s\n", err.msg);
		return 1;
	}
	int rc = 0;
	struct global_config g;
	if (!config_bind(cfg, "global", &global_param_set, &g, &err)) {
		fprintf(stderr, "rampartctl: %s\n", err.msg);
		config_free(cfg);
		return 1;
	}
	config_dump(stdout, cfg, "global", &global_param_set, &g);
	config_release(&global_param_set, &g);
	size_t n;
	const char **secs = config_sections(cfg, &n);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(secs[i], "global") == 0)
			continue;
		char stage[64];
		config_section_stage(secs[i], stage, sizeof(stage));
		const struct param_set *set = NULL;
		if (strcmp(stage, "check") == 0) {
			/* [check.NAME] or [check.NAME.INSTANCE] */
			char cname[64];
			snprintf(cname, sizeof(cname), "%s", secs[i] + 6);
			cname[strcspn(cname, ".")] = '\0';
			const struct check_def *d = check_find(cname);
			if (!d) {
				fprintf(stderr, "rampartctl: %s: [%s]: no such check\n", path, secs[i]);
				rc = 1;
				continue;
			}
			set = d->params;
			if (!set)
				continue;
		} else {
			const struct stage_def *d = find_stage(stage);
			if (!d) {
				fprintf(stderr, "rampartctl: %s: [%s]: unknown stage '%s' (known: mx, store, out; checks as [check.NAME])\n",
					path, secs[i], stage);
				rc = 1;
				continue;
			}
			set = stage_param_set(d);
		}
		void *target = xcalloc(1, set->size);
		char why[1024];
		if (!config_bind(cfg, secs[i], set, target, &err)) {
			fprintf(stderr, "rampartctl: %s\n", err.msg);
			rc = 1;
		} else if (strcmp(stage, "check") != 0 && !stage_config_check(find_stage(stage), path, secs[i], why,
									    sizeof(why))) {
			/* The parameters parse, but the stage would not start. */
			fprintf(stderr, "rampartctl: %s\n", why);
			config_release(set, target);
			rc = 1;
		} else {
			printf("\n");
			config_dump(stdout, cfg, secs[i], set, target);
			config_release(set, target);
		}
		free(target);
		if (strcmp(stage, "check") != 0)
			stage_param_set_free(set);
	}
	config_free(cfg);
	if (rc == 0)
		fprintf(stderr, "rampartctl: %s: configuration OK\n", path);
	return rc;
}

/* ---- queue ------------------------------------------------------------- */

static bool spool_of(const char *path, const char *instance, char *out, size_t outlen, char *state_dir,
		     size_t sdlen)
{
	struct config_error err;
	struct config *cfg = config_parse_file(path, &err);
	if (!cfg) {
		fprintf(stderr, "rampartctl: %s\n", err.msg);
		return false;
	}
	char stage[64];
	config_section_stage(instance, stage, sizeof(stage));
	const struct stage_def *d = find_stage(stage);
	if (!d) {
		fprintf(stderr, "rampartctl: unknown stage '%s'\n", stage);
		config_free(cfg);
		return false;
	}
	const struct param_set *set = stage_param_set(d);
	struct global_config g;
	void *target = xcalloc(1, set->size);
	if (!config_bind(cfg, "global", &global_param_set, &g, &err) || !config_bind(cfg, instance, set, target, &err)) {
		fprintf(stderr, "rampartctl: %s\n", err.msg);
		config_release(&global_param_set, &g);
		stage_param_set_free(set);
		free(target);
		config_free(cfg);
		return false;
	}
	const struct server_config *sc = target;
	if (*sc->spool_dir)
		snprintf(out, outlen, "%s", sc->spool_dir);
	else
		snprintf(out, outlen, "%s/spool/%s", g.state_dir, instance);
	snprintf(state_dir, sdlen, "%s", g.state_dir);
	config_release(set, target);
	config_release(&global_param_set, &g);
	stage_param_set_free(set);
	free(target);
	config_free(cfg);
	return true;
}

static void print_entry(void *arg, const struct queue_entry *e)
{
	(void)arg;
	char t[32] = "-", n[32] = "now";
	struct tm tm;
	gmtime_r(&e->arrival, &tm);
	strftime(t, sizeof(t), "%Y-%m-%dT%H:%M:%SZ", &tm);
	if (e->next_try > time(NULL)) {
		gmtime_r(&e->next_try, &tm);
		strftime(n, sizeof(n), "%Y-%m-%dT%H:%M:%SZ", &tm);
	}
	printf("%-18s %-7s %8zu  %s  next=%s  tries=%u  <%s>  rcpts=%zu pending=%zu%s%s\n", e->qid, e->where, e->size, t,
	       n, e->attempts, e->sender, e->nrcpt, e->npending, *e->last_error ? "  last: " : "", e->last_error);
}

/* Tell the running instance to look at its queue now. */
static void poke(const char *state_dir, const char *instance)
{
	char pidfile[1024];
	snprintf(pidfile, sizeof(pidfile), "%s/run/%s.pid", state_dir, instance);
	FILE *f = fopen(pidfile, "r");
	if (!f)
		return;
	long pid = 0;
	if (fscanf(f, "%ld", &pid) != 1 || pid <= 1) {
		fclose(f);
		return;
	}
	fclose(f);
	/* A stale pid file (after kill -9) may name another program now: only
	 * a rampart process gets the signal. */
	char exe[64], target[4096];
	snprintf(exe, sizeof(exe), "/proc/%ld/exe", pid);
	ssize_t n = readlink(exe, target, sizeof(target) - 1);
	if (n <= 0)
		return;
	target[n] = '\0';
	const char *base = strrchr(target, '/');
	base = base ? base + 1 : target;
	if (strncmp(base, "rampart-", 8) == 0)
		kill((pid_t)pid, SIGUSR1);
}

struct find_place {
	const char *qid;
	const char *where;
};

static void note_place(void *arg, const struct queue_entry *e)
{
	struct find_place *f = arg;
	if (strcmp(e->qid, f->qid) == 0)
		f->where = e->where;
}

struct quarantine_count {
	int n;
};

static void count_quarantined(void *arg, const struct queue_entry *e)
{
	struct quarantine_count *c = arg;
	if (strcmp(e->where, "quarantine") == 0) {
		print_entry(NULL, e);
		c->n++;
	}
}

/* rampartctl quarantine: the queue's commands, on quarantine/ only. */
static int queue_cmd(const char *path, const char *instance, int argc, char **argv);
static int quarantine_cmd(const char *path, const char *instance, int argc, char **argv)
{
	if (argc < 1)
		return usage();
	char spool[1024], state_dir[1024];
	if (!spool_of(path, instance, spool, sizeof(spool), state_dir, sizeof(state_dir)))
		return 1;
	if (strcmp(argv[0], "list") == 0 && argc == 1) {
		struct quarantine_count c = { 0 };
		if (queue_list(spool, count_quarantined, &c) < 0) {
			fprintf(stderr, "rampartctl: cannot read the queue in %s: %s\n", spool, strerror(errno));
			return 1;
		}
		printf("%d message%s in quarantine\n", c.n, c.n == 1 ? "" : "s");
		return 0;
	}
	if (argc != 2 || (strcmp(argv[0], "show") && strcmp(argv[0], "release") && strcmp(argv[0], "delete")))
		return usage();
	if (!id_valid(argv[1])) {
		fprintf(stderr, "rampartctl: '%s' is not a queue id\n", argv[1]);
		return 1;
	}
	struct find_place f = { argv[1], NULL };
	queue_list(spool, note_place, &f);
	if (!f.where || strcmp(f.where, "quarantine") != 0) {
		fprintf(stderr, "rampartctl: quarantine %s %s: %s\n", argv[0], argv[1],
			f.where ? "not in quarantine (see rampartctl queue)" : "no such message");
		return 1;
	}
	return queue_cmd(path, instance, argc, argv);
}

static int queue_cmd(const char *path, const char *instance, int argc, char **argv)
{
	if (argc < 1)
		return usage();
	char spool[1024], state_dir[1024];
	if (!spool_of(path, instance, spool, sizeof(spool), state_dir, sizeof(state_dir)))
		return 1;
	const char *op = argv[0];
	const char *qid = argc > 1 ? argv[1] : NULL;
	char why[512] = "";
	if (qid && !id_valid(qid)) {
		fprintf(stderr, "rampartctl: '%s' is not a queue id\n", qid);
		return 1;
	}
	if (strcmp(op, "list") == 0) {
		int n = queue_list(spool, print_entry, NULL);
		if (n < 0) {
			fprintf(stderr, "rampartctl: cannot read the queue in %s: %s\n", spool, strerror(errno));
			return 1;
		}
		printf("%d message%s\n", n, n == 1 ? "" : "s");
		return 0;
	}
	if (strcmp(op, "flush") == 0) {
		int n = queue_flush(spool, qid);
		if (n < 0) {
			fprintf(stderr, "rampartctl: cannot flush %s\n", spool);
			return 1;
		}
		poke(state_dir, instance);
		printf("%d message%s scheduled now\n", n, n == 1 ? "" : "s");
		return 0;
	}
	if (!qid)
		return usage();
	bool ok;
	if (strcmp(op, "show") == 0)
		ok = queue_show(spool, qid, stdout), snprintf(why, sizeof(why), "no such message");
	else if (strcmp(op, "delete") == 0)
		ok = queue_delete(spool, qid, why, sizeof(why));
	else if (strcmp(op, "hold") == 0)
		ok = queue_hold(spool, qid, why, sizeof(why));
	else if (strcmp(op, "release") == 0 || strcmp(op, "requeue") == 0) {
		if (strcmp(op, "release") == 0)
			ok = queue_release(spool, qid, why, sizeof(why));
		else
			ok = queue_requeue(spool, qid, why, sizeof(why));
		if (ok)
			poke(state_dir, instance);
	} else
		return usage();
	if (!ok) {
		fprintf(stderr, "rampartctl: queue %s %s: %s\n", op, qid, why);
		return 1;
	}
	if (strcmp(op, "show") != 0)
		printf("%s: %s done\n", qid, op);
	return 0;
}

int main(int argc, char **argv)
{
	const char *path = getenv("RAMPART_CONFIG") ? getenv("RAMPART_CONFIG") : "/etc/rampart/rampart.conf";
	const char *instance = "mx";
	int opt;
	while ((opt = getopt(argc, argv, "+c:n:h")) != -1) {
		switch (opt) {
		case 'c': path = optarg; break;
		case 'n': instance = optarg; break;
		default: return usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1)
		return usage();
	if (strcmp(argv[0], "config") == 0 && argc >= 2 && strcmp(argv[1], "check") == 0)
		return config_check(path, argc >= 3 && strcmp(argv[2], "--doc") == 0);
	if (strcmp(argv[0], "queue") == 0)
		return queue_cmd(path, instance, argc - 1, argv + 1);
	bool users = strcmp(argv[0], "stats") == 0 && argc >= 2 && strcmp(argv[1], "users") == 0;
	if (strcmp(argv[0], "stats") == 0 && argc >= 2 && (users || strcmp(argv[1], "senders") == 0)) {
		/* stats users: the submission stage's accounts (its logins) */
		const char *kind = users ? "login" : NULL;
		size_t top = 0;
		for (int i = 2; i < argc; i++) {
			if (strcmp(argv[i], "--top") == 0 && i + 1 < argc)
				top = (size_t)strtoul(argv[++i], NULL, 10);
			else if (!users && (!strcmp(argv[i], "sender") || !strcmp(argv[i], "domain") || !strcmp(argv[i], "login")))
				kind = argv[i];
			else
				return usage();
		}
		char spool[1024], state_dir[1024], ledger[2100], why[512];
		if (strcmp(instance, "mx") == 0)
			instance = users ? "submit" : "out";
		if (!spool_of(path, instance, spool, sizeof(spool), state_dir, sizeof(state_dir)))
			return 1;
		snprintf(ledger, sizeof(ledger), "%s/ledger.%s", state_dir, instance);
		if (!ledger_print(ledger, kind, top, stdout, why, sizeof(why))) {
			fprintf(stderr, "rampartctl: stats senders: %s\n", why);
			return 1;
		}
		return 0;
	}
	if (strcmp(argv[0], "ratelimit") == 0)
		return ratelimit_ctl_main(path, instance, argc - 1, argv + 1);
	if (strcmp(argv[0], "user") == 0)
		return user_ctl_main(path, instance, argc - 1, argv + 1);
	if (strcmp(argv[0], "authfail") == 0)
		return authfail_ctl_main(path, instance, argc - 1, argv + 1);
	if (strcmp(argv[0], "quarantine") == 0)
		return quarantine_cmd(path, instance, argc - 1, argv + 1);
	if (strcmp(argv[0], "greylist") == 0)
		return greylist_ctl_main(path, instance, argc - 1, argv + 1);
	if (strcmp(argv[0], "bayes") == 0)
		return bayes_ctl_main(path, instance, argc - 1, argv + 1);
	if (strcmp(argv[0], "spam") == 0)
		return spam_ctl_main(path, instance, argc - 1, argv + 1);
	if (strcmp(argv[0], "dkim") == 0 && argc >= 2 && strcmp(argv[1], "keygen") == 0)
		return dkim_keygen_main(argc - 1, argv + 1);
	return usage();
}
