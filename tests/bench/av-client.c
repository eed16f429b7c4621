/*
 * av-client.c — the load generator of tests/bench/av: sends a corpus of
 * distinct messages over plain SMTP, each message exactly once, on
 * several sessions at once.  The same client for every server the bench
 * measures.  Compiled by the harness (cc -O2 ... -lpthread) into its
 * temporary directory; not part of the build.
 *
 *   av-client -p PORT -b BLOB -i INDEX [-c SESSIONS] [-f FROM] [-r RCPT]
 *             [-H HELO] [-T TIMEOUT_S] [-h HOST]
 *
 * INDEX has one line per message, "OFFSET LENGTH", into BLOB (the raw
 * message: CRLF line ends, not dot-stuffed).  Everything is read, and
 * dot-stuffed, before the first connection.  -c SESSIONS threads, each
 * with one blocking socket and one long session (EHLO once, then MAIL,
 * RCPT, DATA for every message it takes, QUIT at the end), take the next
 * message from one shared counter until all are sent.  A session that
 * breaks is counted, and a new one is opened for the rest.  One command,
 * one reply (no PIPELINING), TCP_NODELAY, the same for every server.
 *
 * On exit it prints one JSON object on stdout: accepted and failed
 * transactions, the first replies that were not the expected ones (with
 * counts), sessions opened, bytes of message data sent, t_first_connect
 * and t_last_250 (CLOCK_MONOTONIC seconds, the clock of Python's
 * time.monotonic()), and the client's own CPU time.
 * Exit status 0 when it ran (even with failures), 2 on bad usage or setup.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *host = "127.0.0.1";
static int port;
static int sessions = 10;
static const char *from = "bench@bench.test", *rcpt = "user@bench.test", *helo = "client.bench-client.test";
static int timeout_s = 60;

struct msg {
	char *data;             /* dot-stuffed, ends with CRLF "." CRLF */
	size_t len;
};
static struct msg *msgs;
static size_t nmsgs;

static atomic_long next_msg;
static atomic_long accepted, failed, connections, bytes_sent;
static atomic_int stop_all;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static double t_first_connect = -1, t_last_250 = -1;
#define MAX_ERRS 8
static struct {
	char text[200];
	long count;
} errs[MAX_ERRS];
static long errs_other;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Record an unexpected reply or a failure (text is one line). */
static void note_error(const char *fmt, ...)
{
	char t[200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t, sizeof(t), fmt, ap);
	va_end(ap);
	for (char *p = t; *p; p++)
		if (*p == '\r' || *p == '\n' || *p == '"' || *p == '\\' || (unsigned char)*p < 32)
			*p = ' ';
	pthread_mutex_lock(&mu);
	int i;
	for (i = 0; i < MAX_ERRS && errs[i].count; i++)
		if (strcmp(errs[i].text, t) == 0)
			break;
	if (i == MAX_ERRS) {
		errs_other++;
	} else {
		if (!errs[i].count)
			snprintf(errs[i].text, sizeof(errs[i].text), "%s", t);
		errs[i].count++;
	}
	pthread_mutex_unlock(&mu);
}

struct conn {
	int fd;
	char buf[8192];
	size_t have, off;
};

