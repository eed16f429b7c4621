/*
 * metrics.c — a registry of counter and gauge families rendered in the
 * Prometheus text format (0.0.4), served on GET /metrics by evhttp.
 *
 * Each family keeps its samples in insertion order in a growable array,
 * found by label string through a small open-addressing hash.  Every
 * sample is rendered with the stage and instance labels first.  A registry
 * belongs to the thread of its event loop.
 */
#include "metrics.h"
#include "alloc.h"
#include "buf.h"
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

struct sample {
	char *labels;           /* as given, "" for none */
	double value;           /* histogram: the sum of the observations */
	double *bucket;         /* histogram: observations <= each bound (not cumulative), then the rest */
	double count;           /* histogram: observations */
	metrics_gauge_fn fn;    /* computed at scrape time when set */
	void *arg;
};

struct metric {
	char *name;
	char *help;
	enum metric_type type;
	double *bounds;         /* histogram: upper bounds, increasing */
	size_t nbounds;
	struct sample *s;
	size_t n, cap;
	size_t *slot;           /* hash of labels -> index + 1; 0 is empty */
	size_t nslot;           /* a power of two, or 0 */
};

struct metrics {
	char *base_labels;      /* stage="...",instance="..." */
	struct metric **f;
	size_t n, cap;
	struct event_base *base;
	struct evhttp *http;
};

/* ---- text format helpers ------------------------------------------------ */

void metrics_escape_label(struct buf *out, const char *value)
{
	for (const char *p = value ? value : ""; *p; p++) {
		switch (*p) {
		case '\\': buf_puts(out, "\\\\"); break;
		case '"':  buf_puts(out, "\\\""); break;
		case '\n': buf_puts(out, "\\n"); break;
		default:   buf_putc(out, *p); break;
		}
	}
}

static void escape_help(struct buf *out, const char *s)
{
	for (const char *p = s; *p; p++) {
		if (*p == '\\')
			buf_puts(out, "\\\\");
		else if (*p == '\n')
			buf_puts(out, "\\n");
		else
			buf_putc(out, *p);
	}
}

static bool valid_name(const char *s, bool colon)
{
	if (!s || !*s)
		return false;
	for (const char *p = s; *p; p++) {
		char c = *p;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
			  (colon && c == ':') || (p != s && c >= '0' && c <= '9');
		if (!ok)
			return false;
	}
	return true;
}

/* name="value"(,name="value")* with escapes \\ \" \n inside values. */
static bool valid_labels(const char *s)
{
	const char *p = s;
	if (!*p)
		return true;
	for (;;) {
		const char *start = p;
		while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
		       (p != start && *p >= '0' && *p <= '9'))
			p++;
		size_t namelen = (size_t)(p - start);
		if (namelen == 0 || *p++ != '=' || *p++ != '"')
			return false;
		if ((namelen == 5 && strncmp(start, "stage", 5) == 0) ||
		    (namelen == 8 && strncmp(start, "instance", 8) == 0))
			return false;   /* those two are the registry's */
		while (*p != '"') {
			if (!*p || *p == '\n')
				return false;
			if (*p == '\\') {
				p++;
				if (*p != '\\' && *p != '"' && *p != 'n')
					return false;
			}
			p++;
		}
		p++;
		if (!*p)
			return true;
		if (*p++ != ',')
			return false;
	}
}

static void format_value(struct buf *out, double v)
{
	if (isnan(v)) {
		buf_puts(out, "NaN");
		return;
	}
	if (isinf(v)) {
		buf_puts(out, v > 0 ? "+Inf" : "-Inf");
		return;
	}
	double a = v < 0 ? -v : v;
	if (a < 9007199254740992.0 && v == (double)(long long)v) {   /* integral, exact */
		buf_printf(out, "%lld", (long long)v);
		return;
	}
	char tmp[40];
	snprintf(tmp, sizeof(tmp), "%.15g", v);
	if (strtod(tmp, NULL) != v)
		snprintf(tmp, sizeof(tmp), "%.17g", v);
	buf_puts(out, tmp);
}

