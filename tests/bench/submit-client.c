/*
 * submit-client.c — the load generator of tests/bench/submit: authenticated
 * SMTP submissions over TLS, the same client for rampart-submit and for
 * Postfix.  Compiled by the harness (cc -O2 -I tests/bench ... -lssl
 * -lcrypto -lpthread) into its temporary directory; not part of the build.
 * The SMTP client code it shares with av-client.c is in bench-smtp.h.
 *
 * -c THREADS threads, each with blocking sockets, share the work:
 *   -m 1 (new connection per message): each message is its own session,
 *        connect, [TLS,] banner, EHLO, [STARTTLS, TLS, EHLO,] AUTH PLAIN,
 *        MAIL, RCPT, DATA, QUIT; the threads take messages from one
 *        counter until -n are done;
 *   -m 0 (reused connections): each thread opens one session, logs in
 *        once and sends its share of the -n messages (-n / -c, the
 *        remainder spread), then QUIT.  A session that breaks is counted
 *        and a new one is opened for the rest.
 * -t starttls (port 587 style) or tls (implicit TLS, port 465 style).
 * No pipelining: one command, one reply, the same for every server.
 * Full TLS handshake on every connection (no session resumption); the
 * server certificate is verified against -A (the run's self-signed
 * certificate) and the name -N.
 *
 * The message is exactly -s bytes of DATA (header and body, CRLF line
 * ends, no line starting with "."), From: <-f>, To: <-r>, a unique
 * Message-ID and a Date, so that neither server adds its own.
 *
 * On exit it prints one JSON object on stdout: accepted, failed, the
 * first replies that were not the expected ones (with counts), logins,
 * connections, t_first_connect and t_last_250 (CLOCK_MONOTONIC seconds,
 * the clock of Python's time.monotonic()), the TLS parameters and
 * certificate digest of the last session, and the client's own CPU time.
 * Exit status 0 when it ran (even with failures), 2 on bad usage or setup.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define BENCH_SMTP_TLS
#include "bench-smtp.h"

static const char *host = "127.0.0.1";
static int port;
static int implicit_tls;
static int threads = 10;
static long total = 100;
static int per_conn = 1;                /* 1: one message per connection; 0: reuse */
static const char *user, *from, *rcpt, *helo = "client.bench-client.test";
static const char *cafile, *peername = "submit.bench.test";
static char password[256];
static long msg_size = 4096;
static int timeout_s = 30;
static int do_auth = 1;                 /* -a 0: no AUTH (the Postfix fallback without SASL) */

static SSL_CTX *ctx;
static atomic_long next_msg;            /* -m 1: messages taken */
static atomic_long logins;
static char tls_info[200], cert_sha256[80];

static int tls_start(struct conn *c)
{
	c->ssl = SSL_new(ctx);
	if (!c->ssl)
		return -1;
	SSL_set_fd(c->ssl, c->fd);
	SSL_set_tlsext_host_name(c->ssl, peername);
	SSL_set1_host(c->ssl, peername);
	if (SSL_connect(c->ssl) != 1) {
		unsigned long e = ERR_get_error();
		char eb[160];
		ERR_error_string_n(e, eb, sizeof(eb));
		long v = SSL_get_verify_result(c->ssl);
		note_error("TLS handshake failed: %s%s%s", eb, v != X509_V_OK ? "; verify: " : "",
			   v != X509_V_OK ? X509_verify_cert_error_string(v) : "");
		ERR_clear_error();
		return -1;
	}
	return 0;
}

static void record_tls(struct conn *c)
{
	if (tls_info[0])
		return;
	char info[200], dig[80] = "";
	int nid = SSL_get_negotiated_group(c->ssl);
	const char *g = nid > 0 ? OBJ_nid2sn(nid) : "?";
	snprintf(info, sizeof(info), "%s %s %s", SSL_get_version(c->ssl),
		 SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl)), g ? g : "?");
	X509 *peer = SSL_get1_peer_certificate(c->ssl);
	if (peer) {
		unsigned char md[EVP_MAX_MD_SIZE];
		unsigned int mdlen = 0;
		if (X509_digest(peer, EVP_sha256(), md, &mdlen) == 1)
			for (unsigned i = 0; i < mdlen && 2 * i + 2 < sizeof(dig); i++)
				snprintf(dig + 2 * i, 3, "%02x", md[i]);
		X509_free(peer);
	}
	pthread_mutex_lock(&mu);
	if (!tls_info[0]) {
		snprintf(tls_info, sizeof(tls_info), "%s", info);
		snprintf(cert_sha256, sizeof(cert_sha256), "%s", dig);
	}
	pthread_mutex_unlock(&mu);
}

