/*
 * test_smtp_client.c — the SMTP/LMTP client against real peers on
 * 127.0.0.1: the scripted peer tests/unit/peer_smtp.py (records every
 * byte the client sends), Postfix's smtp-sink, and aiosmtpd for STARTTLS.
 * Peers that are not installed make their tests skip, not fail.  TLS
 * policy, implicit TLS and AUTH tests use a small PKI made once per run
 * with the OpenSSL API: a CA, a server certificate it signed for
 * peer.test and 127.0.0.1, and a self-signed one for the same names.
 *
 * Environment: RAMPART_TEST_PYTHON (default /usr/bin/python3),
 * RAMPART_TEST_PEER (path of peer_smtp.py; default found through $srcdir
 * or next to this source file), RAMPART_TEST_SMTP_SINK (default
 * /usr/sbin/smtp-sink), RAMPART_TEST_VERBOSE=1 copies client log lines to
 * stderr.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "mail/envelope.h"
#include "mail/smtp_client.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/log.h"
#include "util/tls.h"

extern char **environ;

#define MAX_PEERS 3
#define SID "TESTSID0000000001"

struct peer {
	pid_t pid;
	int port;
	char dir[256];
};

struct fixture {
	struct event_base *base;
	struct event *ticker;
	char dir[128];          /* mkdtemp under /tmp */
	char python[PATH_MAX];
	char script[PATH_MAX];
	char log_path[256];
	int log_fd;
	struct peer peers[MAX_PEERS];
	int npeers;
	char hopbuf[4][PATH_MAX + 16];
	char *hopv[4];
	struct strlist hops;
	struct envelope *envs[16];      /* freed by teardown, even after a failed assert */
	size_t nenv;
	struct smtp_client_set live;    /* clients not yet freed (opts.set) */
};

/* ---- processes and files --------------------------------------------- */

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool file_exists(const char *p)
{
	return access(p, R_OK) == 0;
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		if (len)
			*len = 0;
		return NULL;
	}
	struct buf b = BUF_INIT;
	char tmp[8192];
	size_t n;
	while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
		buf_append(&b, tmp, n);
	fclose(f);
	if (len)
		*len = b.len;
	if (!b.data)
		return xstrdup("");
	return buf_steal(&b, NULL);
}

static char *peer_file(struct fixture *f, int i, const char *name, size_t *len)
{
	char path[PATH_MAX + 64];
	snprintf(path, sizeof(path), "%s/%s", f->peers[i].dir, name);
	return read_file(path, len);
}

/* Spawn argv with stdout to a pipe (*outfd) or a file, stderr to errfile. */
static pid_t spawn(char *const argv[], int *outfd, const char *outfile, const char *errfile)
{
	posix_spawn_file_actions_t fa;
	int pfd[2] = { -1, -1 };
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (outfd) {
		if (pipe(pfd) < 0)
			return -1;
		posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
		posix_spawn_file_actions_addclose(&fa, pfd[0]);
		posix_spawn_file_actions_addclose(&fa, pfd[1]);
	} else {
		posix_spawn_file_actions_addopen(&fa, 1, outfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
	}
	posix_spawn_file_actions_addopen(&fa, 2, errfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
	pid_t pid;
	int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (outfd) {
		close(pfd[1]);
		if (rc != 0) {
			close(pfd[0]);
			return -1;
		}
		*outfd = pfd[0];
	}
	return rc == 0 ? pid : -1;
}

static int run_wait(char *const argv[], const char *errfile)
{
	pid_t pid = spawn(argv, NULL, "/dev/null", errfile);
	if (pid < 0)
		return -1;
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A TCP port that nothing listens on (bound then closed). */
static int closed_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof(sa);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	close(fd);
	return ntohs(sa.sin_port);
}

/* Start the scripted peer (or aiosmtpd with --aiosmtpd) with extra
 * arguments (NULL-terminated).  Returns its index, -1 if it cannot run. */
static int peer_start(struct fixture *f, ...)
{
	if (!file_exists(f->script))
		fail_msg("cannot find peer_smtp.py (looked at %s); set RAMPART_TEST_PEER or srcdir", f->script);
	if (f->npeers >= MAX_PEERS || !file_exists(f->python))
		return -1;
	struct peer *p = &f->peers[f->npeers];
	snprintf(p->dir, sizeof(p->dir), "%s/peer%d", f->dir, f->npeers);
	mkdir(p->dir, 0755);

	char *argv[64];
	int n = 0;
	argv[n++] = f->python;
	argv[n++] = f->script;
	argv[n++] = "--dir";
	argv[n++] = p->dir;
	va_list ap;
	va_start(ap, f);
	const char *a;
	while ((a = va_arg(ap, const char *)) != NULL && n < 62)
		argv[n++] = (char *)a;
	va_end(ap);
	argv[n] = NULL;

	char errfile[PATH_MAX + 16];
	snprintf(errfile, sizeof(errfile), "%s/stderr", p->dir);
	int fd;
	p->pid = spawn(argv, &fd, NULL, errfile);
	if (p->pid < 0)
		return -1;
	char line[32];
	size_t got = 0;
	long long deadline = now_ms() + 15000;
	while (got < sizeof(line) - 1 && now_ms() < deadline) {
		struct pollfd pf = { fd, POLLIN, 0 };
		if (poll(&pf, 1, 200) <= 0)
			continue;
		ssize_t r = read(fd, line + got, 1);
		if (r <= 0)
			break;
		if (line[got++] == '\n')
			break;
	}
	close(fd);
	line[got] = '\0';
	if (!got || line[got - 1] != '\n') {
		kill(p->pid, SIGTERM);
		waitpid(p->pid, NULL, 0);
		p->pid = 0;
		return -1;
	}
	p->port = atoi(line);
	return f->npeers++;
}

/* Postfix's smtp-sink dumping each message into the peer's directory. */
static int sink_start(struct fixture *f, const char *extra)
{
	const char *sink = getenv("RAMPART_TEST_SMTP_SINK");
	if (!sink)
		sink = "/usr/sbin/smtp-sink";
	if (f->npeers >= MAX_PEERS || !file_exists(sink))
		return -1;
	struct peer *p = &f->peers[f->npeers];
	snprintf(p->dir, sizeof(p->dir), "%s/peer%d", f->dir, f->npeers);
	mkdir(p->dir, 0777);
	chmod(f->dir, 0711);    /* smtp-sink drops to nobody when started as root */
	chmod(p->dir, 0777);
	p->port = closed_port();

	char listen[64], dump[PATH_MAX + 16], errfile[PATH_MAX + 16];
	snprintf(listen, sizeof(listen), "127.0.0.1:%d", p->port);
	snprintf(dump, sizeof(dump), "%s/msg.", p->dir);
	snprintf(errfile, sizeof(errfile), "%s/stderr", p->dir);
	char *argv[16];
	int n = 0;
	argv[n++] = (char *)sink;
	if (geteuid() == 0) {
		argv[n++] = "-u";
		argv[n++] = "nobody";
	}
	argv[n++] = "-d";
	argv[n++] = dump;
	if (extra)
		argv[n++] = (char *)extra;
	argv[n++] = listen;
	argv[n++] = "10";
	argv[n] = NULL;
	p->pid = spawn(argv, NULL, errfile, errfile);
	if (p->pid < 0)
		return -1;
	/* wait until it accepts */
	long long deadline = now_ms() + 5000;
	while (now_ms() < deadline) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)p->port) };
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		int ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		close(fd);
		if (ok)
			return f->npeers++;
		usleep(50000);
	}
	kill(p->pid, SIGTERM);
	waitpid(p->pid, NULL, 0);
	p->pid = 0;
	return -1;
}