/* ---- registry ------------------------------------------------------------ */

struct metrics *metrics_new(const char *stage, const char *instance)
{
	struct metrics *m = xcalloc(1, sizeof(*m));
	struct buf b = BUF_INIT;
	buf_puts(&b, "stage=\"");
	metrics_escape_label(&b, stage ? stage : "");
	buf_puts(&b, "\",instance=\"");
	metrics_escape_label(&b, instance ? instance : (stage ? stage : ""));
	buf_puts(&b, "\"");
	m->base_labels = buf_steal(&b, NULL);
	return m;
}

static void family_free(struct metric *f)
{
	for (size_t i = 0; i < f->n; i++) {
		free(f->s[i].labels);
		free(f->s[i].bucket);
	}
	free(f->bounds);
	free(f->s);
	free(f->slot);
	free(f->name);
	free(f->help);
	free(f);
}

void metrics_free(struct metrics *m)
{
	if (!m)
		return;
	if (m->http)
		evhttp_free(m->http);
	for (size_t i = 0; i < m->n; i++)
		family_free(m->f[i]);
	free(m->f);
	free(m->base_labels);
	free(m);
}

static struct metric *family(struct metrics *m, const char *name, const char *help,
			     enum metric_type type)
{
	if (!valid_name(name, true))
		log_panic(NULL, NULL, "metric_bad_name", "name=%s", name ? name : "");
	for (size_t i = 0; i < m->n; i++) {
		struct metric *f = m->f[i];
		if (strcmp(f->name, name) == 0) {
			if (f->type != type)
				log_panic(NULL, NULL, "metric_type_conflict", "name=%s", name);
			return f;
		}
	}
	struct metric *f = xcalloc(1, sizeof(*f));
	f->name = xstrdup(name);
	f->help = xstrdup(help ? help : "");
	f->type = type;
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 16;
		m->f = xrealloc(m->f, m->cap * sizeof(*m->f));
	}
	m->f[m->n++] = f;
	return f;
}

struct metric *metrics_counter(struct metrics *m, const char *name, const char *help)
{
	return family(m, name, help, METRIC_COUNTER);
}

struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help)
{
	return family(m, name, help, METRIC_GAUGE);
}

struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help, const double *bounds,
				 size_t nbounds)
{
	struct metric *f = family(m, name, help, METRIC_HISTOGRAM);
	if (!f->bounds) {
		for (size_t i = 1; i < nbounds; i++)
			if (!(bounds[i] > bounds[i - 1]))
				log_panic(NULL, NULL, "metric_bad_buckets", "name=%s", name);
		f->bounds = xmalloc((nbounds ? nbounds : 1) * sizeof(*f->bounds));
		memcpy(f->bounds, bounds, nbounds * sizeof(*bounds));
		f->nbounds = nbounds;
	}
	return f;
}

/* ---- samples ------------------------------------------------------------- */

static size_t hash_labels(const char *s)
{
	uint64_t h = 1469598103934665603ULL;                 /* FNV-1a */
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return (size_t)h;
}

static void slot_insert(struct metric *f, size_t idx)
{
	size_t mask = f->nslot - 1;
	size_t i = hash_labels(f->s[idx].labels) & mask;
	while (f->slot[i])
		i = (i + 1) & mask;
	f->slot[i] = idx + 1;
}

static struct sample *find(struct metric *f, const char *labels)
{
	if (!f->nslot)
		return NULL;
	size_t mask = f->nslot - 1;
	for (size_t i = hash_labels(labels) & mask; f->slot[i]; i = (i + 1) & mask) {
		struct sample *s = &f->s[f->slot[i] - 1];
		if (strcmp(s->labels, labels) == 0)
			return s;
	}
	return NULL;
}

/* The sample for labels, created at 0 on first use; NULL if the labels
 * are not well formed (the update is dropped: metrics never stop a
 * process). */
