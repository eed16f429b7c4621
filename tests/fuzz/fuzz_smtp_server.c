/*
 * fuzz_smtp_server.c — libFuzzer target: a whole SMTP or LMTP session
 * with the server engine (shared/mail/smtp_server.c), as a client on the
 * network would have it.  The input's first byte chooses the options
 * (LMTP, small bounds for lines, recipients, message size and headers,
 * few errors allowed) and how the hooks answer (at once or from the event
 * loop; refusing recipients whose address holds an 'r'); the rest is
 * written to the server over a unix socket, as fast as it takes it, and
 * then the client's side is shut down.  The session must end (EOF is
 * enough), every reply must be a well-formed reply line, and the server
 * must free everything: ASan/LSan and UBSan check the rest.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "fuzz.h"
#include "mail/smtp_server.h"
#include "util/config.h"
#include "util/net.h"

struct fz {
	struct event_base *base;
	struct smtp_server *srv;
	/* this input */
	unsigned policy;
	bool deferred;
	struct smtp_session *pend;      /* a hook to answer from the loop */
	enum smtp_hook_kind pend_kind;
	struct event *later;
	int ends;
	/* the client's side */
	int cfd;
	const uint8_t *out;
	size_t outlen, sent;
	struct event *cev;
	char line[4096];
	size_t linelen;
	bool eof;
};

static struct fz F;

static char *xf_v[] = { "127.0.0.0/8" };
static struct strlist xf = { 1, xf_v };

static void answer(struct smtp_session *s, enum smtp_hook_kind kind)
{
	struct smtp_txn *t = smtp_session_txn(s);
	switch (kind) {
	case SMTP_HOOK_RCPT: {
		const char *a = t && t->env->nrcpt ? t->env->rcpts[t->env->nrcpt - 1].addr : "";
		if ((F.policy & 0x40) && strchr(a, 'r'))
			smtp_session_reply(s, 550, "5.1.1", "No such user");
		else
			smtp_session_reply(s, 0, NULL, NULL);
		return;
	}
	case SMTP_HOOK_MESSAGE:
		if (smtp_session_lmtp(s) && t && (F.policy & 0x80)) {
			struct smtp_reply_line r[3] = {
				{ 250, "2.0.0", "Ok" }, { 452, "4.2.2", "Over quota" }, { 550, "5.7.1", "Refused" },
			};
			/* deliberately fewer replies than recipients at times:
			 * the engine fills the rest */
			smtp_session_replies(s, r, t->env->nrcpt < 3 ? t->env->nrcpt : 3);
		} else {
			smtp_session_reply(s, 250, "2.0.0", "Ok: queued");
		}
		return;
	case SMTP_HOOK_AUTH:
		smtp_session_reply(s, 535, "5.7.8", "Authentication credentials invalid");
		return;
	default:
		smtp_session_reply(s, 0, NULL, NULL);
		return;
	}
}

static void on_later(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what; (void)arg;
	struct smtp_session *s = F.pend;
	F.pend = NULL;
	if (s) {
		answer(s, F.pend_kind);
		smtp_session_unref(s);
	}
}

static void hook(void *arg, struct smtp_session *s, enum smtp_hook_kind kind)
{
	(void)arg;
	if (F.deferred && !F.pend) {
		smtp_session_ref(s);
		F.pend = s;
		F.pend_kind = kind;
		event_active(F.later, EV_TIMEOUT, 1);
		return;
	}
	if (F.pend)
		abort();        /* the engine ran a second hook while one was pending */
	answer(s, kind);
}

static void on_session_end(void *arg, struct smtp_session *s)
{
	(void)arg; (void)s;
	F.ends++;
}

/* A reply line: three digits, then a space or a hyphen (or nothing),
 * and no control byte but HT. */
static void check_line(const char *l, size_t n)
{
	if (n < 3 || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '9' || l[2] < '0' || l[2] > '9')
		abort();
	if (n > 3 && l[3] != ' ' && l[3] != '-')
		abort();
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)l[i];
		if ((c < 0x20 && c != '\t') || c == 0x7f)
			abort();        /* RFC 5321 textstring: HT and printable */
	}
}