/* smtp-sink's dump file in dir ("msg.<random>"). */
static bool find_dump(const char *dir, char *out, size_t outlen)
{
	DIR *d = opendir(dir);
	bool found = false;
	if (!d)
		return false;
	struct dirent *de;
	while (!found && (de = readdir(d)) != NULL)
		if (strncmp(de->d_name, "msg.", 4) == 0) {
			snprintf(out, outlen, "%s/%s", dir, de->d_name);
			found = true;
		}
	closedir(d);
	return found;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/test_smtp_client.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	const char *py = getenv("RAMPART_TEST_PYTHON");
	snprintf(f->python, sizeof(f->python), "%s", py ? py : "/usr/bin/python3");
	const char *sc = getenv("RAMPART_TEST_PEER");
	const char *srcdir = getenv("srcdir");
	if (sc)
		snprintf(f->script, sizeof(f->script), "%s", sc);
	else if (srcdir)
		snprintf(f->script, sizeof(f->script), "%s/tests/unit/peer_smtp.py", srcdir);
	if (!f->script[0] || !file_exists(f->script)) {
		/* next to this source file */
		const char *me = __FILE__;
		const char *slash = strrchr(me, '/');
		int dl = slash ? (int)(slash - me) : 1;
		snprintf(f->script, sizeof(f->script), "%.*s/peer_smtp.py", dl, slash ? me : ".");
	}
	snprintf(f->log_path, sizeof(f->log_path), "%s/client.log", f->dir);
	f->log_fd = open(f->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	assert_true(f->log_fd >= 0);
	const char *verbose = getenv("RAMPART_TEST_VERBOSE");
	log_set_fd(verbose && *verbose == '1' ? 2 : f->log_fd);
	log_set_level(LL_DEBUG);
	f->base = event_base_new();
	f->ticker = event_new(f->base, -1, EV_PERSIST, tick, NULL);
	struct timeval tv = { 0, 20000 };
	event_add(f->ticker, &tv);
	signal(SIGPIPE, SIG_IGN);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	for (int i = 0; i < f->npeers; i++)
		if (f->peers[i].pid > 0) {
			kill(f->peers[i].pid, SIGTERM);
			waitpid(f->peers[i].pid, NULL, 0);
		}
	for (size_t i = 0; i < f->nenv; i++)
		envelope_free(f->envs[i]);
	event_free(f->ticker);
	event_base_free(f->base);
	log_set_fd(2);
	log_set_level(LL_INFO);
	close(f->log_fd);
	if (!getenv("RAMPART_TEST_KEEP"))
		nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

#define NEED_PEER(i)                                                           \
	do {                                                                   \
		if ((i) < 0) {                                                 \
			print_message("peer not available, skipping\n");       \
			skip();                                                \
		}                                                              \
	} while (0)

static void set_hops(struct fixture *f, size_t n, ...)
{
	va_list ap;
	va_start(ap, n);
	for (size_t i = 0; i < n; i++) {
		snprintf(f->hopbuf[i], sizeof(f->hopbuf[i]), "%s", va_arg(ap, const char *));
		f->hopv[i] = f->hopbuf[i];
	}
	va_end(ap);
	f->hops.n = n;
	f->hops.v = f->hopv;
}

static const char *hop_of(struct fixture *f, int i, char *out, size_t outlen)
{
	snprintf(out, outlen, "127.0.0.1:%d", f->peers[i].port);
	return out;
}

/* ---- the test client ------------------------------------------------- */

struct slot {
	struct tc *t;
	bool got;
	int order;
	struct smtp_reply r;
};

struct dslot {
	struct tc *t;
	bool got;
	int order;
	size_t n;
	struct smtp_reply r[8];
};

struct msg {
	struct envelope *env;
	const char *body;
	size_t len, size;
	struct slot mail;
	struct slot rcpt[8];
	struct dslot data;
};

struct tc {
	struct fixture *f;
	struct smtp_client_opts opts;
	struct smtp_rotor rotor;
	bool use_rotor;
	struct smtp_client *c;
	bool ready;
	bool ready_failed;
	struct smtp_reply ready_err;
	char peer[300];
	char tls[128];
	bool had_pipelining, had_starttls;
	int seq;
	bool in_api;          /* a callback while set would be re-entrant */
	int reentrant;
	bool done;
	struct msg msgs[3];
	size_t nmsg, cur;
	bool quit_at_end;
	bool abort_in_mail_cb;
	int after_abort_calls;
	bool dead_followup;   /* after the data reply, call rset on the (dead) client */
	struct slot followup;
	long long t_issue, t_first_reply;
};

static void tc_init(struct tc *t, struct fixture *f)
{
	memset(t, 0, sizeof(*t));
	t->f = f;
	t->opts.hops = &f->hops;
	t->opts.helo_name = "client.test";
	t->opts.connect_timeout_ms = 2000;
	t->opts.command_timeout_ms = 5000;
	t->opts.data_timeout_ms = 5000;
	t->opts.log_sid = SID;
	t->opts.set = &f->live;
	t->quit_at_end = true;
}

static void slot_cb(void *arg, const struct smtp_reply *r)
{
	struct slot *s = arg;
	if (s->t->in_api)
		s->t->reentrant++;
	if (!s->t->t_first_reply)
		s->t->t_first_reply = now_ms();
	s->got = true;
	s->order = ++s->t->seq;
	s->r = *r;
	if (s->t->abort_in_mail_cb && s->t->c) {
		if (s == &s->t->msgs[0].mail) {
			smtp_client_abort(s->t->c);
			s->t->c = NULL;
			s->t->done = true;
		} else {
			s->t->after_abort_calls++;
		}
	}
}

static void issue(struct tc *t, struct msg *m);

static void finish(struct tc *t)
{
	t->done = true;
	if (t->c && t->quit_at_end) {
		t->in_api = true;
		smtp_client_quit(t->c);
		t->in_api = false;
		t->c = NULL;
	}
}

static void followup_cb(void *arg, const struct smtp_reply *r)
{
	struct tc *t = arg;
	if (t->in_api)
		t->reentrant++;
	t->followup.got = true;
	t->followup.r = *r;
	finish(t);
}

static void data_cb(void *arg, const struct smtp_reply *r, size_t n)
{
	struct dslot *d = arg;
	struct tc *t = d->t;
	if (t->in_api)
		t->reentrant++;
	if (t->abort_in_mail_cb && !t->c) {
		t->after_abort_calls++;
		return;
	}
	d->got = true;
	d->order = ++t->seq;
	d->n = n;
	for (size_t i = 0; i < n && i < 8; i++)
		d->r[i] = r[i];
	if (t->dead_followup) {
		t->in_api = true;
		smtp_client_rset(t->c, followup_cb, t);
		t->in_api = false;
		return;
	}
	if (++t->cur < t->nmsg) {
		issue(t, &t->msgs[t->cur]);
		return;
	}
	finish(t);
}

/* Issue a whole transaction at once; the client pipelines or serialises. */
static void issue(struct tc *t, struct msg *m)
{
	t->in_api = true;
	t->t_issue = now_ms();
	m->mail.t = t;
	m->data.t = t;
	smtp_client_mail(t->c, m->env, m->size ? m->size : m->len, slot_cb, &m->mail);
	for (size_t i = 0; i < m->env->nrcpt && t->c; i++) {
		m->rcpt[i].t = t;
		smtp_client_rcpt(t->c, m->env->rcpts[i].addr, slot_cb, &m->rcpt[i]);
	}
	if (t->c)
		smtp_client_data(t->c, m->body, m->len, data_cb, &m->data);
	t->in_api = false;
}

static void ready_cb(void *arg, struct smtp_client *c, const struct smtp_reply *err)
{
	struct tc *t = arg;
	if (t->in_api)
		t->reentrant++;
	t->ready = true;
	if (!c) {
		t->ready_failed = true;
		t->ready_err = *err;
		t->done = true;
		return;
	}
	t->c = c;
	snprintf(t->peer, sizeof(t->peer), "%s", smtp_client_peer(c));
	const char *tls = smtp_client_tls(c);
	snprintf(t->tls, sizeof(t->tls), "%s", tls ? tls : "");
	t->had_pipelining = smtp_client_has_ext(c, "pipelining");
	t->had_starttls = smtp_client_has_ext(c, "STARTTLS");
	if (t->nmsg)
		issue(t, &t->msgs[0]);
	else
		finish(t);
}

static void run(struct tc *t, int max_ms)
{
	t->in_api = true;
	if (t->use_rotor)
		smtp_client_connect_rotating(t->f->base, &t->opts, &t->rotor, ready_cb, t);
	else
		smtp_client_connect(t->f->base, &t->opts, ready_cb, t);
	t->in_api = false;
	long long deadline = now_ms() + max_ms;
	while (!t->done && now_ms() < deadline)
		event_base_loop(t->f->base, EVLOOP_ONCE);
	/* let QUIT go out and the client free itself (it has when the QUIT
	 * reply came, so the peer has recorded everything by then) */
	long long drain = now_ms() + 3000;
	while (t->f->live.n > 0 && now_ms() < drain)
		event_base_loop(t->f->base, EVLOOP_ONCE);
	if (t->c) {             /* the test timed out: do not leak */
		smtp_client_abort(t->c);
		t->c = NULL;
	}
	assert_true(t->done);
	assert_int_equal(t->reentrant, 0);
}

static struct msg *add_msg(struct tc *t, const char *sender, const char *body, ...)
{
	struct msg *m = &t->msgs[t->nmsg++];
	memset(m, 0, sizeof(*m));
	m->env = envelope_new();
	assert_true(t->f->nenv < sizeof(t->f->envs) / sizeof(t->f->envs[0]));
	t->f->envs[t->f->nenv++] = m->env;
	m->env->sender = pool_strdup(m->env->pool, sender);
	m->body = body;
	m->len = strlen(body);
	va_list ap;
	va_start(ap, body);
	const char *r;
	while ((r = va_arg(ap, const char *)) != NULL)
		envelope_add_rcpt(m->env, r);
	va_end(ap);
	return m;
}

/* Lines of the peer's cmds file for connection conn: "batch\tcommand". */
static size_t cmds_of(struct fixture *f, int peer, int conn, char lines[][600], int batches[], size_t max)
{
	char *all = peer_file(f, peer, "cmds", NULL);
	size_t n = 0;
	if (!all)
		return 0;
	char *save = NULL;
	for (char *l = strtok_r(all, "\n", &save); l && n < max; l = strtok_r(NULL, "\n", &save)) {
		int cn, b;
		int off = 0;
		if (sscanf(l, "%d\t%d\t%n", &cn, &b, &off) < 2 || cn != conn)
			continue;
		snprintf(lines[n], 600, "%s", l + off);
		batches[n] = b;
		n++;
	}
	free(all);
	return n;
}

static int find_cmd(char lines[][600], size_t n, const char *prefix)
{
	for (size_t i = 0; i < n; i++)
		if (strncmp(lines[i], prefix, strlen(prefix)) == 0)
			return (int)i;
	return -1;
}

/* Reference dot-stuffing for canonical CRLF text, written independently
 * of the client: double a '.' opening any line, end with CRLF.CRLF. */
static char *ref_stuff(const char *body, size_t len, size_t *outlen)
{
	struct buf b = BUF_INIT;
	bool bol = true;
	for (size_t i = 0; i < len; i++) {
		if (bol && body[i] == '.')
			buf_putc(&b, '.');
		buf_putc(&b, body[i]);
		bol = body[i] == '\n' && i > 0 && body[i - 1] == '\r';
	}
	if (len && !(len >= 2 && body[len - 2] == '\r' && body[len - 1] == '\n'))
		buf_puts(&b, "\r\n");
	buf_puts(&b, ".\r\n");
	*outlen = b.len;
	return buf_steal(&b, NULL);
}

static const char BODY_DOTS[] =
	"From: a@example.org\r\n"
	"Subject: dots\r\n"
	"\r\n"
	".starts with a dot\r\n"
	"..two dots\r\n"
	"middle . dot\r\n"
	".\r\n"
	"last line\r\n";

/* ---- tests ------------------------------------------------------------- */

/* Three recipients, PIPELINING: MAIL, RCPTs and DATA arrive in one read;
 * the wire body is exactly the stuffed message. */
static void test_pipelined_three_rcpts(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", "--ext", "SIZE 10000000", "--ext", "8BITMIME", "--ext",
			   "ENHANCEDSTATUSCODES", "--batch-delay", "0.2", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "sender@example.org", BODY_DOTS, "a@example.com", "b@example.com",
				"c@example.com", NULL);
	m->env->body_8bit = true;
	run(&t, 10000);

	assert_false(t.ready_failed);
	assert_true(t.had_pipelining);
	assert_string_equal(t.peer, hop);
	assert_int_equal(m->mail.r.code, 250);
	assert_string_equal(m->mail.r.enh, "2.1.0");
	for (int i = 0; i < 3; i++)
		assert_int_equal(m->rcpt[i].r.code, 250);
	assert_true(m->data.got);
	assert_int_equal(m->data.n, 1);
	assert_int_equal(m->data.r[0].code, 250);
	/* callbacks in command order */
	assert_true(m->mail.order < m->rcpt[0].order && m->rcpt[2].order < m->data.order);

	char lines[32][600];
	int batches[32];
	size_t n = cmds_of(f, p, 1, lines, batches, 32);
	int im = find_cmd(lines, n, "MAIL");
	int id = find_cmd(lines, n, "DATA");
	assert_true(im >= 0 && id == im + 4);
	char expect[128];
	snprintf(expect, sizeof(expect), "MAIL FROM:<sender@example.org> SIZE=%zu BODY=8BITMIME", m->len);
	assert_string_equal(lines[im], expect);
	assert_string_equal(lines[im + 1], "RCPT TO:<a@example.com>");
	assert_string_equal(lines[im + 3], "RCPT TO:<c@example.com>");
	for (int i = im; i <= id; i++)
		assert_int_equal(batches[i], batches[im]);       /* pipelined */
	assert_true(find_cmd(lines, n, "QUIT") > id);

	size_t bl, el;
	char *body = peer_file(f, p, "body.1", &bl);
	char *exp = ref_stuff(BODY_DOTS, strlen(BODY_DOTS), &el);
	assert_non_null(body);
	assert_int_equal(bl, el);
	assert_memory_equal(body, exp, el);
	assert_non_null(strstr(body, "\r\n..starts with a dot\r\n...two dots\r\n"));
	free(body);
	free(exp);
}

/* Postfix's smtp-sink (real PIPELINING server): it unstuffs and stores
 * the message; what it stored is the original text. */
static void test_smtp_sink_delivery(void **state)
{
	struct fixture *f = *state;
	int p = sink_start(f, NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "sender@example.org", BODY_DOTS, "a@example.com", "b@example.com",
				"c@example.com", NULL);
	run(&t, 10000);
	assert_false(t.ready_failed);
	assert_true(t.had_pipelining);
	assert_int_equal(m->data.r[0].code, 250);

	/* the dump file's name has a random suffix; it may still be being
	 * written when the 250 arrives */
	char *dump = NULL;
	for (int tries = 0; tries < 50; tries++) {
		char path[PATH_MAX + 300];
		free(dump);
		dump = NULL;
		if (find_dump(f->peers[p].dir, path, sizeof(path)))
			dump = read_file(path, NULL);
		if (dump && strstr(dump, "\nlast line\n\n"))
			break;
		usleep(100000);
	}
	assert_non_null(dump);
	assert_non_null(strstr(dump, "X-Rcpt-Args: <a@example.com>\n"));
	assert_non_null(strstr(dump, "X-Rcpt-Args: <c@example.com>\n"));
	assert_non_null(strstr(dump, "X-Mail-Args: <sender@example.org>"));
	/* the message after smtp-sink's Received header, LF line ends */
	const char *msg = strstr(dump, "From: a@example.org\n");
	assert_non_null(msg);
	struct buf lf = BUF_INIT;
	for (const char *s = BODY_DOTS; *s; s++)
		if (*s != '\r')
			buf_putc(&lf, *s);
	buf_putc(&lf, '\n');    /* smtp-sink ends the dump with an empty line */
	assert_string_equal(msg, buf_cstr(&lf));
	buf_free(&lf);
	free(dump);
}

/* One RCPT refused with a multi-line 5xx, the others pass. */
static void test_rcpt_rejected(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", "--ext", "ENHANCEDSTATUSCODES", "--rcpt-reply",
			   "bad@example.com=550 5.1.1 first line|550 5.1.1 <bad@example.com>: no such user", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "s@example.org", "Subject: x\r\n\r\nhi\r\n", "a@example.com", "bad@example.com",
				"c@example.com", NULL);
	run(&t, 10000);
	assert_int_equal(m->rcpt[0].r.code, 250);
	assert_int_equal(m->rcpt[1].r.code, 550);
	assert_int_equal(m->rcpt[1].r.fault, SMTP_REPLY);
	assert_string_equal(m->rcpt[1].r.enh, "5.1.1");
	assert_string_equal(m->rcpt[1].r.text, "<bad@example.com>: no such user");
	assert_int_equal(m->rcpt[2].r.code, 250);
	assert_int_equal(m->data.r[0].code, 250);
}

