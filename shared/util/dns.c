/*
 * dns.c — asynchronous resolver on libunbound, driven by libevent.
 *
 * libunbound resolves in a thread of its own and reports on a pipe
 * (ub_fd); the event loop reads it with ub_process().  Answers are decoded
 * from the raw rdata unbound hands back (no ldns), and every callback is
 * run from an event of its own, so never inside dns_query() nor inside
 * ub_process().  With local_only the root is a "static" local zone: the
 * local data answers, everything else is NXDOMAIN, nothing is sent.
 * Worker threads wait for their answers (dns_query_wait), which come
 * through the same loop.
 */
#include "dns.h"
#include "alloc.h"
#include "buf.h"
#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <unbound.h>

#define DNS_DEFAULT_TIMEOUT_MS 10000

enum {
	T_A = 1, T_NS = 2, T_CNAME = 5, T_PTR = 12, T_MX = 15, T_TXT = 16,
	T_AAAA = 28, T_TLSA = 52,
};

struct dns_query {
	struct dns *d;
	struct dns_query *prev, *next;
	int async_id;
	bool pending;           /* unbound still owes an answer */
	struct event *timer;    /* the query's deadline */
	struct event *deliver;  /* runs the callback from the loop */
	dns_cb cb;
	void *arg;
	int type;
	char *name;
	struct dns_result res;
};

struct dns {
	struct event_base *base;
	struct ub_ctx *ub;
	struct event *ub_ev;
	long long timeout_ms;
	struct dns_query *queries;      /* started, not yet delivered */
	pthread_t loop_thread;          /* the thread that made it: the loop's */
};

/* ---- local data ---------------------------------------------------------- */

static bool load_local_data(struct ub_ctx *ub, const char *path, char *why, size_t whylen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		set_why(why, whylen, "%s: cannot open local data: %s", path, strerror(errno));
		return false;
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	unsigned lineno = 0;
	bool ok = true;
	while ((n = getline(&line, &cap, f)) >= 0) {
		lineno++;
		while (n > 0 && isspace((unsigned char)line[n - 1]))
			line[--n] = '\0';
		char *p = line;
		while (*p && isspace((unsigned char)*p))
			p++;
		if (!*p || *p == '#' || *p == ';')
			continue;
		int r = ub_ctx_data_add(ub, p);
		if (r != 0) {
			set_why(why, whylen, "%s:%u: bad local data \"%s\": %s", path, lineno, p,
				ub_strerror(r));
			ok = false;
			break;
		}
	}
	if (ok && ferror(f)) {
		set_why(why, whylen, "%s: read error: %s", path, strerror(errno));
		ok = false;
	}
	free(line);
	fclose(f);
	return ok;
}

/* ---- decoding rdata ------------------------------------------------------ */

/* A wire-format name at p[*off] (unbound hands names uncompressed) as
 * text, without the trailing dot; the root is ".". */
static bool wire_name(const unsigned char *p, size_t len, size_t *off, struct buf *out)
{
	size_t o = *off, total = 0;
	bool first = true;
	for (;;) {
		if (o >= len)
			return false;
		unsigned l = p[o++];
		if (l == 0)
			break;
		if (l & 0xc0)           /* compression pointer or extended label */
			return false;
		if (o + l > len || (total += l + 1) > 255)
			return false;
		if (!first)
			buf_putc(out, '.');
		first = false;
		for (unsigned i = 0; i < l; i++) {
			unsigned char c = p[o + i];
			if (c == '.' || c == '\\')
				buf_printf(out, "\\%c", c);
			else if (c <= 0x20 || c >= 0x7f)
				buf_printf(out, "\\%03u", c);
			else
				buf_putc(out, (char)c);
		}
		o += l;
	}
	if (first)
		buf_putc(out, '.');
	*off = o;
	return true;
}

static void hex(struct buf *out, const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		buf_printf(out, "%02x", p[i]);
}

