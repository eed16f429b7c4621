/*
 * test_sockout.c — direct writes on a plain socket bufferevent
 * (shared/util/sockout.c), over a real socketpair: what one pass of the
 * loop queued goes out in one write, at the end of the pass, with the
 * bufferevent's write side left off and the owner told it drained; what
 * the socket does not take is handed to the bufferevent (write side on,
 * the owner's write callback, back to direct once empty), in order;
 * a peer that is gone is reported through the event callback; detach
 * hands writing back; TLS bufferevents are never attached.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "util/sockout.h"

struct t {
	struct event_base *base;
	struct bufferevent *bev;
	struct sockout out;
	int peer;                       /* the reading end */
	int drained, written, errors;
	bool hold;
	size_t read_before, read_after;         /* on_read: the input around sockout_fill */
	int reads;
	short last_event;
};

static void on_drained(void *arg)
{
	((struct t *)arg)->drained++;
}

static bool on_hold(void *arg)
{
	return ((struct t *)arg)->hold;
}

static void on_write(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct t *t = arg;
	t->written++;
	sockout_written(&t->out);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct t *t = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	t->reads++;
	t->read_before = evbuffer_get_length(in);
	sockout_fill(&t->out, 1 << 20);
	t->read_after = evbuffer_get_length(in);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct t *t = arg;
	t->errors++;
	t->last_event = what;
}