static char auth_line[600];

/* Connect and log in; 0 when ready for MAIL. */
static int session_open(struct conn *c)
{
	if (conn_connect(c, host, port, timeout_s) < 0)
		return -1;
	if (implicit_tls && tls_start(c) < 0)
		return -1;
	if (smtp_greet(c, helo) < 0)
		return -1;
	if (!implicit_tls) {
		if (cmd(c, "STARTTLS", 220, "STARTTLS") < 0)
			return -1;
		if (c->have != c->off) {
			note_error("STARTTLS: data after the 220 (not allowed)");
			return -1;
		}
		if (tls_start(c) < 0)
			return -1;
		if (smtp_ehlo(c, helo, "EHLO after STARTTLS") < 0)
			return -1;
	}
	record_tls(c);
	if (do_auth) {
		if (cmd(c, auth_line, 235, "AUTH PLAIN") < 0)
			return -1;
		atomic_fetch_add(&logins, 1);
	}
	return 0;
}

static char *msg_tmpl;                  /* the message, DATA bytes, without ".\r\n" */
static size_t msg_len, msgid_off;
static unsigned run_id;

/* One transaction; 0 accepted, -2 refused (the session goes on), -1 the
 * session is broken. */
static int send_one(struct conn *c, long seq, char *msg)
{
	int r;
	if ((r = smtp_data_begin(c)) < 0)
		return r;
	char id[32];
	snprintf(id, sizeof(id), "%08x.%010ld", run_id, seq);
	memcpy(msg + msgid_off, id, 19);
	if (conn_write(c, msg, msg_len) < 0 || conn_write(c, ".\r\n", 3) < 0) {
		note_error("DATA: connection lost while sending the message");
		return -1;
	}
	return smtp_data_end(c);
}

struct worker {
	int idx;
	long share;                     /* -m 0: messages of this thread */
};

static void *work(void *arg)
{
	struct worker *w = arg;
	char *msg = malloc(msg_len);
	memcpy(msg, msg_tmpl, msg_len);
	long done = 0;                  /* -m 0: messages this thread accounted for */
	long seq_base = (long)w->idx * 100000000L;
	struct conn c;
	while (!atomic_load(&stop_all)) {
		long seq;
		if (per_conn) {
			seq = atomic_fetch_add(&next_msg, 1);
			if (seq >= total)
				break;
		} else {
			if (done >= w->share)
				break;
			seq = seq_base + done;
		}
		if (session_open(&c) < 0) {
			conn_close(&c);
			atomic_fetch_add(&failed, 1);
			done++;
			goto check;
		}
		for (;;) {
			int r = send_one(&c, seq, msg);
			done++;
			count_result(r);
			if (r == -1)
				break;
			if (per_conn || done >= w->share || atomic_load(&stop_all)) {
				cmd(&c, "QUIT", 221, "QUIT");
				break;
			}
			seq = seq_base + done;
		}
		conn_close(&c);
check:
		check_give_up();
	}
	free(msg);
	return NULL;
}

static void build_message(void)
{
	char hdr[1024];
	time_t t = time(NULL);
	struct tm tm;
	char date[64];
	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	int n = snprintf(hdr, sizeof(hdr),
			 "From: <%s>\r\n"
			 "To: <%s>\r\n"
			 "Subject: submission benchmark\r\n"
			 "Date: %s\r\n"
			 "Message-ID: <XXXXXXXXXXXXXXXXXXX@bench-client.test>\r\n"
			 "MIME-Version: 1.0\r\n"
			 "Content-Type: text/plain; charset=us-ascii\r\n"
			 "\r\n", from, rcpt, date);
	msgid_off = (size_t)(strstr(hdr, "<XXXX") - hdr) + 1;
	msg_len = msg_size > n + 2 ? (size_t)msg_size : (size_t)n + 2;
	msg_tmpl = malloc(msg_len);
	memcpy(msg_tmpl, hdr, (size_t)n);
	/* body: lines of 70 letters and CRLF; the last line takes what is left
	 * (up to 80 letters), so that the message ends with CRLF at -s bytes */
	size_t p = (size_t)n;
	while (p < msg_len) {
		size_t left = msg_len - p;      /* at least 2 */
		size_t line = left - 2 <= 80 ? left - 2 : 70;
		for (size_t i = 0; i < line; i++, p++)
			msg_tmpl[p] = (char)('a' + (p % 26));
		msg_tmpl[p++] = '\r';
		msg_tmpl[p++] = '\n';
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: submit-client -p PORT -t starttls|tls -c THREADS -n MESSAGES -m 1|0 "
		"-u USER -W PASSWORD_FILE -f FROM -r RCPT -A CAFILE [-N NAME] [-s SIZE] [-H HELO] "
		"[-T TIMEOUT_S] [-h HOST] [-a 0]\n");
	exit(2);
}

