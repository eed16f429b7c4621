/*
 * bench-smtp.h — the SMTP client code shared by the load generators of
 * tests/bench (av-client.c, submit-client.c): the TCP connection (timeouts,
 * TCP_NODELAY), buffered writes and reads, SMTP replies and commands, the
 * greeting and the MAIL/RCPT/DATA transaction, the table of unexpected
 * replies, the counters and CLOCK_MONOTONIC timestamps of the JSON report
 * (the clocks are bench-clock.h's) and starting the threads.
 *
 * Header only: static functions and static state, one copy in each client
 * (each is one translation unit, compiled by its harness with -I
 * tests/bench).  A client that speaks TLS defines BENCH_SMTP_TLS before
 * including it: struct conn then has an OpenSSL SSL * (NULL until the
 * client starts TLS) that reads and writes go through (-lssl -lcrypto).
 */
#ifndef BENCH_SMTP_H
#define BENCH_SMTP_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
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

#include "bench-clock.h"

#ifdef BENCH_SMTP_TLS
#include <openssl/ssl.h>
#endif

static atomic_long accepted, failed, connections;
static atomic_int stop_all;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static double t_first_connect = -1, t_last_250 = -1;
#define MAX_ERRS 8
static struct {
	char text[200];
	long count;
} errs[MAX_ERRS];
static long errs_other;

static char mail_line[400], rcpt_line[400];

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

/* The "errors" value of the JSON report: [["text", count], ...]. */
static void print_errors(void)
{
	printf("[");
	for (int i = 0; i < MAX_ERRS && errs[i].count; i++)
		printf("%s[\"%s\", %ld]", i ? ", " : "", errs[i].text, errs[i].count);
	if (errs_other)
		printf("%s[\"(other replies)\", %ld]", errs[0].count ? ", " : "", errs_other);
	printf("]");
}

struct conn {
	int fd;
#ifdef BENCH_SMTP_TLS
	SSL *ssl;
#endif
	char buf[8192];
	size_t have, off;
};

#ifdef BENCH_SMTP_TLS
#define CONN_TLS(c) ((c)->ssl != NULL)
#else
#define CONN_TLS(c) 0
#endif

