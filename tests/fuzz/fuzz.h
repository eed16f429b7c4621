/*
 * fuzz.h — what the libFuzzer targets in tests/fuzz share: log lines at
 * every level are formatted (so a bad format argument is found) and
 * written to /dev/null; a listening unix socket in a temporary directory
 * removed at exit; and a scripted peer on it, which says everything it
 * has at once, then stops talking and listens until the other side
 * closes.
 */
#ifndef RAMPART_FUZZ_H
#define RAMPART_FUZZ_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <event2/event.h>

#include "util/log.h"
#include "util/net.h"

static inline void fuzz_quiet_logs(void)
{
	static int fd = -1;
	if (fd >= 0)
		return;
	signal(SIGPIPE, SIG_IGN);
	fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	log_init("fuzz", NULL);
	log_set_fd(fd);
	log_set_level(LL_DEBUG);
}

static char fuzz_sock_dir[64], fuzz_sock_path[128];

static inline void fuzz_sock_remove(void)
{
	unlink(fuzz_sock_path);
	rmdir(fuzz_sock_dir);
}

/* A listening unix socket (non-blocking) in a new temporary directory;
 * its path, for a client to connect to, in fuzz_sock_path.  One per
 * process; a failure ends the run. */
static inline int fuzz_unix_listen(void)
{
	snprintf(fuzz_sock_dir, sizeof(fuzz_sock_dir), "/tmp/rampart-fuzz.XXXXXX");
	if (!mkdtemp(fuzz_sock_dir)) {
		perror("fuzz: mkdtemp");
		abort();
	}
	snprintf(fuzz_sock_path, sizeof(fuzz_sock_path), "%s/sock", fuzz_sock_dir);
	atexit(fuzz_sock_remove);
	struct endpoint ep = { .is_unix = true };
	snprintf(ep.host, sizeof(ep.host), "%s", fuzz_sock_path);
	char why[256];
	int fd = net_listen(&ep, 64, why, sizeof(why));
	if (fd < 0) {
		fprintf(stderr, "fuzz: %s\n", why);
		abort();
	}
	return fd;
}

/* ---- the scripted peer ---------------------------------------------------- */

struct fuzz_peer {
	struct event_base *base;
	struct event *lev, *ev;
	int fd;                 /* this input's connection; -1 until it comes */
	unsigned extra;         /* later connections, closed at once */
	const uint8_t *out;     /* what the peer says */
	size_t outlen, sent;
	bool done;              /* the other side closed */
	char heard[4096];       /* what it was told (the start), NUL-terminated */
	size_t heardlen;
};

static inline void fuzz_peer_io(evutil_socket_t fd, short what, void *arg)
{
	struct fuzz_peer *p = arg;
	if (what & EV_READ) {
		char b[2048];
		ssize_t r = recv(fd, b, sizeof(b), MSG_DONTWAIT);
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
			p->done = true;
			event_del(p->ev);
			return;
		}
		if (r > 0 && p->heardlen + (size_t)r < sizeof(p->heard)) {
			memcpy(p->heard + p->heardlen, b, (size_t)r);
			p->heardlen += (size_t)r;
			p->heard[p->heardlen] = '\0';
		}
	}
	if (what & EV_WRITE) {
		ssize_t w = p->sent < p->outlen ? send(fd, p->out + p->sent, p->outlen - p->sent, MSG_DONTWAIT | MSG_NOSIGNAL)
						: 0;
		if (w > 0)
			p->sent += (size_t)w;
		else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			p->sent = p->outlen;
		if (p->sent >= p->outlen) {
			/* all said: it stops talking, and reads on until the
			 * other side closes */
			shutdown(fd, SHUT_WR);
			event_del(p->ev);
			event_assign(p->ev, p->base, fd, EV_READ | EV_PERSIST, fuzz_peer_io, p);
			event_add(p->ev, NULL);
		}
	}
}

static inline void fuzz_peer_accept(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct fuzz_peer *p = arg;
	int s = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (s < 0)
		return;
	if (p->fd >= 0) {
		p->extra++;
		close(s);
		return;
	}
	p->fd = s;
	event_assign(p->ev, p->base, s, EV_READ | EV_WRITE | EV_PERSIST, fuzz_peer_io, p);
	event_add(p->ev, NULL);
}

/* Listen (at fuzz_sock_path) on base. */
static inline void fuzz_peer_listen(struct fuzz_peer *p, struct event_base *base)
{
	p->base = base;
	p->fd = -1;
	p->lev = event_new(base, fuzz_unix_listen(), EV_READ | EV_PERSIST, fuzz_peer_accept, p);
	p->ev = event_new(base, -1, 0, fuzz_peer_io, p);
	event_add(p->lev, NULL);
}

/* A new input: the next connection is told out[0..outlen). */
static inline void fuzz_peer_expect(struct fuzz_peer *p, const uint8_t *out, size_t outlen)
{
	p->fd = -1;
	p->extra = 0;
	p->out = out;
	p->outlen = outlen;
	p->sent = 0;
	p->done = false;
	p->heardlen = 0;
	p->heard[0] = '\0';
}

/* The input is over: its connection goes. */
static inline void fuzz_peer_close(struct fuzz_peer *p)
{
	if (p->fd >= 0) {
		event_del(p->ev);
		close(p->fd);
		p->fd = -1;
	}
}

#endif