/* One rdata as text; false if it is malformed for its type. */
static bool decode_rdata(int type, const unsigned char *p, size_t len, struct dns_rr *rr)
{
	struct buf out = BUF_INIT;
	size_t off = 0;
	char addr[INET6_ADDRSTRLEN];
	switch (type) {
	case T_A:
		if (len != 4 || !inet_ntop(AF_INET, p, addr, sizeof(addr)))
			goto bad;
		buf_puts(&out, addr);
		break;
	case T_AAAA:
		if (len != 16 || !inet_ntop(AF_INET6, p, addr, sizeof(addr)))
			goto bad;
		buf_puts(&out, addr);
		break;
	case T_MX:
		if (len < 3)
			goto bad;
		rr->pref = (p[0] << 8) | p[1];
		off = 2;
		if (!wire_name(p, len, &off, &out) || off != len)
			goto bad;
		break;
	case T_NS:
	case T_CNAME:
	case T_PTR:
		if (!wire_name(p, len, &off, &out) || off != len)
			goto bad;
		break;
	case T_TXT:
		/* character-strings joined with nothing between (RFC 7208 3.3) */
		while (off < len) {
			size_t l = p[off++];
			if (off + l > len)
				goto bad;
			buf_append(&out, p + off, l);
			off += l;
		}
		break;
	case T_TLSA:
		if (len < 3)
			goto bad;
		buf_printf(&out, "%u %u %u ", p[0], p[1], p[2]);
		hex(&out, p + 3, len - 3);
		break;
	default:                        /* RFC 3597 generic form */
		buf_printf(&out, "\\# %zu ", len);
		hex(&out, p, len);
		break;
	}
	rr->text = buf_steal(&out, &rr->len);
	return true;
bad:
	buf_free(&out);
	return false;
}

static void result_clear(struct dns_result *res)
{
	for (size_t i = 0; i < res->n; i++)
		free(res->rr[i].text);
	free(res->rr);
	res->rr = NULL;
	res->n = 0;
}

/* The answer for name/type as a struct dns_result (res is overwritten). */
static void decode_answer(const char *name, int type, struct dns_result *res, int err, struct ub_result *r)
{
	memset(res, 0, sizeof(*res));
	if (err != 0 || !r) {
		log_debug(NULL, NULL, "dns_error", "name=%s type=%d error=%s", name, type,
			  ub_strerror(err));
		res->status = DNS_TEMPFAIL;
		return;
	}
	res->secure = r->secure != 0;
	if (r->bogus) {
		log_info(NULL, NULL, "dns_bogus", "name=%s type=%d reason=%s", name, type,
			 r->why_bogus ? r->why_bogus : "");
		res->status = DNS_BOGUS;
		return;
	}
	if (r->rcode == 3 || r->nxdomain) {
		res->status = DNS_NXDOMAIN;
		return;
	}
	if (r->rcode != 0) {
		log_debug(NULL, NULL, "dns_rcode", "name=%s type=%d rcode=%d", name, type, r->rcode);
		res->status = DNS_TEMPFAIL;
		return;
	}
	if (!r->havedata || !r->data || !r->data[0]) {
		res->status = DNS_NODATA;
		return;
	}
	size_t n = 0;
	while (r->data[n])
		n++;
	res->rr = xcalloc(n, sizeof(*res->rr));
	for (size_t i = 0; i < n; i++) {
		struct dns_rr *rr = &res->rr[res->n];
		rr->type = r->qtype;
		rr->ttl = r->ttl > 0 ? (unsigned)r->ttl : 0;
		if (r->len[i] < 0 ||
		    !decode_rdata(r->qtype, (const unsigned char *)r->data[i], (size_t)r->len[i], rr)) {
			log_warn(NULL, NULL, "dns_malformed", "name=%s type=%d len=%d", name,
				 type, r->len[i]);
			result_clear(res);
			res->status = DNS_TEMPFAIL;
			return;
		}
		res->n++;
	}
	res->status = DNS_OK;
}

static void fill_result(struct dns_query *q, int err, struct ub_result *r)
{
	decode_answer(q->name, q->type, &q->res, err, r);
}

/* ---- queries ------------------------------------------------------------- */

