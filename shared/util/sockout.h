/*
 * sockout.h — writing to a plain socket bufferevent without the round
 * trip through its write event.
 *
 * A bufferevent writes its output only when the event loop says the
 * socket is writable: every reply costs an epoll_ctl to ask, an
 * epoll_wait to hear, the write, and an epoll_ctl to stop asking.  With
 * sockout the bufferevent's write side stays disabled while the kernel
 * takes everything: what was queued in one pass of the loop is written
 * once, with one writev, at the end of that pass.  Only what the socket
 * does not take (a slow reader) is handed back to the bufferevent, which
 * then writes it as usual, with its write deadline, and calls the owner's
 * write callback; the owner calls sockout_written() there, which returns
 * to direct writing once the output is empty.  A write error is left to
 * the bufferevent too, so the owner hears of it through its event
 * callback as before.
 *
 * The process ignores SIGPIPE (as for the bufferevent's own writes).
 * For plain sockets only: a TLS bufferevent (or a filter over one) is
 * never attached, and sockout_detach() hands a connection back before
 * STARTTLS puts a filter on it.
 */
#ifndef RAMPART_SOCKOUT_H
#define RAMPART_SOCKOUT_H

#include <stdbool.h>
#include <stddef.h>

struct bufferevent;
struct event;
struct event_base;

struct sockout {
	struct bufferevent *bev;        /* attached: written directly; NULL: off */
	struct event *ev;               /* the end-of-pass flush */
	bool queued;
	/* after a flush that left the output empty: what the bufferevent's
	 * write callback would have done (it is not called then); may free
	 * the owner */
	void (*drained)(void *arg);
	/* optional: true when the owner wants what is queued kept for now
	 * (replies to a client's pipelined commands, held while a later one
	 * of the same group is still being answered: RFC 2920 lets a server
	 * batch them); the owner kicks again when that changes */
	bool (*hold)(void *arg);
	void *arg;
};

void sockout_init(struct sockout *o, struct event_base *base, void (*drained)(void *arg), bool (*hold)(void *arg),
		  void *arg);
/* Write bev directly from now on (its EV_WRITE is disabled while nothing
 * waits); false, and nothing changed, if bev is not a plain socket
 * bufferevent. */
bool sockout_attach(struct sockout *o, struct bufferevent *bev);
/* Back to the bufferevent's own writing (EV_WRITE enabled again). */
void sockout_detach(struct sockout *o);
/* The bufferevent is being freed: forget it (nothing is written). */
void sockout_forget(struct sockout *o);
/* Something was added to the attached bufferevent's output: flush at the
 * end of this pass of the loop.  Nothing when not attached. */
void sockout_kick(struct sockout *o);
/* From the bufferevent's write callback: back to direct writing when the
 * output is empty. */
void sockout_written(struct sockout *o);
/* The input side, from the owner's read callback: libevent 2.1 reads at
 * most 4 KiB per read event, so a 100 KB message would take 25 passes of
 * the loop (an epoll_wait, an ioctl and a readv each).  This reads what
 * the socket has now into the bufferevent's input, up to max bytes;
 * the bytes read.  End of file and errors are left for the bufferevent's
 * next read to find and report. */
size_t sockout_fill(struct sockout *o, size_t max);
void sockout_free(struct sockout *o);

#endif
