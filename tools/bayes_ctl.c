/*
 * bayes_ctl.c — rampartctl bayes train|stats and spam score (see
 * bayes_ctl.h).
 */
#include "bayes_ctl.h"
#include "state_ctl.h"
#include "mail/bayes.h"
#include "mail/bayes_db.h"
#include "mail/msgtext.h"
#include "mail/spamrules.h"
#include "checks/chain.h"
#include "checks/spam.h"
#include "mail/state.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/log.h"
#include "util/rx.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#define MSG_MAX (64LL << 20)    /* a file larger than this is not read */
#define SPAM_CUTOFF 0.95     /* conservative: a wrong "spam" costs more than a miss */
#define HAM_CUTOFF 0.20

/* ---- the store: the configuration's [state], or an LMDB file ------------- */

static bool open_store(struct state_ctl *c, const char *config, const char *instance, const char *db, bool create)
{
	if (!db)
		return state_ctl_open(c, config, instance, "bayes", NULL, NULL, NULL, NULL, create);
	return state_ctl_open_lmdb(c, db, "bayes", create);
}

/* ---- messages: files, mbox files, Maildirs, directories ------------------- */

typedef bool (*msg_fn)(void *arg, const char *name, const char *msg, size_t len);

static char *read_all(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "rampartctl: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	struct buf b = BUF_INIT;
	buf_set_limit(&b, (size_t)MSG_MAX);
	char tmp[65536];
	size_t n;
	while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
		if (!buf_append(&b, tmp, n))
			break;
	bool err = ferror(f);
	fclose(f);
	if (err || b.overflow) {
		fprintf(stderr, "rampartctl: %s: %s\n", path, err ? strerror(errno) : "larger than 64 MB, left out");
		buf_free(&b);
		return NULL;
	}
	buf_putc(&b, '\0');
	*len = b.len - 1;
	return buf_steal(&b, NULL);
}

/* The messages of an mbox text (a file that begins with "From "): each
 * from the line after its "From " line to the next "From " line that
 * follows an empty line.  Named by the file, with "#N" when it holds
 * more than one. */
static bool each_in_mbox(const char *name, const char *t, size_t len, msg_fn fn, void *arg)
{
	size_t *at = NULL, n = 0, cap = 0;          /* where each "From " line begins */
	for (size_t pos = 0; pos < len;) {
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			at = xrealloc(at, cap * sizeof(*at));
		}
		at[n++] = pos;
		size_t next = len;
		for (size_t k = pos; k < len;) {
			const char *p = memchr(t + k, '\n', len - k);
			if (!p)
				break;
			size_t line = (size_t)(p - t) + 1;      /* the next line */
			if (line + 5 <= len && memcmp(t + line, "From ", 5) == 0 && line >= 2 && t[line - 2] == '\n') {
				next = line;
				break;
			}
			k = line;
		}
		pos = next;
	}
	bool ok = true;
	for (size_t i = 0; i < n && ok; i++) {
		size_t end = i + 1 < n ? at[i + 1] : len;
		const char *nl = memchr(t + at[i], '\n', end - at[i]);
		size_t start = nl ? (size_t)(nl - t) + 1 : end;    /* past the From line */
		char label[4200];
		if (n > 1)
			snprintf(label, sizeof(label), "%s#%zu", name, i + 1);
		else
			snprintf(label, sizeof(label), "%s", name);
		ok = fn(arg, label, t + start, end - start);
	}
	free(at);
	return ok;
}

