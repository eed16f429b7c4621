/*
 * fuzz_smtp_client.c — libFuzzer target: the SMTP/LMTP client
 * (shared/mail/smtp_client.c) against a server that says anything, as a
 * hostile MX may to the outgoing stage.  The input's first byte chooses
 * the options (LMTP, XFORWARD, a sender and recipients that need
 * SMTPUTF8, a message with lines that need dot-stuffing and bare line
 * ends, commands issued before or after the connection is ready); the
 * rest is what the server sends, all at once, before it closes.  The
 * client must call back exactly once for every command it took, with a
 * code from 200 to 599, and free itself.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "fuzz.h"
#include "mail/envelope.h"
#include "mail/smtp_client.h"
#include "util/alloc.h"
#include "util/config.h"
#include "util/net.h"

struct fz {
	struct event_base *base;
	struct fuzz_peer peer;          /* the server */
	char hop[160];
	unsigned calls, expected;
	bool ready_done;
	struct smtp_client_set set;
	struct envelope *env;
};

static struct fz F;

static const char MSG_PLAIN[] = "Subject: hi\r\n\r\nbody\r\n";
static const char MSG_ODD[] = ".leading dot\r\n..two\r\nbare\nlf\rcr\r\n.\r\nend";

static void check(const struct smtp_reply *r)
{
	if (!r || r->code < 200 || r->code > 599)
		abort();
	if (strlen(r->enh) >= sizeof(r->enh))
		abort();
}

static void on_cmd(void *arg, const struct smtp_reply *r)
{
	(void)arg;
	check(r);
	F.calls++;
}

static void on_data(void *arg, const struct smtp_reply *r, size_t n)
{
	struct smtp_client *c = arg;
	if (n == 0)
		abort();
	for (size_t i = 0; i < n; i++)
		check(&r[i]);
	F.calls++;
	smtp_client_quit(c);
}

static void on_ready(void *arg, struct smtp_client *c, const struct smtp_reply *err)
{
	unsigned b = (unsigned)(uintptr_t)arg;
	F.ready_done = true;
	if (!c) {
		check(err);
		if (err->code < 400 || err->code > 499)
			abort();        /* a hop's failure is always a 4xx */
		return;
	}
	F.expected = 4 + ((b & 0x08) ? 1 : 0);
	smtp_client_mail(c, F.env, 100, on_cmd, NULL);
	smtp_client_rcpt(c, (b & 0x04) ? "us\xc3\xa9r@example.org" : "user@example.org", on_cmd, NULL);
	smtp_client_rcpt(c, "other@example.org", on_cmd, NULL);
	if (b & 0x08)
		smtp_client_rset(c, on_cmd, NULL);
	if (b & 0x10)
		smtp_client_data(c, MSG_ODD, sizeof(MSG_ODD) - 1, on_data, c);
	else
		smtp_client_data(c, MSG_PLAIN, sizeof(MSG_PLAIN) - 1, on_data, c);
}

static void setup(void)
{
	fuzz_quiet_logs();
	F.base = event_base_new();
	if (!F.base)
		abort();
	fuzz_peer_listen(&F.peer, F.base);
	snprintf(F.hop, sizeof(F.hop), "unix:%s", fuzz_sock_path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!F.base)
		setup();
	if (size < 1)
		return 0;
	unsigned b = data[0];
	char *hops_v[] = { F.hop };
	struct strlist hops = { 1, hops_v };
	struct smtp_client_opts o = {
		.hops = &hops,
		.lmtp = b & 0x01,
		.helo_name = "out.fuzz.test",
		.xforward = b & 0x02,
		.connect_timeout_ms = 5000,
		.command_timeout_ms = 5000,
		.data_timeout_ms = 5000,
		.set = &F.set,
	};
	F.env = envelope_new();
	F.env->sender = pool_strdup(F.env->pool, (b & 0x04) ? "s\xc3\xa9nder@example.net" : "sender@example.net");
	F.env->smtputf8 = b & 0x04;
	F.env->body_8bit = b & 0x20;
	F.env->client.addr = pool_strdup(F.env->pool, "192.0.2.1");
	F.env->client.name = pool_strdup(F.env->pool, "client.example");
	F.env->client.helo = pool_strdup(F.env->pool, "client.example");
	F.env->client.proto = pool_strdup(F.env->pool, "ESMTP");
	fuzz_peer_expect(&F.peer, data + 1, size - 1);
	F.calls = F.expected = 0;
	F.ready_done = false;
	smtp_client_connect(F.base, &o, on_ready, (void *)(uintptr_t)b);
	while (!(F.ready_done && F.set.n == 0 && (F.peer.fd < 0 || F.peer.done)))
		if (event_base_loop(F.base, EVLOOP_ONCE) < 0)
			abort();
	if (F.calls != F.expected)
		abort();        /* a command was never answered, or twice */
	if (F.peer.extra)
		abort();        /* one connection per input */
	fuzz_peer_close(&F.peer);
	envelope_free(F.env);
	return 0;
}