/* A quoted local part may hold angle brackets (RFC 5321; the server
 * accepts them): sent as it is, not refused (found in review: a message
 * accepted in queue mode was then bounced with 553). */
static void test_quoted_local_part_with_brackets(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "\"s>x\"@example.org", "Subject: x\r\n\r\nhi\r\n", "\"a<b\"@example.com",
				"c>d@example.com", NULL);
	run(&t, 10000);
	assert_int_equal(m->mail.r.code, 250);
	assert_int_equal(m->rcpt[0].r.code, 250);
	assert_int_equal(m->rcpt[1].r.code, 553);       /* unquoted: still refused here */
	assert_int_equal(m->data.r[0].code, 250);
	char lines[32][600];
	int batches[32];
	size_t n = cmds_of(f, p, 1, lines, batches, 32);
	assert_true(find_cmd(lines, n, "RCPT TO:<\"a<b\"@example.com>") >= 0);
	int im = find_cmd(lines, n, "MAIL");
	assert_true(im >= 0 && strncmp(lines[im], "MAIL FROM:<\"s>x\"@example.org>", 29) == 0);
}

/* An EHLO SIZE value we cannot read ("10 MB") is no limit, not a limit of
 * 10 bytes that would bounce every message (found in review). */
static void test_ehlo_size_malformed(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", "--ext", "SIZE 10 MB", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "s@example.org", "Subject: more than ten bytes\r\n\r\nhi\r\n", "a@example.com",
				NULL);
	run(&t, 10000);
	assert_int_equal(m->mail.r.code, 250);
	assert_int_equal(m->data.r[0].code, 250);
}

/* A 3xx to RCPT (or after the dot) is a protocol error, a 4xx for every
 * command outstanding, never an outcome passed on (found in review:
 * proxy mode relayed "354" as the answer to RCPT). */
static void test_3xx_is_a_protocol_error(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", "--rcpt-reply", "odd@example.com=354 go ahead", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "s@example.org", "Subject: x\r\n\r\nhi\r\n", "odd@example.com", NULL);
	run(&t, 10000);
	assert_int_equal(m->rcpt[0].r.code / 100, 4);
	assert_int_equal(m->rcpt[0].r.fault, SMTP_FAULT_PROTOCOL);
	assert_non_null(strstr(m->rcpt[0].r.text, "unexpected reply 354"));
	assert_int_equal(m->data.r[0].code / 100, 4);
}

/* First hop is a closed port: the second one is used. */
static void test_failover_closed_port(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, NULL);
	NEED_PEER(p);
	char h1[64], h2[64];
	snprintf(h1, sizeof(h1), "127.0.0.1:%d", closed_port());
	set_hops(f, 2, h1, hop_of(f, p, h2, sizeof(h2)));
	struct tc t;
	tc_init(&t, f);
	t.use_rotor = true;
	add_msg(&t, "s@example.org", "Subject: x\r\n\r\nhi\r\n", "a@example.com", NULL);
	run(&t, 10000);
	assert_false(t.ready_failed);
	assert_string_equal(t.peer, h2);
	assert_int_equal(t.msgs[0].data.r[0].code, 250);

	/* the failure was logged at warn, with the session id */
	char *log = read_file(f->log_path, NULL);
	assert_non_null(log);
	char *w = strstr(log, "smtp_client_hop_failed");
	assert_non_null(w);
	char *ls = w;
	while (ls > log && ls[-1] != '\n')
		ls--;
	char *le = strchr(w, '\n');
	*le = '\0';
	assert_non_null(strstr(ls, SID));
	assert_non_null(strstr(ls, "\"warn\""));
	assert_non_null(strstr(ls, h1));
	free(log);
}

/* First hop greets 421: the second one is used. */
static void test_failover_greeting_421(void **state)
{
	struct fixture *f = *state;
	int p1 = peer_start(f, "--greeting", "421 4.3.2 busy, try later", NULL);
	NEED_PEER(p1);
	int p2 = peer_start(f, NULL);
	NEED_PEER(p2);
	char h1[64], h2[64];
	set_hops(f, 2, hop_of(f, p1, h1, sizeof(h1)), hop_of(f, p2, h2, sizeof(h2)));
	struct tc t;
	tc_init(&t, f);
	t.use_rotor = true;
	add_msg(&t, "s@example.org", "Subject: x\r\n\r\nhi\r\n", "a@example.com", NULL);
	run(&t, 10000);
	assert_false(t.ready_failed);
	assert_string_equal(t.peer, h2);
	assert_int_equal(t.msgs[0].data.r[0].code, 250);
	char lines[8][600];
	int b[8];
	assert_int_equal(cmds_of(f, p1, 1, lines, b, 8), 0);   /* nothing sent to the first */
}

/* Setup faults on the first hops: greeting never comes (command
 * timeout), EHLO answered 421; the third hop is used. */
static void test_failover_setup_faults(void **state)
{
	struct fixture *f = *state;
	int p1 = peer_start(f, "--stall-on", "GREETING", NULL);
	NEED_PEER(p1);
	int p2 = peer_start(f, "--ehlo-reply", "421 4.3.0 shutting down", NULL);
	NEED_PEER(p2);
	int p3 = peer_start(f, NULL);
	NEED_PEER(p3);
	char h1[64], h2[64], h3[64];
	set_hops(f, 3, hop_of(f, p1, h1, sizeof(h1)), hop_of(f, p2, h2, sizeof(h2)), hop_of(f, p3, h3, sizeof(h3)));
	struct tc t;
	tc_init(&t, f);
	t.use_rotor = true;
	t.opts.command_timeout_ms = 300;
	add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	long long t0 = now_ms();
	run(&t, 10000);
	assert_true(now_ms() - t0 < 3000);
	assert_false(t.ready_failed);
	assert_string_equal(t.peer, h3);
	assert_int_equal(t.msgs[0].data.r[0].code, 250);
	char lines[8][600];
	int b[8];
	size_t n = cmds_of(f, p2, 1, lines, b, 8);
	assert_int_equal(n, 1);
	assert_string_equal(lines[0], "EHLO client.test");     /* no HELO after a 4xx */
}

/* A hop whose listen queue is full never completes the handshake: the
 * connect timeout moves on to the next hop. */
static void test_connect_timeout(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, NULL);
	NEED_PEER(p);
	int lfd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof(sa);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(lfd, 0), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
	/* fill the accept queue: connections that are never accepted */
	int fillers[4];
	for (int i = 0; i < 4; i++) {
		fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		connect(fillers[i], (struct sockaddr *)&sa, sizeof(sa));
	}
	usleep(100000);
	char h1[64], h2[64];
	snprintf(h1, sizeof(h1), "127.0.0.1:%d", ntohs(sa.sin_port));
	set_hops(f, 2, h1, hop_of(f, p, h2, sizeof(h2)));
	struct tc t;
	tc_init(&t, f);
	t.use_rotor = true;
	t.opts.connect_timeout_ms = 300;
	t.opts.command_timeout_ms = 300;   /* if the kernel completes it, no greeting comes */
	long long t0 = now_ms();
	run(&t, 10000);
	long long took = now_ms() - t0;
	for (int i = 0; i < 4; i++)
		close(fillers[i]);
	close(lfd);
	assert_false(t.ready_failed);
	assert_string_equal(t.peer, h2);
	assert_true(took >= 250 && took < 3000);
	char *log = read_file(f->log_path, NULL);
	assert_non_null(log);
	assert_non_null(strstr(log, "timeout after 300 ms"));
	free(log);
}

/* Every hop down: ready(err) with a 4xx naming the hops; the last 4xx
 * seen wins over the generic 421. */