static bool each_in_file(const char *path, msg_fn fn, void *arg)
{
	size_t len;
	char *t = read_all(path, &len);
	if (!t)
		return false;
	bool ok = len >= 5 && memcmp(t, "From ", 5) == 0 ? each_in_mbox(path, t, len, fn, arg) : fn(arg, path, t, len);
	free(t);
	return ok;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file of dir not starting with '.', in name order. */
static bool each_in_dir(const char *dir, msg_fn fn, void *arg)
{
	DIR *d = opendir(dir);
	if (!d) {
		fprintf(stderr, "rampartctl: %s: %s\n", dir, strerror(errno));
		return false;
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char *p = xasprintf("%s/%s", dir, e->d_name);
		struct stat sb;
		if (stat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) {
			free(p);
			continue;
		}
		if (n == cap) {
			cap = cap ? 2 * cap : 256;
			names = xrealloc(names, cap * sizeof(*names));
		}
		names[n++] = p;
	}
	closedir(d);
	qsort(names, n, sizeof(*names), by_name);
	bool ok = true;
	for (size_t i = 0; i < n; i++) {
		if (ok && !each_in_file(names[i], fn, arg))
			ok = false;
		free(names[i]);
	}
	free(names);
	return ok;
}

static bool each_message(const char *path, msg_fn fn, void *arg)
{
	struct stat sb;
	if (stat(path, &sb) != 0) {
		fprintf(stderr, "rampartctl: %s: %s\n", path, strerror(errno));
		return false;
	}
	if (!S_ISDIR(sb.st_mode))
		return each_in_file(path, fn, arg);
	char sub[4200];
	snprintf(sub, sizeof(sub), "%s/cur", path);
	struct stat cb, nb;
	bool cur = stat(sub, &cb) == 0 && S_ISDIR(cb.st_mode);
	snprintf(sub, sizeof(sub), "%s/new", path);
	bool nw = stat(sub, &nb) == 0 && S_ISDIR(nb.st_mode);
	if (!cur && !nw)
		return each_in_dir(path, fn, arg);
	bool ok = true;
	if (cur) {
		snprintf(sub, sizeof(sub), "%s/cur", path);
		ok = each_in_dir(sub, fn, arg);
	}
	if (ok && nw) {
		snprintf(sub, sizeof(sub), "%s/new", path);
		ok = each_in_dir(sub, fn, arg);
	}
	return ok;
}

/* ---- tokens of a message ------------------------------------------------------ */

struct toklist {
	char **t;
	size_t n, cap;
};

static void add_token(void *arg, const char *tok, size_t len)
{
	struct toklist *l = arg;
	if (l->n == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 256;
		l->t = xrealloc(l->t, l->cap * sizeof(*l->t));
	}
	l->t[l->n++] = xmemdup(tok, len + 1);
}

static void toklist_free(struct toklist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->t[i]);
	free(l->t);
	memset(l, 0, sizeof(*l));
}

/* ---- bayes train ------------------------------------------------------------------ */

struct trainer {
	struct state_ctl *c;
	bool spam;
	int by;
	unsigned long messages;
	bool done, ok;
	char why[256];
};

static void learned(void *arg, bool ok, const char *why)
{
	struct trainer *t = arg;
	t->done = true;
	t->ok = ok;
	snprintf(t->why, sizeof(t->why), "%s", why);
}

static bool train_one(void *arg, const char *name, const char *msg, size_t len)
{
	struct trainer *t = arg;
	struct toklist l = { 0 };
	bayes_tokens(msg, len, NULL, add_token, &l);
	t->done = false;
	bayes_db_learn(t->c->st, l.t, l.n, t->spam, t->by, learned, t);
	while (!t->done)
		event_base_loop(t->c->base, EVLOOP_ONCE);
	toklist_free(&l);
	if (!t->ok) {
		fprintf(stderr, "rampartctl: bayes: %s: state store (%s): %s\n", name, state_backend_name(t->c->st), t->why);
		return false;
	}
	t->messages++;
	return true;
}

static int train(const char *config, const char *instance, int argc, char **argv)
{
	if (argc < 1 || (strcmp(argv[0], "spam") && strcmp(argv[0], "ham"))) {
		fprintf(stderr, "rampartctl: bayes train: expected spam or ham, then files, mbox files or Maildirs\n");
		return 2;
	}
	struct trainer t = { .spam = strcmp(argv[0], "spam") == 0, .by = 1 };
	const char *db = NULL;
	int first = 1;
	for (; first < argc && argv[first][0] == '-'; first++) {
		if (strcmp(argv[first], "--untrain") == 0) {
			t.by = -1;
		} else if (strcmp(argv[first], "--db") == 0 && first + 1 < argc) {
			db = argv[++first];
		} else {
			fprintf(stderr, "rampartctl: bayes train: unknown option %s\n", argv[first]);
			return 2;
		}
	}
	if (first >= argc) {
		fprintf(stderr, "rampartctl: bayes train: no messages given (files, mbox files or Maildirs)\n");
		return 2;
	}
	struct state_ctl c;
	if (!open_store(&c, config, instance, db, true))
		return 1;
	t.c = &c;
	int rc = 0;
	for (int i = first; i < argc; i++)
		if (!each_message(argv[i], train_one, &t)) {
			rc = 1;
			break;
		}
	printf("%s %lu messages as %s\n", t.by > 0 ? "learned" : "unlearned", t.messages, t.spam ? "spam" : "ham");
	state_ctl_close(&c);
	return rc;
}

/* ---- bayes stats ------------------------------------------------------------------- */

struct counter {
	unsigned long n;
};

static void count_entry(void *arg, const struct state_entry *e)
{
	(void)e;
	((struct counter *)arg)->n++;
}

static bool get_count(struct state_ctl *c, const char *key, long long *out)
{
	struct state_ctl_op op = { 0 };
	state_get(c->st, key, state_ctl_done, &op);
	if (!state_ctl_wait(c, &op, key))
		return false;
	*out = op.status == STATE_OK ? strtoll(op.value, NULL, 10) : 0;
	return true;
}