static struct sample *sample(struct metric *f, const char *labels)
{
	if (!labels)
		labels = "";
	struct sample *s = find(f, labels);
	if (s)
		return s;
	if (!valid_labels(labels)) {
		log_error(NULL, NULL, "metric_bad_labels", "name=%s labels=%s", f->name, labels);
		return NULL;
	}
	if (f->n == f->cap) {
		f->cap = f->cap ? f->cap * 2 : 4;
		f->s = xrealloc(f->s, f->cap * sizeof(*f->s));
	}
	if ((f->n + 1) * 2 > f->nslot) {
		free(f->slot);
		f->nslot = f->nslot ? f->nslot * 2 : 8;
		f->slot = xcalloc(f->nslot, sizeof(*f->slot));
		for (size_t i = 0; i < f->n; i++)
			slot_insert(f, i);
	}
	s = &f->s[f->n];
	memset(s, 0, sizeof(*s));
	s->labels = xstrdup(labels);
	if (f->type == METRIC_HISTOGRAM)
		s->bucket = xcalloc(f->nbounds + 1, sizeof(*s->bucket));
	slot_insert(f, f->n);
	f->n++;
	return s;
}

void metric_add(struct metric *f, const char *labels, double v)
{
	if (f->type == METRIC_HISTOGRAM)
		return;         /* metric_observe */
	if (f->type == METRIC_COUNTER && !(v >= 0)) {
		log_warn(NULL, NULL, "metric_counter_decrease", "name=%s", f->name);
		return;
	}
	struct sample *s = sample(f, labels);
	if (s)
		s->value += v;
}

void metric_observe(struct metric *f, const char *labels, double v)
{
	if (f->type != METRIC_HISTOGRAM || v != v)
		return;
	struct sample *s = sample(f, labels);
	if (!s)
		return;
	size_t i = 0;
	while (i < f->nbounds && v > f->bounds[i])
		i++;
	s->bucket[i]++;
	s->count++;
	s->value += v;
}

void metric_inc(struct metric *f, const char *labels)
{
	metric_add(f, labels, 1);
}

void metric_set(struct metric *f, const char *labels, double v)
{
	if (f->type == METRIC_HISTOGRAM)
		return;         /* metric_observe */
	struct sample *s = sample(f, labels);
	if (s)
		s->value = v;
}

double metric_get(struct metric *f, const char *labels)
{
	struct sample *s = find(f, labels ? labels : "");
	if (!s)
		return 0;
	return s->fn ? s->fn(s->arg) : s->value;
}

void metrics_gauge_cb(struct metrics *m, const char *name, const char *help, const char *labels,
		      metrics_gauge_fn fn, void *arg)
{
	struct sample *s = sample(family(m, name, help, METRIC_GAUGE), labels);
	if (!s)
		return;
	s->fn = fn;
	s->arg = arg;
}

/* ---- rendering ----------------------------------------------------------- */

void metrics_render(struct metrics *m, struct buf *out)
{
	for (size_t i = 0; i < m->n; i++) {
		struct metric *f = m->f[i];
		buf_printf(out, "# HELP %s ", f->name);
		escape_help(out, f->help);
		buf_printf(out, "\n# TYPE %s %s\n", f->name,
			   f->type == METRIC_COUNTER ? "counter" : f->type == METRIC_GAUGE ? "gauge" : "histogram");
		if (f->type == METRIC_HISTOGRAM) {
			for (size_t j = 0; j < f->n; j++) {
				const struct sample *s = &f->s[j];
				const char *sep = *s->labels ? "," : "";
				double cum = 0;
				for (size_t b = 0; b <= f->nbounds; b++) {
					cum += s->bucket[b];
					buf_printf(out, "%s_bucket{%s%s%s,le=\"", f->name, m->base_labels, sep, s->labels);
					if (b < f->nbounds)
						format_value(out, f->bounds[b]);
					else
						buf_puts(out, "+Inf");
					buf_puts(out, "\"} ");
					format_value(out, cum);
					buf_putc(out, '\n');
				}
				buf_printf(out, "%s_sum{%s%s%s} ", f->name, m->base_labels, sep, s->labels);
				format_value(out, s->value);
				buf_printf(out, "\n%s_count{%s%s%s} ", f->name, m->base_labels, sep, s->labels);
				format_value(out, s->count);
				buf_putc(out, '\n');
			}
			continue;
		}
		for (size_t j = 0; j < f->n; j++) {
			const struct sample *s = &f->s[j];
			buf_printf(out, "%s{%s%s%s} ", f->name, m->base_labels, *s->labels ? "," : "",
				   s->labels);
			format_value(out, s->fn ? s->fn(s->arg) : s->value);
			buf_putc(out, '\n');
		}
	}
}