static int conn_write(struct conn *c, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w;
#ifdef BENCH_SMTP_TLS
		if (c->ssl) {
			int r = SSL_write(c->ssl, p, (int)n);
			if (r <= 0)
				return -1;
			w = r;
		} else
#endif
		{
			w = send(c->fd, p, n, MSG_NOSIGNAL);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				return -1;
		}
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
#ifdef BENCH_SMTP_TLS
	if (c->ssl) {
		int n = SSL_read(c->ssl, c->buf + c->have, (int)(sizeof(c->buf) - c->have));
		if (n <= 0)
			return -1;
		r = n;
	} else
#endif
	{
		do
			r = recv(c->fd, c->buf + c->have, sizeof(c->buf) - c->have, 0);
		while (r < 0 && errno == EINTR);
		if (r <= 0)
			return -1;
	}
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

/* Send a command (NULL: none, just read) and expect a reply code; 0 that
 * code, -2 another reply, -1 the connection is broken. */
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
		note_error("%s: connection lost%s", what, CONN_TLS(c) ? " (TLS)" : "");
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
#ifdef BENCH_SMTP_TLS
	if (c->ssl) {
		SSL_shutdown(c->ssl);           /* close_notify, not waiting for the peer's */
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
#endif
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* A new TCP connection to host:port (blocking, timeout_s on every read and
 * write, TCP_NODELAY); counted in connections and t_first_connect.  0 when
 * connected; on -1, conn_close() it. */
static int conn_connect(struct conn *c, const char *host, int port, int timeout_s)
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
	return 0;
}

/* "EHLO helo", expecting 250; 0 or -1. */
static int smtp_ehlo(struct conn *c, const char *helo, const char *what)
{
	char ehlo[300];
	snprintf(ehlo, sizeof(ehlo), "EHLO %s", helo);
	return cmd(c, ehlo, 250, what) < 0 ? -1 : 0;
}

/* The 220 banner, then EHLO; 0 or -1. */
static int smtp_greet(struct conn *c, const char *helo)
{
	if (cmd(c, NULL, 220, "banner") < 0)
		return -1;
	return smtp_ehlo(c, helo, "EHLO");
}

/* The MAIL FROM and RCPT TO lines of every transaction. */
static void smtp_envelope(const char *from, const char *rcpt)
{
	snprintf(mail_line, sizeof(mail_line), "MAIL FROM:<%s>", from);
	snprintf(rcpt_line, sizeof(rcpt_line), "RCPT TO:<%s>", rcpt);
}

/* MAIL, RCPT, DATA: 0 when the server waits for the message; -2 refused
 * (after RSET, the session goes on), -1 the session is broken. */
static int smtp_data_begin(struct conn *c)
{
	int r;
	if ((r = cmd(c, mail_line, 250, "MAIL")) < 0)
		goto refused;
	if ((r = cmd(c, rcpt_line, 250, "RCPT")) < 0)
		goto refused;
	if ((r = cmd(c, "DATA", 354, "DATA")) < 0)
		goto refused;
	return 0;
refused:
	if (r == -2 && cmd(c, "RSET", 250, "RSET") < 0)
		return -1;
	return r;
}

/* The same with PIPELINING (RFC 2920), as an MTA's SMTP client sends a
 * transaction: MAIL, RCPT and DATA in one write, then their three
 * replies.  A refusal: the transaction is closed (an empty message if
 * DATA was answered 354 all the same, then RSET) and -2. */
static inline int smtp_data_begin_pipelined(struct conn *c)
{
	char out[1200], last[200];
	int n = snprintf(out, sizeof(out), "%s\r\n%s\r\nDATA\r\n", mail_line, rcpt_line);
	if (conn_write(c, out, (size_t)n) < 0) {
		note_error("MAIL: connection lost while sending");
		return -1;
	}
	static const int want[3] = { 250, 250, 354 };
	static const char *const what[3] = { "MAIL", "RCPT", "DATA" };
	int got[3], ok = 1;
	for (int i = 0; i < 3; i++) {
		got[i] = read_reply(c, last, sizeof(last));
		if (got[i] < 0) {
			note_error("%s: connection lost%s", what[i], CONN_TLS(c) ? " (TLS)" : "");
			return -1;
		}
		if (got[i] != want[i]) {
			if (ok)
				note_error("%s: %s", what[i], last);
			ok = 0;
		}
	}
	if (ok)
		return 0;
	if (got[2] == 354 && cmd(c, ".", 250, "the empty message after a refusal") == -1)
		return -1;
	return cmd(c, "RSET", 250, "RSET") < 0 ? -1 : -2;
}

/* The reply to the message sent after DATA: 0 accepted (counted in
 * t_last_250), -2 refused, -1 the session is broken. */
static int smtp_data_end(struct conn *c)
{
	int r;
	if ((r = cmd(c, NULL, 250, "end of DATA")) < 0)
		return r;
	double t = now();
	pthread_mutex_lock(&mu);
	if (t > t_last_250)
		t_last_250 = t;
	pthread_mutex_unlock(&mu);
	return 0;
}

/* Count a transaction in accepted (r == 0) or failed. */
static void count_result(int r)
{
	if (r == 0)
		atomic_fetch_add(&accepted, 1);
	else
		atomic_fetch_add(&failed, 1);
}

/* A server that refuses everything: do not spin for ever (stop_all). */
static void check_give_up(void)
{
	if (atomic_load(&failed) > 50 && atomic_load(&failed) > atomic_load(&accepted))
		atomic_store(&stop_all, 1);
}

/* Run fn on n threads, thread i with args + i * stride (NULL when args is
 * NULL), and wait for all of them; -1 (said on stderr, as prog) when one
 * cannot be started. */
static int run_threads(const char *prog, int n, void *(*fn)(void *), void *args, size_t stride)
{
	pthread_t *th = calloc((size_t)n, sizeof(*th));
	for (int i = 0; i < n; i++) {
		if (pthread_create(&th[i], NULL, fn, args ? (char *)args + (size_t)i * stride : NULL) != 0) {
			fprintf(stderr, "%s: cannot start thread %d\n", prog, i);
			return -1;
		}
	}
	for (int i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	free(th);
	return 0;
}

#endif
