/*
 * metrics.h — Prometheus text-format metrics over HTTP (/metrics).
 *
 * A process owns one registry.  Families are declared once at start-up
 * (counter or gauge, name, help); samples are addressed by a label string
 * such as "reason=\"relay_denied\"" (NULL or "" for no labels) and created
 * on first use.  Gauges can also be computed at scrape time by a callback.
 *
 * Every sample is rendered with stage="..",instance=".." first.  A label
 * string that is not name="value"(,name="value")* (or that sets stage or
 * instance itself) is refused with an error line and the update dropped;
 * values taken from input should go through metrics_escape_label().  A
 * registry is used from the thread of its event loop only, and is freed
 * before that loop.
 */
#ifndef RAMPART_METRICS_H
#define RAMPART_METRICS_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct buf;
struct metrics;
struct metric;

struct metrics *metrics_new(const char *stage, const char *instance);
void metrics_free(struct metrics *m);

struct metric *metrics_counter(struct metrics *m, const char *name, const char *help);
struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help);
/* A histogram with the given upper bounds (increasing; +Inf is added):
 * rendered as NAME_bucket{le=...} (cumulative), NAME_sum and NAME_count. */
struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help, const double *bounds,
				 size_t nbounds);
/* One observation of a histogram (metric_add and metric_set ignore one). */
void metric_observe(struct metric *f, const char *labels, double v);
/* Gauge computed when scraped; fn fills *value for the given labels. */
typedef double (*metrics_gauge_fn)(void *arg);
void metrics_gauge_cb(struct metrics *m, const char *name, const char *help, const char *labels,
		      metrics_gauge_fn fn, void *arg);

void metric_add(struct metric *f, const char *labels, double v);
void metric_inc(struct metric *f, const char *labels);              /* add 1 */
void metric_set(struct metric *f, const char *labels, double v);
double metric_get(struct metric *f, const char *labels);

/* A sample set up by metrics_gauge_cb() reports the callback's value
 * (metric_get() calls it too); counters refuse negative additions. */

void metrics_render(struct metrics *m, struct buf *out);
/* Append value escaped for use inside a label's quotes (\\, \", \n). */
void metrics_escape_label(struct buf *out, const char *value);
/* Serve GET /metrics on "host:port" (port 0 = ephemeral; the bound port is
 * returned in *port_out if non-NULL).  false and why on failure. */
bool metrics_listen(struct metrics *m, struct event_base *base, const char *addr, int *port_out,
		    char *why, size_t whylen);

#endif
