/*
 * sockout.c — direct writes on plain socket bufferevents (sockout.h).
 */
#include "sockout.h"
#include "log.h"

#include <stddef.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct sockout *o = arg;
	o->queued = false;
	struct bufferevent *bev = o->bev;
	if (!bev || (bufferevent_get_enabled(bev) & EV_WRITE))
		return;         /* detached, or the bufferevent is writing */
	if (o->hold && o->hold(o->arg))
		return;         /* the owner kicks again */
	struct evbuffer *out = bufferevent_get_output(bev);
	if (evbuffer_get_length(out)) {
		/* an error leaves the data where it is: the bufferevent's
		 * own write meets the same error and reports it */
		/* a socket bufferevent keeps the start of its output frozen
		 * against the user; its own writer thaws it the same way */
		evbuffer_unfreeze(out, 1);
		(void)evbuffer_write(out, bufferevent_getfd(bev));
		evbuffer_freeze(out, 1);
		if (evbuffer_get_length(out)) {
			bufferevent_enable(bev, EV_WRITE);
			return;
		}
	}
	if (o->drained)
		o->drained(o->arg);     /* may free the owner, and o */
}

void sockout_init(struct sockout *o, struct event_base *base, void (*drained)(void *arg), bool (*hold)(void *arg),
		  void *arg)
{
	o->bev = NULL;
	o->queued = false;
	o->drained = drained;
	o->hold = hold;
	o->arg = arg;
	o->ev = event_new(base, -1, 0, flush_cb, o);
	if (!o->ev)
		log_fatal(NULL, NULL, "sockout.event_failed", "cannot create an event");
}

bool sockout_attach(struct sockout *o, struct bufferevent *bev)
{
	if (!bev || bufferevent_get_underlying(bev) || bufferevent_openssl_get_ssl(bev) ||
	    bufferevent_getfd(bev) < 0)
		return false;
	o->bev = bev;
	bufferevent_disable(bev, EV_WRITE);
	if (evbuffer_get_length(bufferevent_get_output(bev)))
		sockout_kick(o);
	return true;
}

void sockout_detach(struct sockout *o)
{
	if (!o->bev)
		return;
	struct bufferevent *bev = o->bev;
	o->bev = NULL;
	bufferevent_enable(bev, EV_WRITE);
}

void sockout_forget(struct sockout *o)
{
	o->bev = NULL;
}

void sockout_kick(struct sockout *o)
{
	if (o->bev && !o->queued) {
		o->queued = true;
		event_active(o->ev, EV_WRITE, 1);
	}
}

void sockout_written(struct sockout *o)
{
	if (o->bev && evbuffer_get_length(bufferevent_get_output(o->bev)) == 0)
		bufferevent_disable(o->bev, EV_WRITE);
}

size_t sockout_fill(struct sockout *o, size_t max)
{
	if (!o->bev)
		return 0;
	struct evbuffer *in = bufferevent_get_input(o->bev);
	evutil_socket_t fd = bufferevent_getfd(o->bev);
	size_t got = 0;
	/* a socket bufferevent keeps the end of its input frozen against the
	 * user, as the start of its output */
	evbuffer_unfreeze(in, 0);
	while (got < max) {
		size_t want = max - got > 65536 ? 65536 : max - got;
		struct evbuffer_iovec v[2];
		int n = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2);
		if (n <= 0)
			break;
		struct iovec iov[2];
		size_t room = 0;
		for (int i = 0; i < n; i++) {
			iov[i].iov_base = v[i].iov_base;
			iov[i].iov_len = v[i].iov_len;
			room += v[i].iov_len;
		}
		ssize_t r = readv(fd, iov, n);
		if (r <= 0) {
			evbuffer_commit_space(in, v, 0);
			break;
		}
		size_t left = (size_t)r;
		int used = 0;
		for (; used < n && left; used++) {
			if (v[used].iov_len > left)
				v[used].iov_len = left;
			left -= v[used].iov_len;
		}
		evbuffer_commit_space(in, v, used);
		got += (size_t)r;
		if ((size_t)r < room)
			break;          /* the socket had no more */
	}
	evbuffer_freeze(in, 0);
	return got;
}

void sockout_free(struct sockout *o)
{
	if (o->ev)
		event_free(o->ev);
	o->ev = NULL;
	o->bev = NULL;
}