static void test_all_hops_down(void **state)
{
	struct fixture *f = *state;
	char h1[64], h2[64];
	snprintf(h1, sizeof(h1), "127.0.0.1:%d", closed_port());
	snprintf(h2, sizeof(h2), "127.0.0.1:%d", closed_port());
	set_hops(f, 2, h1, h2);
	struct tc t;
	tc_init(&t, f);
	run(&t, 10000);
	assert_true(t.ready_failed);
	assert_int_equal(t.ready_err.code, 421);
	assert_string_equal(t.ready_err.enh, "4.4.1");
	assert_int_equal(t.ready_err.fault, SMTP_FAULT_CONNECT);
	assert_string_equal(smtp_fault_name(t.ready_err.fault), "connect");
	assert_non_null(strstr(t.ready_err.text, h1));
	assert_non_null(strstr(t.ready_err.text, h2));

	int p = peer_start(f, "--greeting", "450 4.7.1 not now", NULL);
	NEED_PEER(p);
	char h3[64];
	set_hops(f, 2, h1, hop_of(f, p, h3, sizeof(h3)));
	tc_init(&t, f);
	run(&t, 10000);
	assert_true(t.ready_failed);
	assert_int_equal(t.ready_err.code, 450);
	assert_string_equal(t.ready_err.enh, "4.7.1");
	assert_int_equal(t.ready_err.fault, SMTP_REPLY);   /* the last hop said so */
	assert_non_null(strstr(t.ready_err.text, h1));
	assert_non_null(strstr(t.ready_err.text, h3));

	/* no hop at all */
	set_hops(f, 0);
	tc_init(&t, f);
	run(&t, 10000);
	assert_true(t.ready_failed);
	assert_int_equal(t.ready_err.code, 421);
	assert_int_equal(t.ready_err.fault, SMTP_FAULT_LOCAL);
	assert_non_null(strstr(t.ready_err.text, "no next hop"));

	/* a hop that does not parse counts as down */
	set_hops(f, 1, "not a hop::");
	tc_init(&t, f);
	run(&t, 10000);
	assert_true(t.ready_failed);
	assert_int_equal(t.ready_err.code / 100, 4);
}

/* LMTP: one reply per accepted RCPT after the dot. */
static void test_lmtp_per_rcpt(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--lmtp", "--ext", "PIPELINING", "--ext", "ENHANCEDSTATUSCODES", "--rcpt-reply",
			   "gone@example.com=550 5.1.1 no such user", "--lmtp-reply",
			   "full@example.com=452 4.2.2 mailbox full", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	t.opts.lmtp = true;
	struct msg *m = add_msg(&t, "s@example.org", BODY_DOTS, "ok@example.com", "gone@example.com",
				"full@example.com", NULL);
	run(&t, 10000);
	assert_false(t.ready_failed);
	assert_int_equal(m->rcpt[0].r.code, 250);
	assert_int_equal(m->rcpt[1].r.code, 550);
	assert_int_equal(m->rcpt[2].r.code, 250);
	assert_true(m->data.got);
	assert_int_equal(m->data.n, 2);
	assert_int_equal(m->data.r[0].code, 250);
	assert_non_null(strstr(m->data.r[0].text, "ok@example.com"));
	assert_int_equal(m->data.r[1].code, 452);
	assert_string_equal(m->data.r[1].enh, "4.2.2");
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_true(find_cmd(lines, n, "LHLO client.test") == 0);
	assert_true(find_cmd(lines, n, "EHLO") < 0);
}

/* A peer that stops answering: 421 4.4.2 within the short timeout, every
 * queued callback answered in order, and later calls answered 421 from the
 * event loop, not from inside the call. */
static void test_stall_timeout(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--stall-on", "MAIL", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	t.opts.command_timeout_ms = 400;
	t.dead_followup = true;
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", "b@example.com", NULL);
	run(&t, 10000);
	assert_int_equal(m->mail.r.code, 421);
	assert_string_equal(m->mail.r.enh, "4.4.2");
	assert_int_equal(m->mail.r.fault, SMTP_FAULT_TIMEOUT);
	assert_non_null(strstr(m->mail.r.text, "timeout"));
	long long waited = t.t_first_reply - t.t_issue;
	assert_true(waited >= 350 && waited < 2000);
	assert_int_equal(m->rcpt[0].r.code, 421);
	assert_int_equal(m->rcpt[1].r.code, 421);
	assert_int_equal(m->data.r[0].code, 421);
	assert_int_equal(m->data.n, 1);
	assert_true(m->mail.order < m->rcpt[0].order && m->rcpt[1].order < m->data.order);
	assert_true(t.followup.got);
	assert_int_equal(t.followup.r.code, 421);
	assert_string_equal(t.followup.r.enh, "4.4.2");
}

/* A shutdown that cannot wait: smtp_client_set_abort frees every client
 * of the set, mid-transaction, and no callback runs. */
static void test_set_abort_cuts_every_client(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--stall-on", "MAIL", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t[2];
	struct msg *m[2];
	for (int i = 0; i < 2; i++) {
		tc_init(&t[i], f);
		m[i] = add_msg(&t[i], "s@example.org", "x\r\n", "a@example.com", NULL);
		smtp_client_connect(f->base, &t[i].opts, ready_cb, &t[i]);
	}
	long long deadline = now_ms() + 5000;
	while (!(t[0].ready && t[1].ready) && now_ms() < deadline)
		event_base_loop(f->base, EVLOOP_ONCE);
	assert_true(t[0].c && t[1].c);          /* both greeted, MAIL sent and stalled */
	assert_int_equal(f->live.n, 2);
	smtp_client_set_abort(&f->live);
	assert_int_equal(f->live.n, 0);
	assert_null(f->live.head);
	for (int i = 0; i < 10; i++)
		event_base_loop(f->base, EVLOOP_NONBLOCK);
	for (int i = 0; i < 2; i++) {
		assert_false(m[i]->mail.got);
		assert_false(t[i].done);
		t[i].c = NULL;
	}
}

/* No reply after the dot: the data timeout, not the command timeout. */
static void test_data_timeout(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", "--stall-after-body", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	t.opts.command_timeout_ms = 5000;
	t.opts.data_timeout_ms = 400;
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	long long t0 = now_ms();
	run(&t, 10000);
	assert_true(now_ms() - t0 < 3000);
	assert_int_equal(m->rcpt[0].r.code, 250);
	assert_int_equal(m->data.r[0].code, 421);
	assert_string_equal(m->data.r[0].enh, "4.4.2");
	assert_non_null(strstr(m->data.r[0].text, "timeout after 400 ms"));
}

/* LMTP: the connection drops after the first of two replies: the second
 * recipient gets 421 4.4.2, the first keeps its real reply. */
static void test_lmtp_partial_then_drop(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--lmtp", "--lmtp-partial", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	t.opts.lmtp = true;
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", "b@example.com", NULL);
	run(&t, 10000);
	assert_int_equal(m->data.n, 2);
	assert_int_equal(m->data.r[0].code, 250);
	assert_int_equal(m->data.r[1].code, 421);
	assert_string_equal(m->data.r[1].enh, "4.4.2");
}

/* The peer closes in the middle of a large body: 421 4.4.2. */
static void test_drop_mid_data(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", "--drop-in-data", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	size_t big = 8 * 1024 * 1024;
	char *body = xmalloc(big + 1);
	for (size_t i = 0; i < big; i += 64)
		memcpy(body + i, "0123456789012345678901234567890123456789012345678901234567890\r\n", 64);
	body[big] = '\0';
	struct msg *m = add_msg(&t, "s@example.org", body, "a@example.com", NULL);
	run(&t, 15000);
	assert_int_equal(m->mail.r.code, 250);
	assert_int_equal(m->rcpt[0].r.code, 250);
	assert_true(m->data.got);
	assert_int_equal(m->data.r[0].code, 421);
	assert_string_equal(m->data.r[0].enh, "4.4.2");
	assert_int_equal(m->data.r[0].fault, SMTP_FAULT_LOST);
	assert_non_null(strstr(m->data.r[0].text, "connection"));
	free(body);
}

/* A large body with many dot lines is written in chunks and arrives
 * byte-exact; bare LF and CR are made CRLF, a missing final CRLF added. */
static void test_large_body_and_normalisation(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct buf big = BUF_INIT;
	for (int i = 0; big.len < 3 * 1024 * 1024; i++)
		buf_printf(&big, i % 7 == 0 ? ".line %d starts with a dot\r\n" : "line %d is plain text\r\n", i);
	add_msg(&t, "s@example.org", buf_cstr(&big), "a@example.com", NULL);
	static const char odd[] = ".first\nsecond\r.third\r\n..fourth\r\nno final newline";
	add_msg(&t, "s@example.org", odd, "a@example.com", NULL);
	add_msg(&t, "s@example.org", "", "a@example.com", NULL);
	run(&t, 20000);
	assert_int_equal(t.msgs[0].data.r[0].code, 250);
	assert_int_equal(t.msgs[1].data.r[0].code, 250);
	assert_int_equal(t.msgs[2].data.r[0].code, 250);

	size_t bl, el;
	char *got = peer_file(f, p, "body.1", &bl);
	char *exp = ref_stuff(big.data, big.len, &el);
	assert_non_null(got);
	assert_int_equal(bl, el);
	assert_memory_equal(got, exp, el);
	free(got);
	free(exp);

	got = peer_file(f, p, "body.2", &bl);
	assert_non_null(got);
	assert_string_equal(got, "..first\r\nsecond\r\n..third\r\n...fourth\r\nno final newline\r\n.\r\n");
	free(got);
	got = peer_file(f, p, "body.3", &bl);
	assert_string_equal(got, ".\r\n");
	free(got);
	buf_free(&big);
}

/* XFORWARD: the attributes the server lists, xtext-encoded, unknown ones
 * [UNAVAILABLE], lines under 512 bytes; replies consumed internally. */
static void test_xforward(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "XFORWARD NAME ADDR PORT PROTO HELO LOGIN", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	t.opts.xforward = true;
	struct msg *m1 = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	struct pool *pl = m1->env->pool;
	m1->env->client.name = pool_strdup(pl, "client.example");
	m1->env->client.addr = pool_strdup(pl, "192.0.2.7");
	m1->env->client.port = 2525;
	m1->env->client.proto = pool_strdup(pl, "ESMTP");
	m1->env->client.helo = pool_strdup(pl, "helo name+x=y");
	m1->env->client.login = NULL;

	struct msg *m2 = add_msg(&t, "s@example.org", "y\r\n", "b@example.com", NULL);
	pl = m2->env->pool;
	char longname[251], longhelo[251], spaces[101];
	memset(longname, 'a', 250);
	longname[250] = '\0';
	memset(longhelo, 'b', 250);
	longhelo[250] = '\0';
	memset(spaces, ' ', 100);
	spaces[100] = '\0';
	m2->env->client.name = pool_strdup(pl, longname);
	m2->env->client.addr = pool_strdup(pl, "2001:db8::1");
	m2->env->client.port = 0;
	m2->env->client.helo = pool_strdup(pl, longhelo);
	m2->env->client.login = pool_strdup(pl, spaces);   /* 300 bytes encoded: too long */
	run(&t, 10000);
	assert_int_equal(m1->mail.r.code, 250);
	assert_int_equal(m1->data.r[0].code, 250);
	assert_int_equal(m2->mail.r.code, 250);
	assert_int_equal(m2->data.r[0].code, 250);

	char lines[32][600];
	int b[32];
	size_t n = cmds_of(f, p, 1, lines, b, 32);
	int x = find_cmd(lines, n, "XFORWARD");
	assert_true(x > 0);
	assert_string_equal(lines[x], "XFORWARD NAME=client.example ADDR=192.0.2.7 PORT=2525 PROTO=ESMTP "
				      "HELO=helo+20name+2Bx+3Dy LOGIN=[UNAVAILABLE]");
	assert_true(strncmp(lines[x + 1], "MAIL FROM:<s@example.org>", 25) == 0);
	/* second transaction: split in two commands */
	int x2 = find_cmd(lines + x + 2, n - (size_t)x - 2, "XFORWARD") + x + 2;
	assert_true(x2 > x + 1);
	char exp1[600], exp2[600];
	snprintf(exp1, sizeof(exp1), "XFORWARD NAME=%s ADDR=2001:db8::1 PORT=[UNAVAILABLE] PROTO=SMTP", longname);
	snprintf(exp2, sizeof(exp2), "XFORWARD HELO=%s LOGIN=[UNAVAILABLE]", longhelo);
	assert_string_equal(lines[x2], exp1);
	assert_string_equal(lines[x2 + 1], exp2);
	assert_true(strlen(lines[x2]) + 2 < 512 && strlen(lines[x2 + 1]) + 2 < 512);
	assert_true(strncmp(lines[x2 + 2], "MAIL FROM:", 10) == 0);
}