static int stats(const char *config, const char *instance, int argc, char **argv)
{
	const char *db = NULL;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--db") == 0 && i + 1 < argc) {
			db = argv[++i];
		} else {
			fprintf(stderr, "rampartctl: bayes stats: unknown argument %s\n", argv[i]);
			return 2;
		}
	}
	struct state_ctl c;
	if (!open_store(&c, config, instance, db, false))
		return 1;
	long long ns = 0, nh = 0;
	struct counter s = { 0 }, h = { 0 };
	bool ok = !c.st || (get_count(&c, "bayes:n:s", &ns) && get_count(&c, "bayes:n:h", &nh) &&
			    state_ctl_scan(&c, "bayes:s:", count_entry, NULL, &s) &&
			    state_ctl_scan(&c, "bayes:h:", count_entry, NULL, &h));
	if (ok)
		printf("messages: %lld spam, %lld ham\ntokens: %lu in spam, %lu in ham\n", ns, nh, s.n, h.n);
	state_ctl_close(&c);
	return ok ? 0 : 1;
}

int bayes_ctl_main(const char *path, const char *instance, int argc, char **argv)
{
	if (argc >= 1 && strcmp(argv[0], "train") == 0)
		return train(path, instance, argc - 1, argv + 1);
	if (argc >= 1 && strcmp(argv[0], "stats") == 0)
		return stats(path, instance, argc - 1, argv + 1);
	fprintf(stderr, "rampartctl: bayes: expected train spam|ham [--untrain] [--db FILE] PATH... or stats [--db FILE]\n");
	return 2;
}

/* ---- spam score ---------------------------------------------------------------------- */

struct scorer {
	struct state_ctl *c;
	const struct spam_params *sp;
	struct spamrules *rules;
	struct rx_scratch *scratch;
	unsigned top;
	bool batch;
	bool done, ok;
	char why[256];
	long long nspam, nham;
};

static void looked_up(void *arg, bool ok, long long nspam, long long nham, const char *why)
{
	struct scorer *s = arg;
	s->done = true;
	s->ok = ok;
	s->nspam = nspam;
	s->nham = nham;
	snprintf(s->why, sizeof(s->why), "%s", why);
}

static const char *verdict(double p)
{
	return p >= SPAM_CUTOFF ? "spam" : p <= HAM_CUTOFF ? "ham" : "unsure";
}

static bool score_one(void *arg, const char *name, const char *msg, size_t len)
{
	struct scorer *s = arg;
	const struct spam_params *sp = s->sp;
	struct msgtext text;
	msgtext_build(&text, msg, len, (size_t)sp->max_text, 0);
	struct spamrule_hit hits[64];
	size_t nhits = 0;
	unsigned cut = 0;
	double rules = spamrules_eval(s->rules, msg, &text, s->scratch, hits, 64, &nhits, &cut);
	struct toklist l = { 0 };
	struct bayes_tok_opts o = { .max_text = (size_t)sp->max_text };
	bayes_tokens_of(msg, &text, &o, add_token, &l);
	struct bayes_token *toks = xcalloc(l.n ? l.n : 1, sizeof(*toks));
	for (size_t i = 0; i < l.n; i++)
		toks[i].tok = l.t[i];
	struct bayes_result r;
	memset(&r, 0, sizeof(r));
	r.score = 0.5;
	bool ok = true;
	s->nspam = s->nham = 0;
	if (s->c->st && sp->bayes) {
		s->done = false;
		bayes_db_lookup(s->c->st, toks, l.n, looked_up, s);
		while (!s->done)
			event_base_loop(s->c->base, EVLOOP_ONCE);
		ok = s->ok;
	}
	if (!ok) {
		fprintf(stderr, "rampartctl: spam score: %s: state store (%s): %s\n", name,
			state_backend_name(s->c->st), s->why);
	} else {
		bayes_score(toks, l.n, s->nspam, s->nham, NULL, &r);
		struct spam_outcome out;
		spam_decide(sp, rules, true, r.score, s->nspam, s->nham, &out);
		if (s->batch) {
			printf("%.4f %s %.1f %s %s\n", r.score, verdict(r.score), out.score, spam_action_name(out.action),
			       name);
		} else {
			printf("score %.1f: %s (tag_score %g, quarantine_score %g, reject_score %g; 0: off)\n", out.score,
			       spam_action_name(out.action), sp->tag_score, sp->quarantine_score, sp->reject_score);
			printf("rules %.1f: %zu of %zu matched%s\n", rules, nhits, spamrules_count(s->rules),
			       cut ? " (some matches cut by the limit)" : "");
			for (size_t i = 0; i < nhits; i++)
				printf("  %-24s %5.1f  %s\n", hits[i].name, hits[i].score, hits[i].desc);
			if (!sp->bayes)
				printf("bayes: off\n");
			else if (!out.bayes_used)
				printf("bayes: untrained (%lld spam, %lld ham)\n", s->nspam, s->nham);
			else
				printf("bayes %+.1f: p=%.4f %s (%s; %zu clues of %zu tokens; trained on %lld spam, %lld ham)\n",
				       out.bayes_points, r.score, spam_bayes_rule(r.score), verdict(r.score), r.nclues, l.n,
				       s->nspam, s->nham);
			if (out.bayes_used && r.nshown)
				printf("  %-8s %6s %6s  %s\n", "f(w)", "spam", "ham", "token");
			for (size_t i = 0; out.bayes_used && i < r.nshown && i < s->top; i++) {
				const struct bayes_token *t = &toks[r.clues[i]];
				printf("  %-8.4f %6lld %6lld  %s\n", t->prob, t->spam, t->ham, t->tok);
			}
		}
	}
	free(toks);
	toklist_free(&l);
	msgtext_free(&text);
	return ok;
}