static int conn_write(struct conn *c, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int conn_fill(struct conn *c)
{
	if (c->off > 0) {
		memmove(c->buf, c->buf + c->off, c->have - c->off);
		c->have -= c->off;
		c->off = 0;
	}
	if (c->have == sizeof(c->buf))
		return -1;
	ssize_t r;
	do
		r = recv(c->fd, c->buf + c->have, sizeof(c->buf) - c->have, 0);
	while (r < 0 && errno == EINTR);
	if (r <= 0)
		return -1;
	c->have += (size_t)r;
	return 0;
}

/* Read one SMTP reply (all its lines); returns its code, or -1 on a broken
 * connection.  last: its last line, for the error notes. */
static int read_reply(struct conn *c, char *last, size_t lastlen)
{
	for (;;) {
		char *start = c->buf + c->off;
		char *nl = memchr(start, '\n', c->have - c->off);
		if (!nl) {
			if (conn_fill(c) < 0)
				return -1;
			continue;
		}
		size_t len = (size_t)(nl - start);
		if (len > 0 && start[len - 1] == '\r')
			len--;
		if (last) {
			size_t k = len < lastlen - 1 ? len : lastlen - 1;
			memcpy(last, start, k);
			last[k] = '\0';
		}
		c->off += (size_t)(nl - start) + 1;
		if (len < 3)
			return -1;
		if (len >= 4 && start[3] == '-')
			continue;                       /* more lines follow */
		return (start[0] - '0') * 100 + (start[1] - '0') * 10 + (start[2] - '0');
	}
}

/* Send a command (NULL: none, just read) and expect a reply code. */
static int cmd(struct conn *c, const char *line, int want, const char *what)
{
	char last[200];
	if (line) {
		char out[600];
		int n = snprintf(out, sizeof(out), "%s\r\n", line);
		if (conn_write(c, out, (size_t)n) < 0) {
			note_error("%s: connection lost while sending", what);
			return -1;
		}
	}
	int code = read_reply(c, last, sizeof(last));
	if (code < 0) {
		note_error("%s: connection lost", what);
		return -1;
	}
	if (code != want) {
		note_error("%s: %s", what, last);
		return -2;                      /* a reply, not the wanted one */
	}
	return 0;
}

static void conn_close(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* Connect and greet; 0 when ready for MAIL. */
static int session_open(struct conn *c)
{
	memset(c, 0, sizeof(*c));
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	if (c->fd < 0) {
		note_error("socket: %s", strerror(errno));
		return -1;
	}
	struct timeval tv = { .tv_sec = timeout_s };
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	inet_pton(AF_INET, host, &sa.sin_addr);
	double t = now();
	pthread_mutex_lock(&mu);
	if (t_first_connect < 0 || t < t_first_connect)
		t_first_connect = t;
	pthread_mutex_unlock(&mu);
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		note_error("connect: %s", strerror(errno));
		return -1;
	}
	atomic_fetch_add(&connections, 1);
	if (cmd(c, NULL, 220, "banner") < 0)
		return -1;
	char ehlo[300];
	snprintf(ehlo, sizeof(ehlo), "EHLO %s", helo);
	if (cmd(c, ehlo, 250, "EHLO") < 0)
		return -1;
	return 0;
}

static char mail_line[400], rcpt_line[400];

/* One transaction; 0 accepted, -2 refused (the session goes on), -1 the
 * session is broken. */
static int send_one(struct conn *c, const struct msg *m)
{
	int r;
	if ((r = cmd(c, mail_line, 250, "MAIL")) < 0)
		goto refused;
	if ((r = cmd(c, rcpt_line, 250, "RCPT")) < 0)
		goto refused;
	if ((r = cmd(c, "DATA", 354, "DATA")) < 0)
		goto refused;
	if (conn_write(c, m->data, m->len) < 0) {
		note_error("DATA: connection lost while sending the message");
		return -1;
	}
	atomic_fetch_add(&bytes_sent, (long)m->len);
	if ((r = cmd(c, NULL, 250, "end of DATA")) < 0)
		return r;
	double t = now();
	pthread_mutex_lock(&mu);
	if (t > t_last_250)
		t_last_250 = t;
	pthread_mutex_unlock(&mu);
	return 0;
refused:
	if (r == -2 && cmd(c, "RSET", 250, "RSET") < 0)
		return -1;
	return r;
}

static void *work(void *arg)
{
	(void)arg;
	struct conn c = { .fd = -1 };
	int open = 0;
	while (!atomic_load(&stop_all)) {
		long i = atomic_fetch_add(&next_msg, 1);
		if (i >= (long)nmsgs)
			break;
		if (!open) {
			if (session_open(&c) < 0) {
				conn_close(&c);
				atomic_fetch_add(&failed, 1);
				goto check;
			}
			open = 1;
		}
		int r = send_one(&c, &msgs[i]);
		if (r == 0)
			atomic_fetch_add(&accepted, 1);
		else
			atomic_fetch_add(&failed, 1);
		if (r == -1) {
			conn_close(&c);
			open = 0;
		}
check:
		/* a server that refuses everything: do not spin for ever */
		if (atomic_load(&failed) > 50 && atomic_load(&failed) > atomic_load(&accepted))
			atomic_store(&stop_all, 1);
	}
	if (open) {
		cmd(&c, "QUIT", 221, "QUIT");
		conn_close(&c);
	}
	return NULL;
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long sz = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc(sz > 0 ? (size_t)sz : 1);
	if (!b || fread(b, 1, (size_t)(sz > 0 ? sz : 0), f) != (size_t)(sz > 0 ? sz : 0)) {
		fclose(f);
		free(b);
		return NULL;
	}
	fclose(f);
	*len = (size_t)(sz > 0 ? sz : 0);
	return b;
}

/* The message as DATA: a "." at the start of a line doubled, a final CRLF
 * if it has none, then ".\r\n". */
static void stuff(struct msg *m, const char *p, size_t n)
{
	size_t dots = 0;
	for (size_t i = 0; i < n; i++)
		if (p[i] == '.' && (i == 0 || p[i - 1] == '\n'))
			dots++;
	m->data = malloc(n + dots + 5);
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '.' && (i == 0 || p[i - 1] == '\n'))
			m->data[o++] = '.';
		m->data[o++] = p[i];
	}
	if (o < 2 || m->data[o - 2] != '\r' || m->data[o - 1] != '\n') {
		m->data[o++] = '\r';
		m->data[o++] = '\n';
	}
	memcpy(m->data + o, ".\r\n", 3);
	m->len = o + 3;
}

