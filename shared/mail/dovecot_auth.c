/*
 * dovecot_auth.c — a client of Dovecot's auth-client socket
 * (dovecot_auth.h).  Lines are bounded; the handshake must end with DONE
 * and offer PLAIN before any AUTH goes out (AUTHs issued meanwhile wait).
 */
#include "dovecot_auth.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define LINE_MAX_LEN 16384

struct dreq {
	struct dreq *next;
	struct dovecot_auth *d;
	unsigned id;
	bool sent;
	char *line;                     /* the AUTH line (holds the password: wiped) */
	size_t len;
	struct event *timer;
	dovecot_done_fn done;
	void *arg;
};

struct dovecot_auth {
	struct event_base *base;
	char *path;
	long long timeout_ms;
	struct bufferevent *bev;
	bool ready;                     /* handshake done (DONE seen, PLAIN offered) */
	bool plain;
	unsigned next_id;
	struct dreq *reqs;              /* waiting or sent, in order */
	struct event *answer_ev;        /* answers made without the socket */
};

static void wipe_line(struct dreq *r)
{
	if (r->line) {
		OPENSSL_cleanse(r->line, r->len);
		free(r->line);
		r->line = NULL;
	}
}

static void unlink_req(struct dovecot_auth *d, struct dreq *r)
{
	for (struct dreq **pp = &d->reqs; *pp; pp = &(*pp)->next)
		if (*pp == r) {
			*pp = r->next;
			break;
		}
}

static void finish(struct dreq *r, enum dovecot_result res, const char *reason)
{
	unlink_req(r->d, r);
	wipe_line(r);
	if (r->timer)
		event_free(r->timer);
	dovecot_done_fn done = r->done;
	void *arg = r->arg;
	free(r);
	done(arg, res, reason);
}

/* The connection is unusable: every check waiting on it is temporary. */
static void drop(struct dovecot_auth *d, const char *why)
{
	if (d->bev) {
		bufferevent_free(d->bev);
		d->bev = NULL;
	}
	d->ready = false;
	d->plain = false;
	log_warn(NULL, NULL, "dovecot.connection_lost", "socket=%s reason=%s", d->path, why);
	char reason[200];
	snprintf(reason, sizeof(reason), "dovecot auth: %s", why);
	while (d->reqs)
		finish(d->reqs, DOVECOT_TEMPFAIL, reason);
}

static void send_waiting(struct dovecot_auth *d)
{
	if (!d->ready)
		return;
	for (struct dreq *r = d->reqs; r; r = r->next)
		if (!r->sent) {
			bufferevent_write(d->bev, r->line, r->len);
			r->sent = true;
			wipe_line(r);
		}
}

/* The request an answer is for: its id exactly as we wrote it (strtoul
 * would also take "02", " 2", "+2" and "-18446744073709551614"). */
static struct dreq *by_id(struct dovecot_auth *d, const char *id)
{
	char mine[16];
	for (struct dreq *r = d->reqs; r; r = r->next) {
		snprintf(mine, sizeof(mine), "%u", r->id);
		if (r->sent && strcmp(id, mine) == 0)
			return r;
	}
	return NULL;
}

