/*
 * fuzz_dovecot_auth.c — libFuzzer target: the Dovecot authentication
 * client (shared/mail/dovecot_auth.c) against an auth socket that says
 * anything.  The input is all the server says, at once, before it stops
 * talking; two checks (alice and bob) wait on the connection.  What must
 * hold: each check ends exactly once, never inside the call that started
 * it, and a check is accepted only when the server said "OK" with that
 * check's request id, on a line of its own.  Anything else is a refusal
 * or a temporary failure.  The client numbers its requests 1, 2, ... in
 * the order of the calls; the AUTH lines the server did read must agree
 * (it may not read them all: it answers before it reads, and a client
 * that drops the connection discards what it had not sent yet).
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
#include "mail/dovecot_auth.h"

/* base64 of "\0alice\0pw-1" and "\0bob\0pw-2" (PLAIN) */
static const char *RESP[2] = { "resp=AGFsaWNlAHB3LTE=", "resp=AGJvYgBwdy0y" };

struct fz {
	struct event_base *base;
	struct fuzz_peer peer;          /* the auth socket */
	int ends[2];
	enum dovecot_result res[2];
	bool in_call;
};

static struct fz F;

static void on_done(void *arg, enum dovecot_result r, const char *reason)
{
	int k = (int)(intptr_t)arg;
	if (F.in_call || !reason)
		abort();        /* ended inside dovecot_auth_check, or without a reason */
	F.ends[k]++;
	F.res[k] = r;
}

/* The id of the client's AUTH line for check k ("" if none was sent). */
static void id_of(int k, char *id, size_t n)
{
	id[0] = '\0';
	for (const char *l = F.peer.heard; l && *l;) {
		const char *e = strchr(l, '\n');
		size_t len = e ? (size_t)(e - l) : strlen(l);
		if (len > 5 && strncmp(l, "AUTH\t", 5) == 0 && memmem(l, len, RESP[k], strlen(RESP[k]))) {
			size_t i = 5, j = 0;
			while (i < len && l[i] != '\t' && j + 1 < n)
				id[j++] = l[i++];
			id[j] = '\0';
			return;
		}
		l = e ? e + 1 : NULL;
	}
}

/* Did the server say "OK<TAB>id" (then a tab or the line's end)? */
static bool said_ok(const char *id)
{
	if (!*id)
		return false;
	char want[64];
	int wl = snprintf(want, sizeof(want), "OK\t%s", id);
	const char *p = (const char *)F.peer.out, *end = p + F.peer.outlen;
	for (const char *l = p; l < end;) {
		const char *e = memchr(l, '\n', (size_t)(end - l));
		size_t len = e ? (size_t)(e - l) : (size_t)(end - l);
		if (len >= (size_t)wl && memcmp(l, want, (size_t)wl) == 0 && (len == (size_t)wl || l[wl] == '\t'))
			return true;
		l = e ? e + 1 : end;
	}
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!F.base) {
		fuzz_quiet_logs();
		F.base = event_base_new();
		fuzz_peer_listen(&F.peer, F.base);
	}
	fuzz_peer_expect(&F.peer, data, size);
	F.ends[0] = F.ends[1] = 0;
	struct dovecot_auth *d = dovecot_auth_new(F.base, fuzz_sock_path, 5000);
	F.in_call = true;
	dovecot_auth_check(d, "alice", "pw-1", "192.0.2.1", on_done, (void *)(intptr_t)0);
	dovecot_auth_check(d, "bob", "pw-2", "2001:db8::1", on_done, (void *)(intptr_t)1);
	F.in_call = false;
	while (F.ends[0] == 0 || F.ends[1] == 0)
		if (event_base_loop(F.base, EVLOOP_ONCE) < 0)
			abort();
	/* lines the client has queued reach the server before it goes (an
	 * answer may come before the server has read the request: it says
	 * everything at once) */
	for (int i = 0; i < 10 && F.peer.fd >= 0 && !F.peer.done; i++)
		event_base_loop(F.base, EVLOOP_NONBLOCK);
	dovecot_auth_free(d);
	while (F.peer.fd >= 0 && !F.peer.done)
		if (event_base_loop(F.base, EVLOOP_ONCE) < 0)
			abort();
	fuzz_peer_close(&F.peer);
	if (F.ends[0] != 1 || F.ends[1] != 1)
		abort();        /* a check ended twice */
	for (int k = 0; k < 2; k++) {
		char id[32], want[8];
		snprintf(want, sizeof(want), "%d", k + 1);
		id_of(k, id, sizeof(id));
		if (*id && strcmp(id, want) != 0) {
			fprintf(stderr, "fuzz_dovecot_auth: check %d was sent as id %s\n", k, id);
			abort();
		}
		if (F.res[k] == DOVECOT_OK && !said_ok(want)) {
			fprintf(stderr, "fuzz_dovecot_auth: check %d accepted (its id: \"%s\") without an OK for it; "
				"the client said:\n%s\n", k, id, F.peer.heard);
			abort();
		}
	}
	return 0;
}