static void usage(void)
{
	fprintf(stderr, "usage: av-client -p PORT -b BLOB -i INDEX [-c SESSIONS] [-f FROM] [-r RCPT] [-H HELO] "
		"[-T TIMEOUT_S] [-h HOST]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *blob = NULL, *index = NULL;
	int o;
	while ((o = getopt(argc, argv, "h:p:b:i:c:f:r:H:T:")) != -1) {
		switch (o) {
		case 'h': host = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'b': blob = optarg; break;
		case 'i': index = optarg; break;
		case 'c': sessions = atoi(optarg); break;
		case 'f': from = optarg; break;
		case 'r': rcpt = optarg; break;
		case 'H': helo = optarg; break;
		case 'T': timeout_s = atoi(optarg); break;
		default: usage();
		}
	}
	if (port <= 0 || sessions < 1 || !blob || !index)
		usage();
	size_t blen;
	char *b = read_file(blob, &blen);
	if (!b) {
		fprintf(stderr, "av-client: cannot read %s: %s\n", blob, strerror(errno));
		return 2;
	}
	FILE *ix = fopen(index, "r");
	if (!ix) {
		fprintf(stderr, "av-client: cannot read %s: %s\n", index, strerror(errno));
		return 2;
	}
	size_t cap = 1024;
	msgs = malloc(cap * sizeof(*msgs));
	unsigned long long off, len;
	while (fscanf(ix, "%llu %llu", &off, &len) == 2) {
		if (off + len > blen) {
			fprintf(stderr, "av-client: %s: an entry goes past the end of %s\n", index, blob);
			return 2;
		}
		if (nmsgs == cap) {
			cap *= 2;
			msgs = realloc(msgs, cap * sizeof(*msgs));
		}
		stuff(&msgs[nmsgs++], b + off, (size_t)len);
	}
	fclose(ix);
	free(b);
	if (nmsgs == 0) {
		fprintf(stderr, "av-client: %s: no messages\n", index);
		return 2;
	}
	if ((size_t)sessions > nmsgs)
		sessions = (int)nmsgs;
	snprintf(mail_line, sizeof(mail_line), "MAIL FROM:<%s>", from);
	snprintf(rcpt_line, sizeof(rcpt_line), "RCPT TO:<%s>", rcpt);

	signal(SIGPIPE, SIG_IGN);
	struct rusage ru0;
	getrusage(RUSAGE_SELF, &ru0);
	pthread_t *th = calloc((size_t)sessions, sizeof(*th));
	for (int i = 0; i < sessions; i++) {
		if (pthread_create(&th[i], NULL, work, NULL) != 0) {
			fprintf(stderr, "av-client: cannot start thread %d\n", i);
			return 2;
		}
	}
	for (int i = 0; i < sessions; i++)
		pthread_join(th[i], NULL);

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6
		     - (ru0.ru_utime.tv_sec + ru0.ru_utime.tv_usec / 1e6 + ru0.ru_stime.tv_sec + ru0.ru_stime.tv_usec / 1e6);
	printf("{\"messages\": %zu, \"accepted\": %ld, \"failed\": %ld, \"connections\": %ld, \"bytes\": %ld, "
	       "\"t_first_connect\": %.6f, \"t_last_250\": %.6f, \"cpu_s\": %.6f, \"sessions\": %d, \"errors\": [",
	       nmsgs, atomic_load(&accepted), atomic_load(&failed), atomic_load(&connections), atomic_load(&bytes_sent),
	       t_first_connect, t_last_250, cpu, sessions);
	for (int i = 0; i < MAX_ERRS && errs[i].count; i++)
		printf("%s[\"%s\", %ld]", i ? ", " : "", errs[i].text, errs[i].count);
	if (errs_other)
		printf("%s[\"(other replies)\", %ld]", errs[0].count ? ", " : "", errs_other);
	printf("]}\n");
	return 0;
}