/* XFORWARD is not sent when the option is off or the server lacks it. */
static void test_xforward_off(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "XFORWARD NAME ADDR", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	assert_int_equal(t.msgs[0].data.r[0].code, 250);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_true(find_cmd(lines, n, "XFORWARD") < 0);
}

static bool make_cert(struct fixture *f, char *cert, char *key, size_t len)
{
	snprintf(cert, len, "%s/cert.pem", f->dir);
	snprintf(key, len, "%s/key.pem", f->dir);
	if (file_exists(cert))
		return true;
	char errfile[PATH_MAX + 16];
	snprintf(errfile, sizeof(errfile), "%s/openssl.err", f->dir);
	char *argv[] = { "/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
			 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
			 "-subj", "/CN=peer.test", NULL };
	return file_exists(argv[0]) && run_wait(argv, errfile) == 0 && file_exists(cert);
}

/* STARTTLS against aiosmtpd: TLS used, EHLO repeated, message intact. */
static void test_starttls_aiosmtpd(void **state)
{
	struct fixture *f = *state;
	char cert[PATH_MAX + 16], key[PATH_MAX + 16];
	if (!make_cert(f, cert, key, sizeof(cert))) {
		print_message("openssl CLI not usable, skipping\n");
		skip();
	}
	int p = peer_start(f, "--aiosmtpd", "--tls", cert, key, NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	char why[256] = "";
	struct tls_ctx *tls = tls_client_new(NULL, false, why, sizeof(why));
	assert_non_null(tls);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	struct msg *m = add_msg(&t, "s@example.org", BODY_DOTS, "a@example.com", "b@example.com", NULL);
	run(&t, 15000);
	assert_false(t.ready_failed);
	assert_true(t.tls[0] != '\0');
	assert_non_null(strstr(t.tls, "TLS"));
	assert_false(t.had_starttls);   /* extensions are those of the EHLO after TLS */
	assert_int_equal(m->data.r[0].code, 250);
	char *got = NULL;
	for (int i = 0; i < 20 && !got; i++) {
		got = peer_file(f, p, "aio.1", NULL);
		if (!got)
			usleep(50000);
	}
	assert_non_null(got);
	assert_non_null(strstr(got, "RCPT a@example.com\nRCPT b@example.com\nTLS yes\n\n"));
	assert_string_equal(strstr(got, "\n\n") + 2, BODY_DOTS);
	free(got);
	tls_ctx_free(tls);
}

/* STARTTLS against the scripted peer: EHLO twice on one connection, and
 * nothing is sent in plaintext after STARTTLS. */
static void test_starttls_scripted(void **state)
{
	struct fixture *f = *state;
	char cert[PATH_MAX + 16], key[PATH_MAX + 16];
	if (!make_cert(f, cert, key, sizeof(cert))) {
		print_message("openssl CLI not usable, skipping\n");
		skip();
	}
	int p = peer_start(f, "--tls", cert, key, "--ext", "STARTTLS", "--ext", "PIPELINING", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	char why[256] = "";
	struct tls_ctx *tls = tls_client_new(NULL, false, why, sizeof(why));
	assert_non_null(tls);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	struct msg *m = add_msg(&t, "s@example.org", BODY_DOTS, "a@example.com", NULL);
	run(&t, 15000);
	assert_true(t.tls[0] != '\0');
	assert_true(t.had_pipelining);
	assert_int_equal(m->data.r[0].code, 250);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_int_equal(find_cmd(lines, n, "EHLO"), 0);
	assert_int_equal(find_cmd(lines, n, "STARTTLS"), 1);
	assert_int_equal(find_cmd(lines + 2, n - 2, "EHLO"), 0);
	char *marker = peer_file(f, p, "tls.1", NULL);
	assert_non_null(marker);
	free(marker);
	tls_ctx_free(tls);
}

/* A failed handshake under opportunistic TLS: the same hop again, once,
 * without STARTTLS. */
static void test_starttls_failure_retries_plain(void **state)
{
	struct fixture *f = *state;
	char cert[PATH_MAX + 16], key[PATH_MAX + 16];
	if (!make_cert(f, cert, key, sizeof(cert))) {
		print_message("openssl CLI not usable, skipping\n");
		skip();
	}
	int p = peer_start(f, "--tls", cert, key, "--tls-garbage", "--ext", "STARTTLS", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	char why[256] = "";
	struct tls_ctx *tls = tls_client_new(NULL, false, why, sizeof(why));
	assert_non_null(tls);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 15000);
	assert_false(t.ready_failed);
	assert_string_equal(t.tls, "");
	assert_int_equal(m->data.r[0].code, 250);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_true(find_cmd(lines, n, "STARTTLS") >= 0);
	n = cmds_of(f, p, 2, lines, b, 16);
	assert_true(find_cmd(lines, n, "STARTTLS") < 0);
	assert_true(find_cmd(lines, n, "MAIL") >= 0);
	tls_ctx_free(tls);
}

/* STARTTLS offered but refused (454): the session goes on in plaintext
 * with the extensions of the first EHLO. */
static void test_starttls_refused(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "STARTTLS", "--ext", "PIPELINING", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	char why[256] = "";
	struct tls_ctx *tls = tls_client_new(NULL, false, why, sizeof(why));
	assert_non_null(tls);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	tls_ctx_free(tls);
	assert_false(t.ready_failed);
	assert_string_equal(t.tls, "");
	assert_true(t.had_pipelining);
	assert_int_equal(m->data.r[0].code, 250);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_int_equal(find_cmd(lines, n, "STARTTLS"), 1);
	assert_true(strncmp(lines[2], "MAIL FROM:", 10) == 0);
}

/* EHLO refused with 5xx: HELO, no extensions, one command at a time. */
static void test_helo_fallback(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ehlo-reply", "502 5.5.2 Error: command not recognized", "--batch-delay", "0.05",
			   NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", "b@example.com", NULL);
	run(&t, 10000);
	assert_false(t.ready_failed);
	assert_false(t.had_pipelining);
	assert_int_equal(m->data.r[0].code, 250);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_int_equal(find_cmd(lines, n, "EHLO client.test"), 0);
	assert_int_equal(find_cmd(lines, n, "HELO client.test"), 1);
	int im = find_cmd(lines, n, "MAIL");
	assert_true(im > 0);
	for (int i = im; i < im + 3; i++)   /* MAIL, RCPT, RCPT, DATA: separate reads */
		assert_true(b[i] < b[i + 1]);
}

/* A malformed reply: 421 4.4.0 protocol error, connection dropped. */
static void test_malformed_reply(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", "--bad-reply-on", "RCPT", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	assert_int_equal(m->mail.r.code, 250);
	assert_int_equal(m->rcpt[0].r.code, 421);
	assert_string_equal(m->rcpt[0].r.enh, "4.4.0");
	assert_int_equal(m->rcpt[0].r.fault, SMTP_FAULT_PROTOCOL);
	assert_non_null(strstr(m->rcpt[0].r.text, "protocol error"));
	assert_int_equal(m->data.r[0].code, 421);
}

/* PIPELINING, every RCPT refused, DATA already sent and the server says
 * 354 anyway: only "." is sent and the outcome is 554 5.5.1. */
static void test_no_rcpt_pipelined_354(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", "--always-354", "--rcpt-reply", "a@example.com=550 5.1.1 no",
			   "--rcpt-reply", "b@example.com=550 5.1.1 no", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "s@example.org", BODY_DOTS, "a@example.com", "b@example.com", NULL);
	run(&t, 10000);
	assert_int_equal(m->rcpt[0].r.code, 550);
	assert_int_equal(m->rcpt[1].r.code, 550);
	assert_int_equal(m->data.r[0].code, 554);
	assert_string_equal(m->data.r[0].enh, "5.5.1");
	char *body = peer_file(f, p, "body.1", NULL);
	assert_non_null(body);
	assert_string_equal(body, ".\r\n");
	free(body);
}

/* PIPELINING, every RCPT refused, server refuses DATA with 554. */
static void test_no_rcpt_pipelined_554(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", "--rcpt-reply", "a@example.com=550 5.1.1 no", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	struct msg *m2 = add_msg(&t, "s@example.org", "y\r\n", "b@example.com", NULL);
	run(&t, 10000);
	assert_int_equal(m->data.r[0].code, 554);
	assert_int_equal(m->data.n, 1);
	assert_int_equal(m2->data.r[0].code, 250);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	int d = find_cmd(lines, n, "DATA");
	assert_string_equal(lines[d + 1], "RSET");
	assert_true(strncmp(lines[d + 2], "MAIL FROM:", 10) == 0);
	char *b2 = peer_file(f, p, "body.1", NULL);
	assert_string_equal(b2, "y\r\n.\r\n");
	free(b2);
}

/* Without PIPELINING the RCPT outcomes are known before DATA: with none
 * accepted DATA is not sent, the answer is a local 554 5.5.1. */
static void test_no_rcpt_local_554(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--rcpt-reply", "a@example.com=550 5.1.1 no", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	add_msg(&t, "s@example.org", "x\r\n", "c@example.com", NULL);     /* same connection, works */
	run(&t, 10000);
	assert_int_equal(m->data.r[0].code, 554);
	assert_string_equal(m->data.r[0].enh, "5.5.1");
	assert_int_equal(t.msgs[1].data.r[0].code, 250);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	int d = find_cmd(lines, n, "DATA");
	assert_true(d >= 0);
	assert_true(d > find_cmd(lines, n, "RCPT TO:<c@example.com>"));   /* only the second DATA */
	/* the open transaction is closed before the next MAIL */
	int r = find_cmd(lines, n, "RSET");
	assert_true(r > find_cmd(lines, n, "RCPT TO:<a@example.com>"));
	assert_true(r < find_cmd(lines, n, "RCPT TO:<c@example.com>") - 1);
	assert_string_equal(lines[r + 1], "MAIL FROM:<s@example.org>");
}

/* Envelope needs what the server lacks: SMTPUTF8 (553 5.6.7), size over
 * the SIZE limit (552 5.3.4) — answered locally, nothing sent; 8-bit body
 * without 8BITMIME is sent as is. */
static void test_local_refusals(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "SIZE 1000", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m1 = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	m1->env->smtputf8 = true;
	struct msg *m2 = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	m2->size = 5000;
	struct msg *m3 = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	m3->env->body_8bit = true;
	run(&t, 10000);
	assert_int_equal(m1->mail.r.code, 553);
	assert_string_equal(m1->mail.r.enh, "5.6.7");
	assert_int_equal(m1->rcpt[0].r.code, 553);        /* the MAIL's reason */
	assert_string_equal(m1->rcpt[0].r.enh, "5.6.7");
	assert_int_equal(m1->data.r[0].code, 553);
	assert_int_equal(m2->mail.r.code, 552);
	assert_string_equal(m2->mail.r.enh, "5.3.4");
	assert_int_equal(m3->mail.r.code, 250);
	assert_int_equal(m3->data.r[0].code, 250);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	int im = find_cmd(lines, n, "MAIL");
	assert_string_equal(lines[im], "MAIL FROM:<s@example.org> SIZE=3");
	assert_true(find_cmd(lines + im + 1, n - (size_t)im - 1, "MAIL") < 0);   /* one MAIL only */
}

/* MAIL refused with 4xx by the server (pipelined): the RCPTs and DATA
 * get that 4xx, not the server's 503s. */
static void test_mail_refused_4xx(void **state)
{
	struct fixture *f = *state;
	int p1 = peer_start(f, "--ext", "PIPELINING", "--ext", "ENHANCEDSTATUSCODES", "--mail-reply",
			    "452 4.3.1 Insufficient system storage", NULL);
	NEED_PEER(p1);
	char hop[64];
	set_hops(f, 1, hop_of(f, p1, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", "b@example.com", NULL);
	run(&t, 10000);
	assert_int_equal(m->mail.r.code, 452);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(m->rcpt[i].r.code, 452);
		assert_string_equal(m->rcpt[i].r.enh, "4.3.1");
	}
	assert_int_equal(m->data.r[0].code, 452);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p1, 1, lines, b, 16);
	assert_true(find_cmd(lines, n, "RCPT TO:<b@example.com>") > 0);   /* they were sent */
}

/* abort() from inside a callback: no further callbacks, nothing leaks. */
static void test_abort_in_callback(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "PIPELINING", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	t.abort_in_mail_cb = true;
	struct msg *m = add_msg(&t, "s@example.org", BODY_DOTS, "a@example.com", "b@example.com", NULL);
	run(&t, 10000);
	assert_true(m->mail.got);
	assert_int_equal(t.after_abort_calls, 0);
	assert_false(m->rcpt[0].got);
	assert_false(m->data.got);
}

/* Equal hops: a caller-owned rotor starts each connection one further. */
static void test_rotor(void **state)
{
	struct fixture *f = *state;
	int p1 = peer_start(f, NULL);
	NEED_PEER(p1);
	int p2 = peer_start(f, NULL);
	NEED_PEER(p2);
	char h1[64], h2[64];
	set_hops(f, 2, hop_of(f, p1, h1, sizeof(h1)), hop_of(f, p2, h2, sizeof(h2)));
	struct smtp_rotor rotor = { 0 };
	const char *want[] = { h1, h2, h1 };
	for (int i = 0; i < 3; i++) {
		struct tc t;
		tc_init(&t, f);
		t.use_rotor = true;
		t.rotor = rotor;
		run(&t, 10000);
		rotor = t.rotor;
		assert_false(t.ready_failed);
		assert_string_equal(t.peer, want[i]);
	}
	assert_int_equal(rotor.next, 3);

	/* the random start reaches both hops sooner or later */
	bool seen[2] = { false, false };
	for (int i = 0; i < 40 && !(seen[0] && seen[1]); i++) {
		struct tc t;
		tc_init(&t, f);
		run(&t, 10000);
		assert_false(t.ready_failed);
		seen[strcmp(t.peer, h2) == 0] = true;
	}
	assert_true(seen[0] && seen[1]);
}

/* LMTP over a unix socket. */
static void test_unix_socket_lmtp(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX + 16];
	snprintf(path, sizeof(path), "%s/lmtp.sock", f->dir);
	int p = peer_start(f, "--unix", path, "--lmtp", NULL);
	NEED_PEER(p);
	char hop[PATH_MAX + 32];
	snprintf(hop, sizeof(hop), "unix:%s", path);
	set_hops(f, 1, hop);
	struct tc t;
	tc_init(&t, f);
	t.opts.lmtp = true;
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", "b@example.com", NULL);
	run(&t, 10000);
	assert_false(t.ready_failed);
	assert_string_equal(t.peer, hop);
	assert_int_equal(m->data.n, 2);
	assert_int_equal(m->data.r[0].code, 250);
	assert_int_equal(m->data.r[1].code, 250);
}

