/*
 * test_spf_rfc7208.c — the RFC 7208 SPF test suite (pyspf's YAML, from the
 * Debian package python3-spf) through the spf check's own evaluation
 * (spf_evaluate: worker threads, libspf2, the resolver).  Each scenario's
 * zone becomes a dns_local_data file with local_only; tests/spf/rfc7208.py
 * converts the suite at test time.  Prints "rfc7208: N of 203 passed" and
 * every failing test with the reason; fails only on a test that fails and
 * is not in tests/spf/rfc7208-known-failures.txt (a regression).
 *
 * Environment: RAMPART_TEST_SPF_DIR (where rfc7208.py and the list are;
 * default found through $srcdir, this file's directory or tests/spf),
 * RAMPART_TEST_PYTHON (default /usr/bin/python3), RAMPART_TEST_RFC7208
 * (the suite; default the Debian package's), RAMPART_TEST_KEEP (keep the
 * temporary directory).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "testutil.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "checks/check.h"
#include "checks/spf.h"
#include "util/alloc.h"
#include "util/config.h"
#include "util/dns.h"
#include "util/log.h"

#define MAX_TESTS 400

struct rtest {
	char *name, *host, *mailfrom, *helo, *results, *exp;
	bool has_exp;
	bool done;
	struct spf_outcome out;
};

struct scenario {
	char *desc;
	struct buf_lines { char **v; size_t n, cap; } zone;
	size_t first, n;            /* its tests in the test array */
};

struct suite {
	char dir[512];
	char spfdir[512];
	struct rtest t[MAX_TESTS];
	size_t nt;
	struct scenario s[64];
	size_t ns;
};

static bool file_exists(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0;
}

