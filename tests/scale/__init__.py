"""Several app hosts in one test: network namespaces, HAProxy, PgBouncer, a Redis Cluster."""