/* One line from the server; false: the connection must go. */
static bool handle_line(struct dovecot_auth *d, char *line)
{
	char *f[8] = { 0 };
	size_t n = 0;
	for (char *p = line; p && n < 8; ) {
		f[n++] = p;
		p = strchr(p, '\t');
		if (p)
			*p++ = '\0';
	}
	if (!d->ready) {
		if (strcmp(f[0], "VERSION") == 0)
			return n >= 2 && strcmp(f[1], "1") == 0;
		if (strcmp(f[0], "MECH") == 0 && n >= 2 && strcmp(f[1], "PLAIN") == 0)
			d->plain = true;
		if (strcmp(f[0], "DONE") == 0) {
			if (!d->plain)
				return false;
			d->ready = true;
			send_waiting(d);
		}
		return true;            /* SPID, CUID, COOKIE, other MECHs */
	}
	if (n < 2)
		return false;
	struct dreq *r = by_id(d, f[1]);
	if (strcmp(f[0], "OK") == 0 && r) {
		finish(r, DOVECOT_OK, "dovecot: OK");
		return true;
	}
	if (strcmp(f[0], "FAIL") == 0 && r) {
		bool temp = false;
		const char *why = "";
		for (size_t i = 2; i < n; i++) {
			if (strcmp(f[i], "temp") == 0 || strcmp(f[i], "code=temp_fail") == 0)
				temp = true;
			else if (strncmp(f[i], "reason=", 7) == 0)
				why = f[i] + 7;
		}
		char reason[200];
		snprintf(reason, sizeof(reason), "dovecot: FAIL%s%s%s", temp ? " (temporary)" : "", *why ? ": " : "", why);
		finish(r, temp ? DOVECOT_TEMPFAIL : DOVECOT_FAIL, reason);
		return true;
	}
	if (strcmp(f[0], "CONT") == 0 && r) {
		/* PLAIN with its initial response never needs another round */
		finish(r, DOVECOT_TEMPFAIL, "dovecot: unexpected CONT");
		return true;
	}
	return r != NULL || strcmp(f[0], "OK") == 0 || strcmp(f[0], "FAIL") == 0;   /* an answer to a timed-out id */
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct dovecot_auth *d = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	for (;;) {
		size_t len;
		char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF);
		if (!line) {
			if (evbuffer_get_length(in) > LINE_MAX_LEN)
				drop(d, "line too long");
			return;
		}
		/* a NUL would cut the line short of what the server said
		 * ("OK\t2\0..." read as "OK\t2"): the protocol has none */
		bool ok = len <= LINE_MAX_LEN && !memchr(line, '\0', len) && handle_line(d, line);
		free(line);
		if (!ok) {
			drop(d, "unexpected answer");
			return;
		}
		if (!d->bev)
			return;
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct dovecot_auth *d = arg;
	if (what & BEV_EVENT_CONNECTED)
		return;
	drop(d, what & BEV_EVENT_EOF ? "closed by dovecot" : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static bool connect_socket(struct dovecot_auth *d)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(d->path) >= sizeof(sa.sun_path))
		return false;
	memcpy(sa.sun_path, d->path, strlen(d->path) + 1);
	d->bev = bufferevent_socket_new(d->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	bufferevent_setcb(d->bev, on_read, NULL, on_event, d);
	bufferevent_enable(d->bev, EV_READ);
	if (bufferevent_socket_connect(d->bev, (struct sockaddr *)&sa, (int)sizeof(sa)) < 0) {
		bufferevent_free(d->bev);
		d->bev = NULL;
		return false;
	}
	char hello[64];
	int n = snprintf(hello, sizeof(hello), "VERSION\t1\t2\nCPID\t%ld\n", (long)getpid());
	bufferevent_write(d->bev, hello, (size_t)n);
	return true;
}

/* A check past its deadline: a Dovecot that does not answer is not to be
 * trusted with the next one either; the connection is made again. */
static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct dreq *r = arg;
	struct dovecot_auth *d = r->d;
	bool sent = r->sent;
	finish(r, DOVECOT_TEMPFAIL, sent ? "dovecot auth: no answer in time" : "dovecot auth: not connected in time");
	if (d->bev)
		drop(d, sent ? "no answer in time" : "handshake not finished in time");
}

static void answer_now(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct dovecot_auth *d = arg;
	/* checks that could not even start (no socket): answered from the loop */
	for (struct dreq *r = d->reqs, *next; r; r = next) {
		next = r->next;
		if (!r->sent && !d->bev)
			finish(r, DOVECOT_TEMPFAIL, "dovecot auth: cannot connect to its socket");
	}
}

void dovecot_auth_check(struct dovecot_auth *d, const char *user, const char *password, const char *ip,
			dovecot_done_fn done, void *arg)
{
	struct dreq *r = xcalloc(1, sizeof(*r));
	r->d = d;
	r->id = ++d->next_id;
	r->done = done;
	r->arg = arg;
	/* resp: base64 of NUL user NUL password */
	size_t ul = strlen(user), pl = strlen(password), rawlen = ul + pl + 2;
	unsigned char *raw = xmalloc(rawlen);
	raw[0] = '\0';
	memcpy(raw + 1, user, ul);
	raw[1 + ul] = '\0';
	memcpy(raw + 2 + ul, password, pl);
	char *b64 = xmalloc(4 * ((rawlen + 2) / 3) + 1);
	EVP_EncodeBlock((unsigned char *)b64, raw, (int)rawlen);
	OPENSSL_cleanse(raw, rawlen);
	free(raw);
	char rip[80] = "";
	if (ip && *ip && !strpbrk(ip, "\t\n"))
		snprintf(rip, sizeof(rip), "\trip=%s", ip);
	r->line = xasprintf("AUTH\t%u\tPLAIN\tservice=smtp\tsecured\tnologin%s\tresp=%s\n", r->id, rip, b64);
	r->len = strlen(r->line);
	OPENSSL_cleanse(b64, strlen(b64));
	free(b64);
	/* in order: append */
	struct dreq **pp = &d->reqs;
	while (*pp)
		pp = &(*pp)->next;
	*pp = r;
	r->timer = evtimer_new(d->base, on_timeout, r);
	struct timeval tv = { d->timeout_ms / 1000, (d->timeout_ms % 1000) * 1000 };
	evtimer_add(r->timer, &tv);
	if (!d->bev && !connect_socket(d)) {
		struct timeval zero = { 0, 0 };
		event_add(d->answer_ev, &zero);
		return;
	}
	send_waiting(d);
}

struct dovecot_auth *dovecot_auth_new(struct event_base *base, const char *socket_path, long long timeout_ms)
{
	struct dovecot_auth *d = xcalloc(1, sizeof(*d));
	d->base = base;
	d->path = xstrdup(socket_path);
	d->timeout_ms = timeout_ms > 0 ? timeout_ms : 10000;
	d->answer_ev = evtimer_new(base, answer_now, d);
	return d;
}

void dovecot_auth_free(struct dovecot_auth *d)
{
	if (!d)
		return;
	if (d->bev)
		bufferevent_free(d->bev);
	d->bev = NULL;
	while (d->reqs)
		finish(d->reqs, DOVECOT_TEMPFAIL, "dovecot auth: shutting down");
	event_free(d->answer_ev);
	free(d->path);
	free(d);
}