/* Undo the converter's escapes (\\, \t, \n) in place. */
static void unescape(char *s)
{
	char *o = s;
	for (; *s; s++) {
		if (*s == '\\' && s[1]) {
			s++;
			*o++ = *s == 't' ? '\t' : *s == 'n' ? '\n' : *s;
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
}

/* Split a line at tabs into at most max fields (unescaped). */
static size_t fields(char *line, char **f, size_t max)
{
	size_t n = 0;
	char *p = line;
	while (n < max) {
		f[n++] = p;
		char *tab = strchr(p, '\t');
		if (!tab)
			break;
		*tab = '\0';
		p = tab + 1;
	}
	for (size_t i = 0; i < n; i++)
		unescape(f[i]);
	return n;
}

static void find_spfdir(struct suite *su)
{
	const char *env = getenv("RAMPART_TEST_SPF_DIR");
	const char *srcdir = getenv("srcdir");
	char p[700];
	if (env) {
		snprintf(su->spfdir, sizeof(su->spfdir), "%s", env);
		return;
	}
	if (srcdir) {
		snprintf(su->spfdir, sizeof(su->spfdir), "%s/tests/spf", srcdir);
		snprintf(p, sizeof(p), "%s/rfc7208.py", su->spfdir);
		if (file_exists(p))
			return;
	}
	const char *me = __FILE__;
	const char *slash = strrchr(me, '/');
	snprintf(su->spfdir, sizeof(su->spfdir), "%.*s/../spf", slash ? (int)(slash - me) : 1, slash ? me : ".");
	snprintf(p, sizeof(p), "%s/rfc7208.py", su->spfdir);
	if (!file_exists(p))
		snprintf(su->spfdir, sizeof(su->spfdir), "tests/spf");
}

/* Run the converter into out; 0 on success. */
static int convert(struct suite *su, const char *out)
{
	const char *py = getenv("RAMPART_TEST_PYTHON");
	const char *yml = getenv("RAMPART_TEST_RFC7208");
	char script[700];
	snprintf(script, sizeof(script), "%s/rfc7208.py", su->spfdir);
	if (!yml)
		yml = "/usr/share/doc/python3-spf/rfc7208-tests.yml.gz";
	if (!file_exists(yml)) {
		print_error("%s: missing: install the Debian package python3-spf (deploy/install-deps)\n", yml);
		return -1;
	}
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd < 0 || dup2(fd, 1) < 0)
			_exit(126);
		execl(py ? py : "/usr/bin/python3", "python3", script, yml, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		print_error("%s %s failed (status %d)\n", script, yml, st);
		return -1;
	}
	return 0;
}

static int load(struct suite *su, const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	while ((len = getline(&line, &cap, f)) >= 0) {
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		char *fl[8];
		size_t n = fields(line, fl, 8);
		if (strcmp(fl[0], "S") == 0 && n >= 2) {
			if (su->ns == sizeof(su->s) / sizeof(su->s[0]))
				break;
			struct scenario *s = &su->s[su->ns++];
			s->desc = xstrdup(fl[1]);
			s->first = su->nt;
		} else if (strcmp(fl[0], "Z") == 0 && n >= 2 && su->ns) {
			struct scenario *s = &su->s[su->ns - 1];
			if (s->zone.n == s->zone.cap) {
				s->zone.cap = s->zone.cap ? s->zone.cap * 2 : 32;
				s->zone.v = xrealloc(s->zone.v, s->zone.cap * sizeof(char *));
			}
			s->zone.v[s->zone.n++] = xstrdup(fl[1]);
		} else if (strcmp(fl[0], "T") == 0 && n >= 8 && su->ns && su->nt < MAX_TESTS) {
			struct rtest *t = &su->t[su->nt++];
			t->name = xstrdup(fl[1]);
			t->host = xstrdup(fl[2]);
			t->mailfrom = xstrdup(fl[3]);
			t->helo = xstrdup(fl[4]);
			t->results = xstrdup(fl[5]);
			t->has_exp = strcmp(fl[6], "1") == 0;
			t->exp = xstrdup(fl[7]);
			su->s[su->ns - 1].n++;
		}
	}
	free(line);
	fclose(f);
	return 0;
}

static void on_outcome(void *arg, const struct spf_outcome *o)
{
	struct rtest *t = arg;
	t->out = *o;
	t->done = true;
}

/* Run one scenario's tests (all submitted at once, answered by the check's
 * worker threads). */
static void run_scenario(struct suite *su, size_t si)
{
	struct scenario *s = &su->s[si];
	char zone[700];
	snprintf(zone, sizeof(zone), "%s/zone-%zu", su->dir, si);
	FILE *f = fopen(zone, "w");
	assert_non_null(f);
	for (size_t i = 0; i < s->zone.n; i++)
		fprintf(f, "%s\n", s->zone.v[i]);
	fclose(f);

	struct event_base *base = event_base_new();
	assert_non_null(base);
	struct dns_opts opts = { .local_data = zone, .local_only = true, .timeout_ms = 5000 };
	char why[512] = "";
	struct dns *dns = dns_new(base, &opts, why, sizeof(why));
	if (!dns) {
		for (size_t i = 0; i < s->n; i++)
			snprintf(su->t[s->first + i].out.problem, sizeof(su->t[0].out.problem), "zone: %s", why);
		print_error("scenario \"%s\": %s\n", s->desc, why);
		event_base_free(base);
		return;
	}
	struct config_error err;
	struct config *cfg = config_parse_string("rfc7208",
		"[check.spf]\nexplanation = DEFAULT\nthreads = 2\ntimeout = 30s\n", &err);
	assert_non_null(cfg);
	void *params = xcalloc(1, check_spf.params->size);
	assert_true(config_bind(cfg, "check.spf", check_spf.params, params, &err));
	struct check_env env = { .stage = "mx", .instance = "mx", .hostname = "receiver.example",
				 .dns = dns, .base = base };
	struct spf_check *c = check_spf.init(params, &env, why, sizeof(why));
	if (!c)
		fail_msg("spf init: %s", why);
	for (size_t i = 0; i < s->n; i++) {
		struct rtest *t = &su->t[s->first + i];
		struct spf_request rq = { t->host, t->mailfrom, t->helo };
		spf_evaluate(c, &rq, on_outcome, t);
	}
	for (;;) {
		bool all = true;
		for (size_t i = 0; i < s->n; i++)
			all = all && su->t[s->first + i].done;
		if (all)
			break;
		event_base_loop(base, EVLOOP_ONCE);
	}
	check_spf.free(c);
	config_release(check_spf.params, params);
	free(params);
	config_free(cfg);
	dns_free(dns);
	event_base_free(base);
}

/* Is r among the space-separated results? */
static bool result_in(const char *list, const char *r)
{
	size_t n = strlen(r);
	for (const char *p = list; *p; ) {
		const char *sp = strchr(p, ' ');
		size_t l = sp ? (size_t)(sp - p) : strlen(p);
		if (l == n && strncmp(p, r, n) == 0)
			return true;
		p += l;
		while (*p == ' ')
			p++;
	}
	return false;
}

/* The known failures: "name  reason" lines. */
static bool known(const char *list, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = list; p && *p; ) {
		const char *nl = strchr(p, '\n');
		size_t l = nl ? (size_t)(nl - p) : strlen(p);
		if (*p != '#' && l >= n && strncmp(p, name, n) == 0 && (l == n || p[n] == ' ' || p[n] == '\t'))
			return true;
		p += l + (nl ? 1 : 0);
	}
	return false;
}