/* ---- HTTP ---------------------------------------------------------------- */

static void on_request(struct evhttp_request *req, void *arg)
{
	struct metrics *m = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	if (!path || strcmp(path, "/metrics") != 0) {
		evhttp_send_error(req, HTTP_NOTFOUND, NULL);
		return;
	}
	struct buf b = BUF_INIT;
	metrics_render(m, &b);
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
	evhttp_add_header(headers, "Content-Type", CONTENT_TYPE);
	if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		/* evhttp would send a body after all: the length alone. */
		char len[32];
		snprintf(len, sizeof(len), "%zu", b.len);
		evhttp_add_header(headers, "Content-Length", len);
		evhttp_send_reply(req, HTTP_OK, "OK", NULL);
		buf_free(&b);
		return;
	}
	struct evbuffer *body = evbuffer_new();
	if (!body)
		log_fatal(NULL, NULL, "out_of_memory", "bytes=%zu", b.len);
	evbuffer_add(body, buf_cstr(&b), b.len);
	buf_free(&b);
	evhttp_send_reply(req, HTTP_OK, "OK", body);
	evbuffer_free(body);
}

/* "host:port", "[v6]:port", ":port" or "*:port" (all addresses). */
static bool split_addr(const char *addr, char *host, size_t hostlen, int *port)
{
	const char *colon = addr ? strrchr(addr, ':') : NULL;
	if (!colon)
		return false;
	const char *h = addr;
	size_t hl = (size_t)(colon - addr);
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h++;
		hl -= 2;
	} else if (memchr(h, ':', hl)) {
		return false;           /* a bare IPv6 address needs brackets */
	}
	if (hl == 0 || (hl == 1 && h[0] == '*')) {
		h = "0.0.0.0";
		hl = strlen(h);
	}
	if (hl >= hostlen)
		return false;
	memcpy(host, h, hl);
	host[hl] = '\0';
	char *end;
	errno = 0;
	long p = strtol(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end || errno || p < 0 || p > 65535)
		return false;
	*port = (int)p;
	return true;
}

bool metrics_listen(struct metrics *m, struct event_base *base, const char *addr, int *port_out,
		    char *why, size_t whylen)
{
	char host[256];
	int port;
	if (!split_addr(addr, host, sizeof(host), &port)) {
		set_why(why, whylen, "bad metrics address \"%s\" (expected host:port)", addr ? addr : "");
		return false;
	}
	if (m->http && m->base != base) {
		set_why(why, whylen, "metrics already served from another event loop");
		return false;
	}
	if (!m->http) {
		m->http = evhttp_new(base);
		if (!m->http) {
			set_why(why, whylen, "cannot create the metrics HTTP server");
			return false;
		}
		m->base = base;
		evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
		evhttp_set_max_headers_size(m->http, 8192);
		evhttp_set_max_body_size(m->http, 1024);
		evhttp_set_timeout(m->http, 10);
		evhttp_set_gencb(m->http, on_request, m);
	}
	errno = 0;
	struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(m->http, host, (ev_uint16_t)port);
	if (!bs) {
		int e = errno;
		set_why(why, whylen, "cannot listen on %s: %s", addr, e ? strerror(e) : "bind failed");
		return false;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int bound = port;
	if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			bound = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	if (port_out)
		*port_out = bound;
	log_info(NULL, NULL, "metrics_listening", "host=%s port=%d", host, bound);
	return true;
}