static void setup_pair(struct t *t, int sndbuf)
{
	memset(t, 0, sizeof(*t));
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	if (sndbuf > 0) {
		assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
		assert_int_equal(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof(sndbuf)), 0);
	}
	assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
	assert_int_equal(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
	t->base = event_base_new();
	assert_non_null(t->base);
	t->bev = bufferevent_socket_new(t->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(t->bev);
	t->peer = sv[1];
	bufferevent_setcb(t->bev, NULL, on_write, on_event, t);
	bufferevent_setwatermark(t->bev, EV_WRITE, 0, 0);
	bufferevent_enable(t->bev, EV_READ | EV_WRITE);
	sockout_init(&t->out, t->base, on_drained, on_hold, t);
}

static void teardown_pair(struct t *t)
{
	sockout_free(&t->out);
	if (t->bev)
		bufferevent_free(t->bev);
	close(t->peer);
	event_base_free(t->base);
}

static void send_text(struct t *t, const char *s)
{
	bufferevent_write(t->bev, s, strlen(s));
	sockout_kick(&t->out);
}

/* Everything the peer can read now. */
static size_t drain_peer(struct t *t, char *out, size_t cap)
{
	size_t n = 0;
	for (;;) {
		ssize_t r = read(t->peer, out + n, cap - n);
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	return n;
}

static void pass(struct t *t)
{
	event_base_loop(t->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

/* Two replies queued in one pass: one write, nothing left in the
 * bufferevent, its write side still off, the owner told once. */
static void test_one_pass_one_write(void **state)
{
	(void)state;
	struct t t;
	setup_pair(&t, 0);
	assert_true(sockout_attach(&t.out, t.bev));
	assert_false(bufferevent_get_enabled(t.bev) & EV_WRITE);
	pass(&t);               /* nothing queued: nothing happens */
	assert_int_equal(t.drained, 0);

	send_text(&t, "250 2.1.0 Ok\r\n");
	send_text(&t, "250 2.1.5 Ok\r\n");
	char buf[256];
	assert_int_equal(drain_peer(&t, buf, sizeof(buf)), 0);     /* not before the end of the pass */
	pass(&t);
	size_t n = drain_peer(&t, buf, sizeof(buf));
	assert_int_equal(n, 28);
	assert_memory_equal(buf, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n", 28);
	assert_int_equal(t.drained, 1);
	assert_int_equal(t.written, 0);        /* libevent's writer never ran */
	assert_int_equal(evbuffer_get_length(bufferevent_get_output(t.bev)), 0);
	assert_false(bufferevent_get_enabled(t.bev) & EV_WRITE);
	teardown_pair(&t);
}

/* The input side: one read event brings everything the socket has (libevent
 * 2.1 alone reads 4 KiB); end of file is still the bufferevent's to report. */
static void test_fill_reads_what_is_there(void **state)
{
	(void)state;
	struct t t;
	setup_pair(&t, 0);
	bufferevent_setcb(t.bev, on_read, on_write, on_event, &t);
	assert_true(sockout_attach(&t.out, t.bev));
	size_t total = 60000;
	char *data = malloc(total);
	for (size_t i = 0; i < total; i++)
		data[i] = (char)('a' + i % 26);
	size_t off = 0;
	while (off < total) {
		ssize_t w = write(t.peer, data + off, total - off);
		assert_true(w > 0);
		off += (size_t)w;
	}
	shutdown(t.peer, SHUT_WR);
	pass(&t);
	assert_int_equal(t.reads, 1);
	assert_true(t.read_before <= 4096);            /* what libevent read */
	assert_int_equal(t.read_after, total);          /* and the rest, in the same pass */
	struct evbuffer *in = bufferevent_get_input(t.bev);
	assert_memory_equal(evbuffer_pullup(in, -1), data, total);
	evbuffer_drain(in, total);
	for (int i = 0; i < 10 && !t.errors; i++)
		pass(&t);
	assert_int_equal(t.errors, 1);
	assert_true(t.last_event & BEV_EVENT_EOF);
	free(data);
	teardown_pair(&t);
}

/* The owner holds what is queued: nothing goes until it lets go and
 * kicks again. */
static void test_hold(void **state)
{
	(void)state;
	struct t t;
	setup_pair(&t, 0);
	assert_true(sockout_attach(&t.out, t.bev));
	t.hold = true;
	send_text(&t, "250 2.1.0 Ok\r\n");
	pass(&t);
	char buf[64];
	assert_int_equal(drain_peer(&t, buf, sizeof(buf)), 0);
	assert_int_equal(t.drained, 0);
	t.hold = false;
	send_text(&t, "250 2.1.5 Ok\r\n");
	pass(&t);
	assert_int_equal(drain_peer(&t, buf, sizeof(buf)), 28);
	assert_int_equal(t.drained, 1);
	teardown_pair(&t);
}

/* More than the socket takes: the rest goes to the bufferevent, later
 * writes queue behind it, and everything arrives once, in order; then
 * the connection is back to direct writing. */
static void test_slow_reader_gets_everything_in_order(void **state)
{
	(void)state;
	struct t t;
	setup_pair(&t, 4096);
	assert_true(sockout_attach(&t.out, t.bev));
	size_t total = 1 << 20;
	unsigned char *data = malloc(total);
	for (size_t i = 0; i < total; i++)
		data[i] = (unsigned char)(i * 7 + (i >> 11));
	size_t half = total / 2;
	bufferevent_write(t.bev, data, half);
	sockout_kick(&t.out);
	pass(&t);
	assert_true(bufferevent_get_enabled(t.bev) & EV_WRITE);    /* handed back */
	assert_int_equal(t.drained, 0);
	bufferevent_write(t.bev, data + half, total - half);
	sockout_kick(&t.out);
	unsigned char *got = malloc(total);
	size_t n = 0;
	for (int spins = 0; n < total && spins < 100000; spins++) {
		n += drain_peer(&t, (char *)got + n, total - n);
		pass(&t);
	}
	assert_int_equal(n, total);
	assert_memory_equal(got, data, total);
	assert_true(t.written >= 1);
	assert_false(bufferevent_get_enabled(t.bev) & EV_WRITE);   /* direct again */

	send_text(&t, "221 2.0.0 Bye\r\n");
	pass(&t);
	char buf[64];
	assert_int_equal(drain_peer(&t, buf, sizeof(buf)), 15);
	assert_int_equal(t.drained, 1);
	free(got);
	free(data);
	teardown_pair(&t);
}

/* The peer has gone: the error comes through the event callback, as it
 * would without sockout. */
static void test_gone_peer_reported(void **state)
{
	(void)state;
	struct t t;
	setup_pair(&t, 0);
	assert_true(sockout_attach(&t.out, t.bev));
	bufferevent_disable(t.bev, EV_READ);   /* the write must find it out, not a read's EOF */
	close(t.peer);
	t.peer = -1;
	send_text(&t, "250 2.0.0 Ok\r\n");
	for (int i = 0; i < 10 && !t.errors; i++)
		pass(&t);
	assert_int_equal(t.errors, 1);
	assert_true(t.last_event & BEV_EVENT_WRITING);
	assert_true(t.last_event & BEV_EVENT_ERROR);
	assert_int_equal(t.drained, 0);
	teardown_pair(&t);
}

/* Detached (before STARTTLS): the bufferevent writes again, and a kick
 * does nothing; forget (the bufferevent is being freed) ends it too. */
static void test_detach_and_forget(void **state)
{
	(void)state;
	struct t t;
	setup_pair(&t, 0);
	assert_true(sockout_attach(&t.out, t.bev));
	send_text(&t, "220 2.0.0 Ready to start TLS\r\n");
	sockout_detach(&t.out);
	assert_true(bufferevent_get_enabled(t.bev) & EV_WRITE);
	pass(&t);
	char buf[64];
	assert_int_equal(drain_peer(&t, buf, sizeof(buf)), 30);
	assert_int_equal(t.drained, 0);         /* the bufferevent wrote it */
	assert_int_equal(t.written, 1);

	send_text(&t, "x");
	assert_false(t.out.queued);
	pass(&t);
	assert_int_equal(drain_peer(&t, buf, sizeof(buf)), 1);

	/* attach again, queue, forget before the end of the pass: nothing
	 * is written by sockout, nothing is touched */
	assert_true(sockout_attach(&t.out, t.bev));
	send_text(&t, "lost\r\n");
	sockout_forget(&t.out);
	bufferevent_free(t.bev);
	t.bev = NULL;
	pass(&t);
	assert_int_equal(t.drained, 0);
	teardown_pair(&t);
}

/* Never a TLS bufferevent, nor a filter over a plain one. */
static void test_tls_never_attached(void **state)
{
	(void)state;
	struct t t;
	setup_pair(&t, 0);
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	assert_non_null(ctx);
	SSL *ssl = SSL_new(ctx);
	assert_non_null(ssl);
	struct bufferevent *f = bufferevent_openssl_filter_new(t.base, t.bev, ssl, BUFFEREVENT_SSL_ACCEPTING,
							       BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(f);
	assert_false(sockout_attach(&t.out, f));
	assert_null(t.out.bev);
	bufferevent_free(f);    /* frees the plain one below and the SSL */
	t.bev = NULL;
	assert_false(sockout_attach(&t.out, NULL));
	SSL_CTX_free(ctx);
	teardown_pair(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_pass_one_write),
		cmocka_unit_test(test_hold),
		cmocka_unit_test(test_fill_reads_what_is_there),
		cmocka_unit_test(test_slow_reader_gets_everything_in_order),
		cmocka_unit_test(test_gone_peer_reported),
		cmocka_unit_test(test_detach_and_forget),
		cmocka_unit_test(test_tls_never_attached),
	};
	signal(SIGPIPE, SIG_IGN);       /* as every stage: a gone peer is an error, not a signal */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