static void b64(const unsigned char *in, size_t n, char *out, size_t outlen)
{
	if (outlen < 4 * ((n + 2) / 3) + 1) {
		out[0] = '\0';
		return;
	}
	EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

int main(int argc, char **argv)
{
	int o;
	const char *pwfile = NULL;
	while ((o = getopt(argc, argv, "h:p:t:c:n:m:u:W:f:r:A:N:s:H:T:a:")) != -1) {
		switch (o) {
		case 'h': host = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 't':
			if (strcmp(optarg, "tls") == 0)
				implicit_tls = 1;
			else if (strcmp(optarg, "starttls") != 0)
				usage();
			break;
		case 'c': threads = atoi(optarg); break;
		case 'n': total = atol(optarg); break;
		case 'm': per_conn = atoi(optarg) != 0; break;
		case 'u': user = optarg; break;
		case 'W': pwfile = optarg; break;
		case 'f': from = optarg; break;
		case 'r': rcpt = optarg; break;
		case 'A': cafile = optarg; break;
		case 'N': peername = optarg; break;
		case 's': msg_size = atol(optarg); break;
		case 'H': helo = optarg; break;
		case 'T': timeout_s = atoi(optarg); break;
		case 'a': do_auth = atoi(optarg) != 0; break;
		default: usage();
		}
	}
	if (port <= 0 || threads < 1 || total < 1 || !user || !pwfile || !from || !rcpt || !cafile)
		usage();
	if (!per_conn && threads > total)
		threads = (int)total;
	FILE *pf = fopen(pwfile, "r");
	if (!pf || !fgets(password, sizeof(password), pf)) {
		fprintf(stderr, "submit-client: cannot read %s\n", pwfile);
		return 2;
	}
	fclose(pf);
	password[strcspn(password, "\r\n")] = '\0';

	unsigned char plain[600];
	size_t ul = strlen(user), pl = strlen(password);
	if (2 + 2 * ul + pl > sizeof(plain))
		usage();
	/* authzid empty, authcid, password (RFC 4616) */
	plain[0] = '\0';
	memcpy(plain + 1, user, ul);
	plain[1 + ul] = '\0';
	memcpy(plain + 2 + ul, password, pl);
	char enc[820];
	b64(plain, 2 + ul + pl, enc, sizeof(enc));
	snprintf(auth_line, sizeof(auth_line), "AUTH PLAIN %s", enc);
	smtp_envelope(from, rcpt);
	run_id = (unsigned)getpid() ^ (unsigned)time(NULL);
	build_message();

	signal(SIGPIPE, SIG_IGN);
	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) {
		fprintf(stderr, "submit-client: cannot load %s\n", cafile);
		return 2;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	/* every connection a full handshake: nothing kept for resumption */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);

	struct worker *ws = calloc((size_t)threads, sizeof(*ws));
	for (int i = 0; i < threads; i++) {
		ws[i].idx = i;
		ws[i].share = total / threads + (i < total % threads ? 1 : 0);
	}
	if (run_threads("submit-client", threads, work, ws, sizeof(*ws)) < 0)
		return 2;

	printf("{\"accepted\": %ld, \"failed\": %ld, \"logins\": %ld, \"connections\": %ld, "
	       "\"t_first_connect\": %.6f, \"t_last_250\": %.6f, \"tls\": \"%s\", \"cert_sha256\": \"%s\", "
	       "\"cpu_s\": %.6f, \"threads\": %d, \"message_bytes\": %zu, \"errors\": ",
	       atomic_load(&accepted), atomic_load(&failed), atomic_load(&logins), atomic_load(&connections),
	       t_first_connect, t_last_250, tls_info, cert_sha256, cpu_seconds(), threads, msg_len);
	print_errors();
	printf("}\n");
	return 0;
}