/* ---- TLS policy, implicit TLS, AUTH ------------------------------------ */

static char g_pki[64];          /* made by pki_setup, removed by pki_teardown */

static bool add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
	X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, v3, nid, value);
	if (!e)
		return false;
	bool ok = X509_add_ext(x, e, -1) == 1;
	X509_EXTENSION_free(e);
	return ok;
}

/* A P-256 certificate for key: a CA when ca, else a server certificate
 * with the given subjectAltName; signed by issuer/ikey, or self-signed. */
static X509 *make_x509(EVP_PKEY *key, const char *cn, const char *san, bool ca, X509 *issuer, EVP_PKEY *ikey,
		       long serial)
{
	X509 *x = X509_new();
	if (!x)
		return NULL;
	bool ok = X509_set_version(x, 2) == 1 && ASN1_INTEGER_set(X509_get_serialNumber(x), serial) == 1 &&
		  X509_gmtime_adj(X509_getm_notBefore(x), -3600) && X509_gmtime_adj(X509_getm_notAfter(x), 2 * 86400) &&
		  X509_set_pubkey(x, key) == 1;
	X509_NAME *name = X509_get_subject_name(x);
	ok = ok && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) == 1;
	ok = ok && X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name) == 1;
	X509V3_CTX v3;
	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
	ok = ok && add_ext(x, &v3, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
	ok = ok && add_ext(x, &v3, NID_subject_key_identifier, "hash");
	if (ca) {
		ok = ok && add_ext(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		ok = ok && add_ext(x, &v3, NID_key_usage, "critical,digitalSignature");
		ok = ok && add_ext(x, &v3, NID_ext_key_usage, "serverAuth");
		ok = ok && add_ext(x, &v3, NID_subject_alt_name, san);
	}
	if (issuer)
		ok = ok && add_ext(x, &v3, NID_authority_key_identifier, "keyid:always");
	ok = ok && X509_sign(x, ikey ? ikey : key, EVP_sha256()) > 0;
	if (!ok) {
		X509_free(x);
		return NULL;
	}
	return x;
}

static bool write_pem(const char *name, X509 *x, EVP_PKEY *key)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s.pem", g_pki, name);
	FILE *fp = fopen(path, "w");
	bool ok = fp && PEM_write_X509(fp, x) == 1;
	if (fp)
		fclose(fp);
	if (ok && key) {
		snprintf(path, sizeof(path), "%s/%s.key", g_pki, name);
		fp = fopen(path, "w");
		ok = fp && PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL) == 1;
		if (fp)
			fclose(fp);
	}
	return ok;
}

static int pki_setup(void **state)
{
	(void)state;
	snprintf(g_pki, sizeof(g_pki), "/tmp/test_smtp_client_pki.XXXXXX");
	if (!mkdtemp(g_pki))
		return -1;
	static const char san[] = "DNS:peer.test,IP:127.0.0.1";
	EVP_PKEY *cakey = EVP_EC_gen("P-256"), *srvkey = EVP_EC_gen("P-256"), *selfkey = EVP_EC_gen("P-256");
	X509 *ca = cakey ? make_x509(cakey, "Rampart Test CA", NULL, true, NULL, NULL, 1) : NULL;
	X509 *srv = ca && srvkey ? make_x509(srvkey, "peer.test", san, false, ca, cakey, 2) : NULL;
	X509 *self = selfkey ? make_x509(selfkey, "peer.test", san, false, NULL, NULL, 3) : NULL;
	bool ok = ca && srv && self && write_pem("ca", ca, NULL) && write_pem("srv", srv, srvkey) &&
		  write_pem("self", self, selfkey);
	X509_free(ca);
	X509_free(srv);
	X509_free(self);
	EVP_PKEY_free(cakey);
	EVP_PKEY_free(srvkey);
	EVP_PKEY_free(selfkey);
	return ok ? 0 : -1;
}