/* [check.spam] of the configuration (the instance's own section when it
 * has one), or its defaults when there is no such file. */
static bool spam_params_load(const char *config, const char *instance, bool must, struct spam_params *sp)
{
	struct config_error err;
	struct stat sb;
	struct config *cfg = NULL;
	if (config && (must || stat(config, &sb) == 0)) {
		cfg = config_parse_file(config, &err);
		if (!cfg) {
			fprintf(stderr, "rampartctl: %s\n", err.msg);
			return false;
		}
	} else {
		cfg = config_parse_string("defaults", "", &err);
	}
	char section[160];
	chain_check_section(cfg, "spam", instance, section, sizeof(section));
	bool ok = config_bind(cfg, section, &spam_params_set, sp, &err);
	if (!ok)
		fprintf(stderr, "rampartctl: %s\n", err.msg);
	config_free(cfg);
	return ok;
}

int spam_ctl_main(const char *path, const char *instance, int argc, char **argv)
{
	if (argc < 1 || strcmp(argv[0], "score") != 0) {
		fprintf(stderr, "rampartctl: spam: expected score [--db FILE] [--config FILE] [--top N] [FILE...]\n");
		return 2;
	}
	const char *db = NULL, *config = path;
	bool config_given = false;
	struct scorer s = { .top = 20 };
	int i = 1;
	for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
		if (strcmp(argv[i], "--db") == 0 && i + 1 < argc) {
			db = argv[++i];
		} else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			config = argv[++i];
			config_given = true;
		} else if (strcmp(argv[i], "--top") == 0 && i + 1 < argc) {
			s.top = (unsigned)atoi(argv[++i]);
		} else {
			fprintf(stderr, "rampartctl: spam score: unknown option %s\n", argv[i]);
			return 2;
		}
	}
	struct spam_params sp;
	if (!spam_params_load(config, instance, config_given || !db, &sp))
		return 1;
	s.sp = &sp;
	int rc = 0;
	if (sp.rules_file && *sp.rules_file) {
		char why[600];
		s.rules = spamrules_load(sp.rules_file, why, sizeof(why));
		if (!s.rules) {
			fprintf(stderr, "rampartctl: spam score: rules_file: %s\n", why);
			config_release(&spam_params_set, &sp);
			return 1;
		}
	}
	s.scratch = rx_scratch_new();
	struct state_ctl c;
	if (!open_store(&c, config, instance, db, false)) {
		rc = 1;
		goto out;
	}
	s.c = &c;
	if (i < argc) {
		s.batch = true;
		for (; i < argc; i++)
			if (!each_message(argv[i], score_one, &s))
				rc = 1;
	} else {
		struct buf b = BUF_INIT;
		buf_set_limit(&b, (size_t)MSG_MAX);
		char tmp[65536];
		size_t n;
		while ((n = fread(tmp, 1, sizeof(tmp), stdin)) > 0)
			if (!buf_append(&b, tmp, n))
				break;
		if (b.overflow) {
			fprintf(stderr, "rampartctl: spam score: the message is larger than 64 MB\n");
			rc = 1;
		} else {
			/* an mbox "From " line first is not part of the message */
			const char *m = b.data ? b.data : "";
			size_t len = b.len;
			if (len >= 5 && memcmp(m, "From ", 5) == 0) {
				const char *nl = memchr(m, '\n', len);
				size_t skip = nl ? (size_t)(nl - m) + 1 : len;
				m += skip;
				len -= skip;
			}
			rc = score_one(&s, "-", m, len) ? 0 : 1;
		}
		buf_free(&b);
	}
	state_ctl_close(&c);
out:
	rx_scratch_free(s.scratch);
	spamrules_free(s.rules);
	config_release(&spam_params_set, &sp);
	return rc;
}
