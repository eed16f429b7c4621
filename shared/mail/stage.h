/*
 * stage.h — the one server skeleton every stage program hands over to.
 *
 * A stage's main() declares its parameters (a struct that begins with
 * struct server_config, and a table for the rest) and calls stage_main().
 * The skeleton does everything else: command line, rampart.conf with
 * environment overrides, logging, metrics, listeners, dropping privileges,
 * the check chain, the SMTP/LMTP engine, forwarding (queue or proxy mode,
 * DESIGN.md §3) or the stage's own delivery, signals (SIGHUP reload,
 * SIGUSR1 queue flush, SIGTERM stop).
 */
#ifndef RAMPART_STAGE_H
#define RAMPART_STAGE_H

#include <stdbool.h>
#include <stddef.h>

#include "../util/config.h"
#include "envelope.h"
#include "smtp_client.h"
#include "smtp_server.h"

enum forward_mode { MODE_QUEUE, MODE_PROXY };
enum next_protocol { NEXT_SMTP, NEXT_LMTP };

/* Parameters every stage instance has (section [<instance>]). */
struct server_config {
	struct strlist listen;
	struct strlist listen_tls;      /* implicit TLS (port 465) */
	char *hostname;
	struct strlist local_domains;
	struct strlist checks;
	int mode;                       /* enum forward_mode */
	struct strlist next_hops;
	int next_protocol;              /* enum next_protocol */
	struct strlist local_next_hops; /* mail for local_domains (queue mode), or none */
	int local_next_protocol;
	bool next_xforward;
	bool next_tls;
	long long next_idle_timeout;
	char *spool_dir;
	char *metrics_listen;
	long long max_message_size;
	long long max_line_length;
	long long max_header_size;
	long long max_headers;
	long long max_recipients;
	long long max_connections;
	long long max_connections_per_client, max_connections_per_network;
	long long network_prefix4, network_prefix6;
	long long data_rate_limit;
	long long max_errors;
	long long command_timeout;
	long long data_timeout;
	long long greet_pause;
	long long shutdown_timeout;
	long long retry_min, retry_max, queue_lifetime;
	long long max_deliveries;
	long long destination_concurrency;
	long long delay_warning;
	char *double_bounce_recipient;
	bool dsn;
	char *tls_cert, *tls_key;
	bool received_hide_client;
	struct strlist xforward_hosts;
	struct strlist xclient_hosts;
	char *user;
};

/* [global] */
struct global_config {
	char *state_dir;
	int log_level;
	bool log_syslog;
	char *dns_local_data;
	bool dns_local_only;
};

extern const struct param_set global_param_set;
extern const struct param_def server_param_defs[];

/* What a stage's init gets besides its parameters. */
struct event_base;
struct dns;
struct smtp_reply;
struct metrics;
struct stage_env {
	const struct global_config *g;
	const char *instance;
	struct event_base *base;
	struct dns *dns;                /* the process's resolver */
	struct metrics *metrics;
	struct state *state;            /* the state store (NULL unless needs_state) */
};

/* One message to deliver locally (the store): the stage answers every
 * recipient with stage_delivery_result(), then the skeleton replies. */
struct stage_delivery {
	const char *sid, *qid;
	const struct envelope *env;
	const char *data;           /* message with the skeleton's headers added */
	size_t len;
	int *codes;                 /* per recipient, filled by the stage */
	char (*texts)[512];       /* per recipient "x.y.z text" */
};

struct stage_def {
	const char *name;               /* "mx", "store", ... */
	const char *doc;
	const struct param_def *params; /* the stage's own parameters (offsets in its struct) */
	size_t config_size;             /* sizeof its struct (begins with struct server_config) */
	bool lmtp;                      /* serve LMTP instead of SMTP */
	const char *default_checks;     /* this stage's default for "checks" (NULL: the server's) */
	/* A submission stage (RFC 6409): TLS before anything else, AUTH
	 * before MAIL, always; start-up refuses it without tls_cert. */
	bool submission;
	bool needs_state;               /* init gets the state store ([state]) */
	/* Per-sender accounting (ledger.h): messages, recipients and bytes
	 * accepted, delivery outcomes and refusals, by sender, sender domain
	 * and login, in state_dir/ledger.INSTANCE (rampartctl stats). */
	bool accounting;
	/* SMTP AUTH: check user and password (the client at ip); done runs
	 * once, from the loop, with 0 (accepted) or the refusal's reply. */
	void (*authenticate)(void *state, const char *sid, const char *ip, const char *user, const char *password,
			     void (*done)(void *arg, int code, const char *enh, const char *text), void *arg);
	/* Start-up and reload: build the stage's state from its config. */
	void *(*init)(const void *config, const struct stage_env *env, char *why, size_t whylen);
	void (*free)(void *state);
	/* Optional, at shutdown before the sessions go: end the threads that
	 * may read a session's data (only free follows). */
	void (*stop)(void *state);
	/* Local delivery (the store); NULL: forward by mode. */
	void (*deliver)(void *state, struct stage_delivery *d);
	/* Called about once a second (housekeeping: re-reading files). */
	void (*tick)(void *state);
	/* Last look at an accepted message before it is queued or relayed
	 * (the outgoing stage signs it with DKIM here).  msg stays valid
	 * until done runs; done runs from the event loop, once: ok with
	 * headers to put on top in add (CRLF lines; may be NULL or empty),
	 * or not ok with why (the client gets 451). */
	void (*prepare)(void *state, const struct envelope *env, const char *msg, size_t len,
			void (*done)(void *arg, bool ok, struct buf *add, const char *why), void *arg);
	/* Adjust the client options for a connection to the next hops (AUTH,
	 * TLS policy of the outgoing stage); domain is the recipient domain
	 * of a routed delivery, "" for the next hops / smarthost. */
	void (*client_opts)(void *state, const char *domain, struct smtp_client_opts *o);
	/* Routing by recipient domain (the outgoing stage): the hops for a
	 * domain, or NULL hops and a reply (4xx: retry later; 5xx: the
	 * recipients fail).  NULL: every recipient goes to next_hops. */
	void (*route)(void *state, const char *domain,
		      void (*done)(void *arg, const struct strlist *hops, const struct smtp_reply *err), void *arg);
	/* true: route is not used now (a smarthost is configured). */
	bool (*route_all)(void *state);
	/* Accounting: a message was accepted (queued); one recipient's
	 * delivery attempt ended with r (its code, and whether the server
	 * said so or which fault was found here: r->fault), text being the
	 * reply as recorded. */
	void (*accepted)(void *state, const struct envelope *env, size_t bytes);
	void (*outcome)(void *state, const struct envelope *env, size_t rcpt, const struct smtp_reply *r,
			const char *text);
	/* What init would refuse, without its side effects (rampart-X -t,
	 * rampartctl config check).  NULL: nothing beyond the parameters. */
	bool (*validate)(const void *config, const struct global_config *g, char *why, size_t whylen);
};

/* Merged parameter table for a stage (server params + its own), for the
 * config loader and rampartctl; release with stage_param_set_free(). */
const struct param_set *stage_param_set(const struct stage_def *def);
void stage_param_set_free(const struct param_set *set);

int stage_main(const struct stage_def *def, int argc, char **argv);

/* Everything start-up checks (parameters, next hops, networks, checks and
 * their files, the stage's own validation), with no side effect. */
bool stage_config_check(const struct stage_def *def, const char *path, const char *instance, char *why,
			size_t whylen);

#endif