static void query_unlink(struct dns_query *q)
{
	struct dns *d = q->d;
	if (q->prev)
		q->prev->next = q->next;
	else if (d->queries == q)
		d->queries = q->next;
	if (q->next)
		q->next->prev = q->prev;
	q->prev = q->next = NULL;
}

static void query_free(struct dns_query *q)
{
	if (q->timer)
		event_free(q->timer);
	if (q->deliver)
		event_free(q->deliver);
	result_clear(&q->res);
	free(q->name);
	free(q);
}

/* From the loop: hand the result over and forget the query.  The query is
 * gone before the callback runs, so the callback may start new queries or
 * even dns_free() the resolver. */
static void on_deliver(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct dns_query *q = arg;
	query_unlink(q);
	struct dns_result res = q->res;
	memset(&q->res, 0, sizeof(q->res));
	dns_cb cb = q->cb;
	void *cbarg = q->arg;
	query_free(q);
	if (cb)                 /* NULL: cancelled while its answer was on the way */
		cb(cbarg, &res);
	result_clear(&res);
}

/* From ub_process() (or, were unbound ever to answer at once, from
 * ub_resolve_async()): keep the answer, deliver it on the next turn. */
static void on_answer(void *mydata, int err, struct ub_result *r)
{
	struct dns_query *q = mydata;
	q->pending = false;
	event_del(q->timer);
	fill_result(q, err, r);
	if (r)
		ub_resolve_free(r);
	event_active(q->deliver, EV_TIMEOUT, 1);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct dns_query *q = arg;
	if (!q->pending)
		return;
	int r = ub_cancel(q->d->ub, q->async_id);
	if (r != 0) {
		/* Too late: the answer is already on its way (unbound has it
		 * queued for ub_process); on_answer delivers it shortly. */
		log_debug(NULL, NULL, "dns_cancel", "name=%s error=%s", q->name, ub_strerror(r));
		return;
	}
	q->pending = false;
	log_info(NULL, NULL, "dns_timeout", "name=%s type=%d timeout_ms=%lld", q->name, q->type,
		 q->d->timeout_ms);
	result_clear(&q->res);
	memset(&q->res, 0, sizeof(q->res));
	q->res.status = DNS_TEMPFAIL;
	event_active(q->deliver, EV_TIMEOUT, 1);
}

static void on_ub_readable(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct dns *d = arg;
	int r = ub_process(d->ub);
	if (r != 0)
		log_error(NULL, NULL, "dns_process", "error=%s", ub_strerror(r));
}

void dns_cancel(struct dns *d, void *arg)
{
	for (struct dns_query *q = d->queries, *next; q; q = next) {
		next = q->next;
		if (q->arg != arg || !q->cb)
			continue;
		if (q->pending) {
			int r = ub_cancel(d->ub, q->async_id);
			if (r != 0) {
				/* its answer is on the way: on_answer and
				 * on_deliver still run, and free it silently */
				log_debug(NULL, NULL, "dns_cancel", "name=%s error=%s", q->name, ub_strerror(r));
				q->cb = NULL;
				continue;
			}
			q->pending = false;
		}
		query_unlink(q);
		query_free(q);
	}
}

bool dns_query(struct dns *d, const char *name, int type, dns_cb cb, void *arg)
{
	if (!name || !*name || strlen(name) > 254 || type <= 0 || type > 65535 || !cb)
		return false;
	struct dns_query *q = xcalloc(1, sizeof(*q));
	q->d = d;
	q->cb = cb;
	q->arg = arg;
	q->type = type;
	q->name = xstrdup(name);
	q->timer = evtimer_new(d->base, on_timeout, q);
	q->deliver = event_new(d->base, -1, 0, on_deliver, q);
	if (!q->timer || !q->deliver)
		log_fatal(NULL, NULL, "dns_event", "error=%s", "cannot create an event");
	q->pending = true;
	int r = ub_resolve_async(d->ub, name, type, 1 /* IN */, q, on_answer, &q->async_id);
	if (r != 0) {
		log_warn(NULL, NULL, "dns_query_failed", "name=%s type=%d error=%s", name, type,
			 ub_strerror(r));
		query_free(q);
		return false;
	}
	if (q->pending) {
		struct timeval tv = { (time_t)(d->timeout_ms / 1000),
				      (suseconds_t)((d->timeout_ms % 1000) * 1000) };
		evtimer_add(q->timer, &tv);
	}
	q->next = d->queries;
	if (d->queries)
		d->queries->prev = q;
	d->queries = q;
	return true;
}

