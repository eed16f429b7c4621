/*
 * av-client.c — the load generator of tests/bench/av: sends a corpus of
 * distinct messages over plain SMTP, each message exactly once, on
 * several sessions at once.  The same client for every server the bench
 * measures.  Compiled by the harness (cc -O2 -I tests/bench ... -lpthread)
 * into its temporary directory; not part of the build.  The SMTP client
 * code it shares with submit-client.c is in bench-smtp.h.
 *
 *   av-client -p PORT -b BLOB -i INDEX [-c SESSIONS] [-f FROM] [-r RCPT]
 *             [-H HELO] [-T TIMEOUT_S] [-h HOST] [-P]
 *
 * INDEX has one line per message, "OFFSET LENGTH", into BLOB (the raw
 * message: CRLF line ends, not dot-stuffed).  Everything is read, and
 * dot-stuffed, before the first connection.  -c SESSIONS threads, each
 * with one blocking socket and one long session (EHLO once, then MAIL,
 * RCPT, DATA for every message it takes, QUIT at the end), take the next
 * message from one shared counter until all are sent.  A session that
 * breaks is counted, and a new one is opened for the rest.  One command,
 * one reply, or with -P MAIL, RCPT and DATA in one write (PIPELINING, as
 * an MTA's SMTP client sends a transaction; the server must offer it);
 * TCP_NODELAY; the same for every server.
 *
 * On exit it prints one JSON object on stdout: accepted and failed
 * transactions, the first replies that were not the expected ones (with
 * counts), sessions opened, bytes of message data sent, t_first_connect
 * and t_last_250 (CLOCK_MONOTONIC seconds, the clock of Python's
 * time.monotonic()), and the client's own CPU time.
 * Exit status 0 when it ran (even with failures), 2 on bad usage or setup.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench-smtp.h"

static const char *host = "127.0.0.1";
static int port;
static int sessions = 10;
static const char *from = "bench@bench.test", *rcpt = "user@bench.test", *helo = "client.bench-client.test";
static int timeout_s = 60;
static int pipelining;

struct msg {
	char *data;             /* dot-stuffed, ends with CRLF "." CRLF */
	size_t len;
};
static struct msg *msgs;
static size_t nmsgs;

static atomic_long next_msg;
static atomic_long bytes_sent;

/* Connect and greet; 0 when ready for MAIL. */
static int session_open(struct conn *c)
{
	if (conn_connect(c, host, port, timeout_s) < 0)
		return -1;
	return smtp_greet(c, helo);
}

/* One transaction; 0 accepted, -2 refused (the session goes on), -1 the
 * session is broken. */
static int send_one(struct conn *c, const struct msg *m)
{
	int r;
	if ((r = pipelining ? smtp_data_begin_pipelined(c) : smtp_data_begin(c)) < 0)
		return r;
	if (conn_write(c, m->data, m->len) < 0) {
		note_error("DATA: connection lost while sending the message");
		return -1;
	}
	atomic_fetch_add(&bytes_sent, (long)m->len);
	return smtp_data_end(c);
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
		count_result(r);
		if (r == -1) {
			conn_close(&c);
			open = 0;
		}
check:
		check_give_up();
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
		"[-T TIMEOUT_S] [-h HOST] [-P]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *blob = NULL, *index = NULL;
	int o;
	while ((o = getopt(argc, argv, "h:p:b:i:c:f:r:H:T:P")) != -1) {
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
		case 'P': pipelining = 1; break;
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
	smtp_envelope(from, rcpt);

	signal(SIGPIPE, SIG_IGN);
	double cpu0 = cpu_seconds();
	if (run_threads("av-client", sessions, work, NULL, 0) < 0)
		return 2;

	double cpu = cpu_seconds() - cpu0;
	printf("{\"messages\": %zu, \"accepted\": %ld, \"failed\": %ld, \"connections\": %ld, \"bytes\": %ld, "
	       "\"t_first_connect\": %.6f, \"t_last_250\": %.6f, \"cpu_s\": %.6f, \"sessions\": %d, \"errors\": ",
	       nmsgs, atomic_load(&accepted), atomic_load(&failed), atomic_load(&connections), atomic_load(&bytes_sent),
	       t_first_connect, t_last_250, cpu, sessions);
	print_errors();
	printf("}\n");
	return 0;
}