static void on_client(evutil_socket_t fd, short what, void *arg)
{
	(void)arg;
	if (what & EV_WRITE) {
		if (F.sent < F.outlen) {
			ssize_t w = send(fd, F.out + F.sent, F.outlen - F.sent, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (w > 0)
				F.sent += (size_t)w;
			else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
				F.sent = F.outlen;      /* the server closed: stop writing */
		}
		if (F.sent >= F.outlen) {
			shutdown(fd, SHUT_WR);
			event_del(F.cev);
			event_assign(F.cev, F.base, fd, EV_READ | EV_PERSIST, on_client, NULL);
			event_add(F.cev, NULL);
		}
	}
	if (what & EV_READ) {
		char b[8192];
		ssize_t r = recv(fd, b, sizeof(b), MSG_DONTWAIT);
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
			F.eof = true;
			event_del(F.cev);
			return;
		}
		for (ssize_t i = 0; i < r; i++) {
			if (b[i] == '\n') {
				if (F.linelen == 0 || F.line[F.linelen - 1] != '\r')
					abort();        /* a reply line without CRLF */
				check_line(F.line, F.linelen - 1);
				F.linelen = 0;
			} else if (F.linelen < sizeof(F.line)) {
				F.line[F.linelen++] = b[i];
			} else {
				abort();        /* a reply line over 4 KiB */
			}
		}
	}
}

static void setup(void)
{
	fuzz_quiet_logs();
	F.base = event_base_new();
	if (!F.base)
		abort();
	struct smtp_server_opts o = { .hostname = "mx.fuzz.test" };
	struct smtp_server_hooks h = { .hook = hook, .session_end = on_session_end };
	F.srv = smtp_server_new(F.base, &o, &h);
	char why[256];
	if (!smtp_server_listen_fd(F.srv, fuzz_unix_listen(), why, sizeof(why))) {
		fprintf(stderr, "fuzz_smtp_server: %s\n", why);
		abort();
	}
	F.later = event_new(F.base, -1, 0, on_later, NULL);
	F.cev = event_new(F.base, -1, 0, on_client, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!F.base)
		setup();
	if (size < 1)
		return 0;
	unsigned b = data[0];
	F.policy = b;
	F.deferred = b & 0x20;
	struct smtp_server_opts o = {
		.hostname = "mx.fuzz.test",
		.lmtp = b & 0x01,
		.max_recipients = (b & 0x02) ? 3 : 0,
		.max_message_size = (b & 0x04) ? 600 : 10 * 1024 * 1024,
		.max_line = (b & 0x08) ? 80 : 0,
		.max_data_line = (b & 0x08) ? 200 : 0,
		.max_header_size = (b & 0x08) ? 300 : 0,
		.max_headers = (b & 0x10) ? 5 : 0,
		.max_errors = (b & 0x10) ? 3 : 0,
		.command_timeout_ms = 5000,
		.data_timeout_ms = 5000,
		.xforward_hosts = &xf,
		.xclient_hosts = (b & 0x40) ? &xf : NULL,
	};
	smtp_server_set_opts(F.srv, &o);

	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", fuzz_sock_path);
	F.cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (F.cfd < 0 || connect(F.cfd, (struct sockaddr *)&sun, sizeof(sun)) != 0)
		abort();
	F.out = data + 1;
	F.outlen = size - 1;
	F.sent = 0;
	F.linelen = 0;
	F.eof = false;
	int ends = F.ends;
	event_assign(F.cev, F.base, F.cfd, EV_READ | EV_WRITE | EV_PERSIST, on_client, NULL);
	event_add(F.cev, NULL);
	while (!(F.eof && F.ends > ends && !F.pend))
		if (event_base_loop(F.base, EVLOOP_ONCE) < 0)
			abort();
	event_del(F.cev);
	close(F.cfd);
	if (F.linelen != 0)
		abort();        /* the last reply was not ended by CRLF */
	if (smtp_server_sessions(F.srv) != 0)
		abort();
	return 0;
}