/* ---- waiting queries, for worker threads --------------------------------
 *
 * The query goes to the same unbound context (thread-safe) as dns_query();
 * its answer arrives, like every answer, through ub_process() on the
 * loop's thread, which decodes it and wakes the waiting worker.  A worker
 * that gives up cancels the query; when the cancel comes too late (the
 * answer is being delivered), the answer frees the abandoned wait. */

struct dns_wait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	char *name;
	int type;
	bool answered;
	bool abandoned;
	struct dns_result res;
};

static void wait_free(struct dns_wait *w)
{
	result_clear(&w->res);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	free(w->name);
	free(w);
}

/* From ub_process(), on the loop's thread. */
static void on_wait_answer(void *mydata, int err, struct ub_result *r)
{
	struct dns_wait *w = mydata;
	struct dns_result res;
	decode_answer(w->name, w->type, &res, err, r);
	if (r)
		ub_resolve_free(r);
	pthread_mutex_lock(&w->mu);
	if (w->abandoned) {
		pthread_mutex_unlock(&w->mu);
		result_clear(&res);
		wait_free(w);
		return;
	}
	w->res = res;
	w->answered = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

bool dns_query_wait(struct dns *d, const char *name, int type, long long timeout_ms, struct dns_result *out)
{
	memset(out, 0, sizeof(*out));
	out->status = DNS_TEMPFAIL;
	if (!name || !*name || strlen(name) > 254 || type <= 0 || type > 65535)
		return false;
	if (pthread_equal(pthread_self(), d->loop_thread)) {
		log_error(NULL, NULL, "dns_wait_on_loop", "name=%s type=%d", name, type);
		return false;
	}
	if (timeout_ms <= 0 || timeout_ms > d->timeout_ms)
		timeout_ms = d->timeout_ms;
	struct dns_wait *w = xcalloc(1, sizeof(*w));
	pthread_mutex_init(&w->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->cv, &ca);
	pthread_condattr_destroy(&ca);
	w->name = xstrdup(name);
	w->type = type;
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += (time_t)(timeout_ms / 1000);
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	int id = 0;
	int r = ub_resolve_async(d->ub, name, type, 1 /* IN */, w, on_wait_answer, &id);
	if (r != 0) {
		log_warn(NULL, NULL, "dns_query_failed", "name=%s type=%d error=%s", name, type,
			 ub_strerror(r));
		wait_free(w);
		return false;
	}
	pthread_mutex_lock(&w->mu);
	while (!w->answered) {
		if (pthread_cond_timedwait(&w->cv, &w->mu, &until) == ETIMEDOUT)
			break;
	}
	if (w->answered) {
		*out = w->res;
		memset(&w->res, 0, sizeof(w->res));
		pthread_mutex_unlock(&w->mu);
		wait_free(w);
		return true;
	}
	w->abandoned = true;
	pthread_mutex_unlock(&w->mu);
	log_info(NULL, NULL, "dns_timeout", "name=%s type=%d timeout_ms=%lld", name, type, timeout_ms);
	if (ub_cancel(d->ub, id) == 0)
		wait_free(w);          /* else the answer is on its way and frees it */
	return true;
}

void dns_result_free(struct dns_result *r)
{
	if (r)
		result_clear(r);
}

/* ---- the resolver -------------------------------------------------------- */

struct dns *dns_new_fwd(struct event_base *base, const struct dns_opts *opts,
			const char *const *forwarders, char *why, size_t whylen)
{
	static const struct dns_opts defaults = { NULL, false, NULL, 0 };
	if (!opts)
		opts = &defaults;
	struct ub_ctx *ub = ub_ctx_create();
	if (!ub) {
		set_why(why, whylen, "cannot create the unbound context");
		return NULL;
	}
	int r;
	/* A thread, not the default forked process, answers the queries. */
	if ((r = ub_ctx_async(ub, 1)) != 0) {
		set_why(why, whylen, "unbound: cannot use a thread: %s", ub_strerror(r));
		goto fail;
	}
	if (opts->local_only &&
	    (r = ub_ctx_set_option(ub, "local-zone:", ". static")) != 0) {
		set_why(why, whylen, "unbound: cannot make the root a local zone: %s", ub_strerror(r));
		goto fail;
	}
	if (forwarders) {
		for (size_t i = 0; forwarders[i]; i++) {
			if ((r = ub_ctx_set_fwd(ub, forwarders[i])) != 0) {
				set_why(why, whylen, "bad forwarder \"%s\": %s", forwarders[i],
					ub_strerror(r));
				goto fail;
			}
		}
	} else if (!opts->local_only) {
		const char *rc = opts->resolv_conf ? opts->resolv_conf : "/etc/resolv.conf";
		if ((r = ub_ctx_resolvconf(ub, rc)) != 0) {
			set_why(why, whylen, "%s: cannot use: %s%s%s", rc, ub_strerror(r),
				r == UB_READFILE ? ": " : "", r == UB_READFILE ? strerror(errno) : "");
			goto fail;
		}
	}
	/* Adding data finalizes the context: every option comes before. */
	if (opts->local_data && !load_local_data(ub, opts->local_data, why, whylen))
		goto fail;

	struct dns *d = xcalloc(1, sizeof(*d));
	d->base = base;
	d->ub = ub;
	d->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : DNS_DEFAULT_TIMEOUT_MS;
	d->loop_thread = pthread_self();
	d->ub_ev = event_new(base, ub_fd(ub), EV_READ | EV_PERSIST, on_ub_readable, d);
	if (!d->ub_ev || event_add(d->ub_ev, NULL) != 0) {
		set_why(why, whylen, "cannot watch the unbound descriptor");
		if (d->ub_ev)
			event_free(d->ub_ev);
		free(d);
		goto fail;
	}
	return d;
fail:
	ub_ctx_delete(ub);
	return NULL;
}

struct dns *dns_new(struct event_base *base, const struct dns_opts *opts, char *why, size_t whylen)
{
	return dns_new_fwd(base, opts, NULL, why, whylen);
}

void dns_free(struct dns *d)
{
	if (!d)
		return;
	while (d->queries) {
		struct dns_query *q = d->queries;
		query_unlink(q);
		if (q->pending)
			ub_cancel(d->ub, q->async_id);
		query_free(q);
	}
	event_free(d->ub_ev);
	ub_ctx_delete(d->ub);
	free(d);
}

bool dns_reverse_name(const char *ip, char *out, size_t outlen)
{
	unsigned char a[16];
	int n;
	if (!ip || !out || !outlen)
		return false;
	if (inet_pton(AF_INET, ip, a) == 1) {
		n = snprintf(out, outlen, "%u.%u.%u.%u.in-addr.arpa", a[3], a[2], a[1], a[0]);
	} else if (inet_pton(AF_INET6, ip, a) == 1) {
		static const char digits[] = "0123456789abcdef";
		char tmp[80];
		size_t k = 0;
		for (int i = 15; i >= 0; i--) {
			tmp[k++] = digits[a[i] & 0x0f];
			tmp[k++] = '.';
			tmp[k++] = digits[a[i] >> 4];
			tmp[k++] = '.';
		}
		tmp[k] = '\0';
		n = snprintf(out, outlen, "%sip6.arpa", tmp);
	} else {
		out[0] = '\0';
		return false;
	}
	if (n < 0 || (size_t)n >= outlen) {
		out[0] = '\0';
		return false;
	}
	return true;
}

const char *dns_status_name(enum dns_status s)
{
	switch (s) {
	case DNS_OK:       return "ok";
	case DNS_NXDOMAIN: return "nxdomain";
	case DNS_NODATA:   return "nodata";
	case DNS_TEMPFAIL: return "tempfail";
	case DNS_BOGUS:    return "bogus";
	}
	return "unknown";
}