static char *read_all(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	char tmp[4096];
	size_t r;
	while ((r = fread(tmp, 1, sizeof(tmp), f)) > 0) {
		if (len + r + 1 > cap) {
			cap = (len + r + 1) * 2;
			buf = xrealloc(buf, cap);
		}
		memcpy(buf + len, tmp, r);
		len += r;
	}
	fclose(f);
	if (!buf)
		buf = xstrdup("");
	else
		buf[len] = '\0';
	return buf;
}

static void test_rfc7208(void **state)
{
	(void)state;
	struct suite *su = xcalloc(1, sizeof(*su));
	assert_int_equal(tu_mkdtemp(su->dir, sizeof(su->dir), "spf-rfc7208"), 0);
	char logpath[700], conv[700], listpath[700];
	snprintf(logpath, sizeof(logpath), "%s/test.log", su->dir);
	int logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0600);
	assert_true(logfd >= 0);
	log_init("mx", "mx");
	log_set_fd(logfd);
	find_spfdir(su);
	snprintf(conv, sizeof(conv), "%s/suite.txt", su->dir);
	snprintf(listpath, sizeof(listpath), "%s/rfc7208-known-failures.txt", su->spfdir);
	assert_int_equal(convert(su, conv), 0);
	assert_int_equal(load(su, conv), 0);
	assert_true(su->nt > 0);

	for (size_t i = 0; i < su->ns; i++)
		run_scenario(su, i);

	char *list = read_all(listpath);
	if (!list)
		print_error("%s: missing: every failure counts as a regression\n", listpath);
	size_t passed = 0, regressions = 0;
	for (size_t i = 0; i < su->nt; i++) {
		struct rtest *t = &su->t[i];
		const char *got = t->done ? spf_result_name(t->out.result) : "(no answer)";
		bool ok = t->done && result_in(t->results, got);
		char reason[900] = "";
		if (!ok)
			snprintf(reason, sizeof(reason), "expected %s, got %s%s%s", t->results, got,
				 t->out.problem[0] ? ": " : "", t->out.problem);
		else if (t->has_exp && strcmp(t->out.explanation, t->exp) != 0) {
			ok = false;
			snprintf(reason, sizeof(reason), "explanation \"%s\", expected \"%s\"", t->out.explanation,
				 t->exp);
		}
		bool listed = known(list, t->name);
		if (ok) {
			passed++;
			if (listed)
				printf("rfc7208: %s passes now: take it off %s\n", t->name, listpath);
			continue;
		}
		printf("rfc7208: FAIL %s%s: %s\n", t->name, listed ? " (known)" : "", reason);
		if (!listed)
			regressions++;
	}
	printf("rfc7208: %zu of %zu passed\n", passed, su->nt);
	fflush(stdout);
	free(list);

	log_set_fd(2);
	close(logfd);
	for (size_t i = 0; i < su->nt; i++) {
		struct rtest *t = &su->t[i];
		free(t->name); free(t->host); free(t->mailfrom); free(t->helo); free(t->results); free(t->exp);
	}
	for (size_t i = 0; i < su->ns; i++) {
		for (size_t k = 0; k < su->s[i].zone.n; k++)
			free(su->s[i].zone.v[k]);
		free(su->s[i].zone.v);
		free(su->s[i].desc);
	}
	if (!getenv("RAMPART_TEST_KEEP"))
		tu_rmtree(su->dir);
	else
		printf("rfc7208: kept %s\n", su->dir);
	free(su);
	assert_int_equal(regressions, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rfc7208),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