static int pki_teardown(void **state)
{
	(void)state;
	if (g_pki[0] && !getenv("RAMPART_TEST_KEEP"))
		nftw(g_pki, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

/* Path of a PKI file: "ca.pem", "srv.pem", "srv.key", "self.pem", ... */
static const char *pki(const char *name, char *out, size_t len)
{
	snprintf(out, len, "%s/%s", g_pki, name);
	return out;
}

static struct tls_ctx *client_ctx(bool verify)
{
	char why[256] = "", ca[128];
	struct tls_ctx *t = tls_client_new(verify ? pki("ca.pem", ca, sizeof(ca)) : NULL, verify, why, sizeof(why));
	if (!t)
		fail_msg("tls_client_new: %s", why);
	return t;
}

#define AUTH_USER "alice@example.org"
#define AUTH_PASS "k3y-Secret+/=xyz"
/* base64 of "\0" AUTH_USER "\0" AUTH_PASS, of AUTH_USER, of AUTH_PASS
 * (computed outside the client) */
#define AUTH_PLAIN_B64 "AGFsaWNlQGV4YW1wbGUub3JnAGszeS1TZWNyZXQrLz14eXo="
#define AUTH_USER_B64 "YWxpY2VAZXhhbXBsZS5vcmc="
#define AUTH_PASS_B64 "azN5LVNlY3JldCsvPXh5eg=="

/* The client's log holds neither the password nor any encoding of the
 * credentials. */
static void assert_log_clean(struct fixture *f)
{
	char *log = read_file(f->log_path, NULL);
	assert_non_null(log);
	assert_null(strstr(log, AUTH_PASS));
	assert_null(strstr(log, AUTH_PLAIN_B64));
	assert_null(strstr(log, AUTH_PASS_B64));
	assert_null(strstr(log, AUTH_USER_B64));
	free(log);
}

static bool peer_has(struct fixture *f, int p, const char *name)
{
	char path[PATH_MAX + 64];
	snprintf(path, sizeof(path), "%s/%s", f->peers[p].dir, name);
	return file_exists(path);
}

/* STARTTLS, then AUTH PLAIN with an initial response, then the message;
 * the server refuses MAIL before AUTH, so the 250 proves it passed. */
static void test_auth_plain_starttls(void **state)
{
	struct fixture *f = *state;
	char cert[128], key[128];
	int p = peer_start(f, "--tls", pki("srv.pem", cert, sizeof(cert)), pki("srv.key", key, sizeof(key)), "--ext",
			   "PIPELINING", "--ext", "STARTTLS", "--ext", "AUTH PLAIN LOGIN", "--auth-user", AUTH_USER,
			   "--auth-pass", AUTH_PASS, "--auth-required", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tls_ctx *tls = client_ctx(false);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.auth_user = AUTH_USER;
	t.opts.auth_pass = AUTH_PASS;
	struct msg *m = add_msg(&t, "s@example.org", BODY_DOTS, "a@example.com", NULL);
	run(&t, 10000);
	tls_ctx_free(tls);
	assert_false(t.ready_failed);
	assert_true(t.tls[0] != '\0');
	assert_int_equal(m->mail.r.code, 250);
	assert_int_equal(m->data.r[0].code, 250);

	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_true(n >= 5);
	assert_string_equal(lines[0], "EHLO client.test");
	assert_string_equal(lines[1], "STARTTLS");
	assert_string_equal(lines[2], "EHLO client.test");
	assert_string_equal(lines[3], "AUTH PLAIN " AUTH_PLAIN_B64);
	assert_true(strncmp(lines[4], "MAIL FROM:", 10) == 0);
	char *a = peer_file(f, p, "auth.1", NULL);
	assert_non_null(a);
	assert_string_equal(a, "PLAIN " AUTH_USER " " AUTH_PASS " ok\n");
	free(a);
	assert_log_clean(f);
	char *log = read_file(f->log_path, NULL);
	assert_non_null(strstr(log, "AUTH PLAIN [credentials]"));
	free(log);
}

/* Without PLAIN in the EHLO reply: AUTH LOGIN, user name and password in
 * two base64 lines. */
static void test_auth_login(void **state)
{
	struct fixture *f = *state;
	char cert[128], key[128];
	int p = peer_start(f, "--tls", pki("srv.pem", cert, sizeof(cert)), pki("srv.key", key, sizeof(key)), "--ext",
			   "STARTTLS", "--ext", "AUTH CRAM-MD5 LOGIN", "--auth-user", AUTH_USER, "--auth-pass", AUTH_PASS,
			   "--auth-required", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tls_ctx *tls = client_ctx(false);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.auth_user = AUTH_USER;
	t.opts.auth_pass = AUTH_PASS;
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	tls_ctx_free(tls);
	assert_false(t.ready_failed);
	assert_int_equal(m->data.r[0].code, 250);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	int i = find_cmd(lines, n, "AUTH");
	assert_true(i == 3 && (size_t)i + 3 < n);
	assert_string_equal(lines[i], "AUTH LOGIN");
	assert_string_equal(lines[i + 1], AUTH_USER_B64);
	assert_string_equal(lines[i + 2], AUTH_PASS_B64);
	assert_true(strncmp(lines[i + 3], "MAIL FROM:", 10) == 0);
	char *a = peer_file(f, p, "auth.1", NULL);
	assert_non_null(a);
	assert_string_equal(a, "LOGIN " AUTH_USER " " AUTH_PASS " ok\n");
	free(a);
	assert_log_clean(f);
}

/* 535 from the smarthost (an expired key): ready fails with a 4xx that
 * carries the server's reply -- the caller defers, never bounces -- and
 * no MAIL is sent; logged at warn without the password. */
static void test_auth_535_deferred(void **state)
{
	struct fixture *f = *state;
	char cert[128], key[128];
	int p = peer_start(f, "--tls", pki("srv.pem", cert, sizeof(cert)), pki("srv.key", key, sizeof(key)), "--ext",
			   "STARTTLS", "--ext", "ENHANCEDSTATUSCODES", "--ext", "AUTH PLAIN LOGIN", "--auth-reply",
			   "535 5.7.8 Authentication credentials invalid", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tls_ctx *tls = client_ctx(false);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.auth_user = AUTH_USER;
	t.opts.auth_pass = AUTH_PASS;
	add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	tls_ctx_free(tls);
	assert_true(t.ready_failed);
	assert_int_equal(t.ready_err.code, 454);
	assert_string_equal(t.ready_err.enh, "4.7.8");
	assert_int_equal(t.ready_err.fault, SMTP_FAULT_AUTH);
	assert_non_null(strstr(t.ready_err.text, "535 5.7.8 Authentication credentials invalid"));
	assert_non_null(strstr(t.ready_err.text, hop));
	assert_false(t.msgs[0].mail.got);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_true(find_cmd(lines, n, "AUTH PLAIN") >= 0);
	assert_true(find_cmd(lines, n, "MAIL") < 0);
	assert_log_clean(f);
	char *log = read_file(f->log_path, NULL);
	char *w = strstr(log, "smtp_client_auth_failed");
	assert_non_null(w);
	char *ls = w;
	while (ls > log && ls[-1] != '\n')
		ls--;
	*strchr(w, '\n') = '\0';
	assert_non_null(strstr(ls, "\"warn\""));
	assert_non_null(strstr(ls, "535"));
	free(log);
}

/* The server offers AUTH but no STARTTLS: the credentials are not sent
 * (4xx, no AUTH line at the peer); with auth_allow_plaintext they are. */
static void test_auth_never_in_clear(void **state)
{
	struct fixture *f = *state;
	int p = peer_start(f, "--ext", "AUTH PLAIN LOGIN", "--auth-user", AUTH_USER, "--auth-pass", AUTH_PASS,
			   "--auth-required", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tls_ctx *tls = client_ctx(false);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.auth_user = AUTH_USER;
	t.opts.auth_pass = AUTH_PASS;
	add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	assert_true(t.ready_failed);
	assert_int_equal(t.ready_err.code / 100, 4);
	assert_string_equal(t.ready_err.enh, "4.7.0");
	assert_non_null(strstr(t.ready_err.text, "refusing to send credentials in clear text"));
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_int_equal(n, 1);
	assert_string_equal(lines[0], "EHLO client.test");
	char *raw = peer_file(f, p, "raw.1", NULL);
	assert_non_null(raw);
	assert_null(strstr(raw, "AUTH"));
	assert_null(strstr(raw, AUTH_PLAIN_B64));
	free(raw);
	assert_false(peer_has(f, p, "auth.1"));

	/* explicitly allowed: AUTH in plaintext, the message goes */
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.auth_user = AUTH_USER;
	t.opts.auth_pass = AUTH_PASS;
	t.opts.auth_allow_plaintext = true;
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	tls_ctx_free(tls);
	assert_false(t.ready_failed);
	assert_string_equal(t.tls, "");
	assert_int_equal(m->data.r[0].code, 250);
	n = cmds_of(f, p, 2, lines, b, 16);
	assert_int_equal(find_cmd(lines, n, "AUTH PLAIN " AUTH_PLAIN_B64), 1);
	assert_log_clean(f);
}

/* TLS_ENCRYPT: no STARTTLS offered, STARTTLS refused, handshake failed --
 * each a 4xx, no MAIL, no plaintext retry. */
static void test_encrypt_required(void **state)
{
	struct fixture *f = *state;
	char cert[128], key[128];
	int p1 = peer_start(f, "--ext", "PIPELINING", NULL);
	NEED_PEER(p1);
	int p2 = peer_start(f, "--ext", "STARTTLS", NULL);   /* offered, then 454 */
	NEED_PEER(p2);
	int p3 = peer_start(f, "--tls", pki("srv.pem", cert, sizeof(cert)), pki("srv.key", key, sizeof(key)),
			    "--tls-garbage", "--ext", "STARTTLS", NULL);
	NEED_PEER(p3);
	struct tls_ctx *tls = client_ctx(false);
	struct {
		int peer;
		const char *enh, *text;
	} cases[] = {
		{ p1, "4.7.4", "TLS required (policy encrypt) but not offered" },
		{ p2, "4.7.4", "STARTTLS refused: 454" },
		{ p3, "4.7.5", "TLS required (encrypt) but the handshake failed" },
	};
	for (size_t i = 0; i < 3; i++) {
		char hop[64];
		set_hops(f, 1, hop_of(f, cases[i].peer, hop, sizeof(hop)));
		struct tc t;
		tc_init(&t, f);
		t.opts.tls = tls;
		t.opts.tls_policy = TLS_ENCRYPT;
		add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
		run(&t, 10000);
		assert_true(t.ready_failed);
		assert_int_equal(t.ready_err.code, 454);
		assert_string_equal(t.ready_err.enh, cases[i].enh);
		assert_int_equal(t.ready_err.fault, SMTP_FAULT_TLS);
		if (!strstr(t.ready_err.text, cases[i].text))
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, t.ready_err.text, cases[i].text);
		char lines[16][600];
		int b[16];
		size_t n = cmds_of(f, cases[i].peer, 1, lines, b, 16);
		assert_true(n >= 1);
		assert_true(find_cmd(lines, n, "MAIL") < 0);
		assert_int_equal(cmds_of(f, cases[i].peer, 2, lines, b, 16), 0);    /* no second connection */
	}
	tls_ctx_free(tls);
}

/* TLS_VERIFY against a self-signed certificate: 4xx, nothing sent after
 * the handshake; TLS_ENCRYPT with the same context accepts it. */
static void test_verify_self_signed(void **state)
{
	struct fixture *f = *state;
	char cert[128], key[128];
	int p = peer_start(f, "--tls", pki("self.pem", cert, sizeof(cert)), pki("self.key", key, sizeof(key)), "--ext",
			   "STARTTLS", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tls_ctx *tls = client_ctx(true);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.tls_policy = TLS_VERIFY;
	t.opts.tls_verify_name = "peer.test";
	add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	assert_true(t.ready_failed);
	assert_int_equal(t.ready_err.code, 454);
	assert_string_equal(t.ready_err.enh, "4.7.5");
	assert_non_null(strstr(t.ready_err.text, "self-signed certificate"));
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_int_equal(n, 2);         /* EHLO, STARTTLS */
	assert_false(peer_has(f, p, "tls.1"));

	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.tls_policy = TLS_ENCRYPT;
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	tls_ctx_free(tls);
	assert_false(t.ready_failed);
	assert_true(t.tls[0] != '\0');
	assert_int_equal(m->data.r[0].code, 250);
}

/* TLS_VERIFY with a certificate from the trusted CA: by the configured
 * name (also sent as SNI), and by default by the hop's address (IP SAN). */
static void test_verify_ca_signed(void **state)
{
	struct fixture *f = *state;
	char cert[128], key[128];
	int p = peer_start(f, "--tls", pki("srv.pem", cert, sizeof(cert)), pki("srv.key", key, sizeof(key)), "--ext",
			   "STARTTLS", "--ext", "PIPELINING", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tls_ctx *tls = client_ctx(true);
	for (int i = 0; i < 2; i++) {
		struct tc t;
		tc_init(&t, f);
		t.opts.tls = tls;
		t.opts.tls_policy = TLS_VERIFY;
		t.opts.tls_verify_name = i == 0 ? "peer.test" : NULL;
		struct msg *m = add_msg(&t, "s@example.org", BODY_DOTS, "a@example.com", NULL);
		run(&t, 10000);
		assert_false(t.ready_failed);
		assert_true(t.tls[0] != '\0');
		assert_int_equal(m->data.r[0].code, 250);
	}
	tls_ctx_free(tls);
	char *sni = peer_file(f, p, "sni.1", NULL);
	assert_non_null(sni);
	assert_string_equal(sni, "peer.test");
	free(sni);
	assert_false(peer_has(f, p, "sni.2"));      /* no SNI for an address */
	assert_true(peer_has(f, p, "tls.2"));
}

/* TLS_VERIFY, trusted CA, wrong name: 4xx, no MAIL. */
static void test_verify_wrong_name(void **state)
{
	struct fixture *f = *state;
	char cert[128], key[128];
	int p = peer_start(f, "--tls", pki("srv.pem", cert, sizeof(cert)), pki("srv.key", key, sizeof(key)), "--ext",
			   "STARTTLS", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tls_ctx *tls = client_ctx(true);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.tls_policy = TLS_VERIFY;
	t.opts.tls_verify_name = "smtp.example.net";
	add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	tls_ctx_free(tls);
	assert_true(t.ready_failed);
	assert_int_equal(t.ready_err.code, 454);
	assert_string_equal(t.ready_err.enh, "4.7.5");
	assert_int_equal(t.ready_err.fault, SMTP_FAULT_TLS);
	assert_non_null(strstr(t.ready_err.text, "hostname mismatch"));
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_true(find_cmd(lines, n, "MAIL") < 0);
	assert_int_equal(cmds_of(f, p, 2, lines, b, 16), 0);
	char *sni = peer_file(f, p, "sni.1", NULL);
	assert_non_null(sni);
	assert_string_equal(sni, "smtp.example.net");
	free(sni);
}

/* Implicit TLS (port 465): handshake first, greeting inside, EHLO, AUTH,
 * message; verified; smtp_client_tls() reports it.  Towards a plaintext
 * server the same options fail with a 4xx and never speak in clear. */
static void test_implicit_tls_auth(void **state)
{
	struct fixture *f = *state;
	char cert[128], key[128];
	int p = peer_start(f, "--implicit-tls", "--tls", pki("srv.pem", cert, sizeof(cert)),
			   pki("srv.key", key, sizeof(key)), "--ext", "PIPELINING", "--ext", "AUTH PLAIN LOGIN",
			   "--auth-user", AUTH_USER, "--auth-pass", AUTH_PASS, "--auth-required", NULL);
	NEED_PEER(p);
	int plain = peer_start(f, "--ext", "AUTH PLAIN LOGIN", NULL);
	NEED_PEER(plain);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tls_ctx *tls = client_ctx(true);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.tls_on_connect = true;
	t.opts.tls_policy = TLS_VERIFY;
	t.opts.tls_verify_name = "peer.test";
	t.opts.auth_user = AUTH_USER;
	t.opts.auth_pass = AUTH_PASS;
	struct msg *m = add_msg(&t, "s@example.org", BODY_DOTS, "a@example.com", "b@example.com", NULL);
	run(&t, 10000);
	assert_false(t.ready_failed);
	assert_true(strncmp(t.tls, "TLSv1.", 6) == 0);
	assert_true(t.had_pipelining);
	assert_int_equal(m->mail.r.code, 250);
	assert_int_equal(m->data.r[0].code, 250);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_true(n >= 3);
	assert_string_equal(lines[0], "EHLO client.test");
	assert_string_equal(lines[1], "AUTH PLAIN " AUTH_PLAIN_B64);
	assert_true(strncmp(lines[2], "MAIL FROM:", 10) == 0);
	assert_true(find_cmd(lines, n, "STARTTLS") < 0);
	assert_true(peer_has(f, p, "tls.1"));
	char *body = peer_file(f, p, "body.1", NULL);
	assert_non_null(body);
	assert_non_null(strstr(body, "\r\n..starts with a dot\r\n"));
	free(body);

	/* a server that speaks plaintext on that port */
	set_hops(f, 1, hop_of(f, plain, hop, sizeof(hop)));
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.tls_on_connect = true;       /* policy MAY: still no plaintext */
	t.opts.auth_user = AUTH_USER;
	t.opts.auth_pass = AUTH_PASS;
	add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	long long t0 = now_ms();
	run(&t, 10000);
	tls_ctx_free(tls);
	assert_true(now_ms() - t0 < 2500);  /* its greeting fails the handshake, no timeout */
	assert_true(t.ready_failed);
	assert_int_equal(t.ready_err.code, 454);
	assert_string_equal(t.ready_err.enh, "4.7.5");
	assert_non_null(strstr(t.ready_err.text, "implicit TLS"));
	char *raw = peer_file(f, plain, "raw.1", NULL);
	assert_true(!raw || (!strstr(raw, "EHLO") && !strstr(raw, "AUTH")));
	free(raw);
	assert_int_equal(cmds_of(f, plain, 2, lines, b, 16), 0);
	assert_log_clean(f);
}

/* TLS 1.2 is the floor: a server that speaks only TLS 1.1 fails the
 * handshake (4xx under TLS_ENCRYPT); one capped at 1.2 works. */
static void test_tls12_minimum(void **state)
{
	struct fixture *f = *state;
	char cert[128], key[128];
	int p11 = peer_start(f, "--tls", pki("srv.pem", cert, sizeof(cert)), pki("srv.key", key, sizeof(key)),
			     "--tls-max", "1.1", "--ext", "STARTTLS", NULL);
	NEED_PEER(p11);
	int p12 = peer_start(f, "--tls", cert, key, "--tls-max", "1.2", "--ext", "STARTTLS", NULL);
	NEED_PEER(p12);
	struct tls_ctx *tls = client_ctx(false);
	char hop[64];
	set_hops(f, 1, hop_of(f, p11, hop, sizeof(hop)));
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.tls_policy = TLS_ENCRYPT;
	add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	assert_true(t.ready_failed);
	assert_int_equal(t.ready_err.code, 454);
	assert_string_equal(t.ready_err.enh, "4.7.5");
	assert_non_null(strstr(t.ready_err.text, "handshake failed"));
	assert_non_null(strstr(t.ready_err.text, "protocol version"));
	assert_false(peer_has(f, p11, "tls.1"));
	/* the server saw the handshake fail (it writes that after its alert) */
	bool failed = false;
	for (int i = 0; i < 40 && !failed; i++) {
		failed = peer_has(f, p11, "tlsfail.1");
		if (!failed)
			usleep(50000);
	}
	assert_true(failed);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p11, 1, lines, b, 16);
	assert_true(find_cmd(lines, n, "MAIL") < 0);

	set_hops(f, 1, hop_of(f, p12, hop, sizeof(hop)));
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.tls_policy = TLS_ENCRYPT;
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	tls_ctx_free(tls);
	assert_false(t.ready_failed);
	assert_true(strncmp(t.tls, "TLSv1.2 ", 8) == 0);
	assert_int_equal(m->data.r[0].code, 250);
}

/* TLS_NONE never sends STARTTLS, even when offered and a context is set. */
static void test_tls_none(void **state)
{
	struct fixture *f = *state;
	char cert[128], key[128];
	int p = peer_start(f, "--tls", pki("srv.pem", cert, sizeof(cert)), pki("srv.key", key, sizeof(key)), "--ext",
			   "STARTTLS", NULL);
	NEED_PEER(p);
	char hop[64];
	set_hops(f, 1, hop_of(f, p, hop, sizeof(hop)));
	struct tls_ctx *tls = client_ctx(false);
	struct tc t;
	tc_init(&t, f);
	t.opts.tls = tls;
	t.opts.tls_policy = TLS_NONE;
	struct msg *m = add_msg(&t, "s@example.org", "x\r\n", "a@example.com", NULL);
	run(&t, 10000);
	tls_ctx_free(tls);
	assert_false(t.ready_failed);
	assert_string_equal(t.tls, "");
	assert_true(t.had_starttls);
	assert_int_equal(m->data.r[0].code, 250);
	char lines[16][600];
	int b[16];
	size_t n = cmds_of(f, p, 1, lines, b, 16);
	assert_true(find_cmd(lines, n, "STARTTLS") < 0);
}

/* Options that cannot work -- a policy that needs TLS, or implicit TLS,
 * without a TLS context; credentials that could only go in clear text --
 * fail every hop at once with 451 4.3.5, nothing is connected. */
static void test_tls_policy_without_context(void **state)
{
	struct fixture *f = *state;
	char h1[64];
	snprintf(h1, sizeof(h1), "127.0.0.1:%d", closed_port());
	set_hops(f, 1, h1);
	struct tls_ctx *tls = client_ctx(false);
	for (int i = 0; i < 5; i++) {
		struct tc t;
		tc_init(&t, f);
		t.opts.tls_policy = i == 0 ? TLS_ENCRYPT : i == 1 ? TLS_VERIFY : i == 4 ? TLS_NONE : TLS_MAY;
		t.opts.tls_on_connect = i == 2;
		if (i >= 3) {
			t.opts.auth_user = AUTH_USER;
			t.opts.auth_pass = AUTH_PASS;
			t.opts.tls = i == 4 ? tls : NULL;
		}
		run(&t, 10000);
		assert_true(t.ready_failed);
		assert_int_equal(t.ready_err.code, 451);
		assert_string_equal(t.ready_err.enh, "4.3.5");
		assert_non_null(strstr(t.ready_err.text, "TLS"));
	}
	tls_ctx_free(tls);
	assert_log_clean(f);
	char *log = read_file(f->log_path, NULL);
	assert_null(strstr(log, "smtp_client_connecting"));
	free(log);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_pipelined_three_rcpts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_smtp_sink_delivery, setup, teardown),
		cmocka_unit_test_setup_teardown(test_set_abort_cuts_every_client, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rcpt_rejected, setup, teardown),
		cmocka_unit_test_setup_teardown(test_3xx_is_a_protocol_error, setup, teardown),
		cmocka_unit_test_setup_teardown(test_quoted_local_part_with_brackets, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ehlo_size_malformed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failover_closed_port, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failover_greeting_421, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failover_setup_faults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_all_hops_down, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lmtp_per_rcpt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stall_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_data_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lmtp_partial_then_drop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_drop_mid_data, setup, teardown),
		cmocka_unit_test_setup_teardown(test_large_body_and_normalisation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_xforward, setup, teardown),
		cmocka_unit_test_setup_teardown(test_xforward_off, setup, teardown),
		cmocka_unit_test_setup_teardown(test_starttls_aiosmtpd, setup, teardown),
		cmocka_unit_test_setup_teardown(test_starttls_scripted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_starttls_failure_retries_plain, setup, teardown),
		cmocka_unit_test_setup_teardown(test_starttls_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_helo_fallback, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed_reply, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_rcpt_pipelined_354, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_rcpt_pipelined_554, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_rcpt_local_554, setup, teardown),
		cmocka_unit_test_setup_teardown(test_local_refusals, setup, teardown),
		cmocka_unit_test_setup_teardown(test_mail_refused_4xx, setup, teardown),
		cmocka_unit_test_setup_teardown(test_abort_in_callback, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rotor, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unix_socket_lmtp, setup, teardown),
		cmocka_unit_test_setup_teardown(test_auth_plain_starttls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_auth_login, setup, teardown),
		cmocka_unit_test_setup_teardown(test_auth_535_deferred, setup, teardown),
		cmocka_unit_test_setup_teardown(test_auth_never_in_clear, setup, teardown),
		cmocka_unit_test_setup_teardown(test_encrypt_required, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verify_self_signed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verify_ca_signed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verify_wrong_name, setup, teardown),
		cmocka_unit_test_setup_teardown(test_implicit_tls_auth, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tls12_minimum, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tls_none, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tls_policy_without_context, setup, teardown),
	};
	return cmocka_run_group_tests(tests, pki_setup, pki_teardown);
}
